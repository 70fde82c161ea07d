"""What a run reports: its progress while it trains, and its result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .text import printable_or_none


@dataclass(frozen=True)
class Progress:
    step: int
    loss: float
    tokens: int
    tokens_per_second: float | None
    mfu: float | None
    fraction: float
    elapsed: float
    phase: str = "train"  # "train"; then "export" (the model is being exported) and "eval" (being scored)


@dataclass(frozen=True)
class RunResult:
    status: str  # ok | crash | timeout | invalid | cancelled
    reason: str | None
    val_bpb: float | None
    training_seconds: float | None
    total_seconds: float  # go -> end (go: run() asked the child to start this run)
    startup_seconds: float | None  # go -> first step reported (imports left, setup, compile)
    ready_seconds: float | None  # go -> harness ready (the imports a spare has not done already)
    eval_seconds: float | None  # trained (model exported) -> result (loading, probe, val and holdout)
    peak_memory_gb: float | None
    steps: int
    tokens: int
    params: int
    tokens_per_second: float | None
    mfu: float | None
    log_path: str
    log_tail: str | None
    exit_code: int | None
    profile: str
    budget: float
    spare_seconds: float | None = None  # how long the spare child had been warming before go; None: fresh
    timing: bool = False  # the verdict is a timing rule's (over budget, a deadline): load can cause it
    holdout_bpb: float | None = None  # never shown to the agent
    credit_seconds: float | None = None  # this run's own warm-up (first step, capped) + export: what a baseline fixes
    export_seconds: float | None = None
    credit_used: float | None = None  # the allowance taken off this run's clock
    sandbox: bool = False
    step_seconds: float | None = None  # the median time between its step reports, per step (a baseline's bounds the tolerance)

    def __post_init__(self) -> None:
        # The reason may be train.py's exception message, the tail its output: shown to the human.
        object.__setattr__(self, "reason", printable_or_none(self.reason))
        object.__setattr__(self, "log_tail", printable_or_none(self.log_tail))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def outside_training_seconds(self) -> float | None:
        return None if self.training_seconds is None else self.total_seconds - self.training_seconds
