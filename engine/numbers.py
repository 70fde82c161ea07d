"""The numbers every surface shows, each defined once: the TUI's header and progress plot,
`cockpit status`, report.md and results.tsv read them from here (docs/ARCHITECTURE.md, "Numbers").

Pure functions of journal rows (engine.journal.Experiment, or anything with its attributes):
- which rows are compared: only those measured by the session's current harness version
  (harness, prepared data, profile and budget; `comparable`);
- the baseline: the mean of the latest group of successful baseline runs of that version, and
  its noise on validation and on the holdout (`baseline`);
- the running best: the engine's best after each row, from the baselines' mean on; a keep moves
  it, a force-keep sets it even when worse (`running_best`), and it always ends at the session's best;
- "vs baseline" in words, one sign convention: positive gain is better (`versus`);
- whether the best's validation gain carries over to the holdout, within the holdout's own noise
  (`carries_over`, `holdout_check`);
- which rows never ran (`never_ran`): kept out of results.tsv, the counts and the rate.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

from .status import FAILED, KEPT, NOT_RUN, Status  # noqa: F401  (FAILED: re-exported)

CARRY_SHARE = 0.5  # a validation gain "carries over" when the holdout gains at least half as much...
HOLDOUT_K = 2.0  # ...or falls short of that by no more than this many units of the holdout gain's noise


# ---- which rows ----

def measured(e) -> bool:
    return e.metric is not None and math.isfinite(e.metric)


def never_ran(e) -> bool:
    """A proposal the session stopped (or the human vetoed) before its run began: no outcome of
    the code, so not an experiment in results.tsv, the counts or the rate."""
    return (e.status in NOT_RUN and e.run_started is None and e.metric is None
            and e.training_seconds is None and e.log_path is None)


def comparable(rows, harness: str | None) -> list:
    """The rows measured by `harness` (None: every row), in experiment order. Rows that never ran
    carry no version and no result."""
    return sorted((e for e in rows if harness is None or e.harness is None or e.harness == harness), key=lambda e: e.n)


def _base_ok(e) -> bool:
    return e.kind == "baseline" and e.status == Status.KEEP and measured(e)


# ---- the baseline ----

@dataclass(frozen=True)
class Baseline:
    """The successful baseline runs of the code the current best started from."""

    mean: float | None = None
    runs: int = 0
    noise: float = 0.0  # sample standard deviation on validation (0 with fewer than 2 runs)
    holdout_mean: float | None = None
    holdout_noise: float | None = None  # the same on the holdout; None with fewer than 2 holdout figures
    holdout_runs: int = 0


def _key(e) -> tuple:
    return (e.harness, e.commit_sha)


def _baseline_of(group: list) -> Baseline:
    vals = [e.metric for e in group]
    if not vals:
        return Baseline()
    hold = [e.holdout for e in group if e.holdout is not None and math.isfinite(e.holdout)]
    return Baseline(sum(vals) / len(vals), len(vals), statistics.stdev(vals) if len(vals) >= 2 else 0.0,
                    sum(hold) / len(hold) if hold else None, statistics.stdev(hold) if len(hold) >= 2 else None,
                    len(hold))


def baseline(rows, harness: str | None = None) -> Baseline:
    """The latest baseline group of `harness`: the successful baseline runs of the same code
    (commit) and version as the last one, as the engine averages them for its starting best."""
    base = [e for e in comparable(rows, harness) if _base_ok(e)]
    if not base:
        return Baseline()
    key = _key(base[-1])
    return _baseline_of([e for e in base if _key(e) == key])


# ---- the running best ----

def running_best(rows, direction: str = "min", harness: str | None = None,
                 best: tuple[int | None, float | None] | None = None) -> list[tuple[int, float]]:
    """(n, the best after row n) at each row that moved it: the engine's best over the session.

    Each group of baseline runs sets it to their mean (every baseline row carries the mean, not a
    running mean that would wander); a keep moves it to the kept value; a force-keep sets it to
    the forced value, also when that is worse. `best` = the session's (best_n, best_metric): a
    force-keep of an earlier row, applied later, ends the line at that value at the last row.
    Only rows of `harness` count (None: all)."""
    del direction  # the engine's best is the last kept value, whichever way is better
    rows = comparable(rows, harness)
    groups: dict[tuple, list] = {}
    for e in rows:
        if _base_ok(e):
            groups.setdefault(_key(e), []).append(e.metric)
    out: list[tuple[int, float]] = []
    for e in rows:
        if _base_ok(e):
            g = groups[_key(e)]
            out.append((e.n, sum(g) / len(g)))
        elif e.kind != "baseline" and e.status in KEPT and measured(e):
            out.append((e.n, e.metric))
    if best is not None and out and best[1] is not None:
        by_n = {e.n: e for e in rows}
        row = by_n.get(best[0])
        if row is not None and not math.isclose(out[-1][1], best[1], rel_tol=0, abs_tol=1e-12):
            last = max((e.n for e in rows if e.run_started is not None or measured(e)), default=out[-1][0])
            out.append((max(out[-1][0], last), best[1]))
    return out


# ---- the standing: what the header and `cockpit status` say about the best ----

@dataclass(frozen=True)
class Standing:
    best: float | None  # the engine's best under the current harness; None while a new baseline is measured
    best_n: int | None  # the best's row (None when the best is the baselines' mean or there is none)
    base: Baseline
    gain: float | None  # the best's gain over the baseline, positive = better; None when the best is the baseline
    measuring: bool = False  # the session's best was measured by another harness version (budget): a new baseline comes first

    @property
    def is_baseline(self) -> bool:
        return self.best is not None and self.best_n is None


def gain(value: float, reference: float, direction: str = "min") -> float:
    """How much better `value` is than `reference`, in the metric's units (negative: worse)."""
    return reference - value if direction == "min" else value - reference


