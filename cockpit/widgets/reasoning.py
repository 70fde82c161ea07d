"""The agent's reasoning as it streams: thinking dimmed, text plain, tool calls compact. Deltas
are joined into lines, one stream per experiment (several proposals stream at once), and each
line starts with its experiment's number; the log keeps at most MAX_LINES. RichLog wraps a line once, at the width
it has when written; the log keeps its lines and wraps them again when its width changes, so no
line is ever cut."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.widgets import RichLog

MAX_LINES = 1000
MAX_BUFFER = 400  # characters of one stream held before they are written as a line


class ReasoningLog(RichLog):
    DEFAULT_CSS = """
    ReasoningLog { height: 1fr; border: round $secondary; scrollbar-size-horizontal: 0; scrollbar-size-vertical: 1; }
    ReasoningLog.compact { scrollbar-size-vertical: 0; }
    """

    def __init__(self, **kw):
        super().__init__(max_lines=MAX_LINES, wrap=True, markup=False, min_width=1, **kw)  # min_width: RichLog wraps at 78 at least
        self.border_title = "agent"
        self._streams: dict[int | None, tuple[str, list[str]]] = {}  # experiment -> (kind, deltas not yet a line)
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

    def delta(self, kind: str, text: str, n: int | None = None) -> None:
        """A streamed piece of experiment n's thinking or text. Its complete lines are written at
        once; the rest waits for more (at most MAX_BUFFER characters), for a change of kind, or
        for a line of n's own."""
        if self._streams.get(n, (kind, []))[0] != kind:
            self.flush(n)
        parts = self._streams.setdefault(n, (kind, []))[1]
        parts.append(text)
        if "\n" in text:
            done, _, rest = "".join(parts).rpartition("\n")
            parts[:] = [rest] if rest else []
            self._write_lines(kind, n, done)
        elif sum(map(len, parts)) > MAX_BUFFER:
            self.flush(n)

    def flush(self, n: int | None = None) -> None:
        """What experiment n streamed and is not yet written."""
        kind, parts = self._streams.pop(n, (None, []))
        self._write_lines(kind, n, "".join(parts))

    def _write_lines(self, kind: str | None, n: int | None, text: str) -> None:
        head = f"#{n} " if n is not None else ""
        for one in text.splitlines():
            if one.strip():
                self.write(Text(head + one.strip(), style="dim italic" if kind == "thinking" else ""))

    def flush_all(self) -> None:
        for n in list(self._streams):
            self.flush(n)

    def line(self, text: str, style: str = "", n: int | None = None) -> None:
        """A line of its own (a tool call, a result, a notice); experiment n's stream so far is
        written first, so its text comes before what followed it (every stream's, for a line of
        the session's: a notice often ends what an agent said, as a re-ask does)."""
        if n is None:
            self.flush_all()
        else:
            self.flush(n)
        self.write(Text(text, style=style))
