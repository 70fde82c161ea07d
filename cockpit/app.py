"""The cockpit TUI: the engine runs in a worker thread; the UI renders its events and sends
Control commands. The UI never blocks the loop (events cross through EngineBridge) and every
buffer it keeps is bounded.

The app holds the layout, the lifecycle (the engine's worker, signals, program.md watched on
disk) and the frame pacing; its keys are the main screen's (cockpit/main_screen.py), the events
are drawn by the presenter (cockpit/presenter.py), the state line is a pure function
(cockpit/state_line.py), and every read of the session goes through its read-only view
(engine/store/view.py)."""

from __future__ import annotations

import hashlib
import os
import signal
import time
import traceback
from dataclasses import replace

from textual import work
from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer, Static

from engine import events as ev
from engine.store.view import SessionView

from .bridge import EngineBridge, Flush
from .gpu import Telemetry
from .main_screen import MainScreenKeys
from .presenter import Live, Panes, Presenter
from .state_line import state_line
from .widgets.diff import DiffPane
from .widgets.gpu import GpuPanel
from .widgets.header import HeaderBar
from .widgets.pinned import PinnedRows
from .widgets.plot import LossPlot, MetricPlot
from .widgets.reasoning import ReasoningLog
from .widgets.run_panel import RunPanel
from .widgets.table import ExperimentTable

FRAME_RATE = 10  # engine events are drawn at most this often; keys are handled at once
PROGRAM_QUIET = 0.5  # seconds without an event on program.md before it is read (one save, several events)


class ProgramChanged(Message):
    """program.md changed on disk (another pane, an editor that replaces the file)."""


