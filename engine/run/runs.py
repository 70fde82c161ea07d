"""One run on a slot: a baseline of the best code, an experiment, or a confirmation."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .slots import Slot
    from .targets import Outcome


@dataclass
class Run:
    n: int
    sha: str  # the commit run
    parent: str  # the best commit it was built on
    base_metric: float | None  # the best's metric when it was built
    base_n: int | None
    kind: str  # baseline | experiment
    description: str
    confirms: int | None = None  # the experiment whose change this run confirms on a newer best
    rounds: int = 0  # how many confirmations led here
    cancel: threading.Event | None = None  # its own (Control.begin_run)
    out: Outcome | None = None  # what the target measured
    error: BaseException | None = None  # the run could not be made (an integrity failure, the disk)
    slot: Slot | None = None
    phase: str = "startup"
    pruned: str | None = None  # why the early-stop rule stopped it (engine/session/pruner.py)
    trained: float | None = None  # the training seconds it had when it was stopped
