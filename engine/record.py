"""Record: the verdict on a finished run (engine/verdict.py, a pure function) written before the
branch moves; the branch head is always exactly the code of a measured `keep` (or `forced`) row.
An Engine mixin (engine/loop.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import events as ev
from .verdict import BestSoFar, confirmation, judge
from .journal import write_results_tsv
from .status import CRASHED, KEPT, Status


@dataclass
class Run:
    """One run on a slot: a baseline of the best code, an experiment, or a confirmation."""

    n: int
    sha: str  # the commit run
    parent: str  # the best commit it was built on
    base_metric: float | None  # the best's metric when it was built
    base_n: int | None
    kind: str  # baseline | experiment
    description: str
    confirms: int | None = None  # the experiment whose change this run confirms on a newer best
    rounds: int = 0  # how many confirmations led here
    cancel: object = None  # its threading.Event (Control.begin_run)
    out: object = None  # the target's Outcome
    error: BaseException | None = None  # the run could not be made (an integrity failure, the disk)
    slot: object = None
    phase: str = "startup"


class Recording:
    def judge(self, r: Run) -> None:
        """The verdict on a finished experiment (or confirmation), recorded (engine/verdict.py)."""
        out, n, s = r.out, r.n, self.session
        fatal = str(self._fatal) if self._fatal is not None else None
        ok = out.status == "ok"
        v = judge(out, r, BestSoFar(s.best_metric, s.noise, s.best_n), self.rule,
                  same_base=ok and self._same_code(r.parent, s.best_commit),
                  veto=None if out.status == "cancelled" and fatal else self.control.take_veto(n),
                  forced=ok and self.control.take_force(n), fatal=fatal, stopped_by=self.control.stopped_by)
        if v.confirm:
            message = f"cockpit {s.tag}: #{r.confirms or n} re-applied onto #{s.best_n} (confirmation)"
            merged = self.pool.land(r.sha, r.parent, s.best_commit, message)
            k = self.journal.next_number(s.id)
            v = confirmation(v, merged, k, s.best_n)
            self.finish(r, v.status, v.reason, decision=v.decision)
            if v.confirm:
                self.queue_confirmation(k, merged, r)
            return
        self.finish(r, v.status, v.reason, decision=v.decision)

    def queue_confirmation(self, k: int, sha: str, r: Run) -> None:
        s, j = self.session, self.journal
        origin = r.confirms or r.n
        desc = r.description if r.description.startswith("confirm #") else f"confirm #{origin}: {r.description}"
        j.add_experiment(s.id, k, "experiment", s.best_commit, Status.QUEUED, desc[:200])
        self.git.pin(s.tag, k, sha)
        stat = self.git.diff_stat(s.best_commit, sha)
        j.update_experiment(s.id, k, commit_sha=sha, diff_stat=stat)
        c = Run(k, sha, s.best_commit, s.best_metric, s.best_n, "experiment", desc[:200], confirms=origin,
                rounds=r.rounds + 1)
        self._same_as(sha, k)  # its code is in flight: the same proposed again is refused
        self.queued.append(c)  # ahead of every proposal not yet taken
        self.emit(ev.ExperimentProposed(n=k, description=c.description, diff_stat=stat))
        self.emit(ev.DiffUpdated(n=k, diff=self.git.diff(s.best_commit, sha)))

    def finish(self, r: Run | None, status: str, reason: str | None, n: int | None = None, description=None,
               diff_stat=None, decision=None, agent_error=False) -> None:
        """Record the outcome, then move the branch: to the run's commit on keep or forced (the
        code measured, exactly); else it stays at the best."""
        s, j = self.session, self.journal
        n = r.n if r is not None else n
        out = r.out if r is not None else None
        sha = r.sha if r is not None else None
        fields = dict(status=status, reason=reason, finished=time.time())
        if description is not None:
            fields["description"] = description
        if diff_stat is not None:
            fields["diff_stat"] = diff_stat
        if out is not None:
            fields.update(metric=out.metric, training_seconds=out.training_seconds, total_seconds=out.total_seconds,
                          memory_gb=out.memory_gb, log_path=out.log_path, startup_seconds=out.startup_seconds,
                          eval_seconds=out.eval_seconds, holdout=out.holdout)
        if decision is not None:
            fields.update(delta=decision.delta, confidence=decision.confidence)
        self.control.take_force(n)  # a force-keep of this experiment ends with it, whatever the outcome
        kept = status in KEPT and out is not None and out.metric is not None
        human = self._human_change() if kept else None
        if human:  # the human's commit or edit comes first: measured, not kept; the session stops with it kept
            kept, status = False, Status.DISCARD
            fields.update(status=status, reason="measured, but not kept: the human changed the session branch or its "
                                                "code while it ran (force-keep it after the restart to keep it)")
        if kept:
            if sha != s.best_commit and r.parent != s.best_commit and status == Status.KEEP:
                # the same code on a best that only took the human's program.md edit: landed on it
                sha = self.pool.land(sha, r.parent, s.best_commit, self.git.subject(sha)) or sha
                self.git.pin(s.tag, n, sha)
                fields.update(commit_sha=sha, parent_commit=s.best_commit)
        with j.transaction():
            e = j.update_experiment(s.id, n, **fields)
            if kept:
                j.update_session(s.id, best_n=n, best_commit=sha, best_metric=out.metric)
        if kept:
            self._move(sha)
            self.emit(ev.BestChanged(n=n, commit=sha, metric=out.metric, forced=status == Status.FORCED))
        if status == Status.VETOED:
            j.add_note(s.id, "human", "veto", f"experiment #{n} ({e.description}) was vetoed: {reason}")
        if not agent_error:  # the agent's failures (API outages) have their own counter and back-off
            self._crashes = self._crashes + 1 if status in CRASHED else 0
        self.session = j.session(s.id)
        self.write_results()
        self.emit(ev.ExperimentFinished(n=n, commit=sha or "", status=status, metric=e.metric, delta=e.delta,
                                        confidence=e.confidence, best_metric=self.session.best_metric,
                                        description=e.description or "", reason=e.reason))
        self._check_tree()  # the human's commit or edited code: the session stops, with it kept

    def apply_past_force_keeps(self) -> None:
        s = self.session
        for n in self.control.take_forced_past():
            if n in self.control.running():
                self.control.force_keep(n)  # still running: it is kept when it finishes
                continue
            e = self.journal.experiment(s.id, n)
            why = (f"#{n} has no measured result to keep" if e is None else
                   force_keep_refusal(n, kind=e.kind, metric=e.metric, commit=e.commit_sha, best_n=None,
                                      harness_matches=e.harness == self.harness))
            if why is not None:
                self.emit(ev.Error(text=why))
                continue
            self._check_tree()  # the human's work first: the session stops with it kept
            with self.journal.transaction():  # recorded before the branch moves (a kill in between is repaired at start)
                self.journal.update_experiment(s.id, n, status=Status.FORCED, reason="force-kept by the human")
                self.journal.update_session(s.id, best_n=n, best_commit=e.commit_sha, best_metric=e.metric)
            self._move(e.commit_sha)
            self.session = self.journal.session(s.id)
            self.write_results()
            self.emit(ev.BestChanged(n=n, commit=e.commit_sha, metric=e.metric, forced=True))

    def record_usage(self, n: int, u) -> None:
        """Add one proposal's tokens and cost to experiment n (a re-asked proposal costs twice)."""
        if u is None:
            return
        e = self.journal.experiment(self.session.id, n)
        self.journal.update_experiment(self.session.id, n, tokens_in=e.tokens_in + u.input_tokens,
                                       tokens_out=e.tokens_out + u.output_tokens,
                                       cache_write=e.cache_write + u.cache_write_tokens,
                                       cache_read=e.cache_read + u.cache_read_tokens, cost_usd=e.cost_usd + u.cost_usd)

    def save_notes(self, tools) -> None:
        for text in tools.notes:
            self.journal.add_note(self.session.id, "agent", "note", text)
        tools.notes.clear()

    def write_results(self) -> None:
        if self.session is not None:
            write_results_tsv(self.ws.results_path, self.journal.experiments(self.session.id), self.target.metric_name)


def force_keep_refusal(n: int, *, kind: str, metric: float | None, commit: str | None, best_n: int | None,
                       harness_matches: bool = True) -> str | None:
    """Why finished experiment n cannot be force-kept (None: it can): the one rule the engine
    applies (apply_past_force_keeps) and the TUI checks before anything is said or sent.
    `best_n` None: whether it is already the best is not asked."""
    if kind == "baseline":
        return f"cannot force-keep #{n}: it is a baseline (the starting code measured), not a change to keep"
    if metric is None or not commit:
        return f"#{n} has no measured result to keep"
    if not harness_matches:
        return f"cannot force-keep #{n}: it was measured by another harness version, so its result cannot be the best's"
    if n == best_n:
        return f"#{n} is already the best"
    return None
