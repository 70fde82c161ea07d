"""The verdict on a finished run, as a table (engine/session/verdict.py): the noise term in the threshold,
the metric's direction, confirmation runs when the best moved, the human's veto, force-keep and
stop, a session ending on a fatal agent error, and the baselines."""

from __future__ import annotations

import pytest

from engine.run.runs import Run
from engine.run.targets import Outcome
from engine.session.verdict import BestSoFar, Rule, confirmation, decide, judge, judge_baseline
from engine.status import Status


def outcome(status: str = "ok", metric: float | None = None, reason: str | None = None) -> Outcome:
    return Outcome(status, metric, reason, 1.0, 2.0, None, "run.log")


def run(base_metric: float | None = 1.0, base_n: int | None = 3, rounds: int = 0) -> Run:
    return Run(7, "c" * 40, "p" * 40, base_metric, base_n, "experiment", "a change", rounds=rounds)


MIN = Rule(min_delta=0.001, noise_k=2.0, direction="min")
MAX = Rule(min_delta=0.001, noise_k=2.0, direction="max")
BEST = BestSoFar(metric=1.0, noise=0.01, n=3)  # threshold max(0.001, 2 * 0.01) = 0.02
QUIET = BestSoFar(metric=1.0, noise=0.0, n=3)  # threshold min_delta
MOVED = BestSoFar(metric=0.9, noise=0.01, n=5)  # the best moved to #5 while the run (built on #3 at 1.0) ran

# name, outcome, run, best, rule, keyword arguments -> status, words in the reason, a confirmation asked
CASES = [
    # the noise term: a gain above min_delta but within 2 noise is not kept
    ("within the noise", outcome(metric=0.985), run(), BEST, MIN, {}, Status.DISCARD,
     ["improvement +0.015000 not above the threshold 0.020000"], False),
    ("beyond the noise", outcome(metric=0.97), run(), BEST, MIN, {}, Status.KEEP, None, False),
    ("no noise: min_delta is the threshold", outcome(metric=0.998), run(), QUIET, MIN, {}, Status.KEEP, None, False),
    ("under min_delta", outcome(metric=0.9995), run(), QUIET, MIN, {}, Status.DISCARD, ["threshold 0.001000"], False),
    # direction
    ("min: higher is worse", outcome(metric=1.03), run(), BEST, MIN, {}, Status.DISCARD, ["improvement -0.030000"], False),
    ("max: higher is better", outcome(metric=1.03), run(), BEST, MAX, {}, Status.KEEP, None, False),
    ("max: lower is worse", outcome(metric=0.97), run(), BEST, MAX, {}, Status.DISCARD, ["improvement -0.030000"], False),
    ("max: within the noise", outcome(metric=1.015), run(), BEST, MAX, {}, Status.DISCARD, ["threshold 0.020000"], False),
    # the best moved while it ran: judged against its own base, confirmed before it can be kept
    ("best moved, beat its base", outcome(metric=0.95), run(), MOVED, MIN, {"same_base": False}, Status.DISCARD,
     ["beat its base #3 by 0.050000, but the best moved to #5 while it ran"], True),
    ("best moved, within the noise of its base", outcome(metric=0.99), run(), MOVED, MIN, {"same_base": False},
     Status.DISCARD, ["improvement +0.010000 over its base #3 not above the threshold 0.020000"], False),
    ("best moved, no base number", outcome(metric=0.95), run(base_n=None), MOVED, MIN, {"same_base": False},
     Status.DISCARD, ["beat its base by"], True),
    ("best moved again after 3 confirmations", outcome(metric=0.95), run(rounds=3), MOVED, MIN, {"same_base": False},
     Status.DISCARD, ["3 times: not kept"], False),
    ("a confirmation on the same best is kept", outcome(metric=0.85), run(base_metric=0.9, rounds=1), MOVED, MIN, {},
     Status.KEEP, None, False),
    # the human's veto
    ("vetoed after it measured", outcome(metric=0.5), run(), BEST, MIN, {"veto": "not this"}, Status.VETOED,
     ["not this"], False),
    ("vetoed while it ran", outcome("cancelled"), run(), BEST, MIN, {"veto": "no"}, Status.VETOED, ["no"], False),
    # force-keep: kept whatever it measured, never confirmed
    ("force-kept though worse", outcome(metric=1.2), run(), BEST, MIN, {"forced": True}, Status.FORCED, None, False),
    ("force-kept on a moved best", outcome(metric=0.95), run(), MOVED, MIN, {"forced": True, "same_base": False},
     Status.FORCED, None, False),
    ("force-kept but crashed", outcome("crash", reason="boom"), run(), BEST, MIN, {"forced": True}, Status.CRASH,
     ["boom"], False),
    # the human's stop (or a signal's)
    ("stopped now by the human", outcome("cancelled"), run(), BEST, MIN, {}, Status.INTERRUPTED,
     ["stopped by the human during the run"], False),
    ("stopped by a signal", outcome("cancelled"), run(), BEST, MIN, {"stopped_by": "signal SIGTERM"},
     Status.INTERRUPTED, ["stopped by signal SIGTERM during the run"], False),
    # the agent can make no more requests: the session ends
    ("fatal", outcome("cancelled"), run(), BEST, MIN, {"fatal": "the key was revoked"}, Status.INTERRUPTED,
     ["the session stopped: the key was revoked"], False),
    ("fatal wins over a veto", outcome("cancelled"), run(), BEST, MIN, {"fatal": "no credit", "veto": "x"},
     Status.INTERRUPTED, ["the session stopped: no credit"], False),
    ("fatal after it measured: judged", outcome(metric=0.97), run(), BEST, MIN, {"fatal": "no credit"}, Status.KEEP,
     None, False),
    # the run's own failure
    ("crash", outcome("crash", reason="exited 1"), run(), BEST, MIN, {}, Status.CRASH, ["exited 1"], False),
    ("timeout", outcome("timeout", reason="over budget"), run(), BEST, MIN, {}, Status.TIMEOUT, ["over budget"], False),
    ("invalid", outcome("invalid", reason="bad shape"), run(), BEST, MIN, {}, Status.INVALID, ["bad shape"], False),
    ("its node died", outcome("lost", reason="node gone"), run(), BEST, MIN, {}, Status.INTERRUPTED, ["node gone"], False),
]


