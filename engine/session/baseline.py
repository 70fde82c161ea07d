"""The baselines: the unchanged best code, run on every slot at once, measure the best and the
noise before any experiment is judged. The Baselines part runs them through the scheduler's
slots; the best and the noise they measure are written here, once."""

from __future__ import annotations

from collections.abc import Callable

from .. import events as ev
from ..config import DecisionConfig
from ..control import Control
from ..run.runs import Run
from ..run.slotset import SlotSet
from ..run.targets import Target
from ..status import Status
from ..store.journal import Journal, Session
from .best import Best
from .branch import SessionBranch
from .scheduler import Scheduler
from .stop import Failed, Stop
from .verdict import noise_of, threshold_of

BASELINE_TIMING_RETRIES = 3  # a baseline run that broke a timing rule is run again this often (a busy machine)
NOISY_SHARE = 0.02  # a keep threshold above this share of the metric is said at once


class Baselines:
    def __init__(self, journal: Journal, target: Target, decision: DecisionConfig, control: Control, slots: SlotSet,
                 scheduler: Scheduler, branch: SessionBranch, best: Best, emit: Callable[[ev.Event], None]):
        self.journal, self.target, self.dcfg, self.control, self.best = journal, target, decision, control, best
        self.slots, self.scheduler, self.branch, self.emit = slots, scheduler, branch, emit

    def needed(self, s: Session) -> bool:
        return self.journal.session(s.id).noise is None

    def measure(self, s: Session, harness: str | None) -> Session:
        """max(baseline_runs, N slots) runs of the best code, one per slot at a time; the best is
        their mean and the noise their spread, from all of them. Returns the session with them."""
        sched = self.scheduler
        done = [e for e in self.journal.experiments(s.id)  # the best code, as measured by this harness
                if e.kind == "baseline" and e.status == Status.KEEP and e.harness == harness
                and e.commit_sha and self.branch.same_code(e.commit_sha, s.best_commit)]
        values = [e.metric for e in done if e.metric is not None]
        self.target.set_credit([e.credit for e in done if e.credit is not None],
                               [e.step_seconds for e in done if e.step_seconds is not None])  # a resumed session keeps its allowance
        want = max(self.dcfg.baseline_runs, len(self.slots.slots))
        timing_failures = 0
        while len(values) < want:
            self.slots.cluster_turn()  # a node of a Ray cluster that joins takes baselines too
            busy = self.slots.busy()
            stop = self.control.stop_mode
            if stop == "now" or (stop and not busy):  # after the run: the baselines in flight finish first
                raise Stop(f"stopped by {self.control.stopped_by} during the baseline")
            for slot in self.slots.free()[:0 if stop else max(0, want - len(values) - busy)]:
                n = self.journal.next_number(s.id)
                desc = f"baseline {len(values) + busy + 1}/{want}"
                busy += 1
                self.journal.add_experiment(s.id, n, "baseline", s.base_commit, Status.RUNNING, desc)
                self.journal.update_experiment(s.id, n, commit_sha=s.best_commit, diff_stat="")
                self.emit(ev.ExperimentProposed(n=n, description=desc, diff_stat="", kind="baseline"))
                sched.start_run(slot, Run(n, s.best_commit, s.best_commit, None, None, "baseline", desc))
            if len(values) + busy >= want:
                sched.top_up()  # the first proposals are prepared during the last baseline runs
            sched.show_state()
            r = sched.collect(0.25)
            if r is None or r.out is None:
                continue
            if sched.record_baseline(r) and r.out.metric is not None:
                values.append(r.out.metric)  # baselines do not count against --max-experiments
                continue
            out = r.out
            if out.status == "lost" and self.control.stop_mode is None:
                self.emit(ev.Notice(text=f"baseline run #{r.n}: {out.reason}; running it again"))
                continue
            if out.status == "cancelled" and self.control.stop_mode is None:
                self.emit(ev.Notice(text=f"baseline run #{r.n} was vetoed; running it again"))
                continue
            if self.control.stop_mode:
                continue  # stopping: what is still running finishes, then the session stops
            if out.timing and timing_failures < BASELINE_TIMING_RETRIES:  # unchanged code: the machine, not the code
                timing_failures += 1
                self.emit(ev.Notice(text=f"baseline run #{r.n} broke a timing rule ({out.reason}); the machine may be "
                                         f"busy: running it again ({timing_failures}/{BASELINE_TIMING_RETRIES})"))
                continue
            raise Failed(f"the baseline run failed ({out.status}: {out.reason}); fix the code and commit it on "
                         f"{s.branch} (or on {s.origin or 'the branch it started from'}), then run `cockpit` "
                         "again; or start a new session from HEAD with `cockpit --tag NEW`")
        while self.slots.busy():  # more than needed ran (a retry beside them): their results count too
            r = sched.collect(0.25)
            if r is not None and r.out is not None and sched.record_baseline(r) and r.out.metric is not None:
                values.append(r.out.metric)
        best = sum(values) / len(values)
        noise = noise_of(values)
        last = max(e.n for e in self.journal.experiments(s.id) if e.kind == "baseline")
        self.best.measured(s.id, best, noise, last)
        self.emit(ev.Notice(text=f"baseline {self.target.metric_name} {best:.6f} over {len(values)} runs; noise {noise:.6f}"))
        self.emit(ev.BestChanged(n=last, commit=s.best_commit or "", metric=best))
        threshold = threshold_of(noise, self.dcfg.min_delta, self.dcfg.noise_k)
        if best and threshold > NOISY_SHARE * abs(best):
            self.emit(ev.Alert(text=(
                f"the noise is high: repeated runs of the same code differ by {noise:.4g} (std), so a change must beat "
                f"the best by {threshold:.4g} ({100 * threshold / abs(best):.1f}% of {self.target.metric_name}) to be "
                "kept, and small gains never will; use a longer --budget, a quieter machine, or more "
                "[decision] baseline_runs")))
        return self.journal.session(s.id)
