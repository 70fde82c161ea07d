"""Issue #22's TUI points, driven with Textual's pilot: every way out asks the quit dialog (3), a
force-keep is confirmed and checked first (14), the table keeps its essential columns and the
best and running rows in sight (15), the agent pane says each thing once with its experiment's
number (16), the palette's screenshot, `up` from the session's start, labelled sparklines (17).
The real engine where the journal must show it; the scripted engine of the snapshot tests where
only the screen does."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from rich.console import Console

from cockpit.app import CockpitApp
from cockpit.consequences import force_keep_consequences, quit_consequences, veto_consequences
from cockpit.screens import ForceKeepScreen, QuitScreen, VetoScreen
from engine import events as ev
from cockpit.gpu import Sample
from engine.store.journal import Experiment, Journal
from engine.session.record import force_keep_refusal
from test_tui import notices, rows, value_app, value_workspace, wait_for
from test_tui_snapshot import FixedTelemetry, ScriptedEngine, ScriptedView, make_app, settle


def screen_text(app) -> list[str]:
    """The screen as the human reads it, line by line."""
    w, h = app.size
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    console = Console(width=w, height=h, record=True, file=open("/dev/null", "w"), color_system=None, legacy_windows=False)
    console.print(update)
    return console.export_text().splitlines()


def table_line(app, n: int) -> str:
    """The table's line of experiment n on screen (its number first, after a marker)."""
    found = [line for line in screen_text(app) if re.match(rf"^[ ↑↓]\*?{n}\s", line)]
    assert found, f"#{n} is not on screen"
    return found[0]


def agent_lines(app) -> list[str]:
    return [t.plain for t in app.reasoning.texts]


# ---- 3: every way out goes through the quit dialog ----

async def test_ctrl_q_ctrl_c_and_the_palette_ask_the_quit_dialog_and_the_run_is_not_lost(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.running_n is not None and app.running_n > 1, what="an experiment running")
        for key in ("ctrl+q", "ctrl+c"):
            await pilot.press(key)
            assert isinstance(app.screen, QuitScreen), key
            assert app.control.stop_mode is None and app.is_running
            await pilot.press("escape")
        await pilot.press("ctrl+p")
        await pilot.press(*"quit")
        await pilot.pause(0.5)
        options = app.screen.query("CommandList").first()
        found = [options.get_option_at_index(i).prompt.plain.splitlines()[0] for i in range(options.option_count)]
        assert [f for f in found if "Quit" in f] == ["Quit (q)"], found  # one Quit, the dialog's
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert isinstance(app.screen, QuitScreen)
        assert app.screen.text.startswith("Stop the session?")  # what each choice does: the table test below
        await pilot.press("a")  # after this run
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop after the run")
    j = Journal(ws / ".cockpit/journal.sqlite")
    ran = [e for e in j.experiments(j.session_by_tag("ui").id) if e.run_started is not None]  # (proposals that never ran aside)
    assert ran and all(e.status != "interrupted" for e in ran), [(e.n, e.status, e.description, e.reason) for e in ran]


@pytest.mark.parametrize("running, forced, says", [
    ([], [], "Nothing runs: nothing is lost either way."),
    ([7], [], "Now: #7 is stopped and recorded `interrupted` (the result is lost)."),
    ([7], [7], "the force-keep of #7 is dropped."),
    ([6, 7], [7], "After this run: #6, #7 finish and are recorded (#7 force-kept)."),
])
def test_the_quit_dialog_says_what_each_choice_loses(running, forced, says):
    assert says in quit_consequences(running, forced)


# ---- 14: force-keep asks first, and checks before it says anything ----

async def test_force_keep_asks_with_the_gap_to_the_best_and_only_yes_sends_it(tmp_path):
    app, engine, pending = make_app(tmp_path, "running")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, engine, pending)(pilot)
        app.table.move_cursor(row=list(rows(app)).index(4))  # #4: discarded, 0.0049 worse than #6
        await pilot.press("k")
        assert isinstance(app.screen, ForceKeepScreen)
        assert app.screen.text.startswith("#4 is 0.0049 worse than the best (#6); force-keep makes it the best "
                                          "and moves the session branch")
        await pilot.press("escape")
        assert app.control.force_pending() == []  # cancelled: nothing sent
        await pilot.press("k", "y")
        assert app.control.force_pending() == [4]
        assert notices(app)[-1] == "#4 will become the best before the next experiment"