@pytest.mark.parametrize("name,out,r,best,rule,kw,status,words,confirm", CASES, ids=[c[0] for c in CASES])
def test_judge(name, out, r, best, rule, kw, status, words, confirm):
    kw = {"same_base": True, **kw}
    v = judge(out, r, best, rule, **kw)
    assert (v.status, v.confirm) == (status, confirm), v
    if words is None:
        assert v.reason is None
    else:
        for w in words:
            assert w in v.reason, v.reason
    if out.status == "ok" and status not in (Status.VETOED,):
        assert v.decision is not None and v.decision.threshold == pytest.approx(
            max(rule.min_delta, rule.noise_k * (best.noise or 0.0)))


def test_the_threshold_grows_with_the_noise():
    for noise, kept in ((0.0, True), (0.004, True), (0.006, False), (0.05, False)):
        assert decide(0.99, 1.0, noise, 0.001, 2.0).keep is kept, noise  # a gain of 0.01 against 2 * noise
    assert decide(0.99, 1.0, 0.004, 0.001, 2.0).confidence == pytest.approx(2.5)
    assert decide(0.99, 1.0, 0.0, 0.001, 2.0).confidence is None


CONFIRMATIONS = [
    ("re-applied", "d" * 40, Status.DISCARD, True, "but the best moved to #5 while it ran: re-applied onto it and run "
                                                   "again as #9, the confirmation; only that result can be kept"),
    ("a conflict", None, Status.DISCARD, False, "its change conflicts with #5's (3-way merge): not kept"),
    ("already held", "", Status.DISCARD, False, "#5 already holds its change: nothing of it is left to confirm"),
]


@pytest.mark.parametrize("name,merged,status,confirm,words", CONFIRMATIONS, ids=[c[0] for c in CONFIRMATIONS])
def test_confirmation(name, merged, status, confirm, words):
    v = judge(outcome(metric=0.95), run(), MOVED, MIN, same_base=False)
    assert v.confirm
    c = confirmation(v, merged, 9, 5)
    assert (c.status, c.confirm) == (status, confirm) and words in c.reason and c.decision == v.decision
    assert c.reason.startswith("beat its base #3 by 0.050000, but the best moved to #5 while it ran")


BASELINES = [
    ("measured", outcome(metric=1.0), {}, Status.KEEP, None),
    ("measured, vetoed too late", outcome(metric=1.0), {"veto": "no"}, Status.KEEP, None),
    ("vetoed while it ran", outcome("cancelled"), {"veto": "no"}, Status.VETOED, "no"),
    ("stopped now", outcome("cancelled"), {}, Status.INTERRUPTED, "stopped by the human during the run"),
    ("stopped by a signal", outcome("cancelled"), {"stopped_by": "signal SIGHUP"}, Status.INTERRUPTED,
     "stopped by signal SIGHUP during the run"),
    ("fatal", outcome("cancelled"), {"fatal": "out of credit", "veto": "no"}, Status.INTERRUPTED,
     "the session stopped: out of credit"),
    ("its node died", outcome("lost", reason="node gone"), {}, Status.INTERRUPTED, "node gone"),
    ("crashed", outcome("crash", reason="exit 1"), {}, Status.CRASH, "exit 1"),
    ("crashed and vetoed", outcome("crash", reason="exit 1"), {"veto": "stop it"}, Status.CRASH, "stop it"),
    ("timed out", outcome("timeout", reason="slow"), {}, Status.TIMEOUT, "slow"),
]


@pytest.mark.parametrize("name,out,kw,status,reason", BASELINES, ids=[c[0] for c in BASELINES])
def test_judge_baseline(name, out, kw, status, reason):
    v = judge_baseline(out, **kw)
    assert (v.status, v.reason) == (status, reason)
