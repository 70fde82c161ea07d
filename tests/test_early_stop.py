"""The early-stop rule (engine/early_stop.py) on constructed curves: what is pruned, when, and
what never is."""

from __future__ import annotations

import math
import random

import pytest

from engine.early_stop import Reference, Settings, judge, reference, touches_schedule, window_loss

S = Settings()


def curve(offset: float = 0.0, seed: int = 0, noise: float = 0.01, until: float = 1.0, points: int = 200,
          late: float = 0.0) -> list[tuple[float, float]]:
    """A training loss like the trainer's: from ~9 down to ~3.3, with per-step noise; `offset`
    is added from 10% of the budget on, `late` from 50% on (growing to the end)."""
    rng = random.Random(seed)
    out = []
    for i in range(points):
        f = until * i / (points - 1)
        y = 3.3 + 5.7 * math.exp(-12 * f) + (offset if f > 0.1 else 0.0) + late * max(0.0, f - 0.5) * 2
        out.append((f, y + (rng.gauss(0, noise) if i else 0.0)))
    return out


def ref(best: list[tuple[float, float]] | None = None, kept=(), settings: Settings = S, n: int = 2) -> Reference:
    r = reference(best or curve(seed=1), [curve(seed=10 + i) for i in range(n)], list(kept), settings)
    assert isinstance(r, Reference), r
    return r


def test_a_clearly_worse_run_is_pruned_soon_after_the_grace_fraction_with_its_reason():
    p = judge(curve(offset=0.3, seed=5), ref(), S)
    assert p is not None
    assert S.grace < p.fraction <= S.grace + 2 * S.step + 1e-9  # two checks in a row, the first after the grace
    assert p.best is not None and p.loss - p.best > 0.25
    assert p.reason.startswith(f"pruned at {100 * p.fraction:.0f}%: loss ")
    assert f"vs best {p.best:.3f} at {100 * p.fraction:.0f}% (band {p.band:.3f})" in p.reason


@pytest.mark.parametrize("seed", range(20))
def test_the_unchanged_code_is_never_pruned(seed):
    assert judge(curve(seed=100 + seed), ref(), S) is None


def test_a_run_behind_by_less_than_the_band_runs_to_the_end():
    r = ref()
    assert judge(curve(offset=0.5 * min(r.band), seed=3), r, S) is None


def test_no_decision_before_the_grace_fraction():
    assert judge(curve(offset=1.0, seed=5, until=S.grace - 0.01), ref(), S) is None
    assert judge(curve(offset=1.0, seed=5, until=S.grace + S.step + 0.01), ref(), S) is not None


def test_one_check_behind_is_not_enough():
    r = ref()
    spike = S.grace - S.window + S.step / 2  # inside the first check's window only
    c = [(f, y + (0.5 if abs(f - spike) < S.step / 4 else 0.0)) for f, y in curve(seed=4)]
    assert judge(c, r, S) is None


def test_divergence_stops_at_once_even_before_the_grace_fraction_and_for_a_schedule_change():
    nan = curve(seed=6, until=0.1) + [(0.11, float("nan"))]
    p = judge(nan, ref(), S, schedule=True)
    assert p is not None and p.best is None and "diverged (not finite)" in p.reason
    up = [(f, y if f < 0.08 else 12.0) for f, y in curve(seed=6, until=0.2)]
    p = judge(up, None, S)
    assert p is not None and p.fraction < S.grace and "far above its start" in p.reason


def test_a_schedule_change_is_judged_only_late_in_its_budget():
    # a schedule change: 0.3 behind until 50% of the budget, level with the best from 80% on
    behind_mid_run = [(f, y + 0.3 * min(1.0, max(0.0, (0.8 - f) / 0.3))) for f, y in curve(seed=5)]
    assert judge(behind_mid_run, ref(), S) is not None  # any other change this far behind is stopped early
    assert judge(behind_mid_run, ref(), S, schedule=True) is None
    p = judge(curve(offset=0.3, seed=5), ref(), S, schedule=True)  # still behind at the end
    assert p is not None and p.fraction >= S.schedule_grace
    assert judge(curve(offset=0.3, seed=5), ref(), Settings(schedule_grace=1.1), schedule=True) is None  # exempt


