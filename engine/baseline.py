"""The baselines: the unchanged best code, run on every slot at once, measure the best and the
noise before any experiment is judged. An Engine mixin (engine/loop.py)."""

from __future__ import annotations

import time

from . import events as ev
from .verdict import judge_baseline, noise_of, threshold_of
from .human import _Stop
from .record import Run
from .status import Status

BASELINE_TIMING_RETRIES = 3  # a baseline run that broke a timing rule is run again this often (a busy machine)
NOISY_SHARE = 0.02  # a keep threshold above this share of the metric is said at once


class Baselines:
    # ---- baseline: the unchanged code, run on every slot at once to measure the noise ----
    def _baseline_needed(self) -> bool:
        return self.journal.session(self.session.id).noise is None

    def _baseline(self) -> None:
        """max(baseline_runs, N slots) runs of the best code, one per slot at a time; the best is
        their mean and the noise their spread, from all of them."""
        s = self.session
        done = [e for e in self.journal.experiments(s.id)  # the best code, as measured by this harness
                if e.kind == "baseline" and e.status == Status.KEEP and e.harness == self.harness
                and e.commit_sha and self._same_code(e.commit_sha, s.best_commit)]
        values = [e.metric for e in done]
        self.target.set_credit([e.credit for e in done], [e.step_seconds for e in done])  # a resumed session keeps its allowance
        want = max(self.dcfg.baseline_runs, len(self.slots))
        timing_failures = 0
        while len(values) < want:
            if self.cluster is not None:  # a node that joins takes baselines too
                self._cluster_turn()
            busy = sum(sl.busy for sl in self.slots)
            stop = self.control.stop_mode
            if stop == "now" or (stop and not busy):  # after the run: the baselines in flight finish first
                raise _Stop(f"stopped by {self.control.stopped_by} during the baseline")
            for slot in [sl for sl in self.slots if not sl.busy][:0 if stop else max(0, want - len(values) - busy)]:
                n = self.journal.next_number(s.id)
                desc = f"baseline {len(values) + busy + 1}/{want}"
                busy += 1
                self.journal.add_experiment(s.id, n, "baseline", s.base_commit, Status.RUNNING, desc)
                self.journal.update_experiment(s.id, n, commit_sha=s.best_commit, diff_stat="")
                self.emit(ev.ExperimentProposed(n=n, description=desc, diff_stat="", kind="baseline"))
                self.start_run(slot, Run(n, s.best_commit, s.best_commit, None, None, "baseline", desc))
            if len(values) + busy >= want:
                self.top_up()  # the first proposals are prepared during the last baseline runs
            self.show_state()
            r = self.collect(0.25)
            if r is None:
                continue
            if self._baseline_done(r, s):
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
            self.error = (f"the baseline run failed ({out.status}: {out.reason}); fix the code and commit it on "
                          f"{s.branch} (or on {s.origin or 'the branch it started from'}), then run `cockpit` "
                          "again; or start a new session from HEAD with `cockpit --tag NEW`")
            raise _Stop(self.error)  # an error, not a limit: the CLI exits non-zero
        while any(sl.busy for sl in self.slots):  # more than needed ran (a retry beside them): their results count too
            r = self.collect(0.25)
            if r is not None and self._baseline_done(r, s):
                values.append(r.out.metric)
        best = sum(values) / len(values)
        noise = noise_of(values)
        last = max(e.n for e in self.journal.experiments(s.id) if e.kind == "baseline")
        self.journal.update_session(s.id, best_metric=best, noise=noise, best_n=last)
        self.session = self.journal.session(s.id)
        self.emit(ev.Notice(text=f"baseline {self.target.metric_name} {best:.6f} over {len(values)} runs; noise {noise:.6f}"))
        self.emit(ev.BestChanged(n=last, commit=s.best_commit, metric=best))
        threshold = threshold_of(noise, self.dcfg.min_delta, self.dcfg.noise_k)
        if best and threshold > NOISY_SHARE * abs(best):
            self.emit(ev.Alert(text=(
                f"the noise is high: repeated runs of the same code differ by {noise:.4g} (std), so a change must beat "
                f"the best by {threshold:.4g} ({100 * threshold / abs(best):.1f}% of {self.target.metric_name}) to be "
                "kept, and small gains never will; use a longer --budget, a quieter machine, or more "
                "[decision] baseline_runs")))

    def _baseline_done(self, r: Run, s) -> bool:
        """Record a finished baseline run; True when it measured the code."""
        out = r.out
        fatal = str(self._fatal) if self._fatal is not None else None
        v = judge_baseline(out, veto=self.control.take_veto(r.n), fatal=fatal, stopped_by=self.control.stopped_by)
        status, reason = v.status, v.reason
        e = self.journal.update_experiment(
            s.id, r.n, status=status, reason=reason, metric=out.metric, training_seconds=out.training_seconds,
            total_seconds=out.total_seconds, memory_gb=out.memory_gb, finished=time.time(), log_path=out.log_path,
            startup_seconds=out.startup_seconds, eval_seconds=out.eval_seconds, holdout=out.holdout, credit=out.credit,
            step_seconds=out.step_seconds,
        )
        self.emit(ev.ExperimentFinished(n=r.n, commit=s.best_commit, status=status, metric=out.metric, delta=None,
                                        confidence=None, best_metric=None, description=e.description, reason=reason,
                                        kind="baseline"))
        self.write_results()
        if status == Status.INTERRUPTED and self._fatal is not None:
            raise self._fatal
        return out.status == "ok"
