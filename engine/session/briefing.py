"""What the agent is told for experiment n (its Context): the session's history from the journal
(with the diffs of the most recent experiments), what runs or is prepared at the same time on
other slots, the notes, the editable files at the best commit, and program.md."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..agents.base import Context, InFlight, PastExperiment
from ..run.runs import Run
from ..run.targets import Target
from ..status import IN_FLIGHT
from ..store.git import GitRepo
from ..store.journal import Journal, Session
from .proposals import DIFF_CHARS, Attempt

HISTORY_DIFFS = 10  # the most recent experiments whose diffs go into the agent's context


class Briefing:
    def __init__(self, journal: Journal, git: GitRepo, editable: list[str], target: Target,
                 program: Callable[[], str]):
        self.journal, self.git, self.editable, self.target, self.program = journal, git, editable, target, program
        self._diffs: dict[tuple[str, str], str] = {}  # (base, commit) -> diff: commits never change

    def diff(self, a: str, b: str) -> str:
        """The diff between two commits, cut for the agent's context, computed once: each proposal
        is told the diff of every experiment in flight, and at 64 slots recomputing them all (one
        git process each) was most of the engine's time."""
        d = self._diffs.get((a, b))
        if d is None:
            if len(self._diffs) > 4096:
                self._diffs.clear()
            d = self._diffs[(a, b)] = self.git.diff(a, b)[:DIFF_CHARS]
        return d

    def context(self, n: int, s: Session, running: Sequence[Run], attempts: Sequence[Attempt]) -> Context:
        """The context of experiment n in session s: `running` the runs on the slots and those made
        and waiting, `attempts` the proposals in flight."""
        exps = [x for x in self.journal.experiments(s.id) if x.n != n]  # asked again: later results too
        recent = {x.n for x in exps[-HISTORY_DIFFS:]}
        history = []
        for x in exps:
            if x.status in IN_FLIGHT:
                continue  # in flight: told below
            diff = ""
            if x.n in recent and x.commit_sha and x.parent_commit and x.kind == "experiment":
                diff = self.diff(x.parent_commit, x.commit_sha)
            history.append(PastExperiment(x.n, x.status, x.metric, x.delta, x.description or "", diff, x.reason))
        in_flight = []
        for r in running:
            if r.kind == "experiment":
                in_flight.append(InFlight(r.n, r.description, self.diff(r.parent, r.sha), "running"))
        for a in attempts:
            if a.done and a.proposal is not None:
                desc = (a.proposal.description or "").strip().splitlines()[0:1]
                told = a.diff
                if told is None:  # a finished proposal's edits no longer change
                    try:
                        told = a.diff = a.tree.diff("HEAD")[:DIFF_CHARS]
                    except Exception:  # its tree was removed under it: taking it will say so
                        told = ""
                in_flight.append(InFlight(a.n, desc[0] if desc else "", told, "prepared"))
        notes = self.journal.notes(s.id)
        files = {rel: self.git.show(s.best_commit, rel) or "" for rel in self.editable}
        return Context(
            program=self.program(),
            files=files,
            history=history,
            human_notes=[x["text"] for x in notes if x["author"] == "human"],
            agent_notes=[x["text"] for x in notes if x["author"] == "agent"],
            direction=self.target.direction,
            profile=self.target.profile_name,
            seed=s.id,
            n=n,
            metric=self.target.metric_name,
            best_metric=s.best_metric,
            noise=s.noise,
            budget=self.target.budget,
            show=lambda number: self.show(s.id, number),
            in_flight=tuple(in_flight),
        )

    def show(self, session_id: int, number: int) -> str:
        """What the agent's context offers: a past experiment's log tail."""
        e = self.journal.experiment(session_id, number)
        if e is None or not e.log_path:
            return ""
        from harness.runner import log_tail

        tail = log_tail(Path(e.log_path), 30)
        return f"\nlog tail:\n{tail}" if tail else ""
