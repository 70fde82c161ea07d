"""Early stopping: a run that is clearly losing is stopped before its budget ends (status
`pruned`), so its device takes the next experiment. Pure functions of loss curves, no I/O
(docs/ARCHITECTURE.md, "Early stopping"); the engine gathers the curves, bench/early_stop.py
replays journals through the same functions.

A curve is the run's training loss against the fraction of its budget, as the harness reports it
(every 0.5 s) and the journal keeps it.

The rule, at each check fraction f (every STEP of the budget from the grace fraction on):
- a loss at f is the mean of the curve over the window [f - window, f] (interpolated on a grid),
  the run's and the best's alike: single steps are noisy;
- the best's curve is the best run's (the baselines' mean curve when the best is the baseline);
- the band at f is the largest of:
    k x the spread of the baselines' losses (run-to-run noise of the same code, pooled over the
    checks),
    the most a run that was later kept was behind its best at f, plus that spread (what this
    session has learned: changes that won have looked this bad mid-run),
    the floor;
- a run behind the best by more than the band at two check fractions in a row is pruned.
Divergence is stopped at once, grace or not: a loss that is not finite, or a window's loss above
the run's own start (its first loss) x `diverge`.
Changes to the schedule (learning rate, warm-up, warm-down, decay, batch size, momentum) look
worse mid-run and can win at the end: for them the band applies only from `schedule_grace` on
(late in the budget, when the schedules have met again; before the export and the evaluation,
which a losing run then never pays for), divergence at once as for any run; see
`touches_schedule`. With `schedule_grace` >= 1 they are exempt from the band.
Never for baselines and confirmations (the engine does not ask)."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import analysis
from .status import KEPT, Status

Curve = Sequence[tuple[float, float]]  # (fraction of the budget, training loss), in order

MODES = ("auto", "off")


@dataclass(frozen=True)
class Settings:
    """[decision] early_stop and its thresholds in cockpit.toml."""

    mode: str = "auto"  # auto: on once the session has the data; off
    grace: float = 0.3  # no decision before this fraction of the budget
    k: float = 3.0  # the band: this many baseline spreads...
    floor: float = 0.03  # ...and never less than this (loss units)
    window: float = 0.1  # losses are averaged over this much of the budget
    step: float = 0.05  # the check fractions are this far apart
    diverge: float = 1.2  # a window's loss above the run's first loss x this is divergence
    schedule_grace: float = 0.8  # schedule changes: no band decision before this fraction (>= 1: never)

    @property
    def on(self) -> bool:
        return self.mode != "off"


GRID = 6  # points per window


def at(curve: Curve, x: float) -> float:
    """The curve's loss at fraction x, linearly interpolated (the ends held flat)."""
    if x <= curve[0][0]:
        return curve[0][1]
    if x >= curve[-1][0]:
        return curve[-1][1]
    lo, hi = 0, len(curve) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if curve[mid][0] <= x:
            lo = mid
        else:
            hi = mid
    (x0, y0), (x1, y1) = curve[lo], curve[hi]
    return y0 if x1 <= x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def window_loss(curve: Curve, f: float, window: float) -> float:
    """The mean loss over [f - window, f]."""
    lo = max(0.0, f - window)
    xs = [lo + (f - lo) * i / (GRID - 1) for i in range(GRID)]
    return sum(at(curve, x) for x in xs) / GRID


def checks(s: Settings) -> list[float]:
    """The check fractions: from the grace fraction to the end of the budget."""
    out, i = [], 0
    while (f := round(s.grace + i * s.step, 6)) <= 1.0 + 1e-9:
        out.append(f)
        i += 1
    return out


def mean_curve(curves: Sequence[Curve], points: int = 101) -> list[tuple[float, float]]:
    """The pointwise mean of curves, over the fractions all of them reached."""
    end = min(c[-1][0] for c in curves)
    xs = [end * i / (points - 1) for i in range(points)]
    return [(x, sum(at(c, x) for c in curves) / len(curves)) for x in xs]


@dataclass(frozen=True)
class Reference:
    """What a run is compared with: at each check fraction, the best's loss and the band."""

    fractions: tuple[float, ...]
    best: tuple[float, ...]
    band: tuple[float, ...]

    def line(self) -> list[tuple[float, float]]:
        """The loss above which a run is behind by more than the band (what the loss pane draws)."""
        return [(f, b + w) for f, b, w in zip(self.fractions, self.best, self.band)]


def covers(curve: Curve, f: float) -> bool:
    return bool(curve) and curve[-1][0] >= f - 1e-9


