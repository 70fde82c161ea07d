"""The pool of proposals in flight: up to N + 1 at once (one per device slot, plus one prepared
ahead), each a fresh call of the agent in a background thread, in its own git worktree
(.cockpit/agent, .cockpit/agent-1, ...), against the best of the moment it started. Each is told
what the others are trying (running, queued and prepared experiments: description and diff).

Taking a proposal turns it into the experiment's commit: validated (something changed, only
editable files, Python compiles), refused when its code is the same as an earlier or in-flight
experiment's (before it uses a device), and re-applied with the line-level 3-way merge when the
best moved while the agent worked."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..agents.base import Agent, AgentFatal, Context, Proposal, Usage
from ..control import Control
from ..events import Event
from ..store.git import GitRepo
from ..tools import Tools
from .merge import merge3

HELD = ""  # rebase(): nothing of the change is left on the new best (it already holds it)
DIFF_CHARS = 4000  # of a diff told to the agent


@dataclass
class Attempt:
    """One proposal for experiment n, made against the best commit `base`."""

    n: int
    base: str
    tools: Tools
    tree: GitRepo  # the agent worktree it edits
    cancel: threading.Event  # set when the engine no longer needs this proposal
    proposal: Proposal | None = None
    failure: Exception | None = None
    seconds: float = 0.0
    usage: Usage | None = None
    thread: threading.Thread | None = None
    done: bool = False  # the agent returned (or raised)
    late: bool = False  # abandoned before it returned: the thread records its own cost
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: int = 0  # the verdicts known when it started (InFlight.judged)
    diff: str | None = None  # its edits, once it is done (told to the other proposals)


class AnyOf:
    """An agent's interrupt: set when stop-now is pressed or its proposal is abandoned."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            self.events[0].wait(0.1 if left is None else min(0.1, left))
        return True


