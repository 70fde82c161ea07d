"""The TUI reads a session through its view (issue 23, point 3): a proposal the session abandoned
at its stop is told by its journal row (experiments.abandoned), not by the text of an event's
description; real app, real journal and git repository, the engine's events scripted."""

from __future__ import annotations

import time
from types import SimpleNamespace

from cockpit.app import CockpitApp
from engine import events as ev
from engine.store.journal import Journal
from engine.store.view import SessionView
from test_tui_snapshot import FixedTelemetry, ScriptedEngine, settle
from test_view import ws  # noqa: F401  (the fixture: a workspace, its journal and commits)


def agent_lines(app) -> list[str]:
    return [t.plain for t in app.reasoning.texts]


async def test_an_abandoned_proposal_is_told_by_its_row_not_its_description(ws):  # noqa: F811
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    sid = j.session_by_tag("t1").id
    j.update_experiment(sid, 4, abandoned=1)  # #4: prepared while others trained, abandoned at the stop
    j.add_experiment(sid, 5, "experiment", "base", "running", "try 5")  # #5: queued, stopped before it ran
    j.update_experiment(sid, 5, status="interrupted", reason="the session stopped before it ran", finished=time.time())
    j.close()

    def script():
        yield ev.SessionStarted(session_id=sid, tag="t1", branch="cockpit/t1", agent="tuner", resumed=True,
                                best_commit=None, best_metric=None, next_experiment=4)
        for n in (4, 5):  # the same words for both: only the rows tell them apart
            yield ev.ExperimentFinished(n=n, commit="", status="interrupted", metric=None, delta=None, confidence=None,
                                        best_metric=0.99, description="(not run)", reason=f"stopped #{n}")

    engine = ScriptedEngine(ws / "program.md")
    engine.script = script
    engine.session = SimpleNamespace(id=sid)  # a session with a journal: the app reads its rows
    view = SessionView.of_workspace(SimpleNamespace(root=ws, config=None))
    app = CockpitApp(engine, [], telemetry=FixedTelemetry(), view=view)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, engine)(pilot)
        said = agent_lines(app)
        assert any(line.startswith("#5 interrupted") for line in said), said
        assert not any(line.startswith("#4 interrupted") for line in said), "an abandoned proposal has no result to say"
        assert "#5 interrupted" in str(app.run_panel.stats.render()), "the run panel shows the last that was to run"
    view.close()
