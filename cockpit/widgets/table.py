"""The experiment table: one row per experiment, status in colour, the best row marked, and the
cursor following new rows unless the human moved it."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import DataTable

STATUS_STYLE = {
    "keep": "bold green", "forced": "bold cyan", "discard": "grey62", "crash": "bold red", "timeout": "red",
    "invalid": "magenta", "vetoed": "yellow", "interrupted": "grey50", "running": "bold blue", "proposing": "blue",
}
COLUMNS = ("#", "commit", "metric", "Δ best", "conf", "status", "time", "mem", "description")
MANY = ("#", "device", "metric", "Δ best", "conf", "status", "time", "mem", "description")  # several devices: the device
# takes the commit's place (the commit shows when the row is opened, and in results.tsv)
NARROW = ("#", "metric", "status", "description")  # under 120 columns: by priority (Δ shows on open)
NARROW_MANY = ("#", "dev", "metric", "status", "description")  # the same with several slots: the device, short
# Fixed widths: the layout never depends on which rows arrived first (descriptions take the rest).
WIDTHS = {"#": 4, "commit": 7, "device": 7, "dev": 3, "metric": 8, "Δ best": 9, "conf": 6, "status": 11, "time": 5,
          "mem": 6}
MAX_DEVICE = 17  # the device column's widest: a cluster's "node/3" (engine/cluster.py keeps node names to 12)
NARROW_DESCRIPTION = 17  # characters of description beside the narrow columns in an 80-column terminal


class ExperimentTable(DataTable):
    DEFAULT_CSS = """
    ExperimentTable { height: 1fr; scrollbar-size-horizontal: 0; scrollbar-size-vertical: 1; }
    ExperimentTable.compact { scrollbar-size-vertical: 0; }
    """

    def __init__(self, metric: str = "val_bpb", **kw):
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.metric = metric
        self.data_rows: dict[int, dict] = {}
        self.best_n: int | None = None
        self.follow = True
        self.columns_shown = COLUMNS
        self.narrow = False
        self.devices: set[str] = set()  # the devices experiments ran on
        self.term_width = 0
        self.device_width = WIDTHS["device"]  # wider for a cluster's node/slot names, never cut

    def on_mount(self) -> None:
        for c in self.columns_shown:
            self.add_column(self.metric if c == "metric" else c, key=c, width=self._width(c))

    def _width(self, column: str) -> int | None:
        return self.device_width if column == "device" else WIDTHS.get(column)

    def set_narrow(self, narrow: bool, width: int | None = None, relabel: bool = False) -> None:
        """Show the columns that fit: status, metric, Δ and description first (and the device,
        short, once experiments run on several)."""
        self.narrow = narrow
        resized = bool(width) and width != self.term_width
        if resized:
            self.term_width = width  # the terminal's new width (the app's size may not have caught up yet)
        many = len(self.devices) > 1
        want = (NARROW_MANY if many else NARROW) if narrow else (MANY if many else COLUMNS)
        if want == self.columns_shown and not resized and not relabel:
            return
        self.columns_shown = want
        selected, follow = self.selected_number(), self.follow
        self.clear(columns=True)
        for c in want:
            self.add_column(self.metric if c == "metric" else c, key=c, width=self._width(c))
        for row in self.data_rows.values():
            row.pop("_added", None)
        for n in list(self.data_rows):
            self.upsert(n)  # descriptions fitted again to the new width
        self.follow = follow
        if selected is not None and not follow and selected in self.data_rows:
            self.move_cursor(row=list(self.data_rows).index(selected))

    def upsert(self, n: int, **fields) -> None:
        row = self.data_rows.setdefault(n, {"n": n, "commit": "", "metric": None, "delta": None, "conf": None,
                                       "status": "proposing", "started": time.monotonic(), "seconds": None,
                                       "memory": None, "description": ""})
        row.update({k: v for k, v in fields.items() if v is not None})
        if row.get("device") and row["device"] not in self.devices:
            self.devices.add(row["device"])
            wider = min(MAX_DEVICE, len(row["device"])) > self.device_width
            if wider:  # a cluster's "node/3": the column widens, the name is never cut
                self.device_width = min(MAX_DEVICE, len(row["device"]))
            if len(self.devices) == 2 or (wider and len(self.devices) > 1):
                self.set_narrow(self.narrow, relabel=wider)  # the device column appears
        cells = self._cells(row)
        key = str(n)
        if row.get("_added"):
            for col, value in zip(self.columns_shown, cells):
                self.update_cell(key, col, value)
        else:
            row["_added"] = True
            self.add_row(*cells, key=key)
            if self.follow:
                self.move_cursor(row=self.row_count - 1)

    def set_best(self, n: int | None) -> None:
        old, self.best_n = self.best_n, n
        for m in (old, n):
            if m is not None and m in self.data_rows:
                self.upsert(m)

    def _cells(self, r: dict):
        st = r["status"]
        best = r["n"] == self.best_n
        mark = "*" if best else ""  # ASCII: a wide star would eat the column's padding in some terminals
        metric = f"{r['metric']:.6f}" if r["metric"] is not None else "-"
        delta = f"{r['delta']:+.6f}" if r["delta"] is not None else ""
        conf = f"{r['conf']:+.1f}σ" if r["conf"] is not None else ""
        secs = r["seconds"]
        dur = f"{secs:.0f}s" if secs is not None else ""
        mem = f"{r['memory']:.1f}G" if r["memory"] else ""
        style = "reverse " if best else ""
        cells = {
            "#": Text(f"{mark}{r['n']}", style=style), "commit": r["commit"][:7],
            "device": r.get("device") or "", "dev": _short(r.get("device") or ""),
            "metric": Text(metric, style="bold" if best else ""), "Δ best": delta, "conf": conf,
            "status": Text(st, style=STATUS_STYLE.get(st, "")), "time": dur, "mem": mem,
            "description": self._fit(r["description"]),
        }
        return tuple(cells[c] for c in self.columns_shown)

    def _fit(self, text: str) -> str:
        """The description, ended at a word with "…" when the table is too narrow for all of it
        (enter on the row shows it whole): never cut mid-word."""
        # the table has 3/5 of the terminal's width (the app's layout); the fixed columns and their
        # padding take the rest. From the terminal's size, so it is the same whenever rows arrive.
        width = self.term_width
        if not width:
            try:
                width = self.app.size.width
            except Exception:  # not mounted in an app (unit use)
                width = 0
        # each column has a cell of padding each side; a wide table also has a 1-cell scrollbar
        fixed = sum((self._width(c) or 0) + 2 for c in self.columns_shown if c != "description") + 2 + (not self.narrow)
        room = max(8, min(80, int(width * 3 / 5) - fixed)) if width else NARROW_DESCRIPTION
        if len(text) <= room:
            return text
        cut = text[: room - 1]
        if text[room - 1] != " " and " " in cut:  # the last word does not fit whole: it goes
            cut = cut[: cut.rindex(" ")]
        elif text[room - 1] != " " and "_" in cut:  # one long name: cut where its parts join
            cut = cut[: cut.rindex("_") + 1]
        return cut.rstrip(" ,;:-") + "…"

    def selected_number(self) -> int | None:
        if self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return int(key.value)

    def on_data_table_row_highlighted(self, event) -> None:
        # The cursor stops following new rows once the human moves it off the last row.
        self.follow = self.cursor_row >= self.row_count - 1


def _short(device: str) -> str:
    """cuda:3 -> 3, cpu:1 -> c1, cpu -> c; a cluster's node/3 -> n3 (the node's first letter)."""
    if "/" in device:
        node, _, slot = device.rpartition("/")
        return (node[:1] + "".join(ch for ch in slot if ch.isdigit()))[:3]
    kind, _, index = device.partition(":")
    return index if kind == "cuda" else (kind[:1] + index)[:3]
