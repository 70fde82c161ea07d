"""Engine events: typed, immutable records of every state change, for the UI, tests and the
headless printer. `RunProgress` and the streamed agent deltas are high-rate: consumers may drop
older unconsumed ones; everything else is also written to the journal."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.text import printable


@dataclass(frozen=True)
class Event:
    ts: float = field(default_factory=time.time, kw_only=True)

    @property
    def type(self) -> str:
        return type(self).__name__

    HIGH_RATE = False

    def __post_init__(self) -> None:
        # Much of an event's text is the agent's or train.py's (a description, a crash reason, the
        # agent's words, a diff): no terminal control sequence reaches a printer or the TUI.
        for name, v in vars(self).items():  # its fields (a dataclass without slots)
            if isinstance(v, str):
                object.__setattr__(self, name, printable(v))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)


@dataclass(frozen=True)
class SessionStarted(Event):
    session_id: int
    tag: str
    branch: str
    agent: str
    resumed: bool
    best_commit: str | None
    best_metric: float | None
    next_experiment: int


@dataclass(frozen=True)
class SessionStopped(Event):
    session_id: int
    reason: str
    error: bool = False  # it stopped on an error (the CLI exits 1 and prints the reason on stderr)


@dataclass(frozen=True)
class Notice(Event):
    """A one-line message for the human (a choice made, a state change)."""

    text: str


@dataclass(frozen=True)
class StateChanged(Event):
    """What the engine is doing now, as one line that stays until the next change: running #n
    (startup / train / export / eval), proposing #n, awaiting approval of #n, paused, stopped."""

    text: str
    n: int | None = None
    phase: str | None = None


@dataclass(frozen=True)
class Alert(Event):
    """A one-line message the human should act on (the session goes on), e.g. noise so high
    that no change can be kept."""

    text: str


@dataclass(frozen=True)
class Waiting(Event):
    reason: str
    seconds: float | None = None


@dataclass(frozen=True)
class Error(Event):
    text: str
    fatal: bool = False  # the session stops on it (the reason of SessionStopped(error=True))


@dataclass(frozen=True)
class AgentThinking(Event):
    n: int
    text: str
    HIGH_RATE = True


@dataclass(frozen=True)
class AgentText(Event):
    n: int
    text: str
    HIGH_RATE = True


@dataclass(frozen=True)
class ToolCalled(Event):
    n: int
    name: str
    summary: str
    ok: bool = True


@dataclass(frozen=True)
class DiffUpdated(Event):
    n: int
    diff: str
    HIGH_RATE = True


@dataclass(frozen=True)
class ExperimentProposed(Event):
    n: int
    description: str
    diff_stat: str
    kind: str = "experiment"  # or "baseline"


@dataclass(frozen=True)
class AwaitingApproval(Event):
    n: int


@dataclass(frozen=True)
class ExperimentStarted(Event):
    n: int
    commit: str
    kind: str = "experiment"
    slot: int = 0  # the device slot it runs on
    device: str = ""  # that slot's device: "cuda:3", "cpu:1", "cpu"


@dataclass(frozen=True)
class RunProgress(Event):
    n: int
    step: int
    loss: float
    tokens_per_second: float | None
    mfu: float | None
    fraction: float
    elapsed: float
    HIGH_RATE = True


@dataclass(frozen=True)
class EarlyStopBand(Event):
    """What the early-stop rule compares run n with (engine/early_stop.py): at each check fraction,
    the loss above which it is behind the best by more than the band (empty when the rule does not
    apply to it: `note` says why)."""

    n: int
    line: tuple[tuple[float, float], ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class RunPruned(Event):
    """The early-stop rule stops run n now (its status will be `pruned`), or would: `held` when the
    human lets it finish."""

    n: int
    fraction: float
    loss: float
    reason: str
    held: bool = False


@dataclass(frozen=True)
class ExperimentFinished(Event):
    n: int
    commit: str
    status: str
    metric: float | None
    delta: float | None
    confidence: float | None
    best_metric: float | None
    description: str
    reason: str | None = None
    kind: str = "experiment"


@dataclass(frozen=True)
class BestChanged(Event):
    n: int
    commit: str
    metric: float
    forced: bool = False