async def test_k_on_a_baseline_says_one_thing_and_sends_nothing(tmp_path):
    app, engine, pending = make_app(tmp_path, "running")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, engine, pending)(pilot)
        app.table.move_cursor(row=list(rows(app)).index(1))
        before = len(app._notifications)
        await pilot.press("k")
        said = [str(n.message) for n in list(app._notifications)[before:]]
        assert said == ["cannot force-keep #1: it is a baseline (the starting code measured), not a change to keep"]
        assert not isinstance(app.screen, ForceKeepScreen) and app.control.force_pending() == []


async def test_the_veto_dialog_of_a_proposal_that_never_ran_says_it_is_dropped(tmp_path):
    app, engine, pending = make_app(tmp_path, "awaiting")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, engine, pending)(pilot)
        await pilot.press("v")
        assert isinstance(app.screen, VetoScreen)
        assert app.screen.text == "Veto experiment #8? It has not run: it is dropped and never runs."


@pytest.mark.parametrize("kw, says", [
    (dict(metric=1.041, best=1.0, best_n=3, noise=0.005859), "#7 is 0.041 worse than the best (#3) (7.0σ); force-keep"),
    (dict(metric=0.99, best=1.0, best_n=3, noise=None), "#7 is 0.01 better than the best (#3); force-keep"),
    (dict(metric=None, best=1.0, best_n=3, noise=None), "Force-keep #7? It is kept when it finishes, whatever its result"),
])
def test_the_force_keep_dialog_says_how_far_and_what_moves(kw, says):
    text = force_keep_consequences(7, direction="min", **kw)
    assert text.startswith(says) and "session branch" in text


@pytest.mark.parametrize("kw, says", [
    (dict(kind="baseline", metric=1.0, commit="c", best_n=2), "cannot force-keep #1: it is a baseline"),
    (dict(kind="experiment", metric=None, commit="c", best_n=2), "#1 has no measured result to keep"),
    (dict(kind="experiment", metric=1.0, commit=None, best_n=2), "#1 has no measured result to keep"),
    (dict(kind="experiment", metric=1.0, commit="c", best_n=2, harness_matches=False), "cannot force-keep #1: it was measured by another harness"),
    (dict(kind="experiment", metric=1.0, commit="c", best_n=1), "#1 is already the best"),
    (dict(kind="experiment", metric=1.0, commit="c", best_n=2), None),
])
def test_what_cannot_be_force_kept(kw, says):
    got = force_keep_refusal(1, **kw)
    assert got == says if says is None else got.startswith(says)


def test_the_veto_dialog_says_what_happens_to_a_run_and_to_a_waiting_proposal():
    assert "training is killed" in veto_consequences(3, running=True)
    assert "killed" not in veto_consequences(3, running=False)


# ---- 15: the table's columns and rows at 120x40 and 80x24 ----

@pytest.mark.parametrize("size, description, delta", [((120, 40), "HEAD_DIM 128 -> 64", "+0.001200"),
                                                      ((80, 24), "HEAD_DIM 128", "+0.0012")])
async def test_the_table_keeps_delta_and_description_at_size(tmp_path, size, description, delta):
    app, engine, pending = make_app(tmp_path, "running")
    async with app.run_test(size=size) as pilot:
        await settle(app, engine, pending)(pilot)
        line = table_line(app, 4)
        assert delta in line and description in line and "discard" in line, line


