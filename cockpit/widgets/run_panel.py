"""The run panel: budget progress, live loss and tokens/s with a sparkline, the ETA, and where the
last run's time went (startup, training, evaluation) with the session's duty cycle."""

from __future__ import annotations

from collections import deque

from textual.containers import Vertical
from textual.widgets import ProgressBar, Sparkline, Static

HISTORY = 120
SPARK_MIN = 8


class RunPanel(Vertical):
    DEFAULT_CSS = """
    RunPanel { border: round $accent; height: 100%; }
    RunPanel > Static { height: auto; max-height: 2; }
    RunPanel > Sparkline { height: 2; }
    RunPanel ProgressBar { width: 1fr; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.border_title = "run"
        self.losses: deque[float] = deque(maxlen=HISTORY)
        self.stats = Static("idle")
        self.phases = Static("")
        self.bar = ProgressBar(total=100, show_eta=False)
        self.spark = Sparkline([], summary_function=min)

    def compose(self):
        yield self.bar
        yield self.stats
        yield self.phases
        yield self.spark

    def start(self, n: int) -> None:
        self.losses.clear()
        self.spark.data = []
        self.spark.display = False
        self.bar.update(progress=0)
        self.stats.update(f"#{n} starting")

    def tick(self, n: int, step: int, loss: float, tok_s: float | None, mfu: float | None, fraction: float, elapsed: float) -> None:
        self.losses.append(loss)
        self.spark.data = list(self.losses)
        self.spark.display = len(self.losses) >= SPARK_MIN  # one or two points would draw a solid block
        frac = max(0.0, min(fraction, 1.0))
        self.bar.update(progress=100 * frac)
        rate = f" {tok_s / 1e3:.1f}k tok/s" if tok_s else ""
        mfu_s = f" MFU {100 * mfu:.0f}%" if mfu else ""
        eta = ""
        if 0.02 < frac < 1:
            eta = f" ETA {elapsed * (1 - frac) / frac:.0f}s"
        self.stats.update(f"#{n} step {step} loss {loss:.4f}{rate}{mfu_s}{eta}")

    def phase(self, n: int, what: str) -> None:
        """Training is over; the run is exporting or being evaluated (the bar stays full)."""
        self.bar.update(progress=100)
        self.stats.update(f"#{n} {what}…")

    def done(self, text: str, phases: str | None = None) -> None:
        self.bar.update(progress=100)
        self.stats.update(text)
        if phases is not None:
            self.phases.update(phases)
