"""The engine's small parts on their own: InFlight (one count of the proposals taken, and the
proposals asked again) and StopRules (which limit stops the session, and its words)."""

from __future__ import annotations

import pytest

from engine.control import Control
from engine.run.runs import Run
from engine.session.inflight import InFlight
from engine.session.stop import Limits, StopRules
from engine.status import Status


def run(n: int) -> Run:
    return Run(n, "c" * 40, "p" * 40, 1.0, 1, "experiment", f"#{n}")


def test_a_proposal_asked_again_is_not_an_experiment_yet_and_waits_for_the_next_verdict():
    f = InFlight()
    f.took()
    f.took()
    assert f.taken == 2
    f.ask_again(5, "conflicts: asking again")  # at once
    f.ask_again(6, "nothing to propose: asking once a result is known", after_result=True)
    assert f.taken == 0 and f.waiting() == 2
    first = f.next_due()
    assert first is not None and (first.n, first.why) == (5, "conflicts: asking again")
    assert not f.due() and f.next_due() is None  # #6 waits for a verdict
    f.verdict()
    second = f.next_due()
    assert second is not None and second.n == 6 and f.waiting() == 0


def test_runs_made_wait_in_order_and_the_review_gate_holds_one():
    f = InFlight()
    f.queue(run(3))
    f.queue(run(4))
    f.hold(run(5))
    assert f.made() and [r.n for r in f.runs()] == [3, 4, 5] and f.waiting() == 3
    nxt = f.next_run()
    assert nxt is not None and nxt.n == 3
    released = f.release()
    assert released is not None and released.n == 5 and f.awaiting is None
    f.ask_again(9, "again")
    waited, again = f.clear()
    assert [r.n for r in waited] == [4] and [x.n for x in again] == [9]
    assert not f.made() and f.waiting() == 0


#   limits, proposals taken, crashes in a row, cost spent -> the reason (None: the session goes on)
LIMITS = [
    (Limits(), 100, 0, 0.0, None),
    (Limits(max_experiments=3), 2, 0, 0.0, None),
    (Limits(max_experiments=3), 3, 0, 0.0, "reached --max-experiments 3"),
    (Limits(max_cost=1.0), 0, 0, 0.99, None),
    (Limits(max_cost=1.0), 0, 0, 1.25, "reached --max-cost $1 (spent $1.25)"),
    (Limits(max_consecutive_crashes=2), 0, 1, 0.0, None),
    (Limits(max_consecutive_crashes=2), 0, 2, 0.0, "2 consecutive crashes"),
    (Limits(max_hours=0.0), 0, 0, 0.0, "reached --max-hours 0"),
]


@pytest.mark.parametrize("limits,taken,crashes,cost,reason", LIMITS)
def test_which_limit_stops_the_session(limits, taken, crashes, cost, reason):
    f = InFlight()
    f.taken = taken
    stop = StopRules(limits, Control(), f, lambda: cost)
    for _ in range(crashes):
        stop.count(Status.CRASH)
    assert stop.reason() == reason


def test_a_crash_count_is_of_crashes_in_a_row_and_the_humans_stop_comes_first():
    stop = StopRules(Limits(max_consecutive_crashes=2, max_experiments=0), Control(), InFlight(), lambda: 0.0)
    stop.count(Status.TIMEOUT)
    stop.count(Status.DISCARD)  # a result in between: the count starts again
    stop.count(Status.CRASH)
    assert stop.crashes == 1
    c = Control()
    stop = StopRules(Limits(max_experiments=0), c, InFlight(), lambda: 0.0)
    c.stop("after_run", by="signal SIGTERM")
    assert stop.reason() == "stopped by signal SIGTERM (after the run)"
    c.stop("now")  # the human presses stop-now after the signal
    assert stop.reason() == "stopped by the human (now)"


def test_only_the_best_part_writes_the_sessions_best_and_noise():
    """The best code, its metric, its experiment and the noise have one writer, engine/session/best.py:
    no other engine module passes those fields to the journal's update_session."""
    import ast
    from pathlib import Path

    from engine.session.best import FIELDS

    writers = []
    for path in sorted((Path(__file__).resolve().parents[1] / "engine").rglob("*.py")):
        if path.name == "best.py" or "template" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update_session"
                    and any(k.arg in FIELDS for k in node.keywords)):
                writers.append(f"{path.name}:{node.lineno}")
    assert writers == [], f"the session's best is written outside engine/session/best.py: {writers}"


def test_the_best_records_what_each_part_says(tmp_path):
    from engine.session.best import Best
    from engine.store.journal import Journal

    j = Journal(tmp_path / "journal.sqlite")
    s = j.create_session(tag="t", branch="cockpit/t", base_commit="a" * 40, agent="tuner", target="gpt/cpu/20s")
    best = Best(j)
    best.measured(s.id, 2.5, 0.01, 2)
    got = j.session(s.id)
    assert (got.best_metric, got.noise, got.best_n) == (2.5, 0.01, 2)
    best.kept(s.id, 7, "b" * 40, 2.4)
    got = j.session(s.id)
    assert (got.best_n, got.best_commit, got.best_metric, got.noise) == (7, "b" * 40, 2.4, 0.01)
    best.moved(s.id, "c" * 40)  # the same code (program.md): the noise stands
    assert j.session(s.id).noise == 0.01 and j.session(s.id).best_commit == "c" * 40
    best.moved(s.id, "d" * 40, code_changed=True)  # the human changed the code: measured again
    assert j.session(s.id).noise is None
