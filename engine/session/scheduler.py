"""Keeping every slot busy: the Scheduler, which gets the session's parts (never the engine).

Each turn of the scheduler: finished runs are judged (engine/session/record.py); free slots take, in
order, the runs already made (confirmations, then a proposal the human approved) and then the
proposals the agent has finished, each turned into its commit first; and the pool is topped up
to N + 1 proposals in flight. Runs go in the slots' threads; everything else, git and the
verdicts included, happens in the engine's thread, one at a time.
"""

from __future__ import annotations

import queue
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import events as ev
from ..agents.base import Agent, AgentFatal, Context
from ..control import Control
from ..run.runs import Run
from ..run.slots import Slot
from ..run.slotset import SlotSet
from ..run.targets import Outcome
from ..status import Status
from ..store.git import GitRepo
from ..store.journal import CURVE_POINTS, Journal, Session, thin
from ..store.workspace import Workspace
from .inflight import InFlight
from .intake import Intake
from .ledger import Ledger
from .proposals import ProposalPool
from .pruner import Pruner, Watch
from .record import Recorder
from .stop import StopRules
from .verdict import judge_baseline

if TYPE_CHECKING:
    from harness.runner import Progress

ABANDON_WAIT = 10.0  # seconds a stopping session waits for abandoned proposals before leaving them to finish alone
SLOT_WAIT = 60.0  # seconds a stopping session waits for its cancelled runs to end


