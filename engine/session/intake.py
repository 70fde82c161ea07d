"""From the agent's answer to a run: its cost and notes recorded, its failure handled (a fatal
answer stops the session; others are recorded, with back-off), validated, committed (pinned, off
the branch), re-applied onto a best that moved, and refused when its code was already tried. The
single owner of the agent's failure count and back-off, and of the codes tried so far."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from harness.errors import HarnessError

from .. import events as ev
from ..agents.base import AgentFatal, ProposalRejected, ProposalSkipped
from ..run.runs import Run
from ..status import Status
from ..store.git import GitRepo
from ..store.journal import Journal, Session
from .branch import SessionBranch
from .inflight import InFlight
from .ledger import Ledger
from .proposals import Attempt, ProposalPool
from .stop import Failed, Stop

MAX_AGENT_FAILURES = 20  # consecutive agent failures (with back-off between them) before the session stops


class Intake:
    """`finish(...)` records an experiment that ended here (the engine's, which also keeps its
    session current); `session()` the session now; `busy()` whether any slot runs."""

    def __init__(self, journal: Journal, git: GitRepo, pool: ProposalPool, branch: SessionBranch, inflight: InFlight,
                 ledger: Ledger, emit: Callable[[ev.Event], None], finish: Callable[..., None],
                 session: Callable[[], Session], busy: Callable[[], bool], editable: list[str],
                 human_files: tuple[str, ...]):
        self.journal, self.git, self.pool, self.branch, self.inflight = journal, git, pool, branch, inflight
        self.ledger, self.emit, self.finish, self.session, self.busy = ledger, emit, finish, session, busy
        self.editable, self.human_files = editable, human_files
        self.agent_failures = 0  # in a row
        self.backoff_until = 0.0  # after an agent failure, no new proposal before this (monotonic)
        self._codes: dict[str, int] | None = None  # the code of each experiment so far -> its number

    def take(self, a: Attempt) -> Run | None:
        """Record the agent's answer and make it the experiment's commit (pinned, off the branch
        until it is kept). None when the experiment ended here (recorded) or is asked again."""
        s, j, n = self.session(), self.journal, a.n
        try:
            if a.proposal is not None:
                j.update_experiment(s.id, n, propose_seconds=a.seconds)
            self.ledger.record_usage(s, n, a.usage)
            self.ledger.save_notes(s, a.tools)
            if not self._answered(a) or a.proposal is None:
                return None
            text = a.proposal.description.strip()
            description = text.splitlines()[0][:200] if text else "(no description)"
            if self.branch.program_changed_since(a.base, s.best_commit):  # the human rewrote the instructions meanwhile
                self.inflight.ask_again(n, f"program.md changed while #{n} was prepared; asking the agent again")
                return None
            problem = self.pool.validate(a)
            if problem:
                self.finish(None, Status.INVALID, problem, n=n, description=description, diff_stat=a.tree.diff_stat("HEAD"))
                return None
            changed = [f for f in a.tree.changed_files(self.editable) if f not in self.human_files]
            message = f"cockpit {s.tag} #{n}: {description}"
            sha = a.tree.commit_all(changed, message)
            if a.base != s.best_commit:  # the best moved while the agent worked (a keep, a human edit)
                rebased = self.pool.rebase(a.tree, sha, a.base, s.best_commit, message)
                if not rebased:
                    why = "conflicts with" if rebased is None else "is already in"
                    self.inflight.ask_again(n, f"#{n}'s change {why} the new best #{s.best_n}; asking the agent again")
                    return None
                sha = rebased
        except Exception as e:
            if (a.tree.root / ".git").is_file():
                raise
            self.finish(None, Status.CRASH, f"the agent's tree {a.tree.root} was removed during the proposal "
                                       f"({type(e).__name__})", n=n, agent_error=True)
            return None
        finally:
            self.pool.release(a)
        same = self.same_as(sha, n)
        if same is not None:
            self.finish(None, Status.INVALID, f"the same code as #{same}, already tried: refused before it ran; "
                                         "propose something else", n=n, description=description,
                        diff_stat=self.git.diff_stat(s.best_commit, sha))
            return None
        self.git.pin(s.tag, n, sha)
        stat = self.git.diff_stat(s.best_commit, sha)
        j.update_experiment(s.id, n, parent_commit=s.best_commit, commit_sha=sha, diff_stat=stat, description=description,
                            status=Status.QUEUED)
        self.emit(ev.DiffUpdated(n=n, diff=self.git.diff(s.best_commit, sha)))
        self.emit(ev.ExperimentProposed(n=n, description=description, diff_stat=stat))
        return Run(n, sha, s.best_commit, s.best_metric, s.best_n, "experiment", description)


    def _answered(self, a: Attempt) -> bool:
        """The agent's failure, recorded (True: there is a proposal to take)."""
        n, failure = a.n, a.failure
        if isinstance(failure, AgentFatal):
            self.finish(None, Status.INTERRUPTED, f"not proposed: {failure}", n=n, description="(not proposed)", agent_error=True)
            raise failure
        if isinstance(failure, HarnessError):
            raise failure
        if isinstance(failure, ProposalSkipped):  # the model refused, or its reply did not fit: recorded, not retried
            self.finish(None, Status.INVALID, str(failure), n=n, description="(no proposal)")
            return False
        if isinstance(failure, ProposalRejected):  # nothing valid after the agent's own retries: skipped
            self.finish(None, Status.INVALID, f"proposal rejected {failure}", n=n, description="(no valid change)")
            return False
        if failure is not None:  # the agent's own failure is recorded, not fatal
            self.finish(None, Status.CRASH, f"agent failed: {type(failure).__name__}: {failure}", n=n,
                        description="(agent error)", agent_error=True)
            self.agent_failures += 1
            if self.agent_failures >= MAX_AGENT_FAILURES:
                raise Failed(f"the agent failed {self.agent_failures} times in a row (last: {type(failure).__name__}: {failure})")
            wait = min(600.0, 30.0 * 2 ** (self.agent_failures - 1))
            self.backoff_until = time.monotonic() + wait
            self.emit(ev.Waiting(reason=f"the agent failed ({type(failure).__name__}); next proposal in {wait:.0f}s",
                                 seconds=wait))
            return False
        self.agent_failures = 0
        if a.proposal is None:  # it may have counted a run in flight as failed: asked again knowing its result
            judged = self.inflight.judged
            if judged > a.seen or self.busy() or self.inflight.queued:
                self.inflight.ask_again(n, f"the agent had nothing to propose for #{n} while other runs trained; asking "
                                   "again now that a result is known", after_result=judged == a.seen)
                return False
            self.journal.update_experiment(self.session().id, n, status=Status.DISCARD, reason="the agent had nothing to propose",
                                           finished=time.time())
            raise Stop("the agent has nothing left to propose")
        return True

    def same_as(self, sha: str, n: int) -> int | None:
        """The experiment whose code is the same as commit sha's, if one was tried (or runs)."""
        if self._codes is None:
            self._codes = {}
            for e in self.journal.experiments(self.session().id):
                if e.kind == "experiment" and e.commit_sha and e.n != n and e.run_started is not None:
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