def standing(rows, best_n: int | None, best_metric: float | None, harness: str | None = None,
             direction: str = "min") -> Standing:
    """The session's best (the engine's: best_n, best_metric), judged by the current harness:
    a best measured by another version is not shown (a new baseline is measured first); a best
    whose row is a baseline run (whatever that row's own status) is the baselines' mean."""
    rows = list(rows)
    base = baseline(rows, harness)
    row = next((e for e in rows if e.n == best_n), None) if best_n is not None else None
    if best_metric is None or row is None or (harness is not None and row.harness not in (None, harness)):
        return Standing(None, None, base, None, measuring=best_metric is not None)
    if row.kind == "baseline":
        return Standing(best_metric, None, base, None)
    g = gain(best_metric, base.mean, direction) if base.mean is not None else None
    return Standing(best_metric, best_n, base, g)


def versus(g: float, places: int = 6) -> str:
    """A gain in words, one convention for every surface: "0.377000 better", "0.012000 worse"."""
    text = f"{abs(g):.{places}f}"
    if float(text) == 0:
        return f"{text} (no change)"
    return f"{text} {'better' if g > 0 else 'worse'}"


# ---- the holdout ----

def carries_over(val_gain: float | None, holdout_gain: float | None, holdout_noise: float | None,
                 holdout_runs: int = 2, k: float = HOLDOUT_K, share: float = CARRY_SHARE) -> bool | None:
    """Does the validation gain carry over to the holdout? False only when the holdout gains less
    than `share` of the validation gain by more than k times the holdout gain's own noise (one run
    against the mean of `holdout_runs` baselines: noise * sqrt(1 + 1/runs)). None when there is
    nothing to judge: no gain, no holdout figures, or too few baselines to measure the noise."""
    if val_gain is None or holdout_gain is None or val_gain <= 0 or holdout_noise is None or holdout_runs < 2:
        return None
    sigma = holdout_noise * math.sqrt(1 + 1 / holdout_runs)
    return share * val_gain - holdout_gain <= k * sigma


@dataclass(frozen=True)
class HoldoutCheck:
    """The best code's gain over the baseline on validation (what the agent optimises) and on the
    holdout (what it never sees), both positive when better, and the holdout's noise."""

    val_gain: float | None
    holdout_gain: float | None
    holdout_noise: float | None = None
    holdout_runs: int = 0

    @property
    def carried(self) -> bool | None:
        return carries_over(self.val_gain, self.holdout_gain, self.holdout_noise, self.holdout_runs)

    def line(self, metric: str = "val_bpb") -> str | None:
        if self.val_gain is None or self.holdout_gain is None:
            return None
        text = f"validation {versus(self.val_gain)}, holdout {versus(self.holdout_gain)} than the baseline"
        if self.holdout_noise is not None:
            text += f" (holdout noise {self.holdout_noise:.6f})"
        if self.carried is False:
            text += (f": the holdout gains less than {CARRY_SHARE:.0%} of the validation gain by more than "
                     f"{HOLDOUT_K:g}x its noise: the session may be overfitting the validation set")
        return text