class Scheduler:
    """The callables are the engine's: `show_state` (the state line), `finish` (records a row and
    keeps the session current), `context` (what the agent is told for experiment n),
    `sync_human_files` (the human's program.md edits, committed), `apply_force_keeps` (the
    human's force-keeps of finished experiments), `session`, `harness` (its version) and `fatal`
    (why no request of the session can succeed, None while they can)."""

    def __init__(self, *, journal: Journal, git: GitRepo, ws: Workspace, agent: Agent, control: Control,
                 slots: SlotSet, inflight: InFlight, pool: ProposalPool, intake: Intake, recorder: Recorder,
                 ledger: Ledger, stop: StopRules, pruner: Pruner, pipeline: bool, emit: Callable[[ev.Event], None],
                 show_state: Callable[..., None], finish: Callable[..., None], context: Callable[[int], Context],
                 sync_human_files: Callable[[], bool], apply_force_keeps: Callable[[], None],
                 session: Callable[[], Session], harness: Callable[[], str | None],
                 fatal: Callable[[], AgentFatal | None]):
        self.journal, self.git, self.ws, self.agent, self.control = journal, git, ws, agent, control
        self.slots, self.inflight, self.pool, self.intake, self.recorder = slots, inflight, pool, intake, recorder
        self.ledger, self.stop, self.pipeline, self.emit = ledger, stop, pipeline, emit
        self.pruner = pruner
        self.show_state, self.finish, self.context = show_state, finish, context
        self.sync_human_files, self.apply_force_keeps = sync_human_files, apply_force_keeps
        self.session, self.harness, self.fatal = session, harness, fatal
        self.done: queue.Queue[Run | None] = queue.Queue()  # runs the slots finished (None: look again)
        self._synced = 0.0  # when the human's files were last looked at

    def wake(self) -> None:
        """Something finished in another thread: the scheduler looks again now."""
        self.done.put(None)

    # ---- one turn ----
    def schedule(self) -> str:
        """Run experiments until a stop condition, then let the runs in flight finish; returns
        the reason. At a limit, the runs already made (queued, approved) still run; when the
        human stops the session, nothing new starts."""
        while True:
            self.apply_force_keeps()
            self._journal_let_finish()
            self.slots.cluster_turn()
            stop = self.stop.reason()
            fatal = self.fatal()
            halt = self.control.stop_mode is not None or fatal is not None
            made = self.inflight.made()
            if fatal is not None and not self.slots.busy():
                raise fatal  # no request of this session can succeed
            if stop and not self.slots.busy() and (halt or not made):
                return stop
            if not halt:
                self._gate()
                if not self.control.paused:
                    self._fill(new=not stop)
                if not stop:
                    self.top_up()
            self.show_state()
            self.collect(0.25)

    def _fill(self, new: bool = True) -> None:
        """Free slots take the runs already made, then (`new`) the agent's finished proposals."""
        free = self.slots.free()
        while free:
            queued = self.inflight.next_run()
            if queued is not None:  # confirmations (and an approved proposal): never held up by the review gate
                self.start_run(free.pop(0), queued)
                continue
            if self.inflight.awaiting is not None or not new or self.stop.reason():
                return
            ready = next((a for a in self.pool.attempts if a.done), None)
            if ready is None:
                return
            self.sync_human_files()  # the human's program.md edits, committed for them (a proposal from before is asked again)
            a = self.pool.take_ready()
            if a is None:
                return
            self.inflight.took()
            r = self.intake.take(a)
            if r is None:
                continue
            if self.control.review:
                self.inflight.hold(r)
                self.control.await_approval(r.n)
                self.emit(ev.AwaitingApproval(n=r.n))
                return
            self.start_run(free.pop(0), r)

    def _gate(self) -> None:
        """The proposal at the review gate: approved, it takes the next free slot."""
        r = self.inflight.awaiting
        if r is None:
            return
        verdict = self.control.approval(r.n)
        if verdict is None:
            return
        self.inflight.release()
        if verdict == "approved":
            self.inflight.queue(r)  # after the confirmations already queued
            return
        self.control.end_run(r.n)
        if verdict == "vetoed":
            self.finish(r, Status.VETOED, self.control.take_veto(r.n))
        else:
            self.finish(r, Status.INTERRUPTED, "stopped before the run")

    def _journal_let_finish(self) -> None:
        """The human's let-finish requests, journaled once each (the agent and the report read notes)."""
        for n in self.control.take_let_finish():
            self.journal.add_note(self.session().id, "human", "let-finish",
                                  f"experiment #{n} was let run to its end by the human, whatever the early-stop rule said")

    def top_up(self) -> None:
        """Keep N + 1 proposals in flight (N: the slots), within the limits."""
        L, c = self.stop.limits, self.control
        if (c.stop_mode or c.paused or self.fatal() is not None or self.stop.reason()
                or time.monotonic() < self.intake.backoff_until):
            return
        busy = self.slots.busy()
        # proposals in flight (being made, or made and waiting for a slot), at most N + 1: the
        # next experiment of every slot, prepared while its run trains, and one ahead; without
        # pipelining, one per free slot, asked only when it is free
        want = len(self.slots.slots) + 1 if self.pipeline else len(self.slots.slots) - busy
        have = len(self.pool.attempts) + self.inflight.waiting()
        while have < want or self.inflight.due():
            if not self.agent.concurrent and self.pool.preparing():
                return  # an agent that proposes one at a time (the tuner: distinct moves need the last one known)
            if time.monotonic() - self._synced > 1.0:
                self._synced = time.monotonic()
                self.sync_human_files()  # the human's program.md edits: the new proposal reads them
            again = self.inflight.next_due()
            if again is not None:
                n = again.n
                self.emit(ev.Notice(text=again.why))
                have -= 1  # it was counted while it waited
            elif have >= want:
                return
            else:
                asked = len(self.pool.attempts) + len(self.inflight.again)  # (those asked again are counted)
                if L.max_experiments is not None and self.inflight.taken + asked >= L.max_experiments:
                    return
                n = self.journal.next_number(self.session().id)
                self.new_row(n)
            self.pool.start(n, self.context(n), self.session().best_commit)
            have += 1

    def new_row(self, n: int) -> None:
        s = self.session()
        self.journal.add_experiment(s.id, n, "experiment", s.best_commit, Status.PROPOSING)
        if self.control.take_instructions_changed():
            self.journal.add_note(s.id, "human", "instructions", "program.md was changed by the human; re-read it")

    # ---- runs, on the slots ----
    def start_run(self, slot: Slot, r: Run) -> None:
        r.cancel = self.control.begin_run(r.n)
        if self.fatal() is not None:
            r.cancel.set()  # no request of this session can succeed: the session is ending
        r.slot = slot
        self.journal.update_experiment(self.session().id, r.n, run_started=time.time(), harness=self.harness(),
                                       slot=slot.index, device=slot.device.label, status=Status.RUNNING)
        self.emit(ev.ExperimentStarted(n=r.n, commit=r.sha, kind=r.kind, slot=slot.index, device=slot.device.label))
        watch = self.pruner.watch(r)  # early stop (None: off, or a baseline or a confirmation)
        slot.start(r, lambda sl, run: self._slot_work(sl, run, watch))
        self.show_state(r.n, "startup")

    def _slot_work(self, slot: Slot, r: Run, watch: Watch | None = None) -> None:
        """In the slot's thread: the run, then back to the scheduler."""
        try:
            # the slot's own checkout of the commit it runs, in its thread: the engine's thread
            # never waits for 64 checkouts in a row
            self.git.agent_worktree(slot.tree, r.sha)
            r.out = self._run_target(slot, r, watch)
        except BaseException as e:  # judged in the engine's thread (an integrity failure stops the session)
            r.error = e
        finally:
            self.done.put(r)

    def _run_target(self, slot: Slot, r: Run, watch: Watch | None = None) -> Outcome:
        n, sid = r.n, self.session().id
        log = self.ws.run_dir(self.session().tag, n) / "run.log"
        curve: list[tuple[float, float]] = []

        def progress(p: Progress) -> None:
            phase = p.phase  # a harness Progress: "train", "export" or "eval"
            if phase != r.phase:
                r.phase = phase
                self.show_state(n, phase)
            if phase == "train":
                self.emit(ev.RunProgress(n=n, step=p.step, loss=p.loss, tokens_per_second=p.tokens_per_second, mfu=p.mfu,
                                         fraction=p.fraction, elapsed=p.elapsed))
                if p.loss is not None and p.fraction is not None:
                    curve.append((p.fraction, p.loss))
                    if len(curve) > 4 * CURVE_POINTS:
                        curve[:] = thin(curve)
                    if watch is not None:
                        watch.see(curve)  # the early-stop rule: it cancels a run that is clearly losing

        assert r.cancel is not None, "a run has its cancel event once it starts"
        try:
            return slot.target.run(log, r.cancel, progress, baseline=r.kind == "baseline", tree=slot.tree)
        finally:
            if curve:
                self.journal.save_curve(sid, n, curve)

    def collect(self, timeout: float) -> Run | None:
        """Judge the runs the slots finished (waiting up to `timeout` for one); returns the last
        baseline run finished, which the baseline step judges itself."""
        try:
            r = self.done.get(timeout=timeout)
        except queue.Empty:
            return None
        baseline = None
        while True:
            if r is not None and r.slot is not None:
                r.slot.release()
                self.control.end_run(r.n)
                if r.error is None and r.out is not None and r.out.status == "lost":  # its node died
                    self.slots.drop(r.slot, r.out.reason or "its node is gone")
                if r.error is not None:
                    raise r.error
                if r.kind == "baseline":
                    baseline = r
                else:
                    self.recorder.judge(r)
                    self.inflight.verdict()
            try:
                r = self.done.get_nowait()
            except queue.Empty:
                return baseline
            if baseline is not None and r is not None and r.kind == "baseline":
                self.done.put(r)  # one baseline at a time to its caller
                return baseline

    def wind_down(self, reason: str) -> None:
        """The session is stopping: runs in flight are cancelled and recorded `interrupted`, as are
        the run waiting for approval, the queued ones and the proposals in flight."""
        for run in self.slots.runs():
            if run.cancel is not None:
                run.cancel.set()
        deadline = time.monotonic() + SLOT_WAIT
        while self.slots.busy() and time.monotonic() < deadline:
            try:
                r = self.done.get(timeout=0.5)
            except queue.Empty:
                continue
            if r is None or r.slot is None:
                continue
            r.slot.release()
            self.control.end_run(r.n)
            try:
                if r.error is None and r.out is not None and (r.out.status != "cancelled" or r.pruned is not None):
                    if r.kind == "baseline":  # measured before the stop reached it: it counts on resume
                        self.record_baseline(r)
                    else:
                        self.recorder.judge(r)  # it finished before the stop reached it: its result counts
                else:
                    self.finish(r if r.out is not None else None, Status.INTERRUPTED, f"the session stopped: {reason}", n=r.n)
            except Exception:  # best effort: the next start marks what is left `interrupted`
                traceback.print_exc()
        waited, again = self.inflight.clear()
        try:
            for r in waited:
                self.control.end_run(r.n)
                try:
                    self.finish(None, Status.INTERRUPTED, "the session stopped before it ran", n=r.n)
                except Exception:  # (the human's commit says so again): the row is recorded all the same
                    pass
            for x in again:
                self._never_ran(x.n, "to be proposed again; the session stopped first")
        finally:
            self._abandon_proposals()

    def _abandon_proposals(self) -> None:
        attempts = list(self.pool.attempts)
        for a in attempts:
            a.cancel.set()
        deadline = time.monotonic() + ABANDON_WAIT
        for a in attempts:
            finished = self.pool.abandon(a, max(0.0, deadline - time.monotonic()))
            if finished:
                self.ledger.record_usage(self.session(), a.n, a.usage)
                self.ledger.save_notes(self.session(), a.tools)
            self.pool.release(a)
            fatal = self.fatal()
            reason = ("prepared while other runs trained; the session stopped before it ran" if fatal is None
                      else f"not proposed: {a.failure}" if isinstance(a.failure, AgentFatal)
                      else f"the session stopped: {fatal}")
            self._never_ran(a.n, reason)

    def _never_ran(self, n: int, reason: str) -> None:
        """A proposal row the session stopped before it ran: `interrupted`, with why."""
        s = self.session()
        self.journal.update_experiment(s.id, n, status=Status.INTERRUPTED, finished=time.time(), reason=reason,
                                       abandoned=1)  # the UIs read this field (engine/store/view.py), not the description
        self.emit(ev.ExperimentFinished(n=n, commit="", status=Status.INTERRUPTED, metric=None, delta=None, confidence=None,
                                        best_metric=s.best_metric, description="(not run)", reason=reason))

    def record_baseline(self, r: Run) -> bool:
        """Record a finished baseline run; True when it measured the code. A session ending on a
        fatal agent error ends here too."""
        assert r.out is not None, "a baseline run is recorded once the target measured it"
        fatal = self.fatal()
        v = judge_baseline(r.out, veto=self.control.take_veto(r.n), fatal=str(fatal) if fatal is not None else None,
                           stopped_by=self.control.stopped_by)
        self.ledger.finish_baseline(self.session(), r, v)
        if v.status == Status.INTERRUPTED and fatal is not None:
            raise fatal
        return r.out.status == "ok"
