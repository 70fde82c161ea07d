"""The TUI's state line as a pure function (cockpit/state_line.py; issue 23, point 5): each state,
and each pending request of the human, in a table."""

from __future__ import annotations

import pytest

from cockpit.state_line import state_line

BASE = dict(stopped=None, stop_mode=None, engine_state="running #7 (train)", awaiting_n=None, running=[7],
            force_pending=[], paused=False, review=False)


@pytest.mark.parametrize("given,want", [
    ({}, "running #7 (train)"),
    ({"engine_state": None, "running": []}, "starting"),
    ({"stopped": "reached --max-experiments 5", "stop_mode": "now"}, "stopped: reached --max-experiments 5"),
    ({"stop_mode": "now", "force_pending": [7]}, "stopping now"),
    ({"stop_mode": "after_run"}, "running #7 (train) · stopping after this run"),
    ({"stop_mode": "after_run", "running": [7, 8]}, "running #7 (train) · stopping after the runs"),
    ({"paused": True}, "running #7 (train) · pausing after this run"),
    ({"paused": True, "running": [], "engine_state": "proposing #8"}, "proposing #8 · paused"),
    ({"paused": True, "running": [], "engine_state": "paused"}, "paused"),
    ({"paused": True, "stop_mode": "after_run"}, "running #7 (train) · stopping after this run"),
    # a force-keep of the running experiment names the latest started
    ({"force_pending": [None], "running": [7, 9]}, "running #7 (train) · force-keep pending for #9"),
    ({"force_pending": [3, None]}, "running #7 (train) · force-keep pending for #3 · force-keep pending for #7"),
    ({"review": True}, "running #7 (train) · review gate on"),
    # waiting at the review gate: said first, and the gate is not said again
    ({"review": True, "awaiting_n": 8, "engine_state": "proposing #8", "running": []}, "awaiting approval of #8"),
    ({"review": True, "awaiting_n": 8, "engine_state": "awaiting approval of #8", "running": []},
     "awaiting approval of #8"),
])
def test_the_state_line_says_each_state_and_each_pending_request(given, want):
    assert state_line(**{**BASE, **given}) == want
