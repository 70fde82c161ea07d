"""The ledger: finishing an experiment's row (its outcome written before the branch moves, the
new best with it in one transaction), force-keeps of finished experiments, the agent's usage and
notes, and results.tsv. The branch head is always exactly the code of a measured `keep` (or
`forced`) row: SessionBranch moves it, after the journal says so."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import events as ev
from ..agents.base import Usage
from ..control import Control
from ..run.runs import Run
from ..status import KEPT, Status
from ..store.git import GitRepo
from ..store.journal import Journal, Session, write_results_tsv
from ..tools import Tools
from .best import Best
from .branch import SessionBranch
from .stop import StopRules
from .verdict import Decision, Verdict


class Ledger:
    """`land(sha, base, best, message)` re-applies a commit onto the best (ProposalPool.land)."""

    def __init__(self, journal: Journal, git: GitRepo, branch: SessionBranch, control: Control, stop: StopRules,
                 emit: Callable[[ev.Event], None], land: Callable[[str, str, str, str], str | None], results: Path,
                 metric_name: str, best: Best):
        self.journal, self.git, self.branch, self.control, self.stop = journal, git, branch, control, stop
        self.best = best
        self.emit, self.land, self.results, self.metric_name = emit, land, results, metric_name

    def finish(self, s: Session, r: Run | None, status: Status, reason: str | None, n: int | None = None,
               description: str | None = None, diff_stat: str | None = None, decision: Decision | None = None,
               agent_error: bool = False) -> Session:
        """Record the outcome, then move the branch: to the run's commit on keep or forced (the
        code measured, exactly); else it stays at the best. Returns the session as it is now."""
        j = self.journal
        if r is not None:
            n = r.n
        assert n is not None, "finish() needs a run or an experiment number"
        out = r.out if r is not None else None
        sha = r.sha if r is not None else None
        fields: dict[str, Any] = dict(status=status, reason=reason, finished=time.time())
        if description is not None:
            fields["description"] = description
        if diff_stat is not None:
            fields["diff_stat"] = diff_stat
        if out is not None:
            fields.update(metric=out.metric, training_seconds=out.training_seconds, total_seconds=out.total_seconds,
                          memory_gb=out.memory_gb, log_path=out.log_path, startup_seconds=out.startup_seconds,
                          eval_seconds=out.eval_seconds, holdout=out.holdout)
            if status == Status.PRUNED and out.training_seconds is None and r is not None:
                fields["training_seconds"] = r.trained  # what it trained before it was stopped (the duty cycle counts it)
        if decision is not None:
            fields.update(delta=decision.delta, confidence=decision.confidence)
        self.control.take_force(n)  # a force-keep of this experiment ends with it, whatever the outcome
        kept = status in KEPT and out is not None and out.metric is not None
        human = self.branch.human_change(s) if kept else None
        if human:  # the human's commit or edit comes first: measured, not kept; the session stops with it kept
            kept, status = False, Status.DISCARD
            fields.update(status=status, reason="measured, but not kept: the human changed the session branch or its "
                                                "code while it ran (force-keep it after the restart to keep it)")
        if kept and r is not None and sha is not None:
            if sha != s.best_commit and r.parent != s.best_commit and status == Status.KEEP:
                # the same code on a best that only took the human's program.md edit: landed on it
                sha = self.land(sha, r.parent, s.best_commit, self.git.subject(sha)) or sha
                self.git.pin(s.tag, n, sha)
                fields.update(commit_sha=sha, parent_commit=s.best_commit)
        metric = out.metric if out is not None else None
        with j.transaction():
            e = j.update_experiment(s.id, n, **fields)
            if kept:
                self.best.kept(s.id, n, sha, metric)
        if kept and sha is not None and metric is not None:
            self.branch.move(s, sha)
            self.emit(ev.BestChanged(n=n, commit=sha, metric=metric, forced=status == Status.FORCED))
        if status == Status.VETOED:
            j.add_note(s.id, "human", "veto", f"experiment #{n} ({e.description}) was vetoed: {reason}")
        if not agent_error:  # the agent's failures (API outages) have their own counter and back-off
            self.stop.count(status)
        s = j.session(s.id)
        self.write_results(s)
        self.emit(ev.ExperimentFinished(n=n, commit=sha or "", status=status, metric=e.metric, delta=e.delta,
                                        confidence=e.confidence, best_metric=s.best_metric,
                                        description=e.description or "", reason=e.reason))
        return s

    def finish_baseline(self, s: Session, r: Run, v: Verdict) -> None:
        """Record a finished baseline run of the best code (its verdict: engine/session/verdict.py)."""
        out = r.out
        assert out is not None, "a baseline run is recorded once the target measured it"
        e = self.journal.update_experiment(
            s.id, r.n, status=v.status, reason=v.reason, metric=out.metric, training_seconds=out.training_seconds,
            total_seconds=out.total_seconds, memory_gb=out.memory_gb, finished=time.time(), log_path=out.log_path,
            startup_seconds=out.startup_seconds, eval_seconds=out.eval_seconds, holdout=out.holdout, credit=out.credit,
            step_seconds=out.step_seconds,
        )
        self.emit(ev.ExperimentFinished(n=r.n, commit=s.best_commit or "", status=v.status, metric=out.metric, delta=None,
                                        confidence=None, best_metric=None, description=e.description or "",
                                        reason=v.reason, kind="baseline"))
        self.write_results(s)

    def force_keep(self, s: Session, n: int, harness: str | None) -> Session | None:
        """The human's force-keep of finished experiment n: the new best, whatever it measured
        (None: refused, with its reason said)."""
        e = self.journal.experiment(s.id, n)
        why = (f"#{n} has no measured result to keep" if e is None else
               force_keep_refusal(n, kind=e.kind, metric=e.metric, commit=e.commit_sha, best_n=None,
                                  harness_matches=e.harness == harness))
        if why is not None or e is None or e.commit_sha is None or e.metric is None:
            self.emit(ev.Error(text=why or f"#{n} has no measured result to keep"))
            return None
        self.branch.check_tree(s)  # the human's work first: the session stops with it kept
        with self.journal.transaction():  # recorded before the branch moves (a kill in between is repaired at start)
            self.journal.update_experiment(s.id, n, status=Status.FORCED, reason="force-kept by the human")
            self.best.kept(s.id, n, e.commit_sha, e.metric)
        self.branch.move(s, e.commit_sha)
        s = self.journal.session(s.id)
        self.write_results(s)
        self.emit(ev.BestChanged(n=n, commit=e.commit_sha, metric=e.metric, forced=True))
        return s

    def record_usage(self, s: Session, n: int, u: Usage | None) -> None:
        """Add one proposal's tokens and cost to experiment n (a re-asked proposal costs twice)."""
        if u is None:
            return
        e = self.journal.experiment(s.id, n)
        if e is None:
            return
        self.journal.update_experiment(s.id, n, tokens_in=e.tokens_in + u.input_tokens,
                                       tokens_out=e.tokens_out + u.output_tokens,
                                       cache_write=e.cache_write + u.cache_write_tokens,
                                       cache_read=e.cache_read + u.cache_read_tokens, cost_usd=e.cost_usd + u.cost_usd)

    def save_notes(self, s: Session, tools: Tools) -> None:
        for text in tools.notes:
            self.journal.add_note(s.id, "agent", "note", text)
        tools.notes.clear()

    def write_results(self, s: Session) -> None:
        write_results_tsv(self.results, self.journal.experiments(s.id), self.metric_name)


def force_keep_refusal(n: int, *, kind: str, metric: float | None, commit: str | None, best_n: int | None,
                       harness_matches: bool = True) -> str | None:
    """Why finished experiment n cannot be force-kept (None: it can): the one rule the engine
    applies (Ledger.force_keep) and the TUI checks before anything is said or sent.
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