def long_session():
    """A best early on, then many discards, and one running: more rows than an 80x24 table shows."""
    yield ev.SessionStarted(session_id=1, tag="long", branch="cockpit/long", agent="tuner", resumed=False,
                            best_commit="a" * 40, best_metric=None, next_experiment=1)
    yield ev.ExperimentProposed(n=1, description="baseline 1/1", diff_stat="", kind="baseline")
    yield ev.ExperimentStarted(n=1, commit="1" * 40, kind="baseline")
    yield ev.ExperimentFinished(n=1, commit="1" * 40, status="keep", metric=1.0, delta=None, confidence=None,
                                best_metric=None, description="baseline 1/1", kind="baseline")
    yield ev.ExperimentProposed(n=2, description="the good one", diff_stat="")
    yield ev.ExperimentStarted(n=2, commit="2" * 40)
    yield ev.BestChanged(n=2, commit="2" * 40, metric=0.99)
    yield ev.ExperimentFinished(n=2, commit="2" * 40, status="keep", metric=0.99, delta=-0.01, confidence=5.0,
                                best_metric=0.99, description="the good one")
    for n in range(3, 20):
        yield ev.ExperimentProposed(n=n, description=f"try {n}", diff_stat="")
        yield ev.ExperimentStarted(n=n, commit=f"{n:07x}" + "0" * 33)
        yield ev.ExperimentFinished(n=n, commit=f"{n:07x}" + "0" * 33, status="discard", metric=0.995, delta=0.005,
                                    confidence=-2.0, best_metric=0.99, description=f"try {n}")
    yield ev.ExperimentProposed(n=20, description="the running one", diff_stat="")
    yield ev.ExperimentStarted(n=20, commit="20" * 20)
    yield ev.StateChanged(text="running #20 (train)", n=20, phase="train")


async def test_the_best_and_running_rows_stay_in_sight_at_80x24(tmp_path):
    program = tmp_path / "program.md"
    program.write_text("# program\n")
    engine = ScriptedEngine(program)
    engine.script = long_session
    app = CockpitApp(engine, [], telemetry=FixedTelemetry(), view=ScriptedView(engine))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, engine)(pilot)
        assert "the good one" in table_line(app, 2) and "0.990000" in table_line(app, 2)  # the best, pinned
        assert "running" in table_line(app, 20)
        app.table.move_cursor(row=3)  # the human scrolls up: the running row goes out of the table's view
        await pilot.pause(0.3)
        assert table_line(app, 20).startswith("↓20") and "running" in table_line(app, 20)
        assert "the good one" in table_line(app, 2)


# ---- 16: the agent pane ----

async def test_concurrent_proposals_stream_each_on_its_own_lines_with_its_number(tmp_path):
    app, engine, pending = make_app(tmp_path, "running")
    engine.tail = [ev.AgentText(n=8, text="I will try "), ev.AgentText(n=9, text="Let me change "),
                   ev.AgentText(n=8, text="a longer warmdown.\n"), ev.AgentText(n=9, text="the LR floor.\n"),
                   ev.ToolCalled(n=9, name="edit_file", summary="trainer/train.py")]
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, engine, pending)(pilot)
        lines = agent_lines(app)
        assert "#8 I will try a longer warmdown." in lines and "#9 Let me change the LR floor." in lines, lines[-5:]
        assert "#9 → edit_file trainer/train.py" in lines


async def test_a_veto_is_said_once_in_the_agent_pane(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("r")
        await wait_for(pilot, lambda: app.awaiting_n is not None, what="a proposal awaiting approval")
        n = app.awaiting_n
        await pilot.press("v", "enter")
        await wait_for(pilot, lambda: rows(app)[n]["status"] == "vetoed", what="the veto recorded")
        await pilot.press("r", "q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")
    said = [line for line in agent_lines(app) if line.startswith(f"#{n} vetoed")]
    assert len(said) == 1, said


def journal_row(n: int, status: str, metric: float | None, kind: str = "experiment", description: str = "") -> Experiment:
    return Experiment(id=n, session_id=1, n=n, kind=kind, parent_commit="a" * 40, commit_sha=f"{n:07x}" + "0" * 33,
                      diff_stat="", description=description, status=status, reason=None, metric=metric, delta=None,
                      confidence=None, training_seconds=1.0, total_seconds=2.0, memory_gb=None, tokens_in=0, tokens_out=0,
                      cache_write=0, cache_read=0, cost_usd=0.0, started=time.time() - 60, finished=time.time() - 30,
                      log_path=None, run_started=time.time() - 59)


async def test_on_resume_a_result_the_journal_and_an_event_both_carry_is_said_once(tmp_path):
    """A busy machine draws the resume's first frame late: by then the journal already holds #5,
    which the resumed session ran, and the frame also carries #5's events."""
    history = [journal_row(1, "keep", 1.0, kind="baseline", description="baseline 1/1"),
               journal_row(4, "keep", 0.99, description="OTHER 3 -> 2"),
               journal_row(5, "keep", 0.98, description="OTHER 2 -> 1")]

    def resumed():
        yield ev.SessionStarted(session_id=1, tag="ui", branch="cockpit/ui", agent="tuner", resumed=True,
                                best_commit="a" * 40, best_metric=0.99, next_experiment=5)
        yield ev.ExperimentProposed(n=5, description="OTHER 2 -> 1", diff_stat="")
        yield ev.ExperimentStarted(n=5, commit="5" * 40)
        yield ev.BestChanged(n=5, commit="5" * 40, metric=0.98)
        yield ev.ExperimentFinished(n=5, commit="5" * 40, status="keep", metric=0.98, delta=-0.01, confidence=3.0,
                                    best_metric=0.98, description="OTHER 2 -> 1")

    program = tmp_path / "program.md"
    program.write_text("# program\n")
    engine = ScriptedEngine(program)
    engine.script = resumed
    engine.journal.experiments = lambda sid: history
    app = CockpitApp(engine, [], telemetry=FixedTelemetry(), view=ScriptedView(engine))
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, engine)(pilot)
    said = [line for line in agent_lines(app) if re.match(r"^#\d+ (keep|baseline)\b", line)]
    assert said == ["#1 baseline 1.000000", "#4 keep 0.990000", "#5 keep 0.980000 (-0.010000)"], said
    assert app.header_bar.counts == {"keep": 2}  # #4 and #5, each once


