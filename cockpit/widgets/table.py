"""The experiment table: one row per experiment, status in colour, the best row marked, and the
cursor following new rows unless the human moved it."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import DataTable

STATUS_STYLE = {
    "keep": "bold green", "forced": "bold cyan", "discard": "grey62", "pruned": "grey62 italic", "crash": "bold red",
    "timeout": "red",
    "invalid": "magenta", "vetoed": "yellow", "interrupted": "grey50", "running": "bold blue", "proposing": "blue",
}
COLUMNS = ("#", "commit", "device", "dev", "metric", "Δ best", "conf", "status", "time", "mem", "description")  # their order
# What a table always shows, whatever its width: the row, its result and Δ, its status, what it tried
# (and, with several devices, where it ran: short under 120 columns).
ESSENTIAL = ("#", "metric", "Δ best", "status", "description")
# Then, by priority, what fits while the description keeps MIN_DESCRIPTION characters (wide terminals;
# the device takes the commit's place once experiments run on several: the commit shows on open).
OPTIONAL = ("conf", "time", "commit", "mem")
OPTIONAL_MANY = ("device", "conf", "time", "mem")
MIN_DESCRIPTION = 20
# Fixed widths: the layout never depends on which rows arrived first (descriptions take the rest).
WIDTHS = {"#": 4, "commit": 7, "device": 7, "dev": 3, "metric": 8, "Δ best": 9, "conf": 6, "status": 11, "time": 5,
          "mem": 6}
NARROW_DELTA = 7  # under 120 columns Δ has 4 decimals (+0.0012), as the header's gain has there
MAX_DEVICE = 17  # the device column's widest: a cluster's "node/3" (engine/run/cluster.py keeps node names to 12)
NARROW_DESCRIPTION = 17  # characters of description when the terminal's width is not known yet (unit use)
TABLE_SHARE = {False: 3 / 5, True: 2 / 3}  # the table's share of the terminal's width (the app's CSS), wide/narrow


def column_width(column: str, narrow: bool, device_width: int = WIDTHS["device"]) -> int | None:
    if column == "device":
        return device_width
    if column == "Δ best" and narrow:
        return NARROW_DELTA
    return WIDTHS.get(column)


def fixed_width(columns, narrow: bool, device_width: int = WIDTHS["device"]) -> int:
    """The cells every column but the description takes: its width and a cell of padding each
    side, the table's edges, and a wide table's 1-cell scrollbar."""
    return sum((column_width(c, narrow, device_width) or 0) + 2 for c in columns if c != "description") + 2 + (not narrow)


def choose_columns(table_width: int, narrow: bool, many: bool, device_width: int = WIDTHS["device"]) -> tuple[str, ...]:
    """The columns shown in a table table_width cells wide: the essential ones always, then the
    optional ones by priority while the description keeps MIN_DESCRIPTION characters."""
    want = set(ESSENTIAL) | ({"dev"} if many and narrow else set())
    if not narrow:
        for c in OPTIONAL_MANY if many else OPTIONAL:
            if table_width - fixed_width(want | {c}, narrow, device_width) >= MIN_DESCRIPTION:
                want.add(c)
    return tuple(c for c in COLUMNS if c in want)


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
        self.columns_shown = tuple(c for c in COLUMNS if c in set(ESSENTIAL) | set(OPTIONAL))
        self.narrow = False
        self.devices: set[str] = set()  # the devices experiments ran on
        self.term_width = 0
        self.device_width = WIDTHS["device"]  # wider for a cluster's node/slot names, never cut

    def on_mount(self) -> None:
        for c in self.columns_shown:
            self.add_column(self._label(c), key=c, width=self._width(c))

    def _width(self, column: str) -> int | None:
        if column == "description":  # the rest of the table's width, once it is known: the header never overflows
            return self._room() if self.term_width else None
        return column_width(column, self.narrow, self.device_width)

    def _label(self, column: str) -> str:
        if column == "metric":
            return self.metric
        if column == "description" and self.term_width and self._room() < len("description"):
            return "desc"
        return column

    def _room(self) -> int:
        """The description's characters: what the other columns leave of the table's width."""
        width = self.table_width()
        return max(8, min(80, width - fixed_width(self.columns_shown, self.narrow, self.device_width))) if width \
            else NARROW_DESCRIPTION

    def table_width(self) -> int:
        """The table's width from the terminal's (the app's layout), so it is the same whenever rows arrive."""
        return int(self.term_width * TABLE_SHARE[self.narrow])

    def set_narrow(self, narrow: bool, width: int | None = None, relabel: bool = False) -> None:
        """Show the columns that fit (choose_columns): #, metric, Δ, status and description
        always; the rest while the description keeps room."""
        changed = narrow != self.narrow
        self.narrow = narrow
        resized = bool(width) and width != self.term_width
        if resized:
            self.term_width = width  # the terminal's new width (the app's size may not have caught up yet)
        many = len(self.devices) > 1
        want = choose_columns(self.table_width(), narrow, many, self.device_width) if self.term_width else self.columns_shown
        if want == self.columns_shown and not resized and not relabel and not changed:
            return
        self.columns_shown = want
        selected, follow = self.selected_number(), self.follow
        self.clear(columns=True)
        for c in want:
            self.add_column(self._label(c), key=c, width=self._width(c))
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
        delta = f"{r['delta']:+.{4 if self.narrow else 6}f}" if r["delta"] is not None else ""
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
        room = self._room()
        if len(text) <= room:
            return text
        cut = text[: room - 1]
        if text[room - 1] != " " and " " in cut:  # the last word does not fit whole: it goes
            cut = cut[: cut.rindex(" ")]
        elif text[room - 1] != " " and "_" in cut:  # one long name: cut where its parts join
            cut = cut[: cut.rindex("_") + 1]
        return cut.rstrip(" ,;:-") + "…"

    def offscreen(self, ns) -> list[tuple[str, int]]:
        """Which of rows ns are out of the table's view, each with the way to it ("↑" above, "↓"
        below), in row order."""
        order = {n: i for i, n in enumerate(self.data_rows)}
        height = self.scrollable_content_region.height - (self.header_height if self.show_header else 0)
        if height <= 0:  # not laid out yet
            return []
        top = round(self.scroll_y)
        out = []
        for n in sorted(set(ns) & set(order), key=order.get):
            i = order[n]
            if i < top:
                out.append(("↑", n))
            elif i >= top + height:
                out.append(("↓", n))
        return out

    def row_text(self, n: int, arrow: str = "") -> Text:
        """Row n as one line in the table's columns (the pinned rows under it), the arrow in the
        padding before its number."""
        cells = self._cells(self.data_rows[n])
        out = Text()
        for i, (col, cell) in enumerate(zip(self.columns_shown, cells)):
            width = self._width(col) or len(Text(cell).plain if isinstance(cell, str) else cell.plain)
            cell = cell if isinstance(cell, Text) else Text(str(cell))
            cell = cell.copy()
            cell.truncate(width, pad=True)
            out.append(arrow[:1] if i == 0 and arrow else " ", style="bold")
            out.append(cell)
            out.append(" ")
        return out

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