class ProposalPool:
    """The proposals in flight and the agent's trees. It gets what it needs, never the engine:
    `git` (the workspace's repository), `trees` (where the agent's worktrees go), the agent, the
    human's `control`, the `editable` files and the human's own (`human_files`), and callables:
    `emit` (events), `judged` (the verdicts so far), `on_fatal` (an answer that ends the session),
    `on_late` (the cost of a proposal abandoned before it returned) and `wake` (the scheduler
    looks again)."""

    def __init__(self, git: GitRepo, trees: Path, agent: Agent, control: Control, editable: list[str],
                 human_files: tuple[str, ...], emit: Callable[[Event], None], judged: Callable[[], int],
                 on_fatal: Callable[[AgentFatal], None], on_late: Callable[[Attempt], None], wake: Callable[[], None]):
        self.git, self.trees, self.agent, self.control = git, trees, agent, control
        self.editable, self.human_files = editable, human_files
        self.emit, self.judged, self.on_fatal, self.on_late, self.wake = emit, judged, on_fatal, on_late, wake
        self.attempts: list[Attempt] = []  # in flight: being prepared, or ready to be taken
        self._free_trees: list[GitRepo] = []
        self._trees = 0

    # ---- the agent's trees ----
    def _tree(self, base: str) -> GitRepo:
        if self._free_trees:
            wt = self._free_trees.pop()
            try:
                wt.reset_hard(base)
                wt.g.clean("-fdq")
                return wt
            except Exception:  # a broken tree is made again, under a new name
                traceback.print_exc()
        k = self._trees  # only ever goes up: a new tree never takes the name of one in use
        self._trees += 1
        name = "agent" if k == 0 else f"agent-{k}"
        return self.git.agent_worktree(self.trees / name, base)

    def release(self, a: Attempt) -> None:
        if (a.tree.root / ".git").is_file():
            self._free_trees.append(a.tree)

    def reset_trees(self, base: str) -> None:
        """At start: the agent's tree clean at the best (an unsubmitted edit a killed cockpit left goes)."""
        wt = self._tree(base)
        if (wt.root / ".git").is_file():
            self._free_trees.append(wt)

    # ---- proposing ----
    def preparing(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.done]

    def start(self, n: int, context: Context, base: str) -> Attempt:
        """Ask the agent for experiment n against the best commit `base`, in the background."""
        wt = self._tree(base)
        tools = Tools(wt.root, self.editable)
        a = Attempt(n, base, tools, wt, threading.Event(), seen=self.judged())
        agent = self.agent

        def work() -> None:
            agent.interrupt = AnyOf(self.control.stopping, a.cancel)  # per thread (agents keep it thread-local)
            t0 = time.monotonic()
            try:
                a.proposal = agent.propose(context, tools, self.emit)
            except Exception as x:  # handled when the proposal is taken
                a.failure = x
                if isinstance(x, AgentFatal):  # nothing more can be proposed: the session ends now
                    self.on_fatal(x)
            a.seconds = time.monotonic() - t0
            a.usage = agent.last_usage
            with a.lock:
                a.done = True
                late = a.late
            if late:  # abandoned while it still ran: what it cost is still recorded
                try:
                    self.on_late(a)
                except Exception:  # the journal may be closed by now
                    traceback.print_exc()
            self.wake()

        a.thread = threading.Thread(target=work, name=f"cockpit-propose-{n}", daemon=True)
        self.attempts.append(a)
        a.thread.start()
        return a

    def take_ready(self) -> Attempt | None:
        """The oldest proposal the agent has finished, out of the pool."""
        for a in sorted(self.attempts, key=lambda a: a.n):
            if a.done:
                self.attempts.remove(a)
                return a
        return None

    def abandon(self, a: Attempt, wait: float) -> bool:
        """Cancel a proposal; True when its agent call has returned (its cost is for the caller
        to record), else the thread records it when it returns."""
        a.cancel.set()
        if a in self.attempts:
            self.attempts.remove(a)
        if a.thread is not None:
            a.thread.join(wait)
        with a.lock:
            finished = a.thread is None or a.done
            a.late = not finished
        return finished

    # ---- from a proposal to a commit ----
    def validate(self, a: Attempt) -> str | None:
        changed = [f for f in a.tree.changed_files(self.editable) if f not in self.human_files]
        if not changed:
            return "the proposal changed nothing"
        outside = [f for f in changed if f not in self.editable]
        if outside:
            return f"the proposal changed files outside the editable list: {', '.join(outside[:3])}"
        return syntax_error(a.tree.root, changed)

    def rebase(self, wt: GitRepo, sha: str, base: str, best: str, message: str) -> str | None:
        # None: a conflict; HELD: the new best already holds the change
        """Re-apply commit `sha` (made on `base`) onto `best` with a 3-way merge of each file it
        changed, in the tree `wt`; None on a conflict (or when nothing of it is left)."""
        merged = {}
        for f in wt.files_changed(base, sha):
            b, ours, theirs = wt.show(base, f), wt.show(best, f), wt.show(sha, f)  # None: no such file
            if ours == b or ours == theirs:
                merged[f] = theirs
            elif theirs == b:
                merged[f] = ours
            elif b is None or ours is None or theirs is None:  # created or deleted on one side, changed on the other
                return None
            else:
                merged[f] = merge3(b, ours, theirs)
                if merged[f] is None:
                    return None
        wt.reset_hard(best)
        for f, text in merged.items():
            p = wt.root / f
            if text is None:
                p.unlink(missing_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text, encoding="utf-8")
        changed = wt.changed_files(self.editable)
        if not changed:
            return HELD  # the new best already holds this change
        if syntax_error(wt.root, changed):  # a merge that does not compile is a conflict, not an experiment
            return None
        return str(wt.commit_all(changed, message))

    def land(self, sha: str, base: str, best: str, message: str) -> str | None:
        """`sha` re-applied onto `best`, in a spare agent tree (the engine's own merges)."""
        wt = self._tree(best)
        try:
            return self.rebase(wt, sha, base, best, message)
        finally:
            self._free_trees.append(wt)


def syntax_error(root: Path, files: list[str]) -> str | None:
    """The first Python file among `files` that does not compile, as one line; None if all do."""
    for f in files:
        if f.endswith(".py"):
            try:
                compile((root / f).read_text(encoding="utf-8"), f, "exec")
            except SyntaxError as x:
                return f"{f} does not compile: {x.msg} (line {x.lineno})"
    return None

