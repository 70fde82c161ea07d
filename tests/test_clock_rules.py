"""The clock rules (harness/clock.py) as tables: when a run or its evaluation is out of time, what a
run's allowance is, and when a finished run is over its budget. Pure functions: no process runs
here. (The protocol and the step tolerance have their tables in test_redteam_clock.py.)"""

from __future__ import annotations

import pytest

from harness import clock
from harness.clock import EXPORT_ALLOWANCE, Limits

# startup 60, warm-up 10; tolerance floor 2; a 20 s budget: tolerance cap 12, slack 5
LIMITS = Limits(startup=60, warmup=10, eval=60, over_budget_tolerance=2.0)
BUDGET = 20.0
WALL = 60 + (10 + EXPORT_ALLOWANCE) + 20 + 12 + 5  # startup + allowance + budget + tolerance cap + slack


@pytest.mark.parametrize("budget, cap, slack", [
    (0.0, 10.0, 5.0),
    (20.0, 12.0, 5.0),
    (50.0, 15.0, 5.0),
    (300.0, 40.0, 30.0),  # long budgets: a tenth of the budget
])
def test_the_tolerance_cap_and_the_slack_grow_with_the_budget(budget, cap, slack):
    assert clock.tolerance_cap(budget) == pytest.approx(cap)
    assert clock.slack(budget) == pytest.approx(slack)


@pytest.mark.parametrize("credit, export_estimate, allowance, wall, in_process", [
    (None, 0.0, 10.0, WALL, None),  # the run measures its own allowance: the warm-up allowance
    (4.0, 1.0, 10.0, WALL, 3.0),  # a session's allowance under the warm-up allowance: the larger counts
    (30.0, 6.0, 30.0, WALL + 20, 24.0),  # ... over it: the session's; the export's part is spent after the in-process clock
    (2.0, 5.0, 10.0, WALL, 0.0),  # the export's estimate past the credit: nothing in process, never negative
])
def test_the_allowance_and_the_whole_life_fixed_at_launch(credit, export_estimate, allowance, wall, in_process):
    limits = Limits(startup=60, warmup=10, eval=60, over_budget_tolerance=2.0, credit=credit,
                    export_estimate=export_estimate)
    assert limits.allowance() == pytest.approx(allowance)
    assert limits.wall(BUDGET) == pytest.approx(wall)
    assert limits.credit_in_process() == (None if in_process is None else pytest.approx(in_process))


# (t_ready, t_first, t_exporting, step times) -> (deadline, words of its reason); t_go = 0
@pytest.mark.parametrize("t_ready, t_first, t_exporting, steps, deadline, why", [
    (None, None, None, [], 60.0, "no start within 60s"),  # never said "ready": the startup cap
    (1.0, None, None, [], 1 + 10 + 20 + 2 + 5 + 12, "budget"),  # still in its first step: + the tolerance cap
    (1.0, 5.0, None, [], 1 + 10 + 20 + 2 + 5, "budget"),  # training: allowance + budget + tolerance + slack
    (1.0, 5.0, None, [3.0, 3.0, 3.0], 1 + 10 + 20 + 9 + 5, "budget"),  # slow steps stretch the tolerance
    (1.0, 5.0, None, [30.0] * 3, 1 + 10 + 20 + 12 + 5, "budget"),  # ... up to its cap
    (1.0, 5.0, 30.0, [], 30 + EXPORT_ALLOWANCE, "exporting"),  # exporting: the export's allowance
    (1.0, 5.0, 150.0, [], WALL, "most a run may take"),  # ... never past the life fixed at launch
])
def test_the_training_process_is_killed_at_the_deadline_of_its_phase(t_ready, t_first, t_exporting, steps,
                                                                      deadline, why):
    at, reason = clock.deadline(LIMITS, BUDGET, 0.0, t_ready, t_first, t_exporting, steps)
    assert at == pytest.approx(deadline)
    assert why in reason


def test_a_session_allowance_larger_than_the_warm_up_moves_the_training_deadline():
    limits = Limits(startup=60, warmup=10, eval=60, over_budget_tolerance=2.0, credit=30.0)
    at, _ = clock.deadline(limits, BUDGET, 0.0, 1.0, 5.0, None, [])
    assert at == pytest.approx(1 + 30 + 20 + 2 + 5)


@pytest.mark.parametrize("t_ready, t_first, steps, tol", [
    (1.0, 5.0, [], 2.0),  # nothing measured: the floor
    (1.0, 21.0, [], 10.0),  # the first step ran 10 s past its 10 s allowance
    (1.0, 40.0, [], 12.0),  # ... at most the cap
    (None, None, [3.0, 3.0, 3.0], 9.0),  # no first step: the steps alone
])
def test_a_runs_tolerance_counts_how_far_its_first_step_ran_over(t_ready, t_first, steps, tol):
    assert clock.run_tolerance(LIMITS, BUDGET, steps, t_ready, t_first) == pytest.approx(tol)


