"""The agent contract: a Context built from the journal in, edits through Tools, a Proposal out.

Each proposal is a fresh, bounded call: whatever an agent should remember across experiments
lives in the journal and comes back through the Context (history, notes), not in the agent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from engine.events import Event
from engine.status import KEPT  # noqa: F401  (re-exported for agents)
from engine.tools import Tools
from harness.errors import HarnessError



@dataclass(frozen=True)
class PastExperiment:
    n: int
    status: str  # keep, discard, pruned, crash, timeout, invalid, vetoed, forced, interrupted
    metric: float | None
    delta: float | None  # metric minus the best before it (negative is better when direction is "min")
    description: str
    diff: str  # may be truncated
    reason: str | None = None


@dataclass(frozen=True)
class InFlight:
    """An experiment running or prepared at the same time as the one being proposed (several run
    at once, one per device): the agent should not try the same."""

    n: int
    description: str
    diff: str  # may be truncated
    state: str  # running | prepared


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
    metric: str = "val_bpb"
    best_metric: float | None = None
    noise: float | None = None  # standard deviation of repeated baseline runs
    budget: float | None = None  # seconds of training per experiment
    show: Callable[[int], str] | None = None  # extra detail on a past experiment (its log tail)
    in_flight: tuple[InFlight, ...] = ()  # InFlight: what runs or is prepared now, on other devices


@dataclass
class Usage:
    """Tokens and dollars an agent spent on one proposal."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0


class ProposalRejected(Exception):
    """The agent could not produce a valid change (it changed nothing or it does not compile,
    after its retries): the experiment is recorded `invalid` with this reason and skipped."""


class AgentFatal(HarnessError):
    """No request of this session can succeed (a refused key, an unknown model, no credit, a
    spent limit, settings the model does not take): the session stops at once with this one
    line, which says what to do. Never recorded as a crash."""


class ProposalSkipped(ProposalRejected):
    """The agent could not make a proposal this time for a reason of its own (the model refused,
    its reply or prompt did not fit): recorded `invalid` with this reason; the session goes on."""


@dataclass(frozen=True)
class Proposal:
    description: str
    usage: Usage | None = None


class Interrupt(Protocol):
    """What says stop now to an agent's call: a threading.Event, or any of several."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class Agent:
    """The contract every agent declares; what an agent does not need it inherits from here (the
    engine never probes an agent for an attribute)."""

    name: str = "agent"
    concurrent: bool = True  # may several propose() calls run at once, one per thread?
    # Set by the engine before each propose(): an event that says stop now (the session stops, or the
    # proposal is abandoned), for an agent that waits on something it can give up. An agent whose
    # calls run concurrently keeps it per thread.
    interrupt: Interrupt | None = None
    last_usage: Usage | None = None  # what this thread's latest propose() spent (None: nothing to count)

    def prepare(self) -> list[str]:
        """Run by the CLI before anything else (no session, branch or data is touched before it):
        lines to show as notices; AgentFatal stops cockpit with exit code 2."""
        return []

    def propose(self, ctx: Context, tools: Tools, emit: Callable[[Event], None]) -> Proposal | None:
        """Change the editable files through `tools` and describe the change in one line;
        None when the agent has nothing to propose."""
        raise NotImplementedError
