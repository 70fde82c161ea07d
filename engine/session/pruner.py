"""Early stopping in the session: the `Pruner` builds the rule's reference from the journal
(engine/early_stop.py, pure) when a run starts, and watches the run's loss as it comes; a run the
rule stops is cancelled and recorded `pruned` with its reason (engine/verdict.py). Baselines and
confirmations are never watched; the human's let-finish holds the rule off a run (it only says
where it would have stopped it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from .. import early_stop
from .. import events as ev
from ..config import DecisionConfig
from ..control import Control
from ..early_stop import Curve, Reference, Settings
from ..store.journal import Journal, Session
from ..run.runs import Run


def settings_of(d: DecisionConfig, loss_curve: bool = True) -> Settings:
    """The rule's settings from [decision] in cockpit.toml; off for a target whose runs report no
    loss curve (a command target: nothing to compare)."""
    return replace(Settings(), mode=d.early_stop if loss_curve else "off", grace=d.early_stop_grace, k=d.early_stop_k,
                   floor=d.early_stop_floor)


class Watch:
    """One run's watch: `see(curve)` after each loss the run reports (in the slot's thread)."""

    def __init__(self, r: Run, ref: Reference | None, s: Settings, schedule: bool, budget: float | None, control: Control,
                 emit: Callable[[ev.Event], None]):
        self.r, self.ref, self.s, self.schedule, self.budget = r, ref, s, schedule, budget
        self.control, self.emit = control, emit
        self.held = False  # the human let it finish: the rule's stop was said once

    def see(self, curve: Curve) -> None:
        if self.r.pruned is not None or self.held or (self.r.cancel is not None and self.r.cancel.is_set()):
            return  # (a run being stopped already: vetoed, or the session stopping now)
        p = early_stop.judge(curve, self.ref, self.s, self.schedule)
        if p is None:
            return
        if self.control.finishing(self.r.n):
            self.held = True
            self.emit(ev.RunPruned(n=self.r.n, fraction=p.fraction, loss=p.loss, reason=p.reason, held=True))
            return
        self.r.pruned = p.reason
        if self.budget:
            self.r.trained = min(1.0, p.fraction) * self.budget
        self.emit(ev.RunPruned(n=self.r.n, fraction=p.fraction, loss=p.loss, reason=p.reason))
        if self.r.cancel is not None:
            self.r.cancel.set()  # the runner kills the training process; the slot takes the next run


class Pruner:
    """`session()` the session now, `harness()` its measure's version, `diff(a, b)` a commit
    pair's diff (the briefing's cache), `budget` the training seconds of a run."""

    def __init__(self, journal: Journal, control: Control, settings: Settings, emit: Callable[[ev.Event], None],
                 session: Callable[[], Session], harness: Callable[[], str | None], diff: Callable[[str, str], str],
                 budget: float | None):
        self.journal, self.control, self.s, self.emit = journal, control, settings, emit
        self.session, self.harness, self.diff, self.budget = session, harness, diff, budget
        self._ref: tuple[tuple[object, ...], Reference | str] | None = None  # the reference, for the best it was built on
        self._said: str | None = None  # why the rule is off, said once
        self._lock = threading.Lock()

    def reference(self, best_n: int | None) -> Reference | str:
        """The reference for a run built on best `best_n` (the run is compared with the best it was
        built on, as the verdict judges it): cached until the session's best, its noise or the
        version changes (a keep, new baselines)."""
        s = self.session()
        key = (best_n, s.best_n, s.noise, self.harness())
        with self._lock:
            if self._ref is None or self._ref[0] != key:
                rows = self.journal.experiments(s.id)
                ref = early_stop.gather(rows, best_n, lambda n: self.journal.curve(s.id, n), self.s, self.harness())
                self._ref = (key, ref)
            return self._ref[1]

    def watch(self, r: Run) -> Watch | None:
        """The watch of a run about to start (None: early stop is off, or the run is a baseline or
        a confirmation); its line is sent to the UIs."""
        if not self.s.on or r.kind == "baseline" or r.confirms is not None:
            return None
        ref = self.reference(r.base_n)
        if isinstance(ref, str):
            if self._said != ref:  # said once (and again only when the reason changes)
                self._said = ref
                self.emit(ev.Notice(text=ref))
            return Watch(r, None, self.s, False, self.budget, self.control, self.emit)  # divergence only
        if self._said is not None and self._said != "on":
            self._said = "on"
            self.emit(ev.Notice(text=f"early stop is on: a run behind the best by more than the band (now "
                                     f"{min(ref.band):.3f} to {max(ref.band):.3f}) from {100 * self.s.grace:.0f}% of "
                                     "its budget is stopped (`pruned`); f lets the selected run finish"))
        schedule = early_stop.touches_schedule(self.diff(r.parent, r.sha))
        late = self.s.schedule_grace
        line = [(f, y) for f, y in ref.line() if not schedule or f >= late - 1e-9]
        note = None if not schedule else (
            f"a schedule change: judged only from {100 * late:.0f}% of its budget" if line
            else "a schedule change: not stopped for being behind (divergence only)")
        self.emit(ev.EarlyStopBand(n=r.n, line=tuple(line), note=note))
        return Watch(r, ref, self.s, schedule, self.budget, self.control, self.emit)