class CockpitApp(MainScreenKeys, App):
    TITLE = "cockpit"
    CSS = """
    #top { height: 1fr; }
    #left { width: 3fr; }
    #right { width: 2fr; }
    #top.narrow > #left { width: 2fr; }
    #top.narrow > #right { width: 1fr; }
    #bottom { height: 12; }
    #bottom > * { width: 1fr; }
    #bottom.short { height: 7; }
    #state { height: 1; background: $boost; padding: 0 1; text-style: bold; }
    """
    BINDINGS = MainScreenKeys.BINDINGS  # Textual reads the bindings of its own classes only

    def __init__(self, engine, notices: list[str] = (), telemetry: Telemetry | None = None,
                 view: SessionView | None = None):
        super().__init__()
        # every read of the journal, git and the run's files goes through the session's read model
        self.view = view if view is not None else SessionView.of_workspace(engine.ws)
        self.signalled: int | None = None  # the signal that stopped the session, if one did
        self.engine = engine
        self.control = engine.control
        self.notices = list(notices)
        self.telemetry = telemetry
        self.bridge = EngineBridge(self)
        self.stop_reason: str | None = None
        self._observer = None
        self._program_hash = ""  # sha256 of program.md as the agent was last told of it
        self._program_timer = None  # the pending read of program.md, once its events are quiet
        self.program_quiet = PROGRAM_QUIET
        self._last_render = 0.0
        self._render_scheduled = False
        metric = engine.target.metric_name
        self.header_bar = HeaderBar(metric)
        self.table = ExperimentTable(metric)
        self.pinned = PinnedRows()  # the best and running rows while they are out of the table's view
        self.diff = DiffPane()
        self.reasoning = ReasoningLog()
        self.run_panel = RunPanel()
        self.gpu = GpuPanel()
        self.plot = MetricPlot(engine.target.direction, metric)
        self.loss_plot = LossPlot()
        self.state_bar = Static("state: starting", id="state")
        self.live = Live()  # what the events said the session does now (the presenter writes it)
        self.presenter = Presenter(engine, self.view, Panes(self.header_bar, self.table, self.diff, self.reasoning,
                                                            self.run_panel, self.gpu, self.plot, self.loss_plot),
                                   self.live, self.notify)

    # ---- what the events said, for the keys, the state line and the tests ----
    @property
    def running(self) -> dict[int, str]:
        return self.live.running

    @property
    def running_n(self) -> int | None:
        """The experiment running now: the latest started when several run."""
        return self.live.running_n

    @property
    def awaiting_n(self) -> int | None:
        return self.live.awaiting_n

    @property
    def live_diff(self) -> ev.DiffUpdated | None:
        return self.live.live_diff

    @property
    def diff_pinned(self) -> int | None:
        return self.live.diff_pinned

    @property
    def engine_state(self) -> str | None:
        return self.live.engine_state

    @property
    def ledger(self):
        return self.presenter.ledger

    def compose(self) -> ComposeResult:
        yield self.header_bar
        with Horizontal(id="top"):
            with Vertical(id="left"):
                yield self.table
                yield self.pinned
                yield self.reasoning
            with Vertical(id="right"):
                yield self.diff
        with Horizontal(id="bottom"):
            yield self.run_panel
            yield self.gpu
            yield self.loss_plot
            yield self.plot
        yield self.state_bar
        yield Footer(compact=True, show_command_palette=False)  # ctrl+p still opens it; ? lists it

    def on_resize(self, event) -> None:
        """Small terminals drop panes by priority rather than cutting every pane a little: below 120
        columns the device and loss panes go (the table, the agent and the run stay) and the table
        takes 2/3 of the width, below 32 rows the bottom row shrinks."""
        w, h = event.size.width, event.size.height
        self.gpu.display = w >= 120
        self.loss_plot.display = w >= 120
        self.query_one("#top").set_class(w < 120, "narrow")  # the table's share grows (widgets/table.py TABLE_SHARE)
        self.table.set_narrow(w < 120, w)
        # a compact screen has no room for scrollbars: the table follows its cursor, the log its end
        for pane in (self.table, self.reasoning):
            pane.set_class(w < 120 or h < 32, "compact")
        self.query_one("#bottom").set_class(h < 32, "short")
        self.call_after_refresh(self.refresh_pinned)  # once the table has its new height

    def on_mount(self) -> None:
        for text in self.notices:
            self.reasoning.line(text, "bold")
        self.engine.subscribe(self.bridge)
        if self.telemetry is None:
            self.telemetry = Telemetry()
        self.set_interval(1.0, self.sample_device)
        self.set_interval(5.0, self.header_bar.refresh_text)
        self.watch_program()
        self.watch(self.table, "scroll_y", lambda _: self.refresh_pinned(), init=False)
        self.run_engine()

    # ---- the engine, in a worker thread ----
    @work(thread=True, exclusive=True, group="engine")
    def run_engine(self) -> None:
        try:
            reason = self.engine.run()
        except Exception as e:  # shown and logged; the journal already has every record
            traceback.print_exc()
            reason = f"engine error: {type(e).__name__}: {e}"
        self.call_from_thread(self.engine_stopped, reason)

    def engine_stopped(self, reason: str) -> None:
        self.stop_reason = reason
        self.header_bar.refresh_text()
        self.refresh_state()
        self.reasoning.flush_all()
        self.reasoning.line(f"session stopped: {reason}", "bold")
        if self.control.stop_mode:
            self.exit(reason)

    def on_flush(self, message: Flush) -> None:
        """At most FRAME_RATE renders a second: a flush that comes sooner is deferred to the next
        frame (the bridge keeps collecting meanwhile and posts nothing more until it is drained)."""
        wait = self._last_render + 1 / FRAME_RATE - time.monotonic()
        if wait > 0:
            if not self._render_scheduled:
                self._render_scheduled = True
                self.set_timer(wait, self._render_pending)
            return
        self._render_pending()

    def _render_pending(self) -> None:
        """Render everything pending at once: only the newest progress tick and diff are drawn,
        and streamed deltas are joined, so a flood costs a bounded amount of work per frame."""
        self._render_scheduled = False
        self._last_render = time.monotonic()
        progress: dict[int, ev.RunProgress] = {}  # the newest tick of each run
        diff: ev.DiffUpdated | None = None
        batch: list[ev.Event] = []
        for e in self.bridge.drain():
            if isinstance(e, ev.RunProgress):
                progress[e.n] = e
            elif isinstance(e, ev.DiffUpdated):
                diff = e
            elif isinstance(e, (ev.AgentThinking, ev.AgentText)) and batch and type(batch[-1]) is type(e) and batch[-1].n == e.n:
                batch[-1] = replace(batch[-1], text=batch[-1].text + e.text)
            else:
                batch.append(e)
        for w in (self.loss_plot, self.run_panel, self.plot):  # this frame's ticks and results, drawn once at its end
            w.hold(True)
        try:
            for e in batch + ([diff] if diff is not None else []) + list(progress.values()):
                if isinstance(e, ev.RunProgress) and e.n not in self.live.running:
                    continue
                try:
                    self.render_event(e)
                except Exception:  # a rendering bug must never take the loop or the journal down
                    self.log.error(traceback.format_exc())
        finally:
            for w in (self.loss_plot, self.run_panel, self.plot):
                try:
                    w.hold(False)
                except Exception:
                    self.log.error(traceback.format_exc())
        self.header_bar.refresh_text()
        self.refresh_state()
        self.refresh_pinned()

    def refresh_pinned(self) -> None:
        """Pin the best and running rows the table's view does not show (after each frame, each
        scroll and each resize); a table that follows its last row keeps following it."""
        was = self.pinned.display
        self.pinned.show(self.table, self.table.best_n, self.live.running)
        if self.pinned.display != was and self.table.follow and self.table.row_count:
            self.call_after_refresh(self._follow_again)

    def _follow_again(self) -> None:
        if self.table.follow and self.table.row_count:
            self.table.move_cursor(row=self.table.row_count - 1)
            self.call_after_refresh(lambda: self.pinned.show(self.table, self.table.best_n, self.live.running))

    # ---- the state line: what the session does now, never fading ----
    def state_line(self) -> str:
        """The engine's state with what the human asked for and is still pending."""
        c = self.control
        return state_line(stopped=self.stop_reason, stop_mode=c.stop_mode, engine_state=self.live.engine_state,
                          awaiting_n=self.live.awaiting_n, running=self.live.running, force_pending=c.force_pending(),
                          paused=c.paused, review=c.review)

    def refresh_state(self) -> None:
        self.state_bar.update(f"state: {self.state_line()}")

    def render_event(self, e: ev.Event) -> None:
        self.presenter.present(e)

    # ---- device telemetry ----
    def sample_device(self) -> None:
        try:
            self.gpu.show(self.telemetry.sample())
        except Exception:
            self.log.error(traceback.format_exc())

    # ---- program.md, watched on disk ----
    def watch_program(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        path = self.view.program_path
        app = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                paths = {getattr(event, "src_path", ""), getattr(event, "dest_path", "")}
                if any(os.path.basename(str(p)) == path.name for p in paths) and event.event_type in ("modified", "created", "moved"):
                    app.post_message(ProgramChanged())

        self._program_hash = self._program_digest()
        self._observer = Observer()
        self._observer.schedule(Handler(), str(path.parent), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def _program_digest(self) -> str:
        path = self.view.program_path
        return hashlib.sha256(path.read_bytes() if path.exists() else b"").hexdigest()

    def on_program_changed(self, message: ProgramChanged) -> None:
        """One save fires several events (an editor truncates, writes in pieces, renames): the
        file is read once they have been quiet for PROGRAM_QUIET seconds, and a change is said
        once per new content."""
        if self._program_timer is not None:
            self._program_timer.stop()
        self._program_timer = self.set_timer(self.program_quiet, self._program_settled)

    def _program_settled(self) -> None:
        self._program_timer = None
        digest = self._program_digest()
        if digest != self._program_hash:
            self._program_hash = digest
            self.control.instructions_changed()
            self.notify("program.md changed: the agent is told at its next proposal")
            self.reasoning.line("program.md changed on disk; the agent will see it next", "yellow")

    def on_stop_signal(self, signum: int) -> None:
        """SIGTERM or SIGHUP (the CLI's handlers call this from their own thread, cockpit/lifeline.py):
        the session stops now, its run recorded `interrupted` ("stopped by signal SIGTERM during the
        run"); the app leaves when the engine has stopped (engine_stopped)."""
        self.signalled = self.signalled or signum
        self.control.stop("now", by=f"signal {signal.Signals(signum).name}")
        if self.stop_reason is not None:  # the session had already stopped: nothing to wait for
            self.exit(self.stop_reason)

    def exit(self, *args, **kwargs) -> None:
        """The first exit wins: the engine stopping because the app is closing must not replace
        the result the app is closing with."""
        if getattr(self, "_exiting", False):
            return
        self._exiting = True
        super().exit(*args, **kwargs)

    def on_unmount(self) -> None:
        if self.stop_reason is None:
            self.control.stop("now")  # the app is going away (ctrl+c, a crash): end the run cleanly
        if self._observer is not None:
            self._observer.stop()
