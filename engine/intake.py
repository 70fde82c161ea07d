"""From the agent's answer to a run: its cost and notes recorded, its failure handled (a fatal
answer stops the session; others are recorded, with back-off), validated, committed (pinned, off
the branch), re-applied onto a best that moved, and refused when its code was already tried. An
Engine mixin (engine/loop.py)."""

from __future__ import annotations

import hashlib
import time

from harness.errors import HarnessError

from . import events as ev
from .agents.base import AgentFatal, ProposalRejected, ProposalSkipped
from .human import _Stop
from .record import Run
from .status import Status

MAX_AGENT_FAILURES = 20  # consecutive agent failures (with back-off between them) before the session stops


class Intake:
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
                self.finish(None, Status.INVALID, problem, n=n, description=description, diff_stat=a.tree.diff_stat("HEAD"))
                return None
            changed = [f for f in a.tree.changed_files(self.editable) if f not in self.human_files]
            message = f"cockpit {s.tag} #{n}: {description}"
            sha = a.tree.commit_all(changed, message)
            if a.base != s.best_commit:  # the best moved while the agent worked (a keep, a human edit)
                sha = self.pool.rebase(a.tree, sha, a.base, s.best_commit, message)
                if not sha:
                    why = "conflicts with" if sha is None else "is already in"
                    self._ask_again(n, f"#{n}'s change {why} the new best #{s.best_n}; asking the agent again")
                    return None
        except Exception as e:
            if (a.tree.root / ".git").is_file():
                raise
            self.finish(None, Status.CRASH, f"the agent's tree {a.tree.root} was removed during the proposal "
                                       f"({type(e).__name__})", n=n, agent_error=True)
            return None
        finally:
            self.pool.release(a)
        same = self._same_as(sha, n)
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

    def _ask_again(self, n: int, why: str, after_result: bool = False) -> None:
        """Propose experiment n again (its row stays), at once or once the next result is known."""
        self._ran -= 1  # not an experiment yet
        self._again.append((n, why, self._judged if after_result else -1))

    def _answered(self, a) -> bool:
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
            self.journal.update_experiment(self.session.id, n, status=Status.DISCARD, reason="the agent had nothing to propose",
                                           finished=time.time())
            raise _Stop("the agent has nothing left to propose")
        return True

    def _same_as(self, sha: str, n: int) -> int | None:
        """The experiment whose code is the same as commit sha's, if one was tried (or runs)."""
        if self._codes is None:
            self._codes = {}
            for e in self.journal.experiments(self.session.id):
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
