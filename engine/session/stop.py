"""When the session stops: the human's stop (or a signal's), and the limits: --max-experiments,
--max-hours, --max-cost and consecutive crashes. The single owner of the crash count and of
the session's clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..control import Control
from ..status import CRASHED
from .inflight import InFlight


class Stop(Exception):
    """Ends the session with a clear reason."""


class Failed(Stop):
    """Ends the session on an error, not a limit (the CLI exits non-zero)."""


@dataclass(frozen=True)
class Limits:
    max_experiments: int | None = None
    max_hours: float | None = None
    max_cost: float | None = None
    max_consecutive_crashes: int = 5


class StopRules:
    def __init__(self, limits: Limits, control: Control, inflight: InFlight, cost: Callable[[], float]):
        self.limits, self.control, self.inflight, self.cost = limits, control, inflight, cost
        self.started = time.monotonic()
        self.crashes = 0  # consecutive runs that crashed or timed out

    def count(self, status: str) -> None:
        """A run's verdict (not the agent's failures: they have their own counter and back-off)."""
        self.crashes = self.crashes + 1 if status in CRASHED else 0

    def reason(self) -> str | None:
        """Why the session stops now (None: it goes on)."""
        L, c = self.limits, self.control
        by = c.stopped_by  # "the human", or e.g. "signal SIGTERM"
        if c.stop_mode == "now":
            return f"stopped by {by}" + (" (now)" if by == "the human" else "")
        if c.stop_mode == "after_run":
            return f"stopped by {by} (after the run)"
        if L.max_experiments is not None and self.inflight.taken >= L.max_experiments:
            return f"reached --max-experiments {L.max_experiments}"
        if L.max_hours is not None and time.monotonic() - self.started >= L.max_hours * 3600:
            return f"reached --max-hours {L.max_hours:g}"
        if L.max_cost is not None:
            spent = self.cost()
            if spent >= L.max_cost:
                return f"reached --max-cost ${L.max_cost:g} (spent ${spent:.2f})"
        if self.crashes >= L.max_consecutive_crashes:
            return f"{self.crashes} consecutive crashes"
        return None
