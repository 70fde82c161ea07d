"""Engine events to widgets: one handler per event type, found by the event's type (no
isinstance chain). The presenter keeps what the events said (`Live`: the experiments running, the
one waiting, the engine's state line, the best, the diffs) and the rows seen (engine/numbers.py:
Ledger); every read of the journal goes through the session's read model (engine/store/view.py).
Never blocks: the app hands it one frame's events at a time (cockpit/app.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from engine import events as ev
from engine.numbers import Ledger, plural, row_of

MAX_LOGGED = 10_000  # results remembered so that none is said twice in the agent pane
MAX_DIFFS = 32  # the latest experiments' diffs kept, for opening one again


@dataclass
class Live:
    """What the session does now, as its events said: the presenter writes it, the app's keys and
    state line read it."""

    running: dict[int, str] = field(default_factory=dict)  # the experiments running now -> their device
    awaiting_n: int | None = None  # the proposal waiting at the review gate
    engine_state: str | None = None  # the engine's own line (StateChanged)
    best: tuple[int | None, float | None] = (None, None)  # the engine's best (BestChanged), its row and value
    diff_pinned: int | None = None  # an experiment the human opened; live diffs wait
    live_diff: ev.DiffUpdated | None = None
    diffs: dict[int, str] = field(default_factory=dict)  # the latest experiments' diffs against their best (bounded)

    @property
    def running_n(self) -> int | None:
        """The experiment running now: the latest started when several run."""
        return max(self.running) if self.running else None


@dataclass
class Panes:
    """The widgets the events are drawn in."""

    header_bar: object
    table: object
    diff: object
    reasoning: object
    run_panel: object
    gpu: object
    plot: object
    loss_plot: object


class Presenter:
    def __init__(self, engine, view, panes: Panes, live: Live, notify: Callable[..., None]):
        self.engine = engine  # its session, target and harness version: what it measures now
        self.view = view
        self.live = live
        self.notify = notify
        self.header_bar, self.table, self.diff, self.reasoning = panes.header_bar, panes.table, panes.diff, panes.reasoning
        self.run_panel, self.gpu, self.plot, self.loss_plot = panes.run_panel, panes.gpu, panes.plot, panes.loss_plot
        self.ledger = Ledger()  # the rows seen, for the header's and the plot's numbers (engine/numbers.py)
        self._logged: dict[int, str] = {}  # experiment -> the result the agent pane said last (bounded)
        self._holdout_warned = False
        self.handlers: dict[type, Callable] = {
            ev.SessionStarted: self.session_started, ev.AgentThinking: self.agent_thinking, ev.AgentText: self.agent_text,
            ev.ToolCalled: self.tool_called, ev.DiffUpdated: self.diff_updated, ev.ExperimentProposed: self.proposed,
            ev.AwaitingApproval: self.awaiting_approval, ev.ExperimentStarted: self.started, ev.RunProgress: self.progress,
            ev.ExperimentFinished: self.finished, ev.BestChanged: self.best_changed, ev.Notice: self.notice,
            ev.Alert: self.alert, ev.Waiting: self.waiting, ev.Error: self.error, ev.StateChanged: self.state_changed,
            ev.EarlyStopBand: self.early_stop_band, ev.RunPruned: self.pruned,
        }

    def present(self, e: ev.Event) -> None:
        """Draw one event (a type without a handler draws nothing)."""
        handler = self.handlers.get(type(e))
        if handler is not None:
            handler(e)

    # ---- one handler per event type ----
    def session_started(self, e: ev.SessionStarted) -> None:
        self.header_bar.tag = e.tag
        self.header_bar.unit = "GPU" if self.engine.target.device == "cuda" else "slot"
        self.view.bind(e.session_id)
        self._load_history(e.next_experiment)

    def agent_thinking(self, e: ev.AgentThinking) -> None:
        self.reasoning.delta("thinking", e.text, e.n)

    def agent_text(self, e: ev.AgentText) -> None:
        self.reasoning.delta("text", e.text, e.n)

    def tool_called(self, e: ev.ToolCalled) -> None:
        self.reasoning.line(f"#{e.n} → {e.name} {e.summary}", "cyan" if e.ok else "red", n=e.n)

    def diff_updated(self, e: ev.DiffUpdated) -> None:
        live = self.live
        live.live_diff = e
        live.diffs[e.n] = e.diff
        while len(live.diffs) > MAX_DIFFS:
            live.diffs.pop(next(iter(live.diffs)))
        if live.diff_pinned is None:
            self.diff.show(f"#{e.n} vs best", e.diff, n=e.n)

    def proposed(self, e: ev.ExperimentProposed) -> None:
        self.table.upsert(e.n, description=e.description, status="proposing")
        self.reasoning.line(f"#{e.n} proposed: {e.description}", "bold", n=e.n)

    def awaiting_approval(self, e: ev.AwaitingApproval) -> None:
        self.live.awaiting_n = e.n
        self.reasoning.line(f"#{e.n} waits for approval: a approves, v vetoes", "bold yellow", n=e.n)  # and the state line says so

    def started(self, e: ev.ExperimentStarted) -> None:
        live = self.live
        live.running[e.n] = e.device
        if live.awaiting_n == e.n:
            live.awaiting_n = None
        self.table.upsert(e.n, commit=e.commit, status="running", device=e.device or None)
        self.run_panel.start(e.n, e.slot, e.device)
        self.loss_plot.start(e.n)
        self.gpu.on_device = {_gpu_name(d): n for n, d in live.running.items() if _gpu_name(d)}

    def progress(self, e: ev.RunProgress) -> None:
        self.run_panel.tick(e.n, e.step, e.loss, e.tokens_per_second, e.mfu, e.fraction, e.elapsed)
        self.loss_plot.tick(e.fraction, e.loss, e.n)

    def early_stop_band(self, e: ev.EarlyStopBand) -> None:
        line = [(f, y) for f, y in e.line]
        self.run_panel.band(e.n, line)
        self.loss_plot.band(e.n, line)
        if e.note:
            self.reasoning.line(f"#{e.n} early stop: {e.note}", "grey50", n=e.n)

    def pruned(self, e: ev.RunPruned) -> None:
        """The early-stop rule stops run n (its result says so), or would: the human let it finish."""
        self.loss_plot.stop(e.n, e.fraction, e.loss, e.held)
        if e.held:
            self.reasoning.line(f"#{e.n} runs on (you let it finish): the rule would stop it — {e.reason}", "yellow", n=e.n)

    def best_changed(self, e: ev.BestChanged) -> None:
        self.live.best = (e.n, e.metric)
        x = self.view.experiment(e.n) if self.engine.session is not None else None
        old = self.ledger.rows.get(e.n)
        if x is None and old is None:  # fed by events alone (no journal): the row as the event says
            x = row_of(e.n, "experiment", "forced" if e.forced else "keep", e.metric, self._harness(), e.commit)
        elif x is None:
            x = replace(old, status="forced") if e.forced else old
        self.ledger.put(x)  # its row as recorded (a force-kept past row: its new status, everywhere)
        self.loss_plot.set_best(e.n, lambda: self.view.curve(e.n))
        if e.forced:
            self.table.upsert(e.n, status="forced")
        self._show_numbers()
        self._holdout(e.n)

    def notice(self, e: ev.Notice) -> None:
        self.reasoning.line(e.text, "bold")

    def alert(self, e: ev.Alert) -> None:
        self.reasoning.line(f"warning: {e.text}", "bold yellow")
        self.notify(e.text, severity="warning", timeout=30)

    def waiting(self, e: ev.Waiting) -> None:
        self.reasoning.line(f"waiting: {e.reason}", "yellow")

    def error(self, e: ev.Error) -> None:
        self.reasoning.line(f"error: {e.text}", "bold red")
        self.notify(e.text, severity="error")

    def state_changed(self, e: ev.StateChanged) -> None:
        self.live.engine_state = e.text
        if e.phase is not None and e.n is not None:
            what = {"export": "exporting the model", "eval": "evaluating (a separate process)"}.get(e.phase)
            self.run_panel.phase(e.n, e.phase, what)

    def finished(self, e: ev.ExperimentFinished) -> None:
        hb = self.header_bar
        self.live.running.pop(e.n, None)
        self.gpu.on_device = {_gpu_name(d): n for n, d in self.live.running.items() if _gpu_name(d)}
        if self.live.awaiting_n == e.n:
            self.live.awaiting_n = None
        x = self.view.experiment(e.n) if self.engine.session else None
        # a proposal abandoned at the stop (its row says so: engine/store/view.py) has no run to show
        shown = x is None or not x.abandoned
        self.table.upsert(e.n, commit=e.commit or None, status=self._shown_status(e.kind, e.status), metric=e.metric,
                          delta=e.delta, conf=e.confidence, description=e.description,
                          seconds=x.total_seconds if x is not None else None, memory=x.memory_gb if x is not None else None)
        if shown:
            self._log_result(e.n, e.kind, e.status, e.metric, e.delta, e.reason, e.description)
        if x is None:  # fed by events alone (no journal): the row as the event says
            x = row_of(e.n, e.kind, e.status, e.metric, self._harness(), e.commit, e.description)
        self.ledger.put(x)
        self._show_numbers()
        self.loss_plot.finish(e.n)
        if not shown:
            return  # a proposal prepared during the last run, abandoned at the stop: no run to show
        self.run_panel.done(e.n, f"#{e.n} {e.status}" + (f" {e.metric:.6f}" if e.metric is not None else "") + (f" — {e.reason}" if e.reason else ""),
                            self._phases(e.n))
        hb.cost = self.view.cost() if self.engine.session else hb.cost

    # ---- the numbers: the header and the progress plot, by engine/numbers.py's rules ----
    def _show_numbers(self) -> None:
        """The header's best, baseline and counts and the progress plot, from the rows seen and the
        engine's best: the same rules as `cockpit status` and the report."""
        hb, (best_n, best_metric) = self.header_bar, self.live.best
        harness, direction = self._harness(), self.engine.target.direction
        hb.standing = self.ledger.standing(best_n, best_metric, harness, direction)
        hb.counts = self.ledger.counts
        hb.duty = self.ledger.duty()
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
        hb.holdout = self.view.holdout(best_n, self.engine.target.direction, self._harness())
        if hb.holdout.carried is False and not self._holdout_warned:
            self._holdout_warned = True
            self.reasoning.line(f"warning: {hb.holdout.line(self.engine.target.metric_name)}", "bold yellow")
        hb.refresh_text()

    @staticmethod
    def _shown_status(kind: str, status: str) -> str:
        """A kept baseline row reads "baseline": it is measured, not kept over anything."""
        return "baseline" if kind == "baseline" and status == "keep" else status

    def _log_result(self, n, kind, status, metric, delta, reason, description) -> None:
        """The agent pane's record of each result, with its reason."""
        if self._logged.get(n) == status:  # said once (a resume's history and the live event can both carry it)
            return
        self._logged[n] = status
        while len(self._logged) > MAX_LOGGED:
            self._logged.pop(next(iter(self._logged)))
        val = f" {metric:.6f}" if metric is not None else ""
        d = f" ({delta:+.6f})" if delta is not None else ""
        why = f" — {reason}" if reason else ""
        style = {"keep": "bold green", "forced": "bold cyan", "discard": "grey62", "pruned": "grey62", "crash": "bold red",
                 "timeout": "red", "invalid": "magenta", "vetoed": "yellow"}.get(status, "")
        self.reasoning.line(f"#{n} {self._shown_status(kind, status)}{val}{d}{why}", style, n=n)

    def _phases(self, n: int) -> str | None:
        """Where run n's time went, and the session's duty cycle so far, from the journal."""
        s = self.engine.session
        if s is None:
            return None
        x = self.view.experiment(n)
        if x is None or x.training_seconds is None:
            return None
        f = lambda v: "-" if v is None else f"{v:.0f}s"  # noqa: E731
        # the duty cycle of every run so far, kept as results come (engine/numbers.py: Ledger): reading
        # every row of the journal per result was a stall with thousands, and a cached one miscounted
        d = self.ledger.duty()
        return (f"start {f(x.startup_seconds)} · train {f(x.training_seconds)} · eval {f(x.eval_seconds)} · "
                f"duty {100 * d.ratio:.0f}% ({plural(d.experiments, 'run')})")

    def _load_history(self, next_n: int) -> None:
        """On resume, the table starts with what the journal held when the session started (rows
        from next_n on arrive as events: read here too, a busy frame would show them twice)."""
        s = self.view.session()
        self.table.best_n = s.best_n
        # `up` counts from the session's start, not this process's (the journal's clock is the wall's)
        hb = self.header_bar
        hb.started = time.monotonic() - max(0.0, time.time() - s.created)
        history = [x for x in self.view.history() if x.n < next_n]
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
        self.live.best = (s.best_n, s.best_metric)
        self._show_numbers()
        self._holdout(s.best_n)
        self.loss_plot.set_best(s.best_n, lambda: self.view.curve(s.best_n))


def _gpu_name(device: str) -> str | None:
    """The device panel's name for a slot's device: cuda:3 -> GPU3 (NVML's numbering, through
    CUDA_VISIBLE_DEVICES when it is set); None for a CPU slot."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or not index.isdigit():
        return None
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    i = int(index)
    return f"GPU{visible[i]}" if i < len(visible) and visible[i].isdigit() else f"GPU{i}"
