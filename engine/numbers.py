"""The numbers' wording and the TUI's copy of the rows. The rules themselves (which rows are
compared, the baseline, the running best, the standing, the holdout check, the duty cycle) live
in engine/analysis.py, one pure module; they are re-exported here for the modules that read them
from engine.numbers.

- why a session measures a new baseline on resume (`remeasure_reason`);
- `Ledger`: the rows the TUI has seen, with counts and the duty cycle kept as they come;
- `row_of`: a row from an event alone, for a UI fed by events without a journal.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .analysis import (  # noqa: F401  (re-exported: one definition of each rule)
    CARRY_SHARE, HOLDOUT_K, Baseline, DutyCycle, HoldoutCheck, Standing, baseline, baseline_mean,
    carries_over, comparable, gain, holdout_check, measured, never_ran, running_best, standing, versus,
)
from .status import FAILED, KEPT  # noqa: F401  (FAILED: re-exported)

if TYPE_CHECKING:
    from .store.journal import Experiment


# ---- why a new baseline ----

def remeasure_reason(old_label: str | None, new_label: str | None) -> str:
    """Why a session measures a new baseline on resume, from the targets' labels
    ("gpt/cpu/60s" -> "gpt/cpu/30s": "budget changed 60 s -> 30 s")."""
    def parts(label: str | None) -> tuple[str, str | None]:
        p = (label or "").split("/")
        budget = p[-1][:-1] if p and p[-1].endswith("s") and _number(p[-1][:-1]) else None
        return ("/".join(p[:-1]) if budget is not None else "/".join(p)), budget

    (old_kind, old_b), (new_kind, new_b) = parts(old_label), parts(new_label)
    said = []
    if old_kind and new_kind and old_kind != new_kind:
        said.append(f"target changed {old_kind} -> {new_kind}")
    if old_b is not None and new_b is not None and old_b != new_b:
        said.append(f"budget changed {old_b} s -> {new_b} s")
    return ", ".join(said) or "the harness changed"


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def plural(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


# ---- the TUI's copy of the rows ----

class Ledger:
    """The rows the TUI has seen (the journal's copy of each, put again when it changes: a
    result, a force-keep), for the rules above without reading the journal per result. Counts
    are kept as rows are put, so a force-kept discard moves from one count to the other."""

    RECENT = 500  # rows kept besides the baselines and kept ones (the plot draws the newest 500)

    def __init__(self) -> None:
        self.rows: dict[int, Experiment] = {}  # the baselines, the kept rows and the RECENT newest others
        self.counts: dict[str, int] = {}  # experiments that ran (or were judged), by status
        self._counted: dict[int, str] = {}  # each row's status as counted (rows are put again when they change)
        self._timed: set[int] = set()  # the runs the duty cycle covers (engine.analysis.duty_cycle's rule)
        self._sums = {"training_seconds": 0.0, "propose_seconds": 0.0, "startup_seconds": 0.0, "eval_seconds": 0.0}
        self._span: tuple[float, float] | None = None
        self._slots: set[int] = set()
        self._trials = 0  # of the timed runs, the experiments (not baselines)

    def put(self, e: Experiment) -> None:
        old = self._counted.pop(e.n, None)
        if old is not None:
            self.counts[old] -= 1
        self.rows[e.n] = e
        if e.kind == "experiment" and not never_ran(e):
            self.counts[e.status] = self.counts.get(e.status, 0) + 1
            self._counted[e.n] = e.status
        if len(self.rows) > 2 * self.RECENT:  # memory stays flat over thousands of experiments
            lasting = {n for n, r in self.rows.items() if r.kind == "baseline" or r.status in KEPT}
            recent = sorted(n for n in self.rows if n not in lasting)[-self.RECENT:]
            self.rows = {n: self.rows[n] for n in sorted([*lasting, *recent])}
        if e.started and e.finished and e.training_seconds is not None and e.n not in self._timed:
            self._timed.add(e.n)  # a run's times never change once it finished
            self._trials += e.kind != "baseline"
            for k, v in (("training_seconds", e.training_seconds), ("propose_seconds", e.propose_seconds),
                         ("startup_seconds", e.startup_seconds), ("eval_seconds", e.eval_seconds)):
                self._sums[k] += v or 0.0
            start = e.run_started or e.started
            self._span = (start, e.finished) if self._span is None else (min(self._span[0], start),
                                                                         max(self._span[1], e.finished))
            if e.slot is not None:
                self._slots.add(e.slot)

    def duty(self) -> DutyCycle:
        """engine.analysis.duty_cycle of the rows put so far, kept as they come (no pass over them)."""
        if not self._timed or self._span is None:
            return DutyCycle(0.0, 0.0, 0.0, 0.0, 0.0, 0)
        slots = len(self._slots) or 1
        s = self._sums
        return DutyCycle((self._span[1] - self._span[0]) * slots, s["training_seconds"], s["propose_seconds"],
                         s["startup_seconds"], s["eval_seconds"], len(self._timed), slots, self._trials)

    def standing(self, best_n: int | None, best_metric: float | None, harness: str | None, direction: str) -> Standing:
        base = [e for e in self.rows.values() if e.kind == "baseline"]
        best = [self.rows[best_n]] if best_n in self.rows and self.rows[best_n].kind != "baseline" else []
        return standing(base + best, best_n, best_metric, harness, direction)


def row_of(n: int, kind: str, status: str, metric: float | None, harness: str | None, commit: str = "",
           description: str = "", ran: bool = True) -> Experiment:
    """A row from an event alone, for a UI fed by events without a journal (the screenshots, the
    UI benchmark): what the rules above read, the rest empty."""
    from .store.journal import Experiment

    now = time.time()
    sha = None if kind == "baseline" else commit  # one group of baselines (the engine runs them on one commit)
    return Experiment(id=0, session_id=0, n=n, kind=kind, parent_commit=None, commit_sha=sha or None, diff_stat=None,
                      description=description, status=status, reason=None, metric=metric, delta=None, confidence=None,
                      training_seconds=None, total_seconds=None, memory_gb=None, tokens_in=0, tokens_out=0, cache_write=0,
                      cache_read=0, cost_usd=0.0, started=now, finished=now, log_path=None,
                      run_started=now if ran else None, harness=harness)
