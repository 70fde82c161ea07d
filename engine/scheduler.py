"""Keeping every slot busy: an Engine mixin (engine/loop.py).

Each turn of the scheduler: finished runs are judged (engine/record.py); free slots take, in
order, the runs already made (confirmations, then a proposal the human approved) and then the
proposals the agent has finished, each turned into its commit first; and the pool is topped up
to N + 1 proposals in flight. Runs go in the slots' threads; everything else, git and the
verdicts included, happens in the engine's thread, one at a time.
"""

from __future__ import annotations

import queue
import time
import traceback

from . import events as ev
from .agents.base import AgentFatal
from .journal import CURVE_POINTS, thin
from .record import Run

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
            if self.cluster is not None:
                self._cluster_turn()
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
        while free:
            if self.queued:  # confirmations (and an approved proposal): never held up by the review gate
                self.start_run(free.pop(0), self.queued.pop(0))
                continue
            if self._awaiting is not None or not new or self._stop_condition():
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
            self.queued.append(r)  # after the confirmations already queued
            return
        self.control.end_run(r.n)
        if verdict == "vetoed":
            self.finish(r, "vetoed", self.control.take_veto(r.n))
        else:
            self.finish(r, "interrupted", "stopped before the run")

    def top_up(self) -> None:
        """Keep N + 1 proposals in flight (N: the slots), within the limits."""
        L, c = self.limits, self.control
        if (c.stop_mode or c.paused or self._fatal is not None or self._stop_condition()
                or time.monotonic() < self._backoff_until):
            return
        busy = sum(sl.busy for sl in self.slots)
        # proposals in flight (being made, or made and waiting for a slot), at most N + 1: the
        # next experiment of every slot, prepared while its run trains, and one ahead; without
        # pipelining, one per free slot, asked only when it is free
        want = len(self.slots) + 1 if self.pipeline else len(self.slots) - busy
        have = len(self.pool.attempts) + len(self.queued) + (self._awaiting is not None) + len(self._again)
        while have < want or any(x[2] < self._judged for x in self._again):
            if not self.agent.concurrent and self.pool.preparing():
                return  # an agent that proposes one at a time (the tuner: distinct moves need the last one known)
            if time.monotonic() - self._synced > 1.0:
                self._synced = time.monotonic()
                self._sync_human_files()  # the human's program.md edits: the new proposal reads them
            again = next((x for x in self._again if x[2] < self._judged), None)
            if again is not None:
                self._again.remove(again)
                n = again[0]
                self.emit(ev.Notice(text=again[1]))
                have -= 1  # it was counted while it waited
            elif have >= want:
                return
            else:
                asked = len(self.pool.attempts) + len(self._again)  # (those asked again are counted)
                if L.max_experiments is not None and self._ran + asked >= L.max_experiments:
                    return
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

    # ---- the slots of a Ray cluster (engine/cluster.py): nodes that join or die ----
    def _cluster_notices(self) -> None:
        while not self.cluster.notices.empty():
            self.emit(ev.Notice(text=self.cluster.notices.get_nowait()))

    def _cluster_turn(self) -> None:
        """Slots of nodes that joined are added (warm); idle slots of nodes that died go."""
        from .cluster import JOIN_EVERY

        self._cluster_notices()
        while not self.cluster.new.empty():
            d, target = self.cluster.new.get_nowait()
            slot = self.new_slot(d, target)
            try:
                target.warm_up()
            except Exception:
                pass  # only a head start
            self.slots = self.slots + [slot]
            self.emit(ev.Notice(text=f"slot {slot.index} added: {d.label}"))
        if time.monotonic() - self._cluster_looked < JOIN_EVERY:
            return
        self._cluster_looked = time.monotonic()
        try:
            alive = self.cluster.alive()
        except Exception:
            return  # the cluster's own trouble: looked at again later
        for sl in [sl for sl in self.slots if not sl.busy and sl.device.node and sl.device.node not in alive]:
            self.drop_slot(sl, "its node is gone")

    def drop_slot(self, slot, why: str) -> None:
        self.slots = [sl for sl in self.slots if sl is not slot]  # rebound: other threads read the list
        try:
            slot.target.close()
        except Exception:
            pass
        slot.close()
        left = len(self.slots)
        self.emit(ev.Notice(text=f"slot {slot.index} ({slot.device.label}) removed: {why}; {left} slot(s) left"
                                 + ("" if left else ", waiting for a node to join")))

    # ---- runs, on the slots ----
    def start_run(self, slot, r: Run) -> None:
        r.cancel = self.control.begin_run(r.n)
        if self._fatal is not None:
            r.cancel.set()  # no request of this session can succeed: the session is ending
        r.slot = slot
        self.journal.update_experiment(self.session.id, r.n, run_started=time.time(), harness=self.harness,
                                       slot=slot.index, device=slot.device.label, status="running")
        self.emit(ev.ExperimentStarted(n=r.n, commit=r.sha, kind=r.kind, slot=slot.index, device=slot.device.label))
        slot.start(r, self._slot_work)
        self.show_state(r.n, "startup")

    def _slot_work(self, slot, r: Run) -> None:
        """In the slot's thread: the run, then back to the scheduler."""
        try:
            # the slot's own checkout of the commit it runs, in its thread: the engine's thread
            # never waits for 64 checkouts in a row
            self.git.agent_worktree(slot.tree, r.sha)
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
                if r.error is None and r.out is not None and r.out.status == "lost":  # its node died
                    self.drop_slot(r.slot, r.out.reason)
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
                if r.error is None and r.out is not None and r.out.status != "cancelled":
                    if r.kind == "baseline":  # measured before the stop reached it: it counts on resume
                        self._baseline_done(r, self.session)
                    else:
                        self.judge(r)  # it finished before the stop reached it: its result counts
                else:
                    self.finish(r if r.out is not None else None, "interrupted", f"the session stopped: {reason}", n=r.n)
            except Exception:  # best effort: the next start marks what is left `interrupted`
                traceback.print_exc()
        try:
            for r in ([self._awaiting] if self._awaiting else []) + self.queued:
                self.control.end_run(r.n)
                try:
                    self.finish(None, "interrupted", "the session stopped before it ran", n=r.n)
                except Exception:  # (the human's commit says so again): the row is recorded all the same
                    pass
            for n, _why, _after in self._again:
                self._never_ran(n, "to be proposed again; the session stopped first")
        finally:
            self._awaiting, self.queued, self._again = None, [], []
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
            self._never_ran(a.n, reason)

    def _never_ran(self, n: int, reason: str) -> None:
        """A proposal row the session stopped before it ran: `interrupted`, with why."""
        self.journal.update_experiment(self.session.id, n, status="interrupted", finished=time.time(), reason=reason,
                                       abandoned=1)  # the UIs read this field (engine/view.py), not the description
        self.emit(ev.ExperimentFinished(n=n, commit="", status="interrupted", metric=None, delta=None, confidence=None,
                                        best_metric=self.session.best_metric, description="(not run)", reason=reason))

