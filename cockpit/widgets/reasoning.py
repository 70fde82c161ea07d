"""The agent's reasoning as it streams: thinking dimmed, text plain, tool calls compact. Deltas
are joined into lines; the log keeps at most MAX_LINES. RichLog wraps a line once, at the width
it has when written; the log keeps its lines and wraps them again when its width changes, so no
line is ever cut."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.widgets import RichLog

MAX_LINES = 1000


class ReasoningLog(RichLog):
    DEFAULT_CSS = """
    ReasoningLog { height: 1fr; border: round $secondary; scrollbar-size-horizontal: 0; scrollbar-size-vertical: 1; }
    ReasoningLog.compact { scrollbar-size-vertical: 0; }
    """

    def __init__(self, **kw):
        super().__init__(max_lines=MAX_LINES, wrap=True, markup=False, min_width=1, **kw)  # min_width: RichLog wraps at 78 at least
        self.border_title = "agent"
        self._kind: str | None = None
        self._buf: list[str] = []
        self.texts: deque[Text] = deque(maxlen=MAX_LINES)  # what was written, to wrap again at a new width
        self._wrapped_at = 0

    def on_resize(self, event) -> None:
        first = not self._size_known
        super().on_resize(event)  # the first size: RichLog writes what waited for it
        width = self.scrollable_content_region.width
        if not first and width != self._wrapped_at and self.texts:
            super().clear()
            for t in self.texts:
                super().write(t)
        self._wrapped_at = width

    def write(self, content, *args, **kw):
        if self._size_known and isinstance(content, Text):  # (a deferred write comes back here once the size is known)
            self.texts.append(content)
        return super().write(content, *args, **kw)

    def clear(self):
        self.texts.clear()
        return super().clear()

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
