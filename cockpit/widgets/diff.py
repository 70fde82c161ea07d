"""The diff pane: the running experiment against the best, or the selected experiment's diff
and log tail. Lines are never wrapped (a wrapped diff cannot be read): the pane scrolls both ways."""

from __future__ import annotations

from rich.syntax import Syntax
from textual.containers import ScrollableContainer
from textual.widgets import Static

from harness.text import printable

MAX_CHARS = 20000


class DiffPane(ScrollableContainer):
    DEFAULT_CSS = """
    DiffPane { height: 1fr; border: round $primary; scrollbar-size-vertical: 1; scrollbar-size-horizontal: 1;
               overflow-x: auto; overflow-y: auto; }
    DiffPane > Static { width: auto; min-width: 100%; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.body = Static("waiting for the first proposal")
        self.title_text = "diff"
        self.shown_n: int | None = None

    def compose(self):
        yield self.body

    def show(self, title: str, diff: str, tail: str = "", n: int | None = None) -> None:
        # the title quotes the agent's description, the diff its code, the tail train.py's output
        title, diff, tail = printable(title), printable(diff), printable(tail)
        self.border_title = title
        self.shown_n = n
        text = diff[:MAX_CHARS] + ("\n... (truncated)" if len(diff) > MAX_CHARS else "")
        if tail:
            text += "\n\n--- log tail ---\n" + tail[-4000:]
        self.body.update(Syntax(text or "(no changes)", "diff", theme="ansi_dark", word_wrap=False))
        self.scroll_home(animate=False)
        # and again once the new text is laid out: under load the layout of the new text could land
        # after the scroll and leave the pane scrolled sideways (a busy machine's snapshot showed it)
        self.call_after_refresh(self.scroll_home, animate=False)