async def test_one_save_of_program_md_is_said_once(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    app.program_quiet = 3.0  # the save below takes ~0.6 s in three writes; a busy machine stays well inside this
    said = lambda: [line for line in agent_lines(app) if "program.md changed on disk" in line]  # noqa: E731
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.engine.session is not None, what="session")
        with open(ws / "program.md", "w") as f:  # an editor that truncates, then writes in pieces
            f.flush()
            await pilot.pause(0.3)
            f.write("# program\nlower the metric;")
            f.flush()
            await pilot.pause(0.3)
            f.write(" try OTHER first\n")
        await wait_for(pilot, lambda: said(), what="the change said")
        await pilot.pause(0.5)
        assert len(said()) == 1, said()
        await pilot.press("q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")


# ---- 17: the palette's screenshot, `up`, labelled sparklines ----

async def test_the_palettes_screenshot_saves_an_svg_and_says_where(tmp_path):
    app, engine, pending = make_app(tmp_path, "running")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, engine, pending)(pilot)
        await pilot.press("ctrl+p", *"screenshot")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, lambda: any(s.startswith("screenshot saved: ") for s in notices(app)), what="the screenshot",
                       timeout=10)
    path = Path(next(s for s in notices(app) if s.startswith("screenshot saved: ")).removeprefix("screenshot saved: "))
    assert path.parent == tmp_path / ".cockpit" / "screenshots" and path.suffix == ".svg"
    assert "<svg" in path.read_text() and "nov27" in path.read_text()


async def test_up_counts_from_the_sessions_start(tmp_path):
    app, engine, pending = make_app(tmp_path, "running")
    started = time.time() - 2 * 3600 - 5 * 60  # the session began 2 h 5 min ago, before this process
    engine.journal.session = lambda sid: type("S", (), dict(best_n=None, best_metric=None, created=started))()
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, engine, pending)(pilot)
        app.header_bar.refresh_text()
        assert "up 2:05" in screen_text(app)[0], screen_text(app)[0]


async def test_the_sparklines_say_what_they_draw(tmp_path):
    app, engine, pending = make_app(tmp_path, "running")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, engine, pending)(pilot)
        for i in range(10):  # ticks of several frames, and the device timer's samples
            app.render_event(ev.RunProgress(n=7, step=180 + i, loss=0.77 - 0.01 * i, tokens_per_second=1.5e6, mfu=0.35,
                                            fraction=0.5 + 0.01 * i, elapsed=150.0 + i))
            app.gpu.show([Sample("GPU0", 50.0 + 5 * i, 24.3, 79.6, 61.0, 512.0)])
        await pilot.pause(0.3)
        text = screen_text(app)
        assert any(re.search(r"│loss +[▁▂▃▄▅▆▇█]", line) for line in text), "\n".join(text[-14:])
        assert any(re.search(r"GPU0 .*[▁▂▃▄▅▆▇█]{4}", line) for line in text), "\n".join(text[-14:])
        assert any("▁▄█ = utilisation" in line for line in text), "\n".join(text[-14:])