def test_the_band_learns_how_far_behind_kept_runs_have_been():
    behind = curve(late=-0.05, offset=0.2, seed=7)  # behind by 0.2 mid-run, then kept
    base = curve(seed=1)
    plain, learned = ref(), ref(kept=[(behind, base)])
    f = learned.fractions.index(0.5)
    assert learned.band[f] > 0.2 > plain.band[f]
    later = curve(offset=0.15, seed=8)
    assert judge(later, plain, S) is not None
    assert judge(later, learned, S) is None


def test_the_band_is_a_multiple_of_the_baselines_spread_pooled_over_the_checks_and_never_below_the_floor():
    a, b = curve(seed=20, noise=0.05), curve(seed=21, noise=0.05, offset=0.1)
    noisy = reference(curve(seed=1), [a, b], [], S)
    quiet = reference(curve(seed=1), [curve(seed=20, noise=0.001), curve(seed=21, noise=0.001)], [], S)
    assert isinstance(noisy, Reference) and isinstance(quiet, Reference)
    # the spread of two runs at f is |difference| / sqrt(2); pooled: the root of its mean square
    pooled = math.sqrt(sum((window_loss(a, f, S.window) - window_loss(b, f, S.window)) ** 2 / 2 for f in noisy.fractions)
                       / len(noisy.fractions))
    assert noisy.band == pytest.approx([S.k * pooled] * len(noisy.fractions))
    assert all(w == S.floor for w in quiet.band)


def test_the_rule_is_off_without_two_baselines_with_curves_or_a_best_curve():
    single = reference(curve(seed=1), [curve(seed=2)], [], S)
    assert isinstance(single, str) and "two baseline runs or more" in single and "baselines: 1" in single
    old = reference(curve(seed=1), [curve(seed=2), [], curve(seed=3)], [], S)  # one baseline without a curve
    assert isinstance(old, str) and "1 of the 3 baseline runs have no loss curve" in old
    nobest = reference(None, [curve(seed=2), curve(seed=3)], [], S)
    assert isinstance(nobest, str) and "no loss curve" in nobest
    assert isinstance(reference(curve(seed=1), [curve(seed=2), curve(seed=3), curve(seed=4)], [], S), Reference)


def test_the_line_the_loss_pane_draws_is_the_best_plus_the_band():
    r = ref()
    assert [y for _, y in r.line()] == [b + w for b, w in zip(r.best, r.band)]
    assert r.line()[0][0] == S.grace


@pytest.mark.parametrize(("diff", "schedule"), [
    ("-WARMDOWN_FRAC = 0.5\n+WARMDOWN_FRAC = 0.7\n", True),
    ("-MATRIX_LR = 0.04\n+MATRIX_LR = 0.05\n", True),
    ("-TOTAL_BATCH_TOKENS = 2**18\n+TOTAL_BATCH_TOKENS = 2**19\n", True),
    ("-    lr = base * frac\n+    lr = base * frac ** 2\n", True),
    ("-MUON_MOMENTUM = 0.95\n+MUON_MOMENTUM = 0.9\n", True),
    ("-ADAM_BETAS = (0.8, 0.95)\n+ADAM_BETAS = (0.9, 0.95)\n", True),
    ("-DEPTH = 8\n+DEPTH = 10\n", False),
    ("-MLP_RATIO = 4\n+MLP_RATIO = 3  # lr unchanged\n", False),  # a comment is not the code
    ("-x = 1\n+x = 2  # already fine\n", False),
    ("--- a/trainer/train.py\n+++ b/trainer/train.py\n-LOGIT_CAP = 15.0\n+LOGIT_CAP = 30.0\n", False),
    (" WARMDOWN_FRAC = 0.5\n-DEPTH = 8\n+DEPTH = 6\n", False),  # a context line is not a change
])
def test_which_changes_are_schedule_changes(diff, schedule):
    assert touches_schedule(diff) is schedule