def reference(best: Curve | None, baselines: Sequence[Curve], kept: Sequence[tuple[Curve, Curve]],
              s: Settings) -> Reference | str:
    """The session's reference for its next runs, or why the rule is off: `best` the best run's
    curve (None: none journaled), `baselines` the curves of the current baseline group's runs (an
    empty one: that run has no curve), `kept` (a kept run's curve, its best's curve then) for each
    kept run."""
    if len(baselines) < 2:
        return (f"early stop is off: it measures the noise from the spread of two baseline runs or more (this "
                f"session's baselines: {len(baselines)}; [decision] baseline_runs)")
    have = [c for c in baselines if c]
    if len(have) < len(baselines):
        return (f"early stop is off: {len(baselines) - len(have)} of the {len(baselines)} baseline runs have no loss "
                "curve (measured by an older cockpit)")
    baselines = have
    if not best:
        return "early stop is off: the best run has no loss curve"
    fs = [f for f in checks(s) if covers(best, f) and all(covers(c, f) for c in baselines)]
    if not fs:
        return "early stop is off: the best's and the baselines' curves stop before the grace fraction"
    # the baselines' spread, pooled over the checks: from two baselines one fraction's spread is a
    # guess, all of them together a measure (a run's noise hardly changes over its second part)
    spread = math.sqrt(statistics.fmean(statistics.variance(window_loss(c, f, s.window) for c in baselines) for f in fs))
    bs, ws = [], []
    for f in fs:
        lags = [window_loss(k, f, s.window) - window_loss(b, f, s.window) for k, b in kept if covers(k, f) and covers(b, f)]
        learned = max(lags) + spread if lags and max(lags) > 0 else 0.0
        bs.append(window_loss(best, f, s.window))
        ws.append(max(s.k * spread, learned, s.floor))
    return Reference(tuple(fs), tuple(bs), tuple(ws))


def gather(rows: Iterable[Any], best_n: int | None, curve_of: Callable[[int], Curve], s: Settings,
           harness: str | None = None) -> Reference | str:
    """The reference from a session's journal rows (engine.journal.Experiment, or anything with
    its attributes) of the version `harness`: the latest baseline group's curves; the best's curve
    (row `best_n`'s, the baselines' mean curve when that row is a baseline run); and each kept
    run's curve beside the best's curve before it (rows in order: a baseline group sets the best's
    curve, a keep or a force-keep moves it, only keeps are learned from)."""
    rows = analysis.comparable(rows, harness)
    group = analysis.baseline_group(rows, harness)
    baselines = [curve_of(e.n) for e in group]
    kept: list[tuple[Curve, Curve]] = []
    current: Curve | None = None
    groups: dict[tuple[str | None, str | None], list[Curve]] = {}
    for e in rows:
        if e.kind == "baseline" and e.status == Status.KEEP and analysis.measured(e):
            if c := curve_of(e.n):
                groups.setdefault((e.harness, e.commit_sha), []).append(c)
                current = mean_curve(groups[(e.harness, e.commit_sha)])
        elif e.kind != "baseline" and e.status in KEPT and (c := curve_of(e.n)):
            if e.status == Status.KEEP and current:
                kept.append((c, current))
            current = c
    by_n = {e.n: e for e in rows}
    row = by_n.get(best_n) if best_n is not None else None
    best: Curve | None
    if row is None or row.kind == "baseline":
        best = mean_curve(baselines) if baselines and all(baselines) else None
    else:
        best = curve_of(row.n) or None
    return reference(best, baselines, kept, s)


@dataclass(frozen=True)
class Prune:
    """Why a run is stopped early."""

    fraction: float
    loss: float
    best: float | None  # None: divergence
    band: float | None

    @property
    def reason(self) -> str:
        pct = f"{100 * self.fraction:.0f}%"
        if self.best is None or self.band is None:
            what = "not finite" if not math.isfinite(self.loss) else f"{self.loss:.2f}, far above its start"
            return f"pruned at {pct}: the loss diverged ({what})"
        return f"pruned at {pct}: loss {self.loss:.3f} vs best {self.best:.3f} at {pct} (band {self.band:.3f})"


def diverged(curve: Curve, s: Settings) -> Prune | None:
    """A loss that is not finite, or a window's loss far above the run's own start."""
    if not curve:
        return None
    f, last = curve[-1]
    if not math.isfinite(last):
        return Prune(f, last, None, None)
    if f >= s.window:
        w = window_loss(curve, f, s.window)
        if w > curve[0][1] * s.diverge:
            return Prune(f, w, None, None)
    return None


def judge(curve: Curve, ref: Reference | None, s: Settings, schedule: bool = False) -> Prune | None:
    """Whether a run with this curve so far is stopped now: divergence always; the band (two
    checks in a row, from the grace fraction on, or from `schedule_grace` for a schedule change)
    when there is a reference."""
    if not curve:
        return None
    d = diverged(curve, s)
    if d is not None:
        return d
    if ref is None:
        return None
    grace = s.schedule_grace if schedule else s.grace
    behind_before = False
    for f, b, w in zip(ref.fractions, ref.best, ref.band):
        if f < grace - 1e-9:
            continue
        if not covers(curve, f):
            return None
        loss = window_loss(curve, f, s.window)
        behind = loss - b > w
        if behind and behind_before:
            return Prune(f, loss, b, w)
        behind_before = behind
    return None


# A schedule change: a changed line that names the learning rate, warm-up or warm-down, decay,
# the batch size, or momentum (the names train.py and most trainers use).
SCHEDULE = re.compile(r"(?<![a-z])lr(?![a-z])|learning.?rate|warm.?up|warm.?down|cool.?down|decay|schedul|batch|accum"
                      r"|momentum|(?<![a-z])betas?(?![a-z])", re.IGNORECASE)


def touches_schedule(diff: str) -> bool:
    """Whether a unified diff changes a line that names the schedule (comments aside)."""
    for line in diff.splitlines():
        if line.startswith(("+++", "---")) or not line.startswith(("+", "-")):
            continue
        code = line[1:].split("#", 1)[0]
        if SCHEDULE.search(code):
            return True
    return False