# the run's own allowance: its first step (up to the warm-up allowance) + its export (up to EXPORT_ALLOWANCE)
@pytest.mark.parametrize("t_first, t_exporting, t_trained, credit", [
    (4.0, 30.0, 32.0, 3.0 + 2.0),
    (25.0, 30.0, 32.0, 10.0 + 2.0),  # a first step past the warm-up allowance: capped
    (4.0, 30.0, 130.0, 3.0 + EXPORT_ALLOWANCE),  # a long export: capped
    (None, 30.0, 32.0, 10.0 + 2.0),  # no step reported: up to "exporting", capped
    (None, None, 6.0, 5.0),  # neither: up to "trained", no export
    (0.5, None, 6.0, 0.0),  # a clock that ran backwards counts nothing
])
def test_a_runs_own_allowance_is_its_first_step_and_its_export_each_capped(t_first, t_exporting, t_trained, credit):
    assert clock.own_credit(10.0, 1.0, t_first, t_exporting, t_trained) == pytest.approx(credit)


@pytest.mark.parametrize("train_s, tolerance, over", [
    (19.0, 2.0, False),
    (22.0, 2.0, False),  # at the tolerance's end: still valid
    (22.1, 2.0, True),
    (25.0, 6.0, False),  # a larger tolerance (slow steps)
])
def test_a_run_that_trained_past_its_budget_and_tolerance_is_over_budget(train_s, tolerance, over):
    reason = clock.over_budget(train_s, BUDGET, tolerance, 3.0)
    assert (reason is not None) == over
    if over:
        assert reason == (f"training took {train_s:.1f}s, over the 20s budget (+{tolerance:.1f}s tolerance; "
                          "compilation and export are allowed 3.0s)")


# The H200 case that showed the difference: allowance 38.8 s (33.8 s of it in process, a 5 s export
# estimate), ready at 0.04, "exporting" at 94.05, "trained" at 95.43 (a 1.4 s export): the budget's
# clock counted 60.2 s; ready-to-trained less the whole allowance said 56.6 s.
@pytest.mark.parametrize("t_exporting, t_trained, credit, export_estimate, counted", [
    (94.05, 95.43, 38.8, 5.0, 60.21),  # a quick export is not taken off training
    (94.05, 104.05, 38.8, 5.0, 60.21),  # a slow export is not training either
    (None, 95.43, 38.8, 5.0, 56.59),  # no "exporting" mark: ready to trained, less the whole allowance
    (94.05, 95.43, 3.0, 5.0, 94.01),  # an allowance below the export estimate gives none in process
])
def test_the_training_a_run_is_credited_with_is_what_its_budget_counted(t_exporting, t_trained, credit,
                                                                          export_estimate, counted):
    assert clock.counted_training(0.04, t_exporting, t_trained, credit, export_estimate) == pytest.approx(counted, abs=0.01)


@pytest.mark.parametrize("used, limit, killed", [
    (2_000_000_000, None, False),  # no limit
    (2_000_000_000, 0, False),
    (1_000_000_000, 1_500_000_000, False),
    (1_500_000_000, 1_500_000_000, False),
    (1_500_000_001, 1_500_000_000, True),
])
def test_a_run_over_its_memory_limit_is_killed(used, limit, killed):
    reason = clock.over_memory(used, limit)
    assert (reason is not None) == killed
    if killed:
        assert "over its limit of 1.5 GB" in reason


# the evaluation: allowance 10 s; on the CPU its own CPU time on each of its cores
@pytest.mark.parametrize("wall, cpu, cpu_used, cores, idle, why", [
    (9.0, False, None, 1, 0.0, None),  # an accelerator: wall time
    (11.0, False, None, 1, 0.0, "longer than 10s"),
    (11.0, False, None, 1, 999.0, "longer than 10s"),  # ... no CPU rule there
    (50.0, True, 9.0, 1, 0.0, None),  # the CPU: a loaded machine slows it without failing it
    (50.0, True, 11.0, 1, 0.0, "more than 10s of CPU time"),
    (50.0, True, 19.0, 2, 0.0, None),  # two cores: twice the CPU time
    (50.0, True, 21.0, 2, 0.0, "more than 20s of CPU time (10s on each of its 2 cores)"),
    (50.0, True, None, 1, 0.0, None),  # not ready yet: its imports do not count
    (50.0, True, 1.0, 1, 61.0, "hangs"),  # no CPU at all for the stall time
    (50.0, True, 1.0, 1, 59.0, None),
    (101.0, True, 1.0, 1, 0.0, "backstop"),  # ten times the allowance of wall time ends any evaluation
])
def test_the_evaluation_is_stopped_by_its_clock(wall, cpu, cpu_used, cores, idle, why):
    reason = clock.eval_over(10.0, wall, cpu=cpu, cpu_used=cpu_used, cores=cores, idle=idle, stall=60.0)
    assert reason is None if why is None else why in reason
