"""The runs made and not yet started, and the proposals to ask again: the single owner of that
state, with one count of the proposals taken (they count against --max-experiments) and of
the verdicts so far.

- queued: runs made and waiting for a slot, confirmations first, then an approved proposal;
- awaiting: the run at the review gate;
- again: proposals whose rows stay, asked of the agent again (at once, or once the next result
  is known)."""

from __future__ import annotations

from dataclasses import dataclass

from ..run.runs import Run


@dataclass(frozen=True)
class AskAgain:
    """Experiment n, to be proposed again once more than `after` verdicts are known (-1: at once)."""

    n: int
    why: str  # said when it is asked again
    after: int


class InFlight:
    def __init__(self) -> None:
        self.queued: list[Run] = []
        self.awaiting: Run | None = None
        self.again: list[AskAgain] = []
        self.taken = 0  # proposals taken: experiments (an experiment asked again is not one yet)
        self.judged = 0  # verdicts so far

    # ---- counts ----
    def took(self) -> None:
        """A finished proposal was taken: it counts as an experiment."""
        self.taken += 1

    def verdict(self) -> None:
        self.judged += 1

    def waiting(self) -> int:
        """Runs made and proposals to ask again: each is the next experiment of some slot."""
        return len(self.queued) + (self.awaiting is not None) + len(self.again)

    def made(self) -> bool:
        """Runs made that wait to run (queued, or at the review gate)."""
        return bool(self.queued) or self.awaiting is not None

    def runs(self) -> list[Run]:
        """The runs made and not started (what the agent is told is in flight)."""
        return self.queued + ([self.awaiting] if self.awaiting is not None else [])

    # ---- runs made ----
    def queue(self, r: Run) -> None:
        """After the runs already queued (a confirmation is queued when it is made, ahead of every
        proposal not yet taken; an approved proposal after the confirmations)."""
        self.queued.append(r)

    def next_run(self) -> Run | None:
        return self.queued.pop(0) if self.queued else None

    def hold(self, r: Run) -> None:
        """r waits at the review gate."""
        self.awaiting = r

    def release(self) -> Run | None:
        """The run at the review gate, no longer held there."""
        r, self.awaiting = self.awaiting, None
        return r

    # ---- proposals asked again ----
    def ask_again(self, n: int, why: str, after_result: bool = False) -> None:
        """Propose experiment n again (its row stays), at once or once the next result is known;
        it is not an experiment yet."""
        self.taken -= 1
        self.again.append(AskAgain(n, why, self.judged if after_result else -1))

    def due(self) -> bool:
        return any(x.after < self.judged for x in self.again)

    def next_due(self) -> AskAgain | None:
        x = next((x for x in self.again if x.after < self.judged), None)
        if x is not None:
            self.again.remove(x)
        return x

    def clear(self) -> tuple[list[Run], list[AskAgain]]:
        """The session is stopping: what waited, to be recorded as never run."""
        runs, again = ([self.awaiting] if self.awaiting is not None else []) + self.queued, list(self.again)
        self.queued, self.awaiting, self.again = [], None, []
        return runs, again
