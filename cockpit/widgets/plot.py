"""The metric over experiments, live: each finished experiment's metric as a sparkline (lower is
higher on screen when the direction is min), with the running best."""

from __future__ import annotations

from collections import deque

from textual.containers import Vertical
from textual.widgets import Sparkline, Static

HISTORY = 500


class MetricPlot(Vertical):
    DEFAULT_CSS = """
    MetricPlot { border: round $accent; height: 100%; }
    MetricPlot > Sparkline { height: 1fr; }
    MetricPlot > Static { height: 1; }
    """

    def __init__(self, direction: str = "min", **kw):
        super().__init__(**kw)
        self.border_title = "progress"
        self.direction = direction
        self.values: deque[float] = deque(maxlen=HISTORY)
        self.spark = Sparkline([], summary_function=max)
        self.caption = Static("")

    def compose(self):
        yield self.spark
        yield self.caption

    def add(self, value: float, best: float | None) -> None:
        self.values.append(value)
        sign = -1.0 if self.direction == "min" else 1.0  # better is up
        self.spark.data = [sign * v for v in self.values]
        if best is not None:
            self.caption.update(f"{len(self.values)} measured, best {best:.6f}")
