"""A dependency-free progress bar on stderr (a plain line every 10% when stderr is not a TTY)."""

from __future__ import annotations

import sys
import time


class Bar:
    def __init__(self, label: str, total: float, unit: str = "MB", scale: float = 1e6, enabled: bool = True):
        self.label, self.total, self.unit, self.scale = label, max(total, 1), unit, scale
        self.enabled = enabled
        self.done = 0.0
        self.tty = sys.stderr.isatty()
        self._last_draw = 0.0
        self._last_decile = -1
        self._t0 = time.monotonic()

    def advance(self, n: float) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty and now - self._last_draw > 0.1:
            self._last_draw = now
            self._draw(end="\r")
        elif not self.tty:
            decile = int(10 * self.done / self.total)
            if decile > self._last_decile and decile < 10:
                self._last_decile = decile
                self._draw(end="\n")

    def close(self) -> None:
        if self.enabled:
            self.done = min(self.done, self.total)
            self._draw(end="\n", final=True)

    def _draw(self, end: str, final: bool = False) -> None:
        frac = min(1.0, self.done / self.total) if not final else 1.0
        width = 30
        fill = int(frac * width)
        secs = time.monotonic() - self._t0
        line = (
            f"{self.label:<10} [{'#' * fill}{'.' * (width - fill)}] {100 * frac:5.1f}%  "
            f"{self.done / self.scale:,.1f}/{self.total / self.scale:,.1f} {self.unit}  {secs:5.1f}s"
        )
        sys.stderr.write(line + end)
        sys.stderr.flush()
