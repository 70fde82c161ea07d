"""The pinned rows under the experiment table: the best row and the running rows while they are
out of the table's view (a short terminal, or the human scrolled), in the table's columns, with
the way to each (↑ above, ↓ below). Nothing when they are in view."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

MAX_PINNED = 3  # lines; more running rows than fit are named on the last one


class PinnedRows(Static):
    DEFAULT_CSS = """
    PinnedRows { height: auto; max-height: 3; background: $boost; }
    """

    def __init__(self, **kw):
        super().__init__("", **kw)
        self.shown: list[tuple[str, int]] = []  # (the way to it, the row), as drawn

    def show(self, table, best_n: int | None, running) -> None:
        """Pin the best and the running rows of `table` that are out of its view."""
        off = table.offscreen(([best_n] if best_n is not None else []) + list(running))
        if off == self.shown:
            return
        self.shown = off
        self.display = bool(off)
        if not off:
            self.update("")
            return
        best = [(a, n) for a, n in off if n == best_n]
        rest = [(a, n) for a, n in off if n != best_n]
        lines = [table.row_text(n, a) for a, n in best]
        if len(lines) + len(rest) <= MAX_PINNED:
            lines += [table.row_text(n, a) for a, n in rest]
        else:
            room = MAX_PINNED - len(lines) - 1
            lines += [table.row_text(n, a) for a, n in rest[:room]]
            more = rest[room:]
            lines.append(Text(f"{more[0][0]} " + ", ".join(f"#{n}" for _, n in more) + " running", style="bold blue"))
        self.update(Text("\n").join(lines))
