"""The analysis of a session, in one pure module: functions of journal rows
(engine.store.journal.Experiment, or anything with its attributes), no I/O, no journal, no git. Every
surface reads them (the TUI's header and progress plot, `cockpit status`, report.md, results.tsv;
docs/ARCHITECTURE.md, "Numbers"):

- which rows are compared: only those measured by the session's current harness version
  (harness, prepared data, profile and budget; `comparable`), and which never ran (`never_ran`);
- the baseline: the mean of the latest group of successful baseline runs of that version, and
  its noise on validation and on the holdout (`baseline`, `baseline_mean`);
- the running best: the engine's best after each row, from the baselines' MEAN on (never the
  best single baseline run); a keep moves it, a force-keep sets it even when worse
  (`running_best`), and it always ends at the session's best. The TUI's plot and the report's
  chart both draw `progress_series`, which uses it;
- the standing of the best and "vs baseline" in words, one sign convention (`standing`, `versus`);
- whether the best's validation gain carries over to the holdout, within the holdout's own noise
  (`carries_over`, `holdout_check`);
- where the wall-clock time went (`duty_cycle`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .status import FAILED, FINAL, KEPT, NOT_RUN, Status  # noqa: F401  (FINAL: re-exported)

Row = Any  # a journal row (engine.store.journal.Experiment), or anything with its attributes
Rows = Iterable[Any]

CARRY_SHARE = 0.5  # a validation gain "carries over" when the holdout gains at least half as much...
HOLDOUT_K = 2.0  # ...or falls short of that by no more than this many units of the holdout gain's noise


# ---- which rows ----

def measured(e: Row) -> bool:
    return e.metric is not None and math.isfinite(e.metric)


def never_ran(e: Row) -> bool:
    """A proposal the session stopped (or the human vetoed) before its run began: no outcome of
    the code, so not an experiment in results.tsv, the counts or the rate."""
    return (e.status in NOT_RUN and e.run_started is None and e.metric is None
            and e.training_seconds is None and e.log_path is None)


def comparable(rows: Rows, harness: str | None) -> list[Row]:
    """The rows measured by `harness` (None: every row), in experiment order. Rows that never ran
    carry no version and no result."""
    return sorted((e for e in rows if harness is None or e.harness is None or e.harness == harness), key=lambda e: e.n)


def _base_ok(e: Row) -> bool:
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


def _key(e: Row) -> tuple[str | None, str | None]:
    return (e.harness, e.commit_sha)


def _baseline_of(group: list[Row]) -> Baseline:
    vals = [e.metric for e in group]
    if not vals:
        return Baseline()
    hold = [e.holdout for e in group if e.holdout is not None and math.isfinite(e.holdout)]
    return Baseline(sum(vals) / len(vals), len(vals), statistics.stdev(vals) if len(vals) >= 2 else 0.0,
                    sum(hold) / len(hold) if hold else None, statistics.stdev(hold) if len(hold) >= 2 else None,
                    len(hold))


def baseline_group(rows: Rows, harness: str | None = None) -> list[Row]:
    """The latest baseline group of `harness`: the successful baseline runs of the same code
    (commit) and version as the last one."""
    base = [e for e in comparable(rows, harness) if _base_ok(e)]
    return [e for e in base if _key(e) == _key(base[-1])] if base else []


def baseline(rows: Rows, harness: str | None = None) -> Baseline:
    """The latest baseline group's figures, as the engine averages them for its starting best."""
    return _baseline_of(baseline_group(rows, harness))


def baseline_mean(rows: Rows, harness: str | None = None) -> float | None:
    """The mean of the latest group of successful baseline runs (the unchanged code), as the engine
    computes its starting best."""
    return baseline(rows, harness).mean


# ---- the running best ----

def running_best(rows: Rows, direction: str = "min", harness: str | None = None,
                 best: tuple[int | None, float | None] | None = None) -> list[tuple[int, float]]:
    """(n, the best after row n) at each row that moved it: the engine's best over the session.

    Each group of baseline runs sets it to their mean (every baseline row carries the mean, not a
    running mean that would wander); a keep moves it to the kept value; a force-keep sets it to
    the forced value, also when that is worse. `best` = the session's (best_n, best_metric): a
    force-keep of an earlier row, applied later, ends the line at that value at the last row.
    Only rows of `harness` count (None: all)."""
    del direction  # the engine's best is the last kept value, whichever way is better
    rows = comparable(rows, harness)
    groups: dict[tuple[str | None, str | None], list[float]] = {}
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


