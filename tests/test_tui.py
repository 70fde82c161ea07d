"""The TUI driven with Textual's pilot: the real app, a real engine, a temporary workspace."""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from cockpit.app import CockpitApp
from cockpit.screens import ForceKeepScreen, HelpScreen, ProgramEditor, QuitScreen, VetoScreen
from engine.agents.tuner import Tuner
from engine.control import Control
from engine.store.journal import Journal
from engine.session.loop import Engine, Limits
from engine.run.targets import CommandTarget, GptTarget
from engine.store.workspace import init_workspace, open_workspace
from harness.dataset import current_dataset
from harness.profiles import CPU


def git(ws: Path, *args) -> str:
    return subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True, check=True).stdout.strip()


def value_workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=ws, check=True)
    (ws / "value.py").write_text("VALUE = 10.0\nOTHER = 3\n")
    (ws / "measure.py").write_text("import time, value\ntime.sleep(0.3)\nprint(f'metric: {value.VALUE + 0.001 * value.OTHER}')\n")
    (ws / "program.md").write_text("# program\nlower the metric\n")
    (ws / ".gitignore").write_text(".cockpit/\n__pycache__/\n")
    (ws / "cockpit.toml").write_text(textwrap.dedent("""
        [target]
        kind = "command"
        editable = ["value.py"]
        run = "python3 -c pass"
        measure = "python3 measure.py"
        metric = "metric"
        budget = 30
        [decision]
        baseline_runs = 1
    """))
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "setup"], cwd=ws, check=True)
    return ws


def value_app(ws: Path, max_experiments=None, tag="ui") -> CockpitApp:
    w = open_workspace(ws)
    engine = Engine(w, Tuner(), CommandTarget(w.root, w.config.target, None), control=Control(), tag=tag,
                    limits=Limits(max_experiments=max_experiments))
    return CockpitApp(engine, ["test session"])


async def wait_for(pilot, cond, timeout=60.0, what="condition"):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def rows(app):
    return app.table.data_rows


# ---- keys ----

async def test_force_keep_of_a_discarded_row_advances_the_branch(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: any(r["status"] == "discard" for r in rows(app).values()), what="a discard")
        n = next(k for k, r in rows(app).items() if r["status"] == "discard")
        await pilot.press("p")  # hold the loop: once the run in flight ends, nothing else can move the best
        await wait_for(pilot, lambda: app.running_n is None, what="the run in flight to end")
        app.table.follow = False
        app.table.move_cursor(row=list(rows(app)).index(n))
        await pilot.press("k")
        assert isinstance(app.screen, ForceKeepScreen)  # it says what it will do first
        await pilot.press("y")
        j = app.engine.journal
        await wait_for(pilot, lambda: j.session(app.engine.session.id).best_n == n, what="force-keep applied")
        e = j.experiment(app.engine.session.id, n)
        assert e.status == "forced"
        await pilot.press("q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")
    s = Journal(ws / ".cockpit/journal.sqlite").session_by_tag("ui")
    assert s.best_commit == e.commit_sha
    assert git(ws, "rev-parse", "cockpit/ui") == e.commit_sha


