"""Engine thread -> UI thread, without either waiting for the other.

The engine's subscriber appends events to one bounded, ordered buffer and posts a single Flush
message when none is pending; the UI drains the buffer when it gets to it. Consecutive progress
ticks (and GPU samples) replace each other instead of piling up, and the buffer drops its oldest
entries beyond MAX_PENDING (everything that matters is in the journal as well).
"""

from __future__ import annotations

import threading
from collections import deque

from textual.message import Message

from engine import events as ev

MAX_PENDING = 5000


class Flush(Message):
    """There are engine events to drain."""


class EngineBridge:
    def __init__(self, target):
        self.target = target  # the App: anything with a thread-safe post_message
        self._lock = threading.Lock()
        self._buf: deque[ev.Event] = deque(maxlen=MAX_PENDING)
        self._pending = False
        self.dropped = 0

    def __call__(self, e: ev.Event) -> None:
        with self._lock:
            last = self._buf[-1] if self._buf else None
            if isinstance(e, ev.RunProgress) and type(last) is type(e) and _same(last, e):
                self._buf[-1] = e  # coalesce: only the newest tick matters
            else:
                if len(self._buf) == self._buf.maxlen:
                    self.dropped += 1
                self._buf.append(e)
            if self._pending:
                return
            self._pending = True
        self.target.post_message(Flush())

    def drain(self) -> list[ev.Event]:
        with self._lock:
            out = list(self._buf)
            self._buf.clear()
            self._pending = False
        return out


def _same(a: ev.RunProgress, b: ev.RunProgress) -> bool:
    return a.n == b.n
