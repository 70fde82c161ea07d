"""The research loop: propose -> validate -> commit -> run -> decide -> record, one experiment per
device slot at once. The Engine is a facade over explicit parts, each the single owner of its
state and given what it needs, never the engine (docs/ARCHITECTURE.md, "Parts"):
- SlotSet (engine/run/slotset.py): the slots, one per device or per node's GPU of a Ray cluster;
- ProposalPool (engine/session/proposals.py): up to N + 1 agent calls at once, each in its own worktree;
  Briefing (engine/session/briefing.py): what each is told;
- Intake (engine/session/intake.py): an answer made into the experiment's commit, or refused;
- InFlight (engine/session/inflight.py): runs made and not started, proposals asked again, the counts;
- Scheduler (engine/session/scheduler.py): keeping every slot busy; Baselines (engine/session/baseline.py);
- Recorder (engine/session/record.py): the verdict (engine/session/verdict.py, pure) and confirmations;
- Ledger (engine/session/ledger.py): a row finished, usage, notes, results.tsv;
- SessionBranch (engine/session/branch.py): the only git writer of the branch; the human's work;
- StopRules (engine/session/stop.py): the limits and the human's stop;
- Pruner (engine/session/pruner.py): early stop, the rule's reference and each run's watch.
This module runs the session: start or resume, the baselines, the scheduler, and the stop. Every
state change is an event; every key the UI offers is a Control command. A kill -9 at any instant
resumes cleanly: unfinished experiments become `interrupted`, the branch is at the best commit,
numbering continues.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.errors import HarnessError

from .. import events as ev
from ..agents.base import Agent, AgentFatal, Context
from ..control import Control, pending_requests
from ..run.runs import Run
from ..run.slots import Device, Slot
from ..run.slotset import SlotSet
from ..run.targets import Target
from ..status import KEPT, Status
from ..store.git import GitError
from ..store.journal import Journal, Session
from ..store.workspace import Workspace
from .baseline import Baselines
from .best import Best
from .branch import SessionBranch
from .briefing import Briefing
from .inflight import InFlight
from .intake import Intake
from .ledger import Ledger
from .proposals import Attempt, ProposalPool
from .pruner import Pruner, settings_of
from .record import Recorder
from .scheduler import Scheduler
from .stop import Failed, Limits, Stop, StopRules
from .verdict import Decision, Rule

if TYPE_CHECKING:
    from ..run.cluster import Cluster

__all__ = ["KEPT", "Engine", "Limits"]


class Engine:
    def __init__(self, ws: Workspace, agent: Agent, target: Target, control: Control | None = None,
                 tag: str | None = None, limits: Limits = Limits(), journal: Journal | None = None,
                 devices: list[Device] | None = None, cluster: Cluster | None = None):
        self.ws, self.agent, self.target = ws, agent, target
        self.control = control or Control()
        self.tag = tag
        self.journal = journal or Journal(ws.journal_path)
        self.git = ws.git
        self.dcfg = ws.config.decision
        self.rule = Rule(self.dcfg.min_delta, self.dcfg.noise_k, target.direction)
        self.editable = list(ws.config.target.editable)
        self.human_files = ("program.md",)  # the human edits these mid-run; resets never touch them
        self.slotset = SlotSet(list(devices) if devices else [Device(_default_label(target), "")], target,
                               ws.state / "slots", cluster, self.emit)
        self._subscribers: list[Callable[[ev.Event], None]] = []
        self._emit_lock = threading.RLock()  # events come from the engine, slot and agent threads
        self.session: Session | None = None
        self._state: str | None = None  # the state line last emitted (set_state)
        self._journaled: str | None = None  # and last written to the journal, with the pending requests
        agent.interrupt = self.control.stopping  # stop-now reaches an agent waiting on the API
        self.pool = ProposalPool(self.git, ws.state, agent, self.control, self.editable, self.human_files, self.emit,
                                 judged=lambda: self.inflight.judged, on_fatal=self.fatal, on_late=self._late_proposal,
                                 wake=self.wake)
        self.briefing = Briefing(self.journal, self.git, self.editable, target, ws.program)
        self.best = Best(self.journal)  # the only writer of the session's best and noise
        self.branch = SessionBranch(self.git, self.journal, self.emit, self.editable, self.human_files, self.best)
        self.inflight = InFlight()  # runs made and not started, proposals asked again, and the counts
        self.stop = StopRules(limits, self.control, self.inflight, lambda: self.journal.total_cost(self._session().id))
        self.ledger = Ledger(self.journal, self.git, self.branch, self.control, self.stop, self.emit, self.pool.land,
                             ws.results_path, target.metric_name, self.best)
        self.intake = Intake(self.journal, self.git, self.pool, self.branch, self.inflight, self.ledger, self.emit,
                             self.finish, self._session, lambda: self.slotset.busy() > 0, self.editable,
                             self.human_files)
        self.recorder = Recorder(self.journal, self.git, self.branch, self.control, self.pool, self.inflight,
                                 self.intake, self.rule, self.emit, self.finish, self._session, lambda: self._fatal)
        self.pruner = Pruner(self.journal, self.control, settings_of(self.dcfg, target.loss_curve), self.emit, self._session,
                             lambda: self.harness, self.briefing.diff, target.budget)
        self.scheduler = Scheduler(
            journal=self.journal, git=self.git, ws=ws, agent=agent, control=self.control, slots=self.slotset,
            inflight=self.inflight, pool=self.pool, intake=self.intake, recorder=self.recorder, ledger=self.ledger,
            stop=self.stop, pruner=self.pruner, pipeline=ws.config.pipeline, emit=self.emit, show_state=self.show_state, finish=self.finish,
            context=lambda n: self.context(n), sync_human_files=self._sync_human_files,
            apply_force_keeps=self._apply_force_keeps, session=self._session, harness=lambda: self.harness,
            fatal=lambda: self._fatal)
        self.baselines = Baselines(self.journal, target, self.dcfg, self.control, self.slotset, self.scheduler,
                                   self.branch, self.best, self.emit)
        self.error: str | None = None  # set when the session stopped on an error, not a limit
        self.harness: str | None = None  # the target's harness version (set at start)
        self._fatal: AgentFatal | None = None  # the agent can make no more requests: the session stops now
        self.finished = threading.Event()  # run() has returned: the session is recorded stopped, its processes gone

    @property
    def slots(self) -> list[Slot]:
        """The slots now (SlotSet owns the list)."""
        return self.slotset.slots

    def _session(self) -> Session:
        """The session, once started (the parts are called only then)."""
        assert self.session is not None, "the session has not started"
        return self.session

    def context(self, n: int) -> Context:
        """What the agent is told for experiment n: the journal's history, and what is in flight."""
        running = self.slotset.runs() + self.inflight.runs()
        return self.briefing.context(n, self._session(), running, self.pool.attempts)

    # ---- events ----
    def subscribe(self, fn: Callable[[ev.Event], None]) -> None:
        self._subscribers.append(fn)

    def set_state(self, text: str, n: int | None = None, phase: str | None = None) -> None:
        """The one line that says what the session is doing; journaled (for `cockpit status`)
        and emitted, only when it changes."""
        with self._emit_lock:
            # the journal's line also names the human's pending requests (`cockpit status` has no
            # other way to see them; the TUI adds them itself)
            runs = sum(1 for sl in self.slots if sl.run is not None)
            journaled = " · ".join([text, *pending_requests(self.control, runs)]) if not text.startswith("stopped") else text
            if text == self._state and phase is None and journaled == self._journaled:
                return
            if self.session is not None and journaled != self._journaled:
                try:
                    self.journal.update_session(self.session.id, state=journaled, pid=os.getpid())
                    self._journaled = journaled
                except Exception:  # the state line is a display: never a reason to stop
                    traceback.print_exc()
            if text == self._state and phase is None:
                return
            self._state = text
            self.emit(ev.StateChanged(text=text, n=n, phase=phase))

    def show_state(self, n: int | None = None, phase: str | None = None) -> None:
        """The state line from what runs, waits and is proposed now."""
        runs = [r for r in (sl.run for sl in self.slots) if r is not None]  # each read once (other threads)
        parts = []
        if runs:
            what = "baseline" if all(r.kind == "baseline" for r in runs) else "running"
            parts.append(f"{what} " + ", ".join(f"#{r.n} ({r.phase})" for r in sorted(runs, key=lambda r: r.n)))
        awaiting = self.inflight.awaiting
        if awaiting is not None:
            parts.append(f"awaiting approval of #{awaiting.n}")
        elif not runs:
            preparing = sorted(a.n for a in self.pool.attempts)
            if self.control.paused:
                parts.append("paused")
            elif preparing:
                parts.append("proposing " + ", ".join(f"#{k}" for k in preparing))
        if parts:
            self.set_state(" · ".join(parts), n=n, phase=phase)

    def emit(self, e: ev.Event) -> None:
        with self._emit_lock:
            if not e.HIGH_RATE and self.session is not None:
                self.journal.add_event(self.session.id, e.type, e.to_dict())
            for fn in self._subscribers:
                try:
                    fn(e)
                except Exception:  # a broken consumer must never stop the loop
                    traceback.print_exc()

    # ---- the ledger (engine/session/ledger.py), with the session it returns ----
    def finish(self, r: Run | None, status: Status, reason: str | None, n: int | None = None,
               description: str | None = None, diff_stat: str | None = None, decision: Decision | None = None,
               agent_error: bool = False) -> None:
        self.session = self.ledger.finish(self._session(), r, status, reason, n, description, diff_stat, decision,
                                          agent_error)
        self.branch.check_tree(self.session)  # the human's commit or edited code: the session stops, with it kept

    def _apply_force_keeps(self) -> None:
        """The human's force-keeps of finished experiments (one still running is kept when it finishes)."""
        for n in self.control.take_forced_past():
            if n in self.control.running():
                self.control.force_keep(n)
                continue
            self.session = self.ledger.force_keep(self._session(), n, self.harness) or self.session

    def _write_results(self) -> None:
        if self.session is not None:
            self.ledger.write_results(self.session)

    def _late_proposal(self, a: Attempt) -> None:
        """A proposal abandoned while its agent call ran returned: what it cost is recorded."""
        self.ledger.record_usage(self._session(), a.n, a.usage)
        self.ledger.save_notes(self._session(), a.tools)

    def wake(self) -> None:
        """Something finished in another thread: the scheduler looks again now."""
        self.scheduler.wake()

    def fatal(self, e: AgentFatal) -> None:
        """No request of this session can succeed: every run stops now."""
        self._fatal = e
        for sl in self.slots:
            run = sl.run  # read once: the engine's thread may release the slot meanwhile
            if run is not None and run.cancel is not None:
                run.cancel.set()
        self.wake()

    # ---- the session ----
    def start(self) -> Session:
        self.git.ensure_clean(allow=(*self.human_files, *self.editable))
        j = self.journal
        s = j.session_by_tag(self.tag) if self.tag else j.latest_session()
        resumed = s is not None
        dirty = [f for f in self.git.changed_files(self.editable) if f in self.editable]
        if dirty:  # the agent edits only its own tree (.cockpit/agent): these edits are the human's
            raise GitError(f"the working tree has uncommitted changes: {', '.join(dirty[:3])}; commit or stash them first")
        if s is None:
            tag = self.tag or time.strftime("%b%d-%H%M").lower()
            base = self.git.head()
            origin = self.git.branch()
            branch = self.git.checkout_session_branch(tag, base)
            s = j.create_session(tag, branch, base, self.agent.name, self.target.label)
            self.harness = self._version()
            j.update_session(s.id, harness=self.harness, origin=origin)
        else:
            for n in j.mark_interrupted(s.id):
                self.emit(ev.Notice(text=f"experiment #{n} was interrupted when cockpit stopped; recorded `interrupted`"))
            self.git.checkout_session_branch(s.tag)
            s = self.branch.take_human_commits(s)
            self.git.reset_hard(s.best_commit, keep=self.human_files)
            self.harness = self._version()  # of the files on the session branch, now checked out
            j.update_session(s.id, status="running", stop_reason=None, agent=self.agent.name)
            self.branch.check_harness_version(j.session(s.id), self.harness, self.target.label)
            s = j.session(s.id)
        self.branch.head = self.git.head()
        self.session = s
        self.tag = s.tag
        self.pool.reset_trees(s.best_commit)  # an unsubmitted edit left there by a killed cockpit goes
        self.slotset.make()
        for slot in self.slots:
            try:
                slot.target.warm_up()
            except Exception as e:  # only a head start: the first run starts its own process
                self.emit(ev.Notice(text=f"could not start the first run's process early on {slot.device.label}: {e}"))
        if self.git.removed_stale_lock:
            self.emit(ev.Notice(text="removed a stale .git/index.lock left by a git command that was killed"))
        self._sync_human_files()
        self._write_results()
        self.emit(ev.SessionStarted(session_id=s.id, tag=s.tag, branch=s.branch, agent=self.agent.name, resumed=resumed,
                                    best_commit=s.best_commit, best_metric=s.best_metric, next_experiment=j.next_number(s.id)))
        return s

    def _version(self) -> str | None:
        self.target.rehash()  # the locked files as the session branch has them
        return self.target.version()

    def run(self) -> str:
        """Run until a stop condition; returns the reason. Any failure ends the session with its
        reason recorded, the unfinished experiments `interrupted` and the branch at the best commit."""
        try:
            return self._run()
        finally:
            self.finished.set()

    def _run(self) -> str:
        reason = "stopped"
        try:
            if self.session is None:
                self.start()
            if self.target.sandboxed is False:  # said at every start, and kept in the journal
                from harness.sandbox import OFF_NOTICE

                self.emit(ev.Alert(text=f"{OFF_NOTICE} ({self.target.sandbox_reason})"))
            elif self.target.sandboxed:
                from harness.resources import notice

                text = notice()
                if text:  # what the kernel does not bound here (cores, memory, processes)
                    self.emit(ev.Notice(text=text))
            if len(self.slots) > 1:
                self.emit(ev.Notice(text=f"{len(self.slots)} slots, one experiment each at once: "
                                         + ", ".join(sl.device.label for sl in self.slots)))
            if self.baselines.needed(self._session()):
                self.session = self.baselines.measure(self._session(), self.harness)
            reason = self.scheduler.schedule()
        except Stop as e:
            reason = str(e)
            if isinstance(e, Failed):  # an error, not a limit: the CLI exits non-zero
                self.error = reason
        except KeyboardInterrupt:  # a ctrl-c that reached the engine's thread: it is recorded as one
            reason = "stopped by ctrl-c"
            raise
        except Exception as e:  # integrity failures, git, disk, the database: stop with one clear line
            reason = self.error = str(e) if isinstance(e, HarnessError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, HarnessError):
                traceback.print_exc()
            self.emit(ev.Error(text=reason, fatal=True))
        finally:
            s = self.session
            if s is not None:
                try:
                    self.scheduler.wind_down(reason)
                except Exception:  # best effort: _repair marks what is left `interrupted`
                    traceback.print_exc()
                if self._fatal is not None and self.error is None:  # a proposal ended it as the session stopped anyway
                    reason = self.error = str(self._fatal)
                    self.emit(ev.Error(text=reason, fatal=True))
                self.slotset.close()  # no spare training process outlives the session
                self.branch.repair(s)
                self.journal.update_session(s.id, status="stopped", stop_reason=reason)
                self.set_state(f"stopped: {reason}")
                self._write_results()
                self.emit(ev.SessionStopped(session_id=s.id, reason=reason, error=self.error is not None))
        return reason

    def _sync_human_files(self) -> bool:
        """The human's program.md edits, committed for them (engine/session/branch.py)."""
        s = self.branch.sync_human_files(self._session())
        if s is None:
            return False
        self.session = s
        return True


def _default_label(target: Target) -> str:
    return {"cuda": "cuda:0", "cpu": "cpu", "mps": "mps"}.get(target.device or "", "local")