def standing(rows: Rows, best_n: int | None, best_metric: float | None, harness: str | None = None,
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


def holdout_check(rows: Rows, best_n: int | None, direction: str = "min", harness: str | None = None) -> HoldoutCheck:
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


# ---- the charts' series (the TUI's progress plot and the report's chart) ----

@dataclass
class ProgressSeries:
    kept: list[Any] = field(default_factory=list)  # baselines + keep/forced, measured
    best: list[tuple[int, float]] = field(default_factory=list)  # running_best
    other: list[Any] = field(default_factory=list)  # finished, measured, not kept (discard, vetoed, ...)
    failed: list[Any] = field(default_factory=list)  # crash / timeout / invalid: no metric
    baseline: float | None = None
    hidden: int = 0  # measured rows of another harness version (budget, data): never drawn beside these


def progress_series(experiments: Iterable[Any], direction: str = "min", harness: str | None = None,
                    best: tuple[int | None, float | None] | None = None) -> ProgressSeries:
    """What the charts draw (the report's and the TUI's): the rows of the current harness only."""
    rows = comparable(experiments, harness)
    shown = {e.n for e in rows}
    s = ProgressSeries(best=running_best(rows, direction, harness, best), baseline=baseline_mean(rows, harness),
                       hidden=sum(1 for e in experiments if e.n not in shown and (measured(e) or e.status in FAILED)))
    for e in rows:
        if (e.status in KEPT and measured(e)):
            s.kept.append(e)
        elif e.status in FAILED:
            s.failed.append(e)
        elif e.status in FINAL and measured(e):
            s.other.append(e)
    return s


def y_limits(s: ProgressSeries, direction: str = "min") -> tuple[float, float] | None:
    """Y-range that shows every kept point and the baseline, plus the non-kept points near them;
    far-off outliers (a diverged run at 10x the baseline) are left outside and drawn at the edge.
    Returned as (low, high) with low < high; None when nothing was measured."""
    core = [e.metric for e in s.kept] + [v for _, v in s.best] + ([s.baseline] if s.baseline is not None else [])
    others = [e.metric for e in s.other]
    if not core:
        core = others
    if not core:
        return None
    lo_c, hi_c = min(core), max(core)
    span = hi_c - lo_c
    if span <= 0:
        span = max(abs(hi_c) * 0.02, 1e-3)
    everything = core + others
    if direction == "min":  # worse = higher: allow a bounded margin above the worst kept value
        hi = min(max(everything), hi_c + 0.6 * span)
        lo = max(min(everything), lo_c - 0.5 * span)
    else:  # worse = lower
        lo = max(min(everything), lo_c - 0.6 * span)
        hi = min(max(everything), hi_c + 0.5 * span)
    pad = 0.08 * max(hi - lo, span)
    return lo - pad, hi + pad


# ---- the duty cycle ----

@dataclass(frozen=True)
class DutyCycle:
    """Where a session's wall-clock time went: training is research; the rest is overhead."""

    wall: float
    training: float
    propose: float
    startup: float
    eval: float
    experiments: int
    slots: int = 1  # device slots the runs used: wall is device-seconds (wall-clock x slots)
    trials: int = 0  # of the runs, the experiments (not baselines)

    @property
    def per_device_hour(self) -> float | None:
        """Experiments finished per device-hour (a GPU-hour on GPUs; None before a stretch of
        time has passed): what early stopping and every cut in overhead raise."""
        return self.trials * 3600 / self.wall if self.wall >= 60 and self.trials else None

    @property
    def ratio(self) -> float:
        return self.training / self.wall if self.wall > 0 else 0.0

    @property
    def other(self) -> float:
        """Wall time outside the runs' own phases: the engine's work between runs, and waiting
        for a proposal that was not ready when the previous run ended."""
        return max(0.0, self.wall - self.training - self.startup - self.eval)

    def summary(self) -> str:
        if not self.experiments:
            return "duty cycle: no finished runs yet"
        k = self.experiments
        over = f" over {self.slots} slots" if self.slots > 1 else ""
        return (f"duty cycle {100 * self.ratio:.1f}%{over} (training {self.training:.0f}s of {self.wall:.0f}s "
                f"{'device-seconds' if self.slots > 1 else 'wall'}); per run: "
                f"startup {self.startup / k:.1f}s, train {self.training / k:.1f}s, eval {self.eval / k:.1f}s, "
                f"other {self.other / k:.1f}s (between runs, incl. waiting for the agent); agent {self.propose / k:.1f}s "
                "per proposal" + (f"; {self.per_device_hour:.1f} experiments per device-hour" if self.per_device_hour else ""))


def duty_cycle(experiments: Iterable[Any]) -> DutyCycle:
    """Training seconds over device-seconds (wall-clock from the first run's start to the last
    finish, times the slots the runs used). Proposals made while runs train overlap them and
    cost no wall time."""
    done = [e for e in experiments if e.started and e.finished and e.training_seconds is not None]
    if not done:
        return DutyCycle(0.0, 0.0, 0.0, 0.0, 0.0, 0)
    slots = len({e.slot for e in done if e.slot is not None}) or 1
    wall = (max(e.finished for e in done) - min(e.run_started or e.started for e in done)) * slots

    def s(seconds: Callable[[Row], float | None]) -> float:
        return float(sum(seconds(e) or 0.0 for e in done))

    return DutyCycle(wall, s(lambda e: e.training_seconds), s(lambda e: e.propose_seconds), s(lambda e: e.startup_seconds),
                     s(lambda e: e.eval_seconds), len(done), slots, sum(1 for e in done if e.kind != "baseline"))
