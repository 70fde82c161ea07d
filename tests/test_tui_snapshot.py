"""Snapshot tests with Textual's own tool (pytest-textual-snapshot): the real app, fed by a scripted
engine (a fixed stream of events, no clock in what is drawn), at 80x24 and 160x48, in every state
of the state line, with each dialog and the help screen. The SVGs are in tests/__snapshots__/;
after an intended change run `pytest tests/test_tui_snapshot.py --snapshot-update`, and review
them (a failing run writes a visual diff report, snapshot_report.html)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cockpit.app import CockpitApp
from engine import events as ev
from engine.control import Control
from cockpit.gpu import Sample

DIFF = """diff --git a/trainer/train.py b/trainer/train.py
--- a/trainer/train.py
+++ b/trainer/train.py
@@ -41,7 +41,7 @@
-WARMDOWN_FRAC = 0.5                          # linear LR decay over the last part of the budget
+WARMDOWN_FRAC = 0.6                          # linear LR decay over the last part of the budget
"""


def script():
    yield ev.SessionStarted(session_id=1, tag="nov27", branch="cockpit/nov27", agent="claude", resumed=False,
                            best_commit="a" * 40, best_metric=None, next_experiment=1)
    for n, metric in ((1, 0.9981), (2, 0.9979)):
        yield ev.ExperimentProposed(n=n, description=f"baseline {n}/2", diff_stat="", kind="baseline")
        yield ev.ExperimentStarted(n=n, commit=f"{n:07x}" + "0" * 33, kind="baseline")
        yield ev.ExperimentFinished(n=n, commit=f"{n:07x}" + "0" * 33, status="keep", metric=metric, delta=None, confidence=None,
                                    best_metric=None, description=f"baseline {n}/2", kind="baseline")
    rows = [(3, "keep", 0.9911, -0.0069, 4.9, "MATRIX_LR 0.04 -> 0.05: faster early progress"),
            (4, "discard", 0.9923, 0.0012, -0.9, "HEAD_DIM 128 -> 64"),
            (5, "crash", None, None, None, "value embeddings on every layer"),
            (6, "keep", 0.9874, -0.0037, 2.6, "WARMDOWN_FRAC 0.5 -> 0.7")]
    best = 0.998
    for n, status, metric, delta, conf, desc in rows:
        yield ev.ExperimentProposed(n=n, description=desc, diff_stat="1 file changed")
        yield ev.ExperimentStarted(n=n, commit=f"{n:07x}" + "0" * 33)
        if status == "keep":
            best = metric
            yield ev.BestChanged(n=n, commit=f"{n:07x}" + "0" * 33, metric=metric)
        yield ev.ExperimentFinished(n=n, commit=f"{n:07x}" + "0" * 33, status=status, metric=metric, delta=delta,
                                    confidence=conf, best_metric=best, description=desc,
                                    reason="CUDA out of memory" if status == "crash" else None)
    yield ev.AgentThinking(n=7, text="The warmdown change helped; a longer one may help more, but the LR floor matters too.")
    yield ev.AgentText(n=7, text="Trying WARMDOWN_FRAC 0.7 -> 0.8.")
    yield ev.ToolCalled(n=7, name="edit_file", summary="trainer/train.py")
    yield ev.DiffUpdated(n=7, diff=DIFF)
    yield ev.ExperimentProposed(n=7, description="WARMDOWN_FRAC 0.7 -> 0.8", diff_stat="1 file changed")
    yield ev.ExperimentStarted(n=7, commit="7" * 40)
    yield ev.RunProgress(n=7, step=180, loss=0.7712, tokens_per_second=1.53e6, mfu=0.35, fraction=0.5, elapsed=150.0)


class ScriptedEngine:
    def __init__(self, program: Path, tail=(), reason: str | None = None):
        self.control = Control()
        self.error = None
        self._subs = []
        self.target = SimpleNamespace(metric_name="val_bpb", direction="min", device="cuda")
        self.ws = SimpleNamespace(program_path=program, state=program.parent / ".cockpit")
        self.session = None
        session = SimpleNamespace(best_n=None, best_metric=None, tag="nov27", created=time.time())
        self.journal = SimpleNamespace(total_cost=lambda sid: 1.23, session=lambda sid: session,
                                       experiments=lambda sid: [])
        self.tail = list(tail)  # the events that put the session in the state under test
        self.reason = reason  # set: the session stops by itself with this reason
        self.script = script  # the events of the session so far
        self.done = threading.Event()

    def subscribe(self, fn):
        self._subs.append(fn)

    def run(self):
        for e in [*self.script(), *self.tail]:
            if isinstance(e, ev.ExperimentStarted):  # the control knows what runs, as with the engine
                self.control.begin_run(e.n)
            elif isinstance(e, ev.ExperimentFinished):
                self.control.end_run(e.n)
            for fn in self._subs:
                fn(e)
        self.done.set()
        if self.reason:
            return self.reason
        self.control.stopping.wait()  # until the app goes away (stop now)
        return "stopped"


class ScriptedView:
    """The read model (engine/store/view.py's surface) of a scripted session: what its stand-in journal
    holds; no row of its own (the app takes each row from the events, as with no journal)."""

    def __init__(self, engine):
        self.engine = engine
        self.program_path = engine.ws.program_path
        self.state = engine.ws.state
        self.sid = None

    def bind(self, sid):
        self.sid = sid

    def session(self):
        return self.engine.journal.session(self.sid)

    def history(self):
        return self.engine.journal.experiments(self.sid)

    def experiment(self, n):
        return None

    def curve(self, n):
        """#6, the best: a loss curve like the trainer's (the loss pane draws it beside the running run's)."""
        return [(i / 40, best_loss(i / 40)) for i in range(41)] if n == 6 else []

    def cost(self):
        return self.engine.journal.total_cost(self.sid)


class FixedTelemetry:
    """One device sample, however often the UI's timer asks (a busy machine asks fewer times)."""

    kind = "gpu"

    def __init__(self):
        self.given = False

    def sample(self):
        if self.given:
            return []
        self.given = True
        return [Sample("GPU0", 97.0, 24.3, 79.6, 61.0, 512.0)]


RUNNING = [ev.StateChanged(text="running #7 (train)", n=7, phase="train")]
# state -> (events after the script, what the human asked for that is pending, the stop reason)
STATES = {
    "running": (RUNNING, None, None),
    "evaluating": ([ev.StateChanged(text="running #7 (eval)", n=7, phase="eval")], None, None),
    "proposing": ([ev.ExperimentFinished(n=7, commit="7" * 40, status="discard", metric=0.9880, delta=0.0006,
                                         confidence=-0.4, best_metric=0.9874, description="WARMDOWN_FRAC 0.7 -> 0.8"),
                   ev.ExperimentProposed(n=8, description="(proposing)", diff_stat=""),
                   ev.StateChanged(text="proposing #8", n=8)], None, None),
    "paused": (RUNNING, "pause", None),
    "awaiting": ([ev.ExperimentFinished(n=7, commit="7" * 40, status="discard", metric=0.9880, delta=0.0006,
                                        confidence=-0.4, best_metric=0.9874, description="WARMDOWN_FRAC 0.7 -> 0.8"),
                  ev.ExperimentProposed(n=8, description="EMBED_LR 0.6 -> 0.8", diff_stat="1 file changed"),
                  ev.AwaitingApproval(n=8), ev.StateChanged(text="awaiting approval of #8", n=8)], "review", None),
    "force-keep": (RUNNING, "force", None),
    "stopping": (RUNNING, "stop", None),
    "stopped": ([ev.ExperimentFinished(n=7, commit="7" * 40, status="discard", metric=0.9880, delta=0.0006,
                                       confidence=-0.4, best_metric=0.9874, description="WARMDOWN_FRAC 0.7 -> 0.8"),
                 ev.StateChanged(text="stopped: reached --max-experiments 5")], None, "reached --max-experiments 5"),
}
# early stop: #7 pruned (a row of its own), then #8 behind the rule's line, which the human lets finish
def best_loss(f: float) -> float:  # the best's (#6) training loss at fraction f of the budget (ScriptedView.curve)
    return 0.6 + 0.9 * (1 - f) ** 2


LINE = tuple((round(0.3 + 0.05 * i, 2), best_loss(0.3 + 0.05 * i) + 0.02) for i in range(15))  # band 0.02
PRUNED = [ev.RunProgress(n=7, step=260, loss=0.8790, tokens_per_second=1.52e6, mfu=0.35, fraction=0.45, elapsed=135.0),
          ev.RunPruned(n=7, fraction=0.45, loss=0.8790, reason="pruned at 45%: loss 0.879 vs best 0.784 at 45% (band 0.021)"),
          ev.ExperimentFinished(n=7, commit="7" * 40, status="pruned", metric=None, delta=None, confidence=None,
                                best_metric=0.9874, description="WARMDOWN_FRAC 0.7 -> 0.8",
                                reason="pruned at 45%: loss 0.879 vs best 0.784 at 45% (band 0.021)"),
          ev.ExperimentProposed(n=8, description="HEAD_DIM 128 -> 96", diff_stat="1 file changed"),
          ev.ExperimentStarted(n=8, commit="8" * 40),
          ev.EarlyStopBand(n=8, line=LINE),
          *[ev.RunProgress(n=8, step=40 * i, loss=best_loss(0.05 * i) + 0.06, tokens_per_second=1.5e6, mfu=0.35,
                           fraction=0.05 * i, elapsed=15.0 * i) for i in range(1, 13)],
          ev.RunPruned(n=8, fraction=0.4, loss=0.984, reason="pruned at 40%: loss 0.984 vs best 0.924 at 40% (band 0.020)",
                       held=True),
          ev.StateChanged(text="running #8 (train)", n=8, phase="train")]
STATES["early-stop"] = (PRUNED, None, None)
SIZES = [(80, 24), (160, 48)]


def make_app(tmp_path, state: str = "running") -> tuple[CockpitApp, ScriptedEngine, str | None]:
    program = tmp_path / "program.md"
    program.write_text("# program\n\nLower val_bpb. Try one change at a time; say why.\n")
    tail, pending, reason = STATES[state]
    engine = ScriptedEngine(program, tail, reason)
    app = CockpitApp(engine, ["ANTHROPIC_API_KEY is set: claude"], telemetry=FixedTelemetry(), view=ScriptedView(engine))
    return app, engine, pending


def settle(app, engine, pending=None):
    async def run_before(pilot) -> None:
        while not engine.done.is_set() or app.bridge._buf or app._render_scheduled:
            await pilot.pause(0.05)
        # the device sample, then a frame: waited for, not timed, so a busy machine renders the same screen
        while "GPU0" not in app.gpu.lines:
            await pilot.pause(0.05)
        if engine.reason:
            while app.stop_reason is None:
                await pilot.pause(0.05)
        if pending == "pause":
            engine.control.pause()
        elif pending == "force":
            engine.control.force_keep(None)
        elif pending == "stop":
            engine.control.stop("after_run")
        elif pending == "review":
            engine.control.set_review(True)
        app.refresh_state()
        await pilot.pause(0.5)
        # the agent log follows its end after a refresh (RichLog scrolls later): waited for, so a
        # busy machine does not catch the log one line short
        log = app.reasoning
        while log.scroll_y < log.max_scroll_y:
            await pilot.pause(0.05)
        # the diff pane at its start: on a busy machine it was sometimes left scrolled sideways
        # (at 80x24, cause not found yet: DiffPane.show scrolls home before and after the layout)
        app.diff.scroll_home(animate=False)
        await pilot.pause(0.1)

    return run_before


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("state", list(STATES))
def test_main_screen_in_each_state(snap_compare, tmp_path, state, size):
    app, engine, pending = make_app(tmp_path, state)
    assert snap_compare(app, terminal_size=size, run_before=settle(app, engine, pending))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("key", ["v", "q", "question_mark", "e"], ids=["veto", "quit", "help", "edit"])
def test_each_dialog(snap_compare, tmp_path, key, size):
    app, engine, _ = make_app(tmp_path, "running")
    assert snap_compare(app, terminal_size=size, press=[key, "_"], run_before=settle(app, engine))


def test_the_state_line_reads_each_state(tmp_path):
    """What the snapshots show, in words (so a reader of a failure knows what was meant)."""
    import asyncio

    want = {
        "running": "state: running #7 (train)", "evaluating": "state: running #7 (eval)",
        "proposing": "state: proposing #8", "paused": "state: running #7 (train) · pausing after this run",
        "awaiting": "state: awaiting approval of #8", "force-keep": "state: running #7 (train) · force-keep pending for #7",
        "stopping": "state: running #7 (train) · stopping after this run",
        "stopped": "state: stopped: reached --max-experiments 5",
    }

    async def one(state):
        (tmp_path / state).mkdir(exist_ok=True)
        app, engine, pending = make_app(tmp_path / state, state)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(app, engine, pending)(pilot)
            return str(app.state_bar.render())

    for state, text in want.items():
        got = asyncio.run(one(state))
        assert got.startswith(text), (state, got)


def test_nothing_is_cut_when_the_terminal_shrinks(tmp_path):
    """The agent's lines wrap again at the new width (RichLog alone keeps the width they were
    written at), and the diff keeps its lines whole: it scrolls sideways instead of wrapping."""
    import asyncio

    async def go():
        app, engine, pending = make_app(tmp_path)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(app, engine, pending)(pilot)
            await pilot.resize_terminal(80, 24)
            await pilot.pause(0.5)
            log = app.reasoning
            width = log.scrollable_content_region.width
            shown = [strip.text.rstrip() for strip in log.lines]
            assert all(len(line) <= width for line in shown), (width, shown)
            written = " ".join(t.plain for t in log.texts)
            assert " ".join(" ".join(shown).split()) == " ".join(written.split())
            assert "the LR floor matters too." in " ".join(shown)
            # the table's descriptions are fitted again to the new width: each ends at a word
            for n, row in app.table.data_rows.items():
                shown = str(app.table.get_cell(str(n), "description"))
                kept = shown[:-1]
                whole_word = kept.endswith("_") or row["description"][len(kept):][:1] in (" ", ",", ";", ":", "-")
                assert shown == row["description"] or (shown.endswith("…") and row["description"].startswith(kept)
                                                        and whole_word), (shown, row)
                assert len(shown) <= app.table.columns["description"].get_render_width(app.table) - 2, shown
            longest = max(len(line) for line in DIFF.splitlines())
            assert app.diff.virtual_size.width >= longest > app.diff.scrollable_content_region.width
            assert app.diff.max_scroll_x > 0  # reachable by scrolling, not wrapped into pieces

    asyncio.run(go())


# ---- every key in every state: it acts, or it says why it does not ----

from cockpit.screens import ForceKeepScreen, HelpScreen, ProgramEditor, QuitScreen, VetoScreen  # noqa: E402

STOPPED = "the session has stopped"
NO_RESULT = "#8 has no measured result to keep"
PAUSING = "pausing: #7 finishes, then no new experiment starts until p"
NOT_WAITING = "nothing is waiting for approval (the review gate is off"
# state -> key -> the screen it opens, or the start of what it says
ANSWERS = {
    "running": dict(v=VetoScreen, k=ForceKeepScreen, p=PAUSING, a=NOT_WAITING, r="review gate on", f="#7 runs to its end"),
    "evaluating": dict(v=VetoScreen, k=ForceKeepScreen, p=PAUSING, a=NOT_WAITING, r="review gate on", f="#7 runs to its end"),
    "proposing": dict(v="nothing is running or waiting to veto", k=NO_RESULT, p="paused: no new experiment starts",
                      a=NOT_WAITING, r="review gate on", f="nothing is running"),
    "paused": dict(v=VetoScreen, k=ForceKeepScreen, p="resumed", a=NOT_WAITING, r="review gate on", f="#7 runs to its end"),
    "awaiting": dict(v=VetoScreen, k=NO_RESULT, p="paused: no new experiment starts", a="#8 approved", r="review gate off", f="nothing is running"),
    "force-keep": dict(v=VetoScreen, k=ForceKeepScreen, p=PAUSING, a=NOT_WAITING, r="review gate on", f="#7 runs to its end"),
    "stopping": dict(v=VetoScreen, k=ForceKeepScreen, p=PAUSING, a=NOT_WAITING, r="review gate on", f="#7 runs to its end"),
    "stopped": dict(v=STOPPED, k=STOPPED, p=STOPPED, a=STOPPED, r=STOPPED, f=STOPPED),
    "early-stop": dict(v=VetoScreen, k=ForceKeepScreen, p="pausing: #8 finishes", a=NOT_WAITING, r="review gate on",
                       f="#8 runs to its end"),
}
SAME_IN_EVERY_STATE = dict(e=ProgramEditor, E="program.md unchanged", question_mark=HelpScreen)


@pytest.mark.parametrize("state", list(STATES))
def test_every_key_answers_truthfully_in_every_state(tmp_path, state, monkeypatch):
    import asyncio

    monkeypatch.setenv("EDITOR", "true")  # an editor that changes nothing
    monkeypatch.delenv("VISUAL", raising=False)
    want = {**ANSWERS[state], **SAME_IN_EVERY_STATE}

    async def go():
        app, engine, pending = make_app(tmp_path, state)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(app, engine, pending)(pilot)
            for key, answer in want.items():
                before = len(app._notifications)
                await pilot.press(key)
                await pilot.pause(0.2)
                if isinstance(answer, type):
                    assert isinstance(app.screen, answer), (key, app.screen)
                    await pilot.press("escape")
                    await pilot.pause(0.1)
                    continue
                said = [str(n.message) for n in list(app._notifications)[before:]]
                assert said and said[-1].startswith(answer), (key, said)
            # enter opens the selected row: here the last, so the live diff
            await pilot.press("enter")
            assert app.diff.border_title.startswith(f"#{app.live_diff.n}") and app.diff_pinned is None
            # q: asks how to stop; after the session stopped, it leaves at once
            await pilot.press("q")
            await pilot.pause(0.2)
            if state == "stopped":
                assert app.return_value == "reached --max-experiments 5"
            else:
                assert isinstance(app.screen, QuitScreen)
                await pilot.press("escape")
        if state == "stopped":
            assert not engine.control.paused and not engine.control.review  # the keys changed nothing

    asyncio.run(go())


# ---- four slots: one experiment per device at once ----

def four_slots():
    yield ev.SessionStarted(session_id=1, tag="nov30", branch="cockpit/nov30", agent="claude", resumed=False,
                            best_commit="a" * 40, best_metric=None, next_experiment=1)
    for n in range(1, 5):  # one baseline per slot, side by side
        yield ev.ExperimentProposed(n=n, description=f"baseline {n}/4", diff_stat="", kind="baseline")
        yield ev.ExperimentStarted(n=n, commit="a" * 40, kind="baseline", slot=n - 1, device=f"cuda:{n - 1}")
    for n, metric in zip(range(1, 5), (0.9981, 0.9979, 0.9984, 0.9976)):
        yield ev.ExperimentFinished(n=n, commit="a" * 40, status="keep", metric=metric, delta=None, confidence=None,
                                    best_metric=None, description=f"baseline {n}/4", kind="baseline")
    yield ev.BestChanged(n=4, commit="a" * 40, metric=0.998)
    moves = ["MATRIX_LR 0.04 -> 0.05", "WARMDOWN_FRAC 0.5 -> 0.7", "HEAD_DIM 128 -> 64", "EMBED_LR 0.6 -> 0.8"]
    for i, desc in enumerate(moves):
        n = 5 + i
        yield ev.ExperimentProposed(n=n, description=desc, diff_stat="1 file changed")
        yield ev.ExperimentStarted(n=n, commit=f"{n:07x}" + "0" * 33, slot=i, device=f"cuda:{i}")
    yield ev.ExperimentFinished(n=5, commit="5" * 40, status="discard", metric=0.9990, delta=0.001, confidence=-0.5,
                                best_metric=0.998, description=moves[0], reason="improvement -0.001000 not above the threshold 0.000300")
    yield ev.ExperimentProposed(n=9, description="confirm #6: WARMDOWN_FRAC 0.5 -> 0.7", diff_stat="1 file changed")
    yield ev.DiffUpdated(n=9, diff=DIFF.replace("0.5 ", "0.7 ").replace("0.6 ", "0.7 "))
    yield ev.ExperimentStarted(n=9, commit="9" * 40, slot=0, device="cuda:0")
    for n, frac, loss in ((9, 0.10, 1.12), (6, 0.85, 0.78), (7, 0.55, 0.81), (8, 0.30, 0.95)):
        yield ev.RunProgress(n=n, step=int(400 * frac), loss=loss, tokens_per_second=1.5e6, mfu=0.35, fraction=frac,
                             elapsed=300 * frac)
    yield ev.StateChanged(text="running #6 (eval), #7 (train), #8 (train), #9 (train)", n=6, phase="eval")


class FourGpus(FixedTelemetry):
    def sample(self):
        if self.given:
            return []
        self.given = True
        return [Sample(f"GPU{i}", 97.0 - i, 24.3 + i, 141.0, 61.0 + i, 650.0 - 10 * i) for i in range(4)]


def four_slot_app(tmp_path):
    program = tmp_path / "program.md"
    program.write_text("# program\n\nLower val_bpb.\n")
    engine = ScriptedEngine(program)
    engine.script = four_slots
    app = CockpitApp(engine, ["4 slots, one experiment each at once: cuda:0, cuda:1, cuda:2, cuda:3"], telemetry=FourGpus(),
                     view=ScriptedView(engine))
    return app, engine


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_main_screen_with_four_slots(snap_compare, tmp_path, size):
    app, engine = four_slot_app(tmp_path)
    assert snap_compare(app, terminal_size=size, run_before=settle(app, engine))


def test_four_slots_show_a_line_each_a_device_column_and_every_gpu(tmp_path):
    """What the four-slot snapshots show, in words; and v asks which run when none is selected."""
    import asyncio

    async def go():
        app, engine = four_slot_app(tmp_path)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(app, engine)(pilot)
            lines = str(app.run_panel.slot_lines.render()).splitlines()
            assert [line.split()[0] for line in lines] == ["#9", "#6", "#7", "#8"]  # slot order
            assert "cuda:1" in lines[1] and "eval" in lines[1] and "85%" in lines[1] and "0.780" in lines[1]
            assert all(f"GPU{i}" in app.gpu.lines for i in range(4))
            gpu_text = {k: str(v[0].render()) for k, v in app.gpu.lines.items()}
            assert "#7" in gpu_text["GPU2"]  # the experiment on each GPU
            assert app.table.data_rows[7]["device"] == "cuda:2"
            app.table.move_cursor(row=0)  # a finished baseline row: no run selected
            await pilot.press("v")
            said = str(list(app._notifications)[-1].message)
            assert "4 experiments run (#6, #7, #8, #9): select one in the table" in said
            app.table.move_cursor(row=list(app.table.data_rows).index(7))
            await pilot.press("v")
            await pilot.pause(0.2)
            from cockpit.screens import VetoScreen

            assert isinstance(app.screen, VetoScreen) and app.screen.n == 7

    asyncio.run(go())
