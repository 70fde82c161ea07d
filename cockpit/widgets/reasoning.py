"""The agent's reasoning as it streams: thinking dimmed, text plain, tool calls compact. Deltas
are joined into lines; the log keeps at most MAX_LINES."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

MAX_LINES = 1000


class ReasoningLog(RichLog):
    DEFAULT_CSS = """
    ReasoningLog { height: 1fr; border: round $secondary; scrollbar-size-horizontal: 0; scrollbar-size-vertical: 1; }
    """

    def __init__(self, **kw):
        super().__init__(max_lines=MAX_LINES, wrap=True, markup=False, **kw)
        self.border_title = "agent"
        self._kind: str | None = None
        self._buf: list[str] = []

    def delta(self, kind: str, text: str) -> None:
        if kind != self._kind:
            self.flush()
            self._kind = kind
        self._buf.append(text)
        if "\n" in text or sum(map(len, self._buf)) > 400:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            text = "".join(self._buf).strip()
            if text:
                self.write(Text(text, style="dim italic" if self._kind == "thinking" else ""))
            self._buf = []

    def line(self, text: str, style: str = "") -> None:
        self.flush()
        self._kind = None
        self.write(Text(text, style=style))
