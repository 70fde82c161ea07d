"""The agent contract: a Context built from the journal in, edits through Tools, a Proposal out.

Each proposal is a fresh, bounded call: whatever an agent should remember across experiments
lives in the journal and comes back through the Context (history, notes), not in the agent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from engine.events import Event
from engine.tools import Tools

KEPT = frozenset({"keep", "forced"})  # statuses whose change became (part of) the best code


@dataclass(frozen=True)
class PastExperiment:
    n: int
    status: str  # keep, discard, crash, timeout, invalid, vetoed, forced, interrupted
    metric: float | None
    delta: float | None  # metric minus the best before it (negative is better when direction is "min")
    description: str
    diff: str  # may be truncated
    reason: str | None = None


@dataclass(frozen=True)
class Context:
    program: str  # program.md text
    files: dict[str, str]  # editable relative path -> current best content
    history: list[PastExperiment]  # oldest first (all experiments of the session; diffs may be truncated)
    human_notes: list[str]  # notes and vetoes from the human, oldest first
    agent_notes: list[str]  # the agent's own notes, oldest first
    direction: str  # "min" or "max" (the metric's better direction)
    profile: str  # "cuda" | "cpu" | "mps" | "" (non-ML targets)
    seed: int
    n: int  # number of the experiment being proposed


@dataclass(frozen=True)
class Proposal:
    description: str


class Agent(Protocol):
    name: str

    def propose(self, ctx: Context, tools: Tools, emit: Callable[[Event], None]) -> Proposal | None:
        """Change the editable files through `tools` and describe the change in one line;
        None when the agent has nothing to propose."""
        ...
