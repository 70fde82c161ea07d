"""The clock rules: when a run, or its evaluation, is out of time, as pure functions.

Nothing here reads a clock or a process. The watch (harness/watch.py) and the evaluation client
(harness/eval_client.py) take the times (CLOCK_MONOTONIC seconds: the arrival of each of the
training process's messages, the evaluation process's CPU time) and ask these rules; the run
(harness/runner.py) asks them for the allowance and the over-budget verdict. Table tests:
tests/test_clock_rules.py and tests/test_redteam_clock.py.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from .profiles import Profile

EXPORT_ALLOWANCE = 60.0  # seconds the export may take before the run is killed
STEP_TOLERANCE = 4.0  # the step-based tolerance is at most this many of the session's measured step times
EVAL_BACKSTOP = 10.0  # the evaluation's wall-clock backstop, in multiples of its allowance


@dataclass
class Limits:
    """Kill deadlines around the profile's budget (seconds), and the run's allowance.

    `credit`: the seconds of compilation and export taken off the run's clock. None: the run
    measures its own (its first step, up to the warm-up allowance, plus its export, up to
    EXPORT_ALLOWANCE), as `cockpit train` does. In a session: the session's fixed allowance
    (measured on the harness's reference model, harness/calibrate.py), the same for every run,
    baselines included: nothing a run does before its first step or inside its export buys it
    training time, and no run can tell a baseline from an experiment by it. `export_estimate`: the baseline's
    export seconds, the part of the credit the run spends after its in-process clock has run out."""

    startup: float
    warmup: float
    eval: float
    over_budget_tolerance: float  # finishing this far past the budget is still valid
    credit: float | None = None
    export_estimate: float = 0.0
    memory_bytes: int | None = None  # resident memory of all the run's processes; past it: killed
    eval_stall: float = 60.0  # seconds in which the evaluation process used no CPU at all: it hangs (EvalClock)

    session_step: float | None = None  # the session's step time, measured on its baselines (bounds the tolerance)

    @classmethod
    def for_profile(cls, p: Profile) -> "Limits":
        return cls(p.startup_allowance, p.warmup_allowance, p.eval_allowance, max(2.0, 0.05 * p.time_budget),
                   memory_bytes=int(0.85 * psutil.virtual_memory().total))

    def wall(self, budget: float) -> float:
        """The training process's whole life, fixed at launch, whatever it says: the startup cap,
        the allowance cap (the warm-up allowance, or the session's allowance when larger, plus the
        export's), the budget, the tolerance cap and the slack for the step in flight."""
        allowance = max(self.warmup, self.credit or 0.0) + EXPORT_ALLOWANCE
        return self.startup + allowance + budget + tolerance_cap(budget) + slack(budget)

    def allowance(self) -> float:
        """The seconds between "ready" and the budget's start: the warm-up allowance, or the
        session's allowance when larger."""
        return self.warmup if self.credit is None else max(self.credit, self.warmup)

    def credit_in_process(self) -> float | None:
        """The part of the credit the in-process clock (harness/runtime.py) gives: the export's
        estimate is spent after that clock has run out."""
        return None if self.credit is None else max(0.0, self.credit - self.export_estimate)


# ---- the protocol: each mark of the clock once, in order ----

PHASES = ("launched", "ready", "training", "exporting", "trained")
CLOCK_MESSAGES = ("ready", "step", "exporting", "trained")  # "step": a progress report or "warm"


def protocol(phase: str, kind: str) -> tuple[str, str | None]:
    """The training process's protocol as it moves the clock: (the phase after a message of this
    kind, a reason when the message breaks the protocol). Each mark is taken once, in order:
    launched -> ready -> training (its first step) -> exporting -> trained. "ready" comes once,
    before anything else, and "exporting" once: train.py can reach the channel (it runs in the
    same process), and a repeat is how it would restart or stretch the clock, so a repeat makes
    the run invalid. A step report after the export began moves nothing (ignored); so does any
    message the clock does not read."""
    if kind not in CLOCK_MESSAGES or phase == "trained":
        return phase, None
    if phase == "launched":
        return ("ready", None) if kind == "ready" else (phase, f"the training process sent {kind!r} before 'ready'")
    if kind == "ready":
        return phase, "the training process sent 'ready' a second time (the harness's clock cannot be restarted)"
    if kind == "step":
        return ("training" if phase == "ready" else phase), None
    if kind == "exporting" and phase == "exporting":
        return phase, "the training process sent 'exporting' a second time"
    return kind, None


# ---- training: the tolerance past the budget, and the kill deadlines ----

def tolerance_cap(budget: float) -> float:
    """The most the run's own step times can stretch its tolerance."""
    return 10.0 + 0.1 * budget


def slack(budget: float) -> float:
    """Seconds past budget and tolerance before a run that does not stop is killed (messages in flight)."""
    return max(5.0, 0.1 * budget)


def tolerance(floor: float, cap: float, step_s: Sequence[float], first_overrun: float | None,
              session_step: float | None) -> float:
    """How far past the budget training may end: the step in progress when the budget ran out may
    finish. The larger of `floor` (the profile's share of the budget) and what a loaded machine
    needs: three median step times, 1.2x the last step (a spike), or how far the first step ran
    past its warm-up allowance (when the budget ran out during it). The step times are the run's
    own claim (train.py numbers its steps), so that part is bounded: by `cap` (10 s plus a tenth
    of the budget) and, once the session's baselines have measured it, by STEP_TOLERANCE times
    the session's step time. A run that reports one "step" every few seconds claims nothing
    past that."""
    candidates = []
    if step_s:
        candidates += [3.0 * statistics.median(step_s), 1.2 * step_s[-1]]
    if first_overrun is not None:
        candidates.append(first_overrun)
    bound = cap if session_step is None else min(cap, STEP_TOLERANCE * session_step)
    return max(floor, min(max(candidates, default=0.0), bound))


def run_tolerance(limits: Limits, budget: float, step_s: Sequence[float], t_ready: float | None,
                  t_first: float | None) -> float:
    """The tolerance of one run: its step times, and how far its first step ran past the warm-up allowance."""
    first = t_first - t_ready - limits.warmup if (t_first is not None and t_ready is not None) else None
    return tolerance(limits.over_budget_tolerance, tolerance_cap(budget), step_s, first, limits.session_step)


def deadline(limits: Limits, budget: float, t_go: float, t_ready: float | None, t_first: float | None,
             t_exporting: float | None, step_s: Sequence[float]) -> tuple[float, str]:
    """When the training process is killed (`timeout`), and why: the earlier of the deadline of
    the phase it is in and its whole life's, fixed at launch (Limits.wall), whatever it has said."""
    wall = (t_go + limits.wall(budget),
            f"the training process ran past {limits.wall(budget):.0f}s, the most a run may take "
            f"with a {budget:g}s budget, and was killed")
    if t_ready is None:
        phase = (t_go + limits.startup, f"no start within {limits.startup:g}s")
    elif t_exporting is not None:
        phase = (t_exporting + EXPORT_ALLOWANCE, f"exporting the model took longer than {EXPORT_ALLOWANCE:g}s")
    else:
        extra = run_tolerance(limits, budget, step_s, t_ready, t_first) + slack(budget)
        if t_first is None:  # still in the first step: on a loaded machine it may run past its allowance
            extra += tolerance_cap(budget)
        phase = (t_ready + limits.allowance() + budget + extra,
                 f"training ran past its {budget:g}s budget and was killed")
    return min(phase, wall)


def over_memory(used: int, limit: int | None) -> str | None:
    """Why a run whose processes hold `used` resident bytes is killed, or None (no limit: never)."""
    if not limit or used <= limit:
        return None
    return f"the run used {used / 1e9:.1f} GB of memory, over its limit of {limit / 1e9:.1f} GB, and was killed"


# ---- after training: the allowance taken off the clock, and the budget's verdict ----

def own_credit(warmup: float, t_ready: float, t_first: float | None, t_exporting: float | None,
               t_trained: float) -> float:
    """A run's own allowance: its first step up to the warm-up allowance, plus its export (from
    the runner's clock: "exporting" to "trained") up to EXPORT_ALLOWANCE."""
    warm = (t_first if t_first is not None else (t_exporting or t_trained)) - t_ready
    export = (t_trained - t_exporting) if t_exporting is not None else 0.0
    return min(max(warm, 0.0), warmup) + min(max(export, 0.0), EXPORT_ALLOWANCE)


def counted_training(t_ready: float, t_exporting: float | None, t_trained: float, credit: float,
                     export_estimate: float) -> float:
    """The seconds of training a run's budget counted, for its record (duty cycle, tokens/s): from
    ready to "exporting", less the in-process part of the allowance (what train.py's own clock
    counts). The export is outside training whatever it took; without an "exporting" mark, ready
    to "trained" less the whole allowance. The over-budget check charges a slow export
    (`t_trained - t_ready - credit`), this does not."""
    if t_exporting is None:
        return t_trained - t_ready - credit
    return t_exporting - t_ready - max(0.0, credit - export_estimate)


def over_budget(train_s: float, budget: float, tolerance: float, credit: float) -> str | None:
    """Why a run that trained `train_s` seconds (its allowance, `credit`, already taken off) is
    invalid, or None when it kept to its budget and tolerance."""
    if train_s <= budget + tolerance:
        return None
    return (f"training took {train_s:.1f}s, over the {budget:g}s budget "
            f"(+{tolerance:.1f}s tolerance; compilation and export are allowed {credit:.1f}s)")


# ---- the evaluation ----

def eval_over(allowance: float, wall: float, cpu: bool, cpu_used: float | None = None, cores: int = 1,
              idle: float = 0.0, stall: float = 60.0, backstop: float = EVAL_BACKSTOP) -> str | None:
    """Why the evaluation is stopped (a `timeout`), or None while it may go on. `wall`: seconds
    since the model was trained. On an accelerator the work is the device's: the limit is wall
    time. On the CPU (`cpu`) it is the process's own CPU time since its imports were done
    (`cpu_used`; None before "ready"): the allowance on each of its `cores`, so a loaded machine
    slows it without failing it; a process that used no CPU for `stall` seconds (`idle`) hangs;
    and `backstop` times the allowance of wall time ends any evaluation."""
    if not cpu:
        return f"evaluation took longer than {allowance:g}s" if wall > allowance else None
    limit = allowance * cores
    if cpu_used is not None and cpu_used > limit:
        return f"evaluation used more than {limit:g}s of CPU time ({allowance:g}s on each of its {cores} cores)"
    if idle > max(stall, 0.0):
        return f"the evaluation process hangs: it used no CPU time for {max(stall, 0.0):g}s"
    if wall > backstop * allowance:
        return f"evaluation took longer than {backstop * allowance:g}s of wall time (its backstop)"
    return None
