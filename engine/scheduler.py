"""Keeping every slot busy: an Engine mixin (engine/loop.py).

Each turn of the scheduler: finished runs are judged (engine/record.py); free slots take, in
order, the runs already made (confirmations, then a proposal the human approved) and then the
proposals the agent has finished, each turned into its commit first; and the pool is topped up
to N + 1 proposals in flight. Runs go in the slots' threads; everything else, git and the
verdicts included, happens in the engine's thread, one at a time.
"""

from __future__ import annotations

import hashlib
import queue
import time
import traceback

from harness.errors import HarnessError

from . import events as ev
from .agents.base import AgentFatal, ProposalRejected, ProposalSkipped
from .human import _Stop
from .journal import CURVE_POINTS, thin
from .record import Run

MAX_AGENT_FAILURES = 20  # consecutive agent failures (with back-off between them) before the session stops
ABANDON_WAIT = 10.0  # seconds a stopping session waits for abandoned proposals before leaving them to finish alone
SLOT_WAIT = 60.0  # seconds a stopping session waits for its cancelled runs to end


class Scheduling:
    # ---- one turn ----
    def schedule(self) -> str:
        """Run experiments until a stop condition, then let the runs in flight finish; returns
        the reason. At a limit, the runs already made (queued, approved) still run; when the
        human stops the session, nothing new starts."""
        while True:
            self.apply_past_force_keeps()
            stop = self._stop_condition()
            halt = self.control.stop_mode is not None or self._fatal is not None
            made = self.queued or self._awaiting is not None
            if self._fatal is not None and not any(sl.busy for sl in self.slots):
                raise self._fatal  # no request of this session can succeed
            if stop and not any(sl.busy for sl in self.slots) and (halt or not made):
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
        free = [sl for sl in self.slots if not sl.busy]
        while free and self._awaiting is None:
            if self.queued:
                self.start_run(free.pop(0), self.queued.pop(0))
                continue
            if not new or self._stop_condition():
                return
            ready = next((a for a in self.pool.attempts if a.done), None)
            if ready is None:
                return
            self._sync_human_files()  # the human's program.md edits, committed for them (a proposal from before is asked again)
            a = self.pool.take_ready()
            self._ran += 1
            r = self.take(a)
            if r is None:
                continue
            if self.control.review:
                self._awaiting = r
                self.control.await_approval(r.n)
                self.emit(ev.AwaitingApproval(n=r.n))
                return
            self.start_run(free.pop(0), r)

    def _gate(self) -> None:
        """The proposal at the review gate: approved, it takes the next free slot."""
        r = self._awaiting
        if r is None:
            return
        verdict = self.control.approval(r.n)
        if verdict is None:
            return
        self._awaiting = None
        if verdict == "approved":
            self.queued.insert(0, r)
            return
        self.control.end_run(r.n)
        if verdict == "vetoed":
            self.finish(r, "vetoed", self.control.take_veto(r.n))
        else:
            self.finish(r, "interrupted", "stopped before the run")

    def top_up(self) -> None:
        """Keep N + 1 experiments in flight (N: the slots; running, or proposed and waiting for a
        slot, or being proposed), within the limits."""
        L, c = self.limits, self.control
        if (c.stop_mode or c.paused or self._fatal is not None or self._stop_condition()
                or time.monotonic() < self._backoff_until):
            return
        running = sum(sl.run is not None and sl.run.kind == "experiment" for sl in self.slots)
        busy = sum(sl.busy for sl in self.slots)
        # in flight: the experiments running and the proposals made or being made, at most N + 1
        # (without pipelining: one per free slot, proposed only when it is free)
        want = len(self.slots) + 1 if self.pipeline else len(self.slots) - busy + running
        have = len(self.pool.attempts) + len(self.queued) + (self._awaiting is not None) + running
        while have < want:
            if L.max_experiments is not None and self._ran + len(self.pool.attempts) >= L.max_experiments:
                return
            if not getattr(self.agent, "concurrent", True) and self.pool.preparing():
                return  # an agent that proposes one at a time (the tuner: distinct moves need the last one known)
            if time.monotonic() - self._synced > 1.0:
                self._synced = time.monotonic()
                self._sync_human_files()  # the human's program.md edits: the new proposal reads them
            again = next((x for x in self._again if x[2] < self._judged), None)
            if again is not None:
                self._again.remove(again)
                n = again[0]
                self.emit(ev.Notice(text=again[1]))
            else:
                n = self.journal.next_number(self.session.id)
                self.new_row(n)
            self.pool.start(n, self.context(n))
            have += 1

    def context(self, n: int):
        """What the agent is told for experiment n: the journal's history, and what is in flight."""
        running = [sl.run for sl in self.slots if sl.run is not None] + self.queued
        return self.pool.context(n, running + ([self._awaiting] if self._awaiting else []))

    def new_row(self, n: int) -> None:
        self.journal.add_experiment(self.session.id, n, "experiment", self.session.best_commit, "proposing")
        if self.control.take_instructions_changed():
            self.journal.add_note(self.session.id, "human", "instructions", "program.md was changed by the human; re-read it")

    # ---- from a proposal to a run ----
    def take(self, a) -> Run | None:
        """Record the agent's answer and make it the experiment's commit (pinned, off the branch
        until it is kept). None when the experiment ended here (recorded) or is asked again."""
        s, j, n = self.session, self.journal, a.n
        try:
            if a.proposal is not None:
                j.update_experiment(s.id, n, propose_seconds=a.seconds)
            self.record_usage(n, a.usage)
            self.save_notes(a.tools)
            if not self._answered(a):
                return None
            text = a.proposal.description.strip()
            description = text.splitlines()[0][:200] if text else "(no description)"
            if self._program_changed_since(a.base):  # the human rewrote the instructions meanwhile
                self._ask_again(n, f"program.md changed while #{n} was prepared; asking the agent again")
                return None
            problem = self.pool.validate(a)
            if problem:
                self.finish(None, "invalid", problem, n=n, description=description, diff_stat=a.tree.diff_stat("HEAD"))
                return None
            changed = [f for f in a.tree.changed_files(self.editable) if f not in self.human_files]
            message = f"cockpit {s.tag} #{n}: {description}"
            sha = a.tree.commit_all(changed, message)
            if a.base != s.best_commit:  # the best moved while the agent worked (a keep, a human edit)
                sha = self.pool.rebase(a.tree, sha, a.base, s.best_commit, message)
                if sha is None:
                    self._ask_again(n, f"#{n}'s change conflicts with the new best #{s.best_n}; asking the agent again")
                    return None
        except Exception as e:
            if (a.tree.root / ".git").is_file():
                raise
            self.finish(None, "crash", f"the agent's tree {a.tree.root} was removed during the proposal "
                                       f"({type(e).__name__})", n=n, agent_error=True)
            return None
        finally:
            self.pool.release(a)
        same = self._same_as(sha, n)
        if same is not None:
            self.finish(None, "invalid", f"the same code as #{same}, already tried: refused before it ran; "
                                         "propose something else", n=n, description=description,
                        diff_stat=self.git.diff_stat(s.best_commit, sha))
            return None
        self.git.pin(s.tag, n, sha)
        stat = self.git.diff_stat(s.best_commit, sha)
        j.update_experiment(s.id, n, parent_commit=s.best_commit, commit_sha=sha, diff_stat=stat, description=description,
                            status="queued")
        self.emit(ev.DiffUpdated(n=n, diff=self.git.diff(s.best_commit, sha)))
        self.emit(ev.ExperimentProposed(n=n, description=description, diff_stat=stat))
        return Run(n, sha, s.best_commit, s.best_metric, s.best_n, "experiment", description)

    def _ask_again(self, n: int, why: str, after_result: bool = False) -> None:
        """Propose experiment n again (its row stays), at once or once the next result is known."""
        self._ran -= 1  # not an experiment yet
        self._again.append((n, why, self._judged if after_result else -1))

    def _answered(self, a) -> bool:
        """The agent's failure, recorded (True: there is a proposal to take)."""
        n, failure = a.n, a.failure
        if isinstance(failure, AgentFatal):
            self.finish(None, "interrupted", f"not proposed: {failure}", n=n, description="(not proposed)", agent_error=True)
            raise failure
        if isinstance(failure, HarnessError):
            raise failure
        if isinstance(failure, ProposalSkipped):  # the model refused, or its reply did not fit: recorded, not retried
            self.finish(None, "invalid", str(failure), n=n, description="(no proposal)")
            return False
        if isinstance(failure, ProposalRejected):  # nothing valid after the agent's own retries: skipped
            self.finish(None, "invalid", f"proposal rejected {failure}", n=n, description="(no valid change)")
            return False
        if failure is not None:  # the agent's own failure is recorded, not fatal
            self.finish(None, "crash", f"agent failed: {type(failure).__name__}: {failure}", n=n,
                        description="(agent error)", agent_error=True)
            self._agent_failures += 1
            if self._agent_failures >= MAX_AGENT_FAILURES:
                self.error = f"the agent failed {self._agent_failures} times in a row (last: {type(failure).__name__}: {failure})"
                raise _Stop(self.error)
            wait = min(600.0, 30.0 * 2 ** (self._agent_failures - 1))
            self._backoff_until = time.monotonic() + wait
            self.emit(ev.Waiting(reason=f"the agent failed ({type(failure).__name__}); next proposal in {wait:.0f}s",
                                 seconds=wait))
            return False
        self._agent_failures = 0
        if a.proposal is None:  # it may have counted a run in flight as failed: asked again knowing its result
            if self._judged > a.seen or any(sl.busy for sl in self.slots) or self.queued:
                self._ask_again(n, f"the agent had nothing to propose for #{n} while other runs trained; asking "
                                   "again now that a result is known", after_result=self._judged == a.seen)
                return False
            self.journal.update_experiment(self.session.id, n, status="discard", reason="the agent had nothing to propose",
                                           finished=time.time())
            raise _Stop("the agent has nothing left to propose")
        return True

    def _same_as(self, sha: str, n: int) -> int | None:
        """The experiment whose code is the same as commit sha's, if one was tried (or runs)."""
        if self._codes is None:
            self._codes = {}
            for e in self.journal.experiments(self.session.id):
                if e.kind == "experiment" and e.commit_sha and e.n != n and e.status not in ("proposing",):
                    self._codes.setdefault(self._code(e.commit_sha), e.n)
        code = self._code(sha)
        if code in self._codes and self._codes[code] != n:
            return self._codes[code]
        self._codes[code] = n
        return None

    def _code(self, sha: str) -> str:
        h = hashlib.sha256()
        for f in self.editable:
            h.update(f.encode() + b"\0" + (self.git.show(sha, f) or "\0missing").encode() + b"\0")
        return h.hexdigest()

    # ---- runs, on the slots ----
    def start_run(self, slot, r: Run) -> None:
        r.cancel = self.control.begin_run(r.n)
        r.slot = slot
        self.git.agent_worktree(slot.tree, r.sha)  # the slot's own checkout of the commit it runs
        self.journal.update_experiment(self.session.id, r.n, run_started=time.time(), harness=self.harness,
                                       slot=slot.index, device=slot.device.label, status="running")
        self.emit(ev.ExperimentStarted(n=r.n, commit=r.sha, kind=r.kind, slot=slot.index, device=slot.device.label))
        slot.start(r, self._slot_work)
        self.show_state(r.n, "startup")

    def _slot_work(self, slot, r: Run) -> None:
        """In the slot's thread: the run, then back to the scheduler."""
        try:
            r.out = self._run_target(slot, r)
        except BaseException as e:  # judged in the engine's thread (an integrity failure stops the session)
            r.error = e
        finally:
            self._done.put(r)

    def _run_target(self, slot, r: Run):
        n = r.n
        log = self.ws.run_dir(self.session.tag, n) / "run.log"
        curve: list[tuple[float, float]] = []

        def progress(p):
            phase = getattr(p, "phase", None) or "train"
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

        try:
            return slot.target.run(log, r.cancel, progress, baseline=r.kind == "baseline", tree=slot.tree)
        finally:
            if curve:
                self.journal.save_curve(self.session.id, n, curve)

    def collect(self, timeout: float) -> Run | None:
        """Judge the runs the slots finished (waiting up to `timeout` for one); returns the last
        baseline run finished, which the baseline step judges itself."""
        try:
            r = self._done.get(timeout=timeout)
        except queue.Empty:
            return None
        baseline = None
        while True:
            if r is not None:
                r.slot.release()
                self.control.end_run(r.n)
                if r.error is not None:
                    raise r.error
                if r.kind == "baseline":
                    baseline = r
                else:
                    self.judge(r)
                    self._judged += 1
            try:
                r = self._done.get_nowait()
            except queue.Empty:
                return baseline
            if baseline is not None and r is not None and r.kind == "baseline":
                self._done.put(r)  # one baseline at a time to its caller
                return baseline

    def wind_down(self, reason: str) -> None:
        """The session is stopping: runs in flight are cancelled and recorded `interrupted`, as are
        the run waiting for approval, the queued ones and the proposals in flight."""
        for sl in self.slots:
            if sl.run is not None and sl.run.cancel is not None:
                sl.run.cancel.set()
        deadline = time.monotonic() + SLOT_WAIT
        while any(sl.busy for sl in self.slots) and time.monotonic() < deadline:
            try:
                r = self._done.get(timeout=0.5)
            except queue.Empty:
                continue
            if r is None:
                continue
            r.slot.release()
            self.control.end_run(r.n)
            try:
                if r.error is None and r.out is not None and r.out.status != "cancelled" and r.kind != "baseline":
                    self.judge(r)  # it finished before the stop reached it: its result counts
                else:
                    self.finish(r if r.out is not None else None, "interrupted", f"the session stopped: {reason}", n=r.n)
            except Exception:  # best effort: the next start marks what is left `interrupted`
                traceback.print_exc()
        for r in ([self._awaiting] if self._awaiting else []) + self.queued:
            self.control.end_run(r.n)
            self.finish(None, "interrupted", "the session stopped before it ran", n=r.n)
        self._awaiting, self.queued = None, []
        self._abandon_proposals()

    def _abandon_proposals(self) -> None:
        attempts = list(self.pool.attempts)
        for a in attempts:
            a.cancel.set()
        deadline = time.monotonic() + ABANDON_WAIT
        for a in attempts:
            finished = self.pool.abandon(a, max(0.0, deadline - time.monotonic()))
            if finished:
                self.record_usage(a.n, a.usage)
                self.save_notes(a.tools)
            self.pool.release(a)
            reason = ("prepared while other runs trained; the session stopped before it ran" if self._fatal is None
                      else f"not proposed: {a.failure}" if isinstance(a.failure, AgentFatal)
                      else f"the session stopped: {self._fatal}")
            self.journal.update_experiment(self.session.id, a.n, status="interrupted", finished=time.time(), reason=reason)
            self.emit(ev.ExperimentFinished(n=a.n, commit="", status="interrupted", metric=None, delta=None,
                                            confidence=None, best_metric=self.session.best_metric,
                                            description="(not run)", reason=reason))

