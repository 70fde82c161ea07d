"""The verdict on a finished run, as pure functions: no git, journal or threads (docs/ARCHITECTURE.md,
"The decision rule"). The engine gathers what they read (the outcome, the run, the best, the
human's veto or force-keep, whether the session is ending) and records what they return.

The noise-aware rule: keep a change only if it beats the best by more than
max(min_delta, k * noise), where noise is the spread of repeated baseline runs. For runs that
ran side by side:
- an experiment is judged against the best it was built on;
- when the best moved while it ran and it beat its own base, it is not kept as measured: its
  change is re-applied onto the new best (3-way merge) and run again at once as a confirmation;
  only a confirmation's result can be kept (`confirmation`, after the merge);
- a merge conflict is a discard with its reason, which the agent reads in its history."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Protocol

from ..status import Status

MAX_CONFIRMATIONS = 3  # a change confirmed on a best that moved again is confirmed again, this often


@dataclass(frozen=True)
class Decision:
    keep: bool
    delta: float  # metric - best (negative is better when direction is "min")
    improvement: float  # positive = better, in the metric's units
    threshold: float
    confidence: float | None  # improvement in units of noise


def noise_of(values: list[float]) -> float:
    """Sample standard deviation of repeated runs of the same code (0 with fewer than 2)."""
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def threshold_of(noise: float, min_delta: float, k: float) -> float:
    """How much a change must beat the best by to be kept."""
    return max(min_delta, k * noise)


def decide(metric: float, best: float, noise: float, min_delta: float, k: float, direction: str = "min") -> Decision:
    improvement = (best - metric) if direction == "min" else (metric - best)
    threshold = threshold_of(noise, min_delta, k)
    confidence = improvement / noise if noise > 0 else None
    return Decision(improvement > threshold, metric - best, improvement, threshold, confidence)


@dataclass(frozen=True)
class Rule:
    """The session's decision settings ([decision] in cockpit.toml, and the target's direction)."""

    min_delta: float
    noise_k: float
    direction: str = "min"
    max_confirmations: int = MAX_CONFIRMATIONS


@dataclass(frozen=True)
class BestSoFar:
    """The session's best when the run finished."""

    metric: float | None
    noise: float | None
    n: int | None


class Measured(Protocol):
    """What the verdict reads of a target's Outcome (engine/run/targets.py)."""

    @property
    def status(self) -> str: ...  # ok | crash | timeout | invalid | cancelled | lost
    @property
    def metric(self) -> float | None: ...
    @property
    def reason(self) -> str | None: ...


class Judged(Protocol):
    """What the verdict reads of the Run."""

    @property
    def base_metric(self) -> float | None: ...
    @property
    def base_n(self) -> int | None: ...
    @property
    def rounds(self) -> int: ...


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str | None
    decision: Decision | None = None
    confirm: bool = False  # it beat its base while the best moved: re-apply it onto the best and run it again


def judge(out: Measured, run: Judged, best: BestSoFar, rule: Rule, *, same_base: bool, veto: str | None = None,
          forced: bool = False, fatal: str | None = None, stopped_by: str = "the human",
          pruned: str | None = None) -> Verdict:
    """The verdict on a finished experiment (or confirmation). `same_base`: the run was built on
    the code of the best (a best that took only the human's program.md edit is the same code);
    `veto` the human's reason, `forced` their force-keep, `fatal` why no request of the session can
    succeed (it is ending), `stopped_by` who stopped the session when the run was cancelled,
    `pruned` why the early-stop rule stopped it (engine/early_stop.py)."""
    if out.status == "cancelled" and fatal is not None:
        return Verdict(Status.INTERRUPTED, f"the session stopped: {fatal}")
    if veto is not None:
        return Verdict(Status.VETOED, veto)
    if out.status == "cancelled" and pruned is not None:  # a discard: it lost early
        return Verdict(Status.PRUNED, pruned)
    if out.status == "cancelled":  # stop-now: by the human, or by a signal (SIGTERM, SIGHUP)
        return Verdict(Status.INTERRUPTED, f"stopped by {stopped_by} during the run")
    if out.status == "lost":  # its node died during the run (engine/run/cluster.py)
        return Verdict(Status.INTERRUPTED, out.reason)
    if out.status != "ok":
        return Verdict(Status(out.status), out.reason)
    against = best.metric if same_base else run.base_metric
    if out.metric is None or against is None:  # an ok outcome has a metric, and the baselines gave the best one
        raise ValueError(f"a verdict needs a metric and the best's (run: {out.metric}, best: {against})")
    d = decide(out.metric, against, best.noise or 0.0, rule.min_delta, rule.noise_k, rule.direction)
    if same_base or forced:
        status = Status.KEEP if d.keep and same_base else (Status.FORCED if forced else Status.DISCARD)
        reason = None if status != Status.DISCARD else f"improvement {d.improvement:+.6f} not above the threshold {d.threshold:.6f}"
        return Verdict(status, reason, d)
    base = f"its base #{run.base_n}" if run.base_n is not None else "its base"
    if not d.keep:
        return Verdict(Status.DISCARD, f"improvement {d.improvement:+.6f} over {base} not above the threshold "
                                       f"{d.threshold:.6f}", d)
    moved = f"the best moved to #{best.n} while it ran"
    if run.rounds >= rule.max_confirmations:
        return Verdict(Status.DISCARD, f"beat {base} by {d.improvement:.6f}, but {moved}, {run.rounds} times: not kept", d)
    return Verdict(Status.DISCARD, f"beat {base} by {d.improvement:.6f}, but {moved}", d, confirm=True)


def confirmation(v: Verdict, merged: str | None, k: int, best_n: int | None) -> Verdict:
    """A verdict that asked for a confirmation, once its change was re-applied onto the best:
    `merged` the new commit, None on a conflict, "" when the best already holds the change;
    `k` the confirmation's number. Still a discard: only the confirmation's result can be kept."""
    if merged is None:
        why = f"its change conflicts with #{best_n}'s (3-way merge): not kept; propose it again on the new best"
    elif not merged:
        why = f"#{best_n} already holds its change: nothing of it is left to confirm"
    else:
        return replace(v, reason=f"{v.reason}: re-applied onto it and run again as #{k}, the confirmation; only that "
                                 "result can be kept")
    return replace(v, reason=f"{v.reason} and {why}", confirm=False)


def judge_baseline(out: Measured, *, veto: str | None = None, fatal: str | None = None,
                   stopped_by: str = "the human") -> Verdict:
    """A baseline run of the best code: `keep` when it measured the code (a veto that came after
    changes nothing), else why not."""
    status = (Status.KEEP if out.status == "ok"
              else {"cancelled": Status.VETOED, "lost": Status.INTERRUPTED}.get(out.status) or Status(out.status))
    reason = out.reason
    if out.status == "cancelled" and fatal is not None:
        status, reason = Status.INTERRUPTED, f"the session stopped: {fatal}"
    elif out.status == "cancelled" and veto is None:  # stop-now: the human's or a signal's
        status, reason = Status.INTERRUPTED, f"stopped by {stopped_by} during the run"
    elif veto is not None and out.status != "ok":
        reason = veto
    return Verdict(status, reason)