def holdout_check(rows, best_n: int | None, direction: str = "min", harness: str | None = None) -> HoldoutCheck:
    rows = comparable(rows, harness)
    base = baseline(rows, harness)
    best = next((e for e in rows if e.n == best_n), None)
    if base.holdout_mean is None or best is None:
        return HoldoutCheck(None, None)
    if best.kind == "baseline":
        return HoldoutCheck(0.0, 0.0, base.holdout_noise, base.holdout_runs)
    if not measured(best) or best.holdout is None or base.mean is None:
        return HoldoutCheck(None, None)
    return HoldoutCheck(gain(best.metric, base.mean, direction), gain(best.holdout, base.holdout_mean, direction),
                        base.holdout_noise, base.holdout_runs)


# ---- why a new baseline ----

def remeasure_reason(old_label: str | None, new_label: str | None) -> str:
    """Why a session measures a new baseline on resume, from the targets' labels
    ("gpt/cpu/60s" -> "gpt/cpu/30s": "budget changed 60 s -> 30 s")."""
    def parts(label):
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
        self.rows: dict[int, object] = {}  # the baselines, the kept rows and the RECENT newest others
        self.counts: dict[str, int] = {}  # experiments that ran (or were judged), by status
        self._counted: dict[int, str] = {}  # each row's status as counted (rows are put again when they change)
        self._timed: set[int] = set()  # the runs the duty cycle covers (engine.journal.duty_cycle's rule)
        self._sums = {"training_seconds": 0.0, "propose_seconds": 0.0, "startup_seconds": 0.0, "eval_seconds": 0.0}
        self._span: tuple[float, float] | None = None
        self._slots: set[int] = set()

    def put(self, e) -> None:
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
            for k in self._sums:
                self._sums[k] += getattr(e, k) or 0.0
            start = e.run_started or e.started
            self._span = (start, e.finished) if self._span is None else (min(self._span[0], start),
                                                                         max(self._span[1], e.finished))
            if e.slot is not None:
                self._slots.add(e.slot)

    def duty(self):
        """engine.journal.duty_cycle of the rows put so far, kept as they come (no pass over them)."""
        from .journal import DutyCycle

        if not self._timed:
            return DutyCycle(0.0, 0.0, 0.0, 0.0, 0.0, 0)
        slots = len(self._slots) or 1
        s = self._sums
        return DutyCycle((self._span[1] - self._span[0]) * slots, s["training_seconds"], s["propose_seconds"],
                         s["startup_seconds"], s["eval_seconds"], len(self._timed), slots)

    def standing(self, best_n: int | None, best_metric: float | None, harness: str | None, direction: str) -> Standing:
        base = [e for e in self.rows.values() if e.kind == "baseline"]
        best = [self.rows[best_n]] if best_n in self.rows and self.rows[best_n].kind != "baseline" else []
        return standing(base + best, best_n, best_metric, harness, direction)


def row_of(n: int, kind: str, status: str, metric: float | None, harness: str | None, commit: str = "",
           description: str = "", ran: bool = True):
    """A row from an event alone, for a UI fed by events without a journal (the screenshots, the
    UI benchmark): what the rules above read, the rest empty."""
    from .journal import Experiment

    now = time.time()
    commit = None if kind == "baseline" else commit  # one group of baselines (the engine runs them on one commit)
    return Experiment(id=0, session_id=0, n=n, kind=kind, parent_commit=None, commit_sha=commit or None, diff_stat=None,
                      description=description, status=status, reason=None, metric=metric, delta=None, confidence=None,
                      training_seconds=None, total_seconds=None, memory_gb=None, tokens_in=0, tokens_out=0, cache_write=0,
                      cache_read=0, cost_usd=0.0, started=now, finished=now, log_path=None,
                      run_started=now if ran else None, harness=harness)
