"""The verdict on a finished experiment (engine/session/verdict.py, a pure function), recorded by the
ledger (engine/session/ledger.py); a change that beat its base while the best moved is re-applied onto
the best and queued as its confirmation, ahead of every proposal not yet taken."""

from __future__ import annotations

from collections.abc import Callable

from .. import events as ev
from ..agents.base import AgentFatal
from ..control import Control
from ..run.runs import Run
from ..status import Status
from ..store.git import GitRepo
from ..store.journal import Journal, Session
from .branch import SessionBranch
from .inflight import InFlight
from .intake import Intake
from .ledger import force_keep_refusal  # noqa: F401  (re-exported: the TUI checks the same rule)
from .proposals import ProposalPool
from .verdict import BestSoFar, Rule, confirmation, judge


class Recorder:
    """`finish(...)` records the verdict (the engine's: it keeps its session current), `session()`
    the session now, `fatal()` why no request of the session can succeed (None: they can)."""

    def __init__(self, journal: Journal, git: GitRepo, branch: SessionBranch, control: Control, pool: ProposalPool,
                 inflight: InFlight, intake: Intake, rule: Rule, emit: Callable[[ev.Event], None],
                 finish: Callable[..., None], session: Callable[[], Session], fatal: Callable[[], AgentFatal | None]):
        self.journal, self.git, self.branch, self.control, self.pool = journal, git, branch, control, pool
        self.inflight, self.intake, self.rule, self.emit = inflight, intake, rule, emit
        self.finish, self.session, self.fatal = finish, session, fatal

    def judge(self, r: Run) -> None:
        """The verdict on a finished experiment (or confirmation), recorded (engine/session/verdict.py)."""
        out, n, s = r.out, r.n, self.session()
        assert out is not None, "a run is judged once the target measured it"
        why = self.fatal()
        fatal = str(why) if why is not None else None
        ok = out.status == "ok"
        v = judge(out, r, BestSoFar(s.best_metric, s.noise, s.best_n), self.rule,
                  same_base=ok and self.branch.same_code(r.parent, s.best_commit),
                  veto=None if out.status == "cancelled" and fatal else self.control.take_veto(n),
                  forced=ok and self.control.take_force(n), fatal=fatal, stopped_by=self.control.stopped_by,
                  pruned=r.pruned)
        if v.confirm:
            message = f"cockpit {s.tag}: #{r.confirms or n} re-applied onto #{s.best_n} (confirmation)"
            merged = self.pool.land(r.sha, r.parent, s.best_commit, message)
            k = self.journal.next_number(s.id)
            v = confirmation(v, merged, k, s.best_n)
            self.finish(r, v.status, v.reason, decision=v.decision)
            if v.confirm and merged:
                self.queue_confirmation(k, merged, r)
            return
        self.finish(r, v.status, v.reason, decision=v.decision)

    def queue_confirmation(self, k: int, sha: str, r: Run) -> None:
        s, j = self.session(), self.journal
        origin = r.confirms or r.n
        desc = r.description if r.description.startswith("confirm #") else f"confirm #{origin}: {r.description}"
        j.add_experiment(s.id, k, "experiment", s.best_commit, Status.QUEUED, desc[:200])
        self.git.pin(s.tag, k, sha)
        stat = self.git.diff_stat(s.best_commit, sha)
        j.update_experiment(s.id, k, commit_sha=sha, diff_stat=stat)
        c = Run(k, sha, s.best_commit, s.best_metric, s.best_n, "experiment", desc[:200], confirms=origin,
                rounds=r.rounds + 1)
        self.intake.same_as(sha, k)  # its code is in flight: the same proposed again is refused
        self.inflight.queue(c)  # ahead of every proposal not yet taken
        self.emit(ev.ExperimentProposed(n=k, description=c.description, diff_stat=stat))
        self.emit(ev.DiffUpdated(n=k, diff=self.git.diff(s.best_commit, sha)))