async def test_review_gate_holds_the_run_until_approved(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("r")
        assert app.control.review
        await wait_for(pilot, lambda: app.awaiting_n is not None, what="a proposal awaiting approval")
        n = app.awaiting_n
        await pilot.pause(1.0)
        assert rows(app)[n]["status"] == "proposing"  # nothing runs
        assert app.running_n is None
        await pilot.press("a")
        await wait_for(pilot, lambda: rows(app)[n]["status"] not in ("proposing", "running"), what="the approved run")
        await pilot.press("r", "q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")


async def test_edit_program_writes_the_file_and_the_agent_is_told(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.engine.session is not None, what="session")
        await pilot.press("e")
        assert isinstance(app.screen, ProgramEditor)
        area = app.screen.query_one("TextArea")
        area.text = "# program\nlower the metric; try OTHER first\n"
        await pilot.press("ctrl+s")
        assert not isinstance(app.screen, ProgramEditor)
        assert (ws / "program.md").read_text() == "# program\nlower the metric; try OTHER first\n"
        j = app.engine.journal
        await wait_for(pilot, lambda: any(x["kind"] == "instructions" for x in j.notes(app.engine.session.id)),
                       what="the agent's note about program.md")
        await pilot.press("q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")
    assert git(ws, "show", "cockpit/ui:program.md").endswith("try OTHER first")


async def test_an_external_edit_of_program_md_is_noticed(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.engine.session is not None, what="session")
        tmp = ws / "program.md.swp"
        tmp.write_text("# program\nreplaced by an editor\n")
        tmp.replace(ws / "program.md")  # editors that replace the file
        await wait_for(pilot, lambda: app.control._instructions or any(
            x["kind"] == "instructions" for x in app.engine.journal.notes(app.engine.session.id)), what="watchdog")
        await pilot.press("q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")


async def test_pause_holds_the_next_experiment(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: len(rows(app)) >= 2, what="a first experiment")
        await pilot.press("p")
        # the run in flight finishes; the next proposal may already be prepared (pipelining), but
        # nothing runs while paused
        await wait_for(pilot, lambda: app.running_n is None and all(r["status"] != "running" for r in rows(app).values()),
                       what="the current run to finish")
        count = len(rows(app))
        await pilot.pause(1.5)
        assert len(rows(app)) == count and app.running_n is None  # paused: nothing new, nothing running
        await pilot.press("p")
        await wait_for(pilot, lambda: len(rows(app)) > count, what="resume")
        await pilot.press("q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")


async def test_quit_then_restart_resumes_the_session(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: len(rows(app)) >= 3, what="some experiments")
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("a")  # stop after this run
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop after the run")
    j = Journal(ws / ".cockpit/journal.sqlite")
    s = j.session_by_tag("ui")
    before = len(j.experiments(s.id))
    assert all(e.status != "running" for e in j.experiments(s.id))
    w = open_workspace(ws)
    engine = Engine(w, Tuner(), CommandTarget(w.root, w.config.target, None), control=Control(), limits=Limits(max_experiments=1))
    # the best run's loss curve as the engine journals it (a command target reports none itself)
    curve = [(0.1, 3.5), (0.5, 2.25), (1.0, 2.0)]
    j.save_curve(s.id, s.best_n, curve)
    app2 = CockpitApp(engine, [])
    async with app2.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: engine.session is not None and app2.loss_plot.best_n is not None, what="resume")
        assert app2.loss_plot.best_curve == curve  # the loss comparison survives the restart
        await wait_for(pilot, lambda: app2.stop_reason is not None, what="the resumed session's one experiment")
        assert len(rows(app2)) == before + 1  # the table starts with the history, then continues
    assert engine.session.tag == "ui"
    assert max(e.n for e in j.experiments(s.id)) == before + 1


async def test_help_lists_every_key(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = "\n".join(app.screen.lines)
        for b in (b for b in app.BINDINGS if b.show):  # each key with what it does (ctrl+q, ctrl+c: in q's line)
            assert f"{b.key_display or b.key}[/b]  {app.ACTION_HELP[b.action]}" in text, b.action
        await pilot.press("escape")
        await pilot.press("q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")


async def test_veto_kills_the_training_process_and_is_journaled(tmp_path, tiny_cache):
    from conftest import use_light_trainer

    ws = tmp_path / "ws"
    use_light_trainer(init_workspace(ws), baseline_runs=1)  # the veto is the subject: a light trainer
    w = open_workspace(ws)
    target = GptTarget(w.root, w.config.target, tiny_cache, current_dataset(tiny_cache), CPU.with_budget(1.5))
    engine = Engine(w, Tuner(), target, control=Control(), tag="veto")
    app = CockpitApp(engine, [])
    async with app.run_test(size=(160, 48)) as pilot:
        # (events: the deadlines only catch a hang; a run on a busy 2-core machine takes minutes)
        await wait_for(pilot, lambda: any(r["status"] == "baseline" for r in rows(app).values()), what="the baseline", timeout=900)
        target.profile = CPU.with_budget(120)
        await wait_for(pilot, lambda: app.running_n == 2 and app.run_panel.losses, what="experiment 2 training", timeout=900)
        kids = [p for p in psutil.Process().children(recursive=True) if "harness.child" in " ".join(p.cmdline())]
        assert kids
        await pilot.press("v")
        assert isinstance(app.screen, VetoScreen)
        await pilot.press(*"too slow")
        t0 = time.monotonic()
        await pilot.press("enter")
        await wait_for(pilot, lambda: rows(app)[2]["status"] == "vetoed", what="vetoed", timeout=10)
        assert time.monotonic() - t0 < 5.0  # key to screen; the engine test measures the kill itself (< 2 s)
        assert not [p for p in kids if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        await pilot.press("q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop", timeout=60)
    e = Journal(ws / ".cockpit/journal.sqlite").experiment(engine.session.id, 2)
    assert e.status == "vetoed" and e.reason == "too slow"


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_the_main_screen_renders_a_live_session_at_size(tmp_path, size):
    """Snapshot-style: the real session on screen, at the smallest and a large terminal."""
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: len([r for r in rows(app).values() if r["metric"] is not None]) >= 3, what="results")
        await pilot.pause(0.3)
        svg = app.export_screenshot()
        await pilot.press("q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")
    text = svg.replace("&#160;", " ")
    for needle in ("ui", "best metric" if size[0] >= 120 else "best ", "keep", "Veto", "Quit", "#", "status", "state:"):
        assert needle in text, needle
    assert "Traceback" not in text


async def test_enter_opens_the_selected_experiment_and_shift_e_runs_the_editor(tmp_path, monkeypatch):
    ws = value_workspace(tmp_path)
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\necho "- added from EDITOR" >> "$1"\n')
    editor.chmod(0o755)
    monkeypatch.setenv("VISUAL", str(editor))
    app = value_app(ws)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: any(r["status"] == "discard" or r["status"] == "keep" for k, r in rows(app).items() if k > 1),
                       what="a finished experiment")
        n = next(k for k, r in rows(app).items() if k > 1 and r["metric"] is not None)
        await wait_for(pilot, lambda: max(rows(app)) > n, what="a newer row")
        app.table.follow = False
        app.table.move_cursor(row=list(rows(app)).index(n))
        await pilot.press("enter")
        assert app.diff.shown_n == n and str(app.diff.border_title).startswith(f"#{n} ")
        await pilot.pause(1.0)
        assert app.diff.shown_n == n  # live diffs do not replace what the human opened
        await pilot.press("E")
        await wait_for(pilot, lambda: "added from EDITOR" in (ws / "program.md").read_text(), what="the editor")
        await wait_for(pilot, lambda: app.control._instructions or any(
            x["kind"] == "instructions" for x in app.engine.journal.notes(app.engine.session.id)), what="the agent told")
        await pilot.press("q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")


