"""The research loop: propose -> validate -> commit -> run -> decide -> record, one experiment per
device slot at once.

The engine owns the journal, the git branch and the targets. Its parts, each in its own module:
- slots (engine/slots.py): the devices, one experiment at a time on each, in its own checkout
  of the experiment's commit (.cockpit/slots/<i>), with its own spare training process;
- the proposals in flight (engine/proposals.py): up to N + 1 agent calls at once, each in its
  own worktree, told what the others try; taken into commits, duplicates refused
  (engine/intake.py);
- the baselines (engine/baseline.py): one per slot, in parallel, for the best and the noise;
- keeping every slot busy (engine/scheduler.py);
- decide and record (engine/record.py): the verdict, including the rule for runs whose best
  moved while they ran (a confirmation run), written before the branch moves;
- the human's work (engine/human.py): never reset away.
This module runs the session: start or resume, the baselines (one per slot, in parallel), the
scheduler that keeps every slot busy, and the stop. Every state change is an event; every key
the UI offers is a Control command. A kill -9 at any instant resumes cleanly: unfinished
experiments become `interrupted`, the branch is at the best commit, numbering continues.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError

from . import events as ev
from .agents.base import AgentFatal
from .control import Control, pending_requests
from .git import GitError
from .human import HumanWork, _Stop
from .journal import Journal, Session
from .status import KEPT
from .proposals import ProposalPool
from .baseline import Baselines
from .intake import Intake
from .record import Recording, Run
from .scheduler import Scheduling
from .slots import Device, Slot
from .verdict import Rule
from .workspace import Workspace


__all__ = ["Engine", "Limits", "KEPT"]


@dataclass(frozen=True)
class Limits:
    max_experiments: int | None = None
    max_hours: float | None = None
    max_cost: float | None = None
    max_consecutive_crashes: int = 5


class Engine(HumanWork, Baselines, Scheduling, Intake, Recording):
    def __init__(self, ws: Workspace, agent, target, control: Control | None = None, tag: str | None = None,
                 limits: Limits = Limits(), journal: Journal | None = None, devices: list[Device] | None = None,
                 cluster=None):
        self.ws, self.agent, self.target = ws, agent, target
        self.control = control or Control()
        self.tag = tag
        self.limits = limits
        self.journal = journal or Journal(ws.journal_path)
        self.git = ws.git
        self.dcfg = ws.config.decision
        self.rule = Rule(self.dcfg.min_delta, self.dcfg.noise_k, target.direction)
        self.editable = list(ws.config.target.editable)
        self.human_files = ("program.md",)  # the human edits these mid-run; resets never touch them
        self.devices = list(devices) if devices else [Device(_default_label(target), "")]
        self.cluster = cluster  # engine/cluster.py: the slots are on a Ray cluster's nodes
        self._cluster_looked = 0.0  # when the cluster's nodes were last looked at
        self._subscribers: list[Callable[[ev.Event], None]] = []
        self._emit_lock = threading.RLock()  # events come from the engine, slot and agent threads
        self.session: Session | None = None
        self._started = time.monotonic()
        self._ran = 0  # proposals taken (they count against --max-experiments)
        self._crashes = 0
        self._agent_failures = 0
        self._state: str | None = None  # the state line last emitted (set_state)
        self._journaled: str | None = None  # and last written to the journal, with the pending requests
        self._backoff_until = 0.0  # after an agent failure, no new proposal before this (monotonic)
        agent.interrupt = self.control.stopping  # stop-now reaches an agent waiting on the API
        self.pipeline = ws.config.pipeline
        self.slots: list[Slot] = []
        self.pool = ProposalPool(self)
        self.queued: list[Run] = []  # runs made and waiting for a slot: confirmations first, then approved ones
        self._awaiting: Run | None = None  # at the review gate
        self._again: list[tuple[int, str, int]] = []  # experiments to propose again: (n, why, after this many verdicts)
        self._judged = 0  # verdicts so far
        self._synced = 0.0  # when the human's files were last looked at
        self._done: queue.Queue[Run] = queue.Queue()  # runs the slots finished
        self._codes: dict[str, int] | None = None  # the code of each experiment so far -> its number
        self.error: str | None = None  # set when the session stopped on an error, not a limit
        self.harness: str | None = None  # the target's harness version (set at start)
        self._head: str | None = None  # where cockpit last put the session branch (anything else there is the human's)
        self._fatal: AgentFatal | None = None  # the agent can make no more requests: the session stops now
        self.finished = threading.Event()  # run() has returned: the session is recorded stopped, its processes gone

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
        if self._awaiting is not None:
            parts.append(f"awaiting approval of #{self._awaiting.n}")
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

    def wake(self) -> None:
        """Something finished in another thread: the scheduler looks again now."""
        self._done.put(None)

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
            s = self._take_human_commits(s)
            self.git.reset_hard(s.best_commit, keep=self.human_files)
            self.harness = self._version()  # of the files on the session branch, now checked out
            j.update_session(s.id, status="running", stop_reason=None, agent=self.agent.name)
            self._check_harness_version(j.session(s.id))
            s = j.session(s.id)
        self._head = self.git.head()
        self.session = s
        self.tag = s.tag
        self.pool.reset_trees(s.best_commit)  # an unsubmitted edit left there by a killed cockpit goes
        self._make_slots()
        for slot in self.slots:
            try:
                slot.target.warm_up()
            except Exception as e:  # only a head start: the first run starts its own process
                self.emit(ev.Notice(text=f"could not start the first run's process early on {slot.device.label}: {e}"))
        if self.git.removed_stale_lock:
            self.emit(ev.Notice(text="removed a stale .git/index.lock left by a git command that was killed"))
        self._sync_human_files()
        self.write_results()
        self.emit(ev.SessionStarted(session_id=s.id, tag=s.tag, branch=s.branch, agent=self.agent.name, resumed=resumed,
                                    best_commit=s.best_commit, best_metric=s.best_metric, next_experiment=j.next_number(s.id)))
        return s

    def _version(self) -> str | None:
        self.target.rehash()  # the locked files as the session branch has them
        return self.target.version()

    def _make_slots(self) -> None:
        """One slot per device, each with its own copy of the target (its own spare child)."""
        if self.slots:
            return
        if self.cluster is not None:  # one slot per GPU (or cpu:N per node) of every node, checked
            for d, target in self.cluster.discover():
                self.slots.append(self.new_slot(d, target))
            self._cluster_notices()
            if not self.slots:
                from .cluster import ClusterError

                raise ClusterError(f"the Ray cluster at {self.cluster.address} gives no usable slot (see the notices)")
            self.cluster.watch()
            return
        many = len(self.devices) > 1 or bool(self.devices[0].env)
        for i, d in enumerate(self.devices):
            target = self.target.for_slot(str(i), d.env) if many else self.target
            self.slots.append(self.new_slot(d, target))

    def new_slot(self, d: Device, target) -> Slot:
        """A slot for device d, numbered after every slot so far (its checkout: .cockpit/slots/<i>)."""
        i = max((sl.index for sl in self.slots), default=-1) + 1
        return Slot(i, d, target, self.ws.state / "slots" / str(i))

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

                if notice():  # what the kernel does not bound here (cores, memory, processes)
                    self.emit(ev.Notice(text=notice()))
            if len(self.slots) > 1:
                self.emit(ev.Notice(text=f"{len(self.slots)} slots, one experiment each at once: "
                                         + ", ".join(sl.device.label for sl in self.slots)))
            if self._baseline_needed():
                self._baseline()
            reason = self.schedule()
        except _Stop as e:
            reason = str(e)
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
                    self.wind_down(reason)
                except Exception:  # best effort: _repair marks what is left `interrupted`
                    traceback.print_exc()
                if self._fatal is not None and self.error is None:  # a proposal ended it as the session stopped anyway
                    reason = self.error = str(self._fatal)
                    self.emit(ev.Error(text=reason, fatal=True))
                for slot in self.slots or [None]:
                    target = slot.target if slot is not None else self.target
                    target.close()  # no spare training process outlives the session
                    if slot is not None:
                        slot.close()
                if self.cluster is not None:
                    self.cluster.close()
                self._repair(s)
                self.journal.update_session(s.id, status="stopped", stop_reason=reason)
                self.set_state(f"stopped: {reason}")
                self.write_results()
                self.emit(ev.SessionStopped(session_id=s.id, reason=reason, error=self.error is not None))
        return reason

    def _stop_condition(self) -> str | None:
        L, s = self.limits, self.session
        by = self.control.stopped_by  # "the human", or e.g. "signal SIGTERM"
        if self.control.stop_mode == "now":
            return f"stopped by {by}" + (" (now)" if by == "the human" else "")
        if self.control.stop_mode == "after_run":
            return f"stopped by {by} (after the run)"
        if L.max_experiments is not None and self._ran >= L.max_experiments:
            return f"reached --max-experiments {L.max_experiments}"
        if L.max_hours is not None and time.monotonic() - self._started >= L.max_hours * 3600:
            return f"reached --max-hours {L.max_hours:g}"
        if L.max_cost is not None and self.journal.total_cost(s.id) >= L.max_cost:
            return f"reached --max-cost ${L.max_cost:g} (spent ${self.journal.total_cost(s.id):.2f})"
        if self._crashes >= L.max_consecutive_crashes:
            return f"{self._crashes} consecutive crashes"
        return None

    def _program_changed_since(self, base: str) -> bool:
        return base != self.session.best_commit and any(
            self.git.show(base, f) != self.git.show(self.session.best_commit, f) for f in self.human_files)

    def show(self, number: int) -> str:
        """What the agent's context offers: a past experiment's log tail."""
        e = self.journal.experiment(self.session.id, number)
        if e is None or not e.log_path:
            return ""
        from harness.runner import log_tail

        tail = log_tail(Path(e.log_path), 30)
        return f"\nlog tail:\n{tail}" if tail else ""


def _default_label(target) -> str:
    device = target.device
    return {"cuda": "cuda:0", "cpu": "cpu", "mps": "mps"}.get(device, "local")