# ---- real curves: an H200 session's kept schedule change, behind mid-run (tests/data/) ----

def real() -> dict:
    import json
    from pathlib import Path

    return json.loads((Path(__file__).parent / "data" / "h200_kept_schedule_change.json").read_text())


def test_a_kept_schedule_change_behind_mid_run_on_the_h200_is_not_pruned():
    """SCALAR_LR 0.5 -> 1.0 was kept (2.4 noise units better than the baselines' mean) after its
    training loss had been behind the baselines' by ~0.4 at 30% of the budget and ~0.2 at 50%."""
    d = real()
    kept, baselines = d["kept"], d["baselines"]
    assert d["metric"] < min(d["baseline_metrics"])  # it won
    r = reference(None, baselines, [], S)  # (no best curve yet: the rule is off)
    assert isinstance(r, str)
    from engine.early_stop import mean_curve

    r = reference(mean_curve(baselines), baselines, [], S)
    assert isinstance(r, Reference)
    behind = {f: window_loss(kept, f, S.window) - b for f, b in zip(r.fractions, r.best)}
    assert behind[0.3] > 0.3 and behind[0.5] > 0.15  # well behind mid-run: what a naive rule kills
    assert judge(kept, r, Settings(schedule_grace=S.grace), schedule=True) is not None  # judged like any change: killed
    assert touches_schedule(d["diff"])
    assert judge(kept, r, S, schedule=touches_schedule(d["diff"])) is None  # the rule as shipped: it runs to its end
    # and once kept, how far behind it was widens the band for the session's later runs
    learned = reference(kept, baselines, [(kept, mean_curve(baselines))], S)
    assert isinstance(learned, Reference) and learned.band[0] > behind[0.3]


# ---- the watch of one run, and the human's let-finish (engine/session/pruner.py, engine/control.py) ----

def watched(control=None):
    from engine.control import Control
    from engine.run.runs import Run
    from engine.session.pruner import Watch

    control = control or Control()
    r = Run(5, "s" * 40, "p" * 40, 1.0, 2, "experiment", "WIDTH 32 -> 1")
    r.cancel = control.begin_run(5)
    said: list = []
    return Watch(r, ref(), S, False, 60.0, control, said.append), r, control, said


def test_a_watched_run_behind_the_band_is_cancelled_with_its_reason_and_its_training_seconds():
    w, r, control, said = watched()
    c = curve(offset=0.3, seed=5)
    for i in range(2, len(c) + 1):
        w.see(c[:i])
        if r.cancel.is_set():
            break
    assert r.cancel.is_set() and r.pruned is not None and r.pruned.startswith("pruned at ")
    assert r.trained == pytest.approx(60.0 * float(r.pruned.split("%")[0].split()[-1]) / 100, abs=0.6)
    assert [type(e).__name__ for e in said] == ["RunPruned"] and not said[0].held
    assert not control.let_finish(5)  # being stopped: too late to let it finish, and nothing journaled
    assert control.take_let_finish() == []


def test_a_run_already_being_stopped_is_not_pruned_on_top():
    w, r, control, said = watched()
    control.veto("no", 5)  # its cancel is set: the veto decides
    w.see(curve(offset=0.3, seed=5))
    assert r.pruned is None and said == []


def test_a_run_the_human_lets_finish_runs_on_and_the_rule_says_once_where_it_would_have_stopped_it():
    w, r, control, said = watched()
    assert control.let_finish(5) and control.take_let_finish() == [5] and control.take_let_finish() == []
    c = curve(offset=0.3, seed=5)
    for i in range(2, len(c) + 1):
        w.see(c[:i])
    assert not r.cancel.is_set() and r.pruned is None
    assert len(said) == 1 and said[0].held
