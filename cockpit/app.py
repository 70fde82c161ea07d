"""The cockpit TUI: the engine runs in a worker thread; the UI renders its events and sends
Control commands. The UI never blocks the loop (events cross through EngineBridge) and every
buffer it keeps is bounded."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import traceback
from dataclasses import replace
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer, Static

from engine import events as ev
from engine.gpu import Telemetry
from engine.numbers import Ledger, holdout_check, never_ran, plural, row_of
from engine.record import force_keep_refusal
from harness.runner import log_tail

from .bridge import EngineBridge, Flush
from .consequences import force_keep_consequences, quit_consequences, veto_consequences
from .screens import ForceKeepScreen, HelpScreen, ProgramEditor, QuitScreen, VetoScreen
from .widgets.diff import DiffPane
from .widgets.gpu import GpuPanel
from .widgets.header import HeaderBar
from .widgets.pinned import PinnedRows
from .widgets.plot import LossPlot, MetricPlot
from .widgets.reasoning import ReasoningLog
from .widgets.run_panel import RunPanel
from .widgets.table import ExperimentTable

FRAME_RATE = 10  # engine events are drawn at most this often; keys are handled at once


MAX_LOGGED = 10_000  # results remembered so that none is said twice in the agent pane
PROGRAM_QUIET = 0.5  # seconds without an event on program.md before it is read (one save, several events)


class ProgramChanged(Message):
    """program.md changed on disk (another pane, an editor that replaces the file)."""


class CockpitApp(App):
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
    BINDINGS = [
        Binding("v", "veto", "Veto", id="veto"),
        Binding("k", "force_keep", "Keep", id="force-keep"),
        Binding("e", "edit_program", "Edit", id="edit-program", tooltip="edit program.md in the app"),
        Binding("E", "external_edit", "$EDITOR", id="external-edit", tooltip="edit program.md in $EDITOR"),
        Binding("r", "toggle_review", "Review", id="review", tooltip="review gate: hold each run for approval"),
        Binding("a", "approve", "Approve", id="approve"),
        Binding("p", "toggle_pause", "Pause", id="pause"),
        Binding("enter", "open_selected", "Open", id="open", show=False),
        Binding("question_mark", "help", "Help", id="help", key_display="?"),
        Binding("q", "quit_prompt", "Quit", id="quit"),
        # Textual's own ways out (ctrl+q quits at once, ctrl+c hints at ctrl+q): the same dialog as q
        Binding("ctrl+q", "quit_prompt", "Quit", id="quit-ctrl-q", show=False, priority=True),
        Binding("ctrl+c", "quit_prompt", "Quit", id="quit-ctrl-c", show=False, system=True),
    ]

    def __init__(self, engine, notices: list[str] = (), telemetry: Telemetry | None = None):
        super().__init__()
        self.signalled: int | None = None  # the signal that stopped the session, if one did
        self.engine = engine
        self.control = engine.control
        self.notices = list(notices)
        self.telemetry = telemetry
        self.bridge = EngineBridge(self)
        self.running: dict[int, str] = {}  # the experiments running now -> their device
        self.awaiting_n: int | None = None
        self.stop_reason: str | None = None
        self._observer = None
        self._program_hash = ""  # sha256 of program.md as the agent was last told of it
        self._program_timer = None  # the pending read of program.md, once its events are quiet
        self.program_quiet = PROGRAM_QUIET
        self._last_render = 0.0
        self.ledger = Ledger()  # the rows seen, for the header's and the plot's numbers (engine/numbers.py)
        self._best: tuple[int | None, float | None] = (None, None)  # the engine's best (BestChanged), its row and value
        self._logged: dict[int, str] = {}  # experiment -> the result the agent pane said last (bounded)
        self.diff_pinned: int | None = None  # an experiment the human opened; live diffs wait
        self.live_diff: ev.DiffUpdated | None = None
        self.diffs: dict[int, str] = {}  # the latest experiments' diffs against their best (bounded)
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
        self.engine_state: str | None = None  # the engine's own line (StateChanged)
        self.state_bar = Static("state: starting", id="state")

    @property
    def running_n(self) -> int | None:
        """The experiment running now: the latest started when several run."""
        return max(self.running) if self.running else None

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
                if isinstance(e, ev.RunProgress) and e.n not in self.running:
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
        self.pinned.show(self.table, self.table.best_n, self.running)
        if self.pinned.display != was and self.table.follow and self.table.row_count:
            self.call_after_refresh(self._follow_again)

    def _follow_again(self) -> None:
        if self.table.follow and self.table.row_count:
            self.table.move_cursor(row=self.table.row_count - 1)
            self.call_after_refresh(lambda: self.pinned.show(self.table, self.table.best_n, self.running))

    # ---- the command palette (ctrl+p): every action, with its key ----
    # What each key does, for the palette (the footer's short labels name them).
    ACTION_HELP = {
        "veto": "discard the running (or waiting) experiment now, after a confirmation: a run is killed, a waiting one never runs",
        "force_keep": "keep the selected finished experiment (or the running one when it ends) as the new best, after a confirmation",
        "edit_program": "edit program.md, the agent's instructions, in the app",
        "external_edit": "edit program.md in $EDITOR",
        "toggle_review": "review gate: hold each proposal until you approve or veto it",
        "approve": "approve the proposal waiting at the review gate",
        "toggle_pause": "pause: no new experiment starts (the running one finishes); again to resume",
        "open_selected": "open the selected experiment: its diff, reason and log",
        "help": "every key and what it does",
        "quit_prompt": "stop the session, after this run or now (ctrl+q, ctrl+c ask the same); `cockpit` resumes it later",
    }

    def get_system_commands(self, screen):
        for b in self.BINDINGS:
            if not b.show:  # ctrl+q, ctrl+c: the same action as a shown key, listed once
                continue
            key = b.key_display or b.key
            yield SystemCommand(f"{b.description} ({key})", self.ACTION_HELP.get(b.action, b.tooltip or b.description),
                                lambda action=b.action: self.run_action(action))
        yield SystemCommand("Screenshot", "save an SVG of the screen under .cockpit/screenshots/ (the notice names it)",
                            lambda: self.set_timer(0.1, self.save_screen))  # once the palette has closed
        for c in super().get_system_commands(screen):
            # Textual's Quit leaves at once (the run lost); its Screenshot saves to a ~/Downloads
            # that a server seldom has. Both are replaced above.
            if c.title not in ("Quit", "Screenshot"):
                yield c

    def action_quit(self) -> None:
        """Textual's quit (its palette entry, a binding of ctrl+q anywhere): the quit dialog."""
        self.action_quit_prompt()

    def action_help_quit(self) -> None:
        """Textual's ctrl+c hint ("press ctrl+q to quit"): the quit dialog instead."""
        self.action_quit_prompt()

    def save_screen(self) -> None:
        """The palette's Screenshot: an SVG in the workspace's .cockpit/screenshots/, named in a notice."""
        folder = self.engine.ws.state / "screenshots"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = self.save_screenshot(path=str(folder))
        except OSError as e:
            self.notify(f"could not save the screenshot in {folder}: {e.strerror or e}", severity="error")
            return
        self.notify(f"screenshot saved: {path}")

    # ---- the state line: what the session does now, never fading ----
    def state_line(self) -> str:
        """The engine's state with what the human asked for and is still pending."""
        if self.stop_reason is not None:
            return f"stopped: {self.stop_reason}"
        c = self.control
        if c.stop_mode == "now":
            return "stopping now"
        parts = [self.engine_state or "starting"]
        if self.awaiting_n is not None and not parts[0].startswith("awaiting"):
            parts[0] = f"awaiting approval of #{self.awaiting_n}"
        for n in c.force_pending():
            parts.append(f"force-keep pending for #{self.running_n if n is None else n}")
        runs = "the runs" if len(self.running) > 1 else "this run"
        if c.stop_mode == "after_run":
            parts.append(f"stopping after {runs}")
        elif c.paused and not parts[0].startswith("paused"):
            parts.append(f"pausing after {runs}" if self.running else "paused")
        if c.review and self.awaiting_n is None and self.stop_reason is None:
            parts.append("review gate on")
        return " · ".join(parts)

    def refresh_state(self) -> None:
        self.state_bar.update(f"state: {self.state_line()}")

    def render_event(self, e: ev.Event) -> None:
        hb = self.header_bar
        if isinstance(e, ev.SessionStarted):
            hb.tag = e.tag
            self._load_history(e.session_id, e.next_experiment)
        elif isinstance(e, ev.AgentThinking):
            self.reasoning.delta("thinking", e.text, e.n)
        elif isinstance(e, ev.AgentText):
            self.reasoning.delta("text", e.text, e.n)
        elif isinstance(e, ev.ToolCalled):
            self.reasoning.line(f"#{e.n} → {e.name} {e.summary}", "cyan" if e.ok else "red", n=e.n)
        elif isinstance(e, ev.DiffUpdated):
            self.live_diff = e
            self.diffs[e.n] = e.diff
            while len(self.diffs) > 32:
                self.diffs.pop(next(iter(self.diffs)))
            if self.diff_pinned is None:
                self.diff.show(f"#{e.n} vs best", e.diff, n=e.n)
        elif isinstance(e, ev.ExperimentProposed):
            self.table.upsert(e.n, description=e.description, status="proposing")
            self.reasoning.line(f"#{e.n} proposed: {e.description}", "bold", n=e.n)
        elif isinstance(e, ev.AwaitingApproval):
            self.awaiting_n = e.n
            self.reasoning.line(f"#{e.n} waits for approval: a approves, v vetoes", "bold yellow", n=e.n)  # and the state line says so
        elif isinstance(e, ev.ExperimentStarted):
            self.running[e.n] = e.device
            if self.awaiting_n == e.n:
                self.awaiting_n = None
            self.table.upsert(e.n, commit=e.commit, status="running", device=e.device or None)
            self.run_panel.start(e.n, e.slot, e.device)
            hb.slots = max(hb.slots, e.slot + 1)
            self.loss_plot.start(e.n)
            self.gpu.on_device = {_gpu_name(d): n for n, d in self.running.items() if _gpu_name(d)}
        elif isinstance(e, ev.RunProgress):
            self.run_panel.tick(e.n, e.step, e.loss, e.tokens_per_second, e.mfu, e.fraction, e.elapsed)
            self.loss_plot.tick(e.fraction, e.loss, e.n)
        elif isinstance(e, ev.ExperimentFinished):
            self._finished(e)
        elif isinstance(e, ev.BestChanged):
            self._best = (e.n, e.metric)
            x = self.engine.journal.experiment(self.engine.session.id, e.n) if self.engine.session is not None else None
            old = self.ledger.rows.get(e.n)
            if x is None and old is None:  # fed by events alone (no journal): the row as the event says
                x = row_of(e.n, "experiment", "forced" if e.forced else "keep", e.metric, self._harness(), e.commit)
            elif x is None:
                x = replace(old, status="forced") if e.forced else old
            self.ledger.put(x)  # its row as recorded (a force-kept past row: its new status, everywhere)
            self.loss_plot.set_best(e.n, lambda: self.engine.journal.curve(self.engine.session.id, e.n))
            if e.forced:
                self.table.upsert(e.n, status="forced")
            self._show_numbers()
            self._holdout(e.n)
        elif isinstance(e, ev.Notice):
            self.reasoning.line(e.text, "bold")
        elif isinstance(e, ev.Alert):
            self.reasoning.line(f"warning: {e.text}", "bold yellow")
            self.notify(e.text, severity="warning", timeout=30)
        elif isinstance(e, ev.Waiting):
            self.reasoning.line(f"waiting: {e.reason}", "yellow")
        elif isinstance(e, ev.Error):
            self.reasoning.line(f"error: {e.text}", "bold red")
            self.notify(e.text, severity="error")
        elif isinstance(e, ev.StateChanged):
            self.engine_state = e.text
            if e.phase is not None and e.n is not None:
                what = {"export": "exporting the model", "eval": "evaluating (a separate process)"}.get(e.phase)
                self.run_panel.phase(e.n, e.phase, what)

    def _finished(self, e: ev.ExperimentFinished) -> None:
        hb = self.header_bar
        self.running.pop(e.n, None)
        self.gpu.on_device = {_gpu_name(d): n for n, d in self.running.items() if _gpu_name(d)}
        if self.awaiting_n == e.n:
            self.awaiting_n = None
        x = self.engine.journal.experiment(self.engine.session.id, e.n) if self.engine.session else None
        self.table.upsert(e.n, commit=e.commit or None, status=self._shown_status(e.kind, e.status), metric=e.metric,
                          delta=e.delta, conf=e.confidence, description=e.description,
                          seconds=x.total_seconds if x is not None else None, memory=x.memory_gb if x is not None else None)
        self._log_result(e.n, e.kind, e.status, e.metric, e.delta, e.reason, e.description)
        if x is None:  # fed by events alone (no journal): the row as the event says
            x = row_of(e.n, e.kind, e.status, e.metric, self._harness(), e.commit, e.description,
                       ran=not (e.status == "interrupted" and e.description == "(not run)"))
        self.ledger.put(x)
        if x.kind == "experiment" and not never_ran(x):  # the rate counts runs, not abandoned proposals
            hb.finished_times.append(time.monotonic())
        self._show_numbers()
        self.loss_plot.finish(e.n)
        if e.status == "interrupted" and e.description == "(not run)":
            return  # a proposal prepared during the last run, abandoned at the stop: no run to show
        self.run_panel.done(e.n, f"#{e.n} {e.status}" + (f" {e.metric:.6f}" if e.metric is not None else "") + (f" — {e.reason}" if e.reason else ""),
                            self._phases(e.n))
        hb.cost = self.engine.journal.total_cost(self.engine.session.id) if self.engine.session else hb.cost

    # ---- the numbers: the header and the progress plot, by engine/numbers.py's rules ----
    def _show_numbers(self) -> None:
        """The header's best, baseline and counts and the progress plot, from the rows seen and the
        engine's best: the same rules as `cockpit status` and the report."""
        hb, (best_n, best_metric) = self.header_bar, self._best
        harness, direction = self._harness(), self.engine.target.direction
        hb.standing = self.ledger.standing(best_n, best_metric, harness, direction)
        hb.counts = self.ledger.counts
        self.table.set_best(hb.standing.best_n)  # a baseline row is never marked the best: the best is their mean
        self.plot.show(self.ledger.rows.values(), harness, best_n, best_metric)  # read at the frame's redraw
        hb.refresh_text()

    def _harness(self) -> str | None:
        """The version the engine measures with now: only rows of it are compared."""
        return getattr(self.engine, "harness", None)

    def _holdout(self, best_n: int | None) -> None:
        """The best code's gain on the holdout beside its gain on validation (from the journal: the
        holdout is never in what the agent sees)."""
        s = self.engine.session
        if s is None:
            return
        hb = self.header_bar
        hb.holdout = holdout_check(self.engine.journal.experiments(s.id), best_n, self.engine.target.direction,
                                   self._harness())
        if hb.holdout.carried is False and not getattr(self, "_holdout_warned", False):
            self._holdout_warned = True
            self.reasoning.line(f"warning: {hb.holdout.line(self.engine.target.metric_name)}", "bold yellow")
        hb.refresh_text()

    @staticmethod
    def _shown_status(kind: str, status: str) -> str:
        """A kept baseline row reads "baseline": it is measured, not kept over anything."""
        return "baseline" if kind == "baseline" and status == "keep" else status

    def _log_result(self, n, kind, status, metric, delta, reason, description) -> None:
        """The agent pane's record of each result, with its reason."""
        if status == "interrupted" and description == "(not run)":
            return
        if self._logged.get(n) == status:  # said once (a resume's history and the live event can both carry it)
            return
        self._logged[n] = status
        while len(self._logged) > MAX_LOGGED:
            self._logged.pop(next(iter(self._logged)))
        val = f" {metric:.6f}" if metric is not None else ""
        d = f" ({delta:+.6f})" if delta is not None else ""
        why = f" — {reason}" if reason else ""
        style = {"keep": "bold green", "forced": "bold cyan", "discard": "grey62", "crash": "bold red",
                 "timeout": "red", "invalid": "magenta", "vetoed": "yellow"}.get(status, "")
        self.reasoning.line(f"#{n} {self._shown_status(kind, status)}{val}{d}{why}", style, n=n)

    def _phases(self, n: int) -> str | None:
        """Where run n's time went, and the session's duty cycle so far, from the journal."""
        s = self.engine.session
        if s is None:
            return None
        x = self.engine.journal.experiment(s.id, n)
        if x is None or x.training_seconds is None:
            return None
        f = lambda v: "-" if v is None else f"{v:.0f}s"  # noqa: E731
        # the duty cycle of every run so far, kept as results come (engine/numbers.py: Ledger): reading
        # every row of the journal per result was a stall with thousands, and a cached one miscounted
        d = self.ledger.duty()
        return (f"start {f(x.startup_seconds)} · train {f(x.training_seconds)} · eval {f(x.eval_seconds)} · "
                f"duty {100 * d.ratio:.0f}% ({plural(d.experiments, 'run')})")

    def _load_history(self, sid: int, next_n: int) -> None:
        """On resume, the table starts with what the journal held when the session started (rows
        from next_n on arrive as events: read here too, a busy frame would show them twice)."""
        s = self.engine.journal.session(sid)
        self.table.best_n = s.best_n
        # `up` counts from the session's start, not this process's (the journal's clock is the wall's)
        hb = self.header_bar
        hb.started = time.monotonic() - max(0.0, time.time() - s.created)
        history = [x for x in self.engine.journal.experiments(sid) if x.n < next_n]
        if history:
            self.reasoning.line(f"resumed: the last results of session {s.tag}", "bold")
        for x in history[-10:]:
            if x.status not in ("running", "proposing"):
                self._log_result(x.n, x.kind, x.status, x.metric, x.delta, x.reason, x.description)
        for x in history:
            self.table.upsert(x.n, commit=x.commit_sha or "", status=self._shown_status(x.kind, x.status), metric=x.metric,
                              delta=x.delta, conf=x.confidence, description=x.description or "", seconds=x.total_seconds,
                              memory=x.memory_gb)
            self.ledger.put(x)
            if x.kind == "experiment" and x.finished is not None and x.run_started is not None:
                hb.finished_times.append(time.monotonic() - max(0.0, time.time() - x.finished))  # the pace counts from the start too
        self._best = (s.best_n, s.best_metric)
        self._show_numbers()
        self._holdout(s.best_n)
        self.loss_plot.set_best(s.best_n, lambda: self.engine.journal.curve(sid, s.best_n))

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

        path = self.engine.ws.program_path
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
        path = self.engine.ws.program_path
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

    # ---- keys ----
    def _stopped_says(self, what: str) -> bool:
        """After the session stopped, a key that acts on it says so (and does nothing)."""
        if self.stop_reason is None:
            return False
        self.notify(f"the session has stopped ({self.stop_reason}): {what}; run `cockpit` to resume it", severity="warning")
        return True

    def _chosen_run(self) -> int | None:
        """The experiment a key acts on: the one selected in the table when it runs (or waits at
        the review gate), else the only one running or waiting."""
        live = set(self.running) | ({self.awaiting_n} if self.awaiting_n is not None else set())
        n = self.table.selected_number()
        if n in live:
            return n
        return next(iter(live)) if len(live) == 1 else None

    def action_veto(self) -> None:
        if self._stopped_says("nothing runs to veto"):
            return
        n = self._chosen_run()
        if n is None:
            if len(self.running) > 1:
                listed = ", ".join(f"#{k}" for k in sorted(self.running))
                self.notify(f"{len(self.running)} experiments run ({listed}): select one in the table, then v",
                            severity="warning")
            else:
                self.notify("nothing is running or waiting to veto (the agent is proposing)", severity="warning")
            return

        def done(reason: str | None) -> None:
            if reason is None:
                return
            if self.control.veto(reason, n):  # the agent pane says it once, from the record (ExperimentFinished)
                self.notify(f"#{n} vetoed: {reason}")
            else:
                self.notify(f"#{n} had already finished: nothing to veto", severity="warning")

        self.push_screen(VetoScreen(n, veto_consequences(n, running=n in self.running)), done)

    def action_force_keep(self) -> None:
        """k: checked first (a baseline, a row without a result, the best already: said, and
        nothing sent), then a dialog that says how far the run is from the best and that the
        branch moves; only a yes sends the force-keep."""
        if self._stopped_says("a keep applies to a running session"):
            return
        n = self.table.selected_number()
        if n is None or (n not in self.running and n not in self.table.data_rows):
            n = self._chosen_run()
        if n is None:
            self.notify("select a finished experiment to keep", severity="warning")
            return
        running = n in self.running
        if not running:
            why = self._force_keep_refusal(n)
            if why is not None:
                self.notify(why, severity="warning")
                return
        metric = None if running else self.table.data_rows[n]["metric"]
        s = self.engine.session
        text = force_keep_consequences(n, metric=metric, best=self._best[1], best_n=self.table.best_n,
                                       direction=self.engine.target.direction, noise=s.noise if s is not None else None,
                                       metric_name=self.engine.target.metric_name)

        def done(yes: bool | None) -> None:
            if not yes:
                return
            if self.stop_reason is not None:
                self.notify(f"the session has stopped ({self.stop_reason}): #{n} is not kept", severity="warning")
                return
            self.control.force_keep(n)
            self.notify(f"#{n} will be kept when it finishes" if running
                        else f"#{n} will become the best before the next experiment")
            self.refresh_state()

        self.push_screen(ForceKeepScreen(n, text), done)

    def _force_keep_refusal(self, n: int) -> str | None:
        """Why finished experiment n cannot be force-kept, from its journal row (the table's row
        while the session has none yet)."""
        row = self.table.data_rows[n]
        s = self.engine.session
        x = self.engine.journal.experiment(s.id, n) if s is not None else None
        if x is None:
            return force_keep_refusal(n, kind="baseline" if row["status"] == "baseline" else "experiment",
                                      metric=row["metric"], commit=row["commit"], best_n=self.table.best_n)
        return force_keep_refusal(n, kind=x.kind, metric=x.metric, commit=x.commit_sha, best_n=self.table.best_n,
                                  harness_matches=x.harness == self.engine.harness)

    def action_edit_program(self) -> None:
        def done(saved: bool | None) -> None:
            if saved:
                self._program_hash = self._program_digest()  # its own events then say nothing more
                self.control.instructions_changed()
                self.notify("program.md saved: the agent is told at its next proposal")

        self.push_screen(ProgramEditor(self.engine.ws.program_path), done)

    def action_external_edit(self) -> None:
        import shlex

        from textual.app import SuspendNotSupported

        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        cmd = [*shlex.split(editor), str(self.engine.ws.program_path)]
        try:
            with self.suspend():
                subprocess.run(cmd)
        except SuspendNotSupported:  # no terminal to hand over (headless): run it as it is
            subprocess.run(cmd, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            self.notify(f"editor not found: {editor} (set $EDITOR)", severity="error")
            return
        if self._program_digest() == self._program_hash:
            self.notify("program.md unchanged: the agent's instructions stay as they were")
            return
        self._program_settled()  # the editor has exited: the file is whole now

    def action_toggle_review(self) -> None:
        if self._stopped_says("the review gate applies to a running session"):
            return
        on = not self.control.review
        self.control.set_review(on)
        self.notify(f"review gate {'on: each proposal waits for a (approve) or v (veto)' if on else 'off'}")
        self.refresh_state()

    def action_approve(self) -> None:
        if self._stopped_says("nothing waits for approval"):
            return
        if self.awaiting_n is None:
            why = "" if self.control.review else " (the review gate is off: r turns it on)"
            self.notify(f"nothing is waiting for approval{why}", severity="warning")
            return
        self.control.approve()
        self.notify(f"#{self.awaiting_n} approved")

    def action_toggle_pause(self) -> None:
        if self._stopped_says("nothing to pause"):
            return
        if self.control.paused:
            self.control.resume()
            self.notify("resumed")
        else:
            self.control.pause()
            if self.running:
                listed = ", ".join(f"#{k}" for k in sorted(self.running))
                ends = "finishes" if len(self.running) == 1 else "finish"
                self.notify(f"pausing: {listed} {ends}, then no new experiment starts until p")
            else:
                self.notify("paused: no new experiment starts until p")
        self.refresh_state()

    def on_data_table_row_selected(self, event) -> None:
        """enter on a row (the table handles the key itself): open that experiment."""
        self.action_open_selected()

    def action_open_selected(self) -> None:
        n = self.table.selected_number()
        if n is None:
            return
        if n in self.running or n == max(self.table.data_rows, default=n):
            self.diff_pinned = None  # back to the live diff (of this run, when it runs)
            shown = n if n in self.diffs else (self.live_diff.n if self.live_diff is not None else None)
            if shown is not None:
                self.diff.show(f"#{shown} vs best", self.diffs.get(shown) or self.live_diff.diff, n=shown)
            return
        self.diff_pinned = n
        e = self.engine.journal.experiment(self.engine.session.id, n)
        if e is None:
            return
        diff = self.engine.git.diff(e.parent_commit, e.commit_sha) if e.commit_sha and e.parent_commit and e.kind == "experiment" else ""
        tail = log_tail(Path(e.log_path), 40) if e.log_path else ""
        if e.reason:  # why it ended so, above its log
            tail = f"{e.status}: {e.reason}\n\n{tail}"
        self.diff.show(f"#{n} {e.status}: {e.description or ''}"[:80], diff, tail, n=n)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.BINDINGS, self.ACTION_HELP))

    def action_quit_prompt(self) -> None:
        """Every way out (q, ctrl+q, ctrl+c, the palette's Quit) asks here: after this run, or now."""
        if self.stop_reason is not None:
            self.exit(self.stop_reason)
            return
        if isinstance(self.screen, QuitScreen):  # asked already
            return

        def done(mode: str | None) -> None:
            if mode:
                self.control.stop(mode)
                self.refresh_state()

        forced = [self.running_n if n is None else n for n in self.control.force_pending()]
        self.push_screen(QuitScreen(quit_consequences(sorted(self.running), forced)), done)


def _gpu_name(device: str) -> str | None:
    """The device panel's name for a slot's device: cuda:3 -> GPU3 (NVML's numbering, through
    CUDA_VISIBLE_DEVICES when it is set); None for a CPU slot."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or not index.isdigit():
        return None
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    i = int(index)
    return f"GPU{visible[i]}" if i < len(visible) and visible[i].isdigit() else f"GPU{i}"