# ---- the state line: every state, and what each key answers in it ----

def notices(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def test_the_state_line_names_each_state_and_every_key_answers_truthfully(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    state = lambda: str(app.state_bar.render())  # noqa: E731
    async with app.run_test(size=(160, 48)) as pilot:
        # running, and its phase
        await wait_for(pilot, lambda: app.running_n is not None and "running #" in state() or "baseline #" in state(),
                       what="a run in the state line")
        # a on nothing waiting: says so, and why
        await pilot.press("a")
        assert "nothing is waiting for approval (the review gate is off" in notices(app)[-1]
        # review gate: the state line says it is on, then that a proposal waits
        await pilot.press("r")
        await wait_for(pilot, lambda: app.awaiting_n is not None, what="a proposal waiting")
        n = app.awaiting_n
        await wait_for(pilot, lambda: f"awaiting approval of #{n}" in state(), what="awaiting in the state line")
        # pause while a proposal waits: lasting, not a fading notice
        await pilot.press("p")
        assert "paused" in state()
        await pilot.pause(3.0)
        assert "paused" in state() and f"awaiting approval of #{n}" in state()
        await pilot.press("p")
        assert "paused" not in state()
        # force-keep of the waiting proposal's run: pending until it finishes
        await pilot.press("a")
        await wait_for(pilot, lambda: app.running_n == n, timeout=30, what="the approved run")
        app.control.force_keep(n)
        app.refresh_state()
        assert f"force-keep pending for #{n}" in state()
        await pilot.press("r")
        # stop after the run: said until it happens
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("a")  # "after this run"
        assert "stopping after this run" in state() or state() == "state: stopped: stopped by the human (after the run)"
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")


async def test_after_the_session_stopped_by_itself_every_key_says_so_and_does_nothing(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws, max_experiments=1)
    state = lambda: str(app.state_bar.render())  # noqa: E731
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.stop_reason is not None, what="the session to reach its limit")
        assert state() == "state: stopped: reached --max-experiments 1"
        for key in ("k", "p", "v", "a", "r"):
            await pilot.press(key)
            assert "the session has stopped" in notices(app)[-1], key
        assert not app.control.paused and not app.control.review


async def test_the_command_palette_lists_every_action_with_its_key(tmp_path):
    ws = value_workspace(tmp_path)
    app = value_app(ws)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.engine.session is not None, what="session")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for b in app.BINDINGS:
            if b.show:  # ctrl+q and ctrl+c do what q does: listed once, as q
                assert any(t == f"{b.description} ({b.key_display or b.key})" for t in titles), b.action
        await pilot.press("ctrl+p")
        await pilot.press(*"pause")
        await pilot.pause(0.5)
        found = [str(h) for h in app.screen.query("CommandList").first().get_option_at_index(0).prompt.plain.splitlines()]
        assert any("Pause (p)" in f for f in found), found
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.control.paused  # chosen in the palette, done as the key does it
        await pilot.press("q", "n")
        await wait_for(pilot, lambda: app.stop_reason is not None, what="stop")


def test_cockpit_status_prints_the_state_line(tmp_path):
    from cockpit.cli import session_state
    from engine.store.journal import Session

    base = dict(id=1, tag="t", branch="b", base_commit="c", agent="tuner", target="x", created=0.0, updated=0.0, best_n=None,
                best_commit=None, best_metric=None, noise=None, stop_reason=None)
    import os

    assert session_state(Session(**base, status="running", state="paused", pid=os.getpid())) == "paused"
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = session_state(Session(**base, status="running", state="running #4 (train)", pid=gone.pid))
    assert dead.startswith("not running") and "last state: running #4 (train)" in dead
    assert session_state(Session(**dict(base, stop_reason="reached --max-experiments 3"), status="stopped")) == \
        "stopped: reached --max-experiments 3"
