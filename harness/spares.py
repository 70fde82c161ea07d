"""The spare children: a child spends seconds importing torch (and Dynamo/Inductor) before it can
start a run, so while one run trains, the next run's child is started ahead of time (same
scrubbed environment, own process group, orphan watchdog); it imports, then waits on its stdin
for "go". A SparePool holds at most one waiting spare per device slot. A run takes its slot's
spare only when it was started with the same key (environment, harness, data, sandbox,
profile); any other spare is discarded. A spare is used for one run only, and dies with the
runner (the watchdog), at interpreter exit (atexit) and on `shutdown`.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .dataset import Dataset
from .launch import Child, ChildKey, discard, spawn
from .profiles import Profile


class _Marks(Protocol):
    """What the prestarter reads of a run's watch: when its first step and its export came."""

    t_first: float | None
    t_exporting: float | None


def _drop(child: Child) -> None:
    discard(child)
    shutil.rmtree(child.workdir, ignore_errors=True)


class SparePool:
    """The waiting spare children, one per slot at most. Thread-safe: slots run at once."""

    def __init__(self) -> None:
        self._spares: dict[str, Child] = {}  # slot -> its waiting spare child
        self._lock = threading.Lock()
        self._atexit_registered = False

    def take(self, key: ChildKey, slot: str = "") -> Child | None:
        """The slot's waiting spare if it is alive and was started for runs like this one (else it goes)."""
        with self._lock:
            child = self._spares.pop(slot, None)
        if child is None:
            return None
        if child.key != key or child.proc.poll() is not None:
            _drop(child)
            return None
        return child

    def keep(self, child: Child, slot: str = "") -> None:
        """Make `child` the slot's spare (the one it replaces goes)."""
        with self._lock:
            old, self._spares[slot] = self._spares.get(slot), child
            if not self._atexit_registered:
                atexit.register(self.shutdown)
                self._atexit_registered = True
        if old is not None:
            _drop(old)

    def shutdown(self, slot: str | None = None) -> None:
        """Kill the slot's waiting spare (None: every slot's; also run at interpreter exit)."""
        with self._lock:
            children = list(self._spares.values()) if slot is None else [self._spares.get(slot)]
            if slot is None:
                self._spares.clear()
            else:
                self._spares.pop(slot, None)
        for child in children:
            if child is not None:
                _drop(child)

    def pid(self, slot: str = "") -> int | None:
        """The slot's waiting spare's pid, or None."""
        child = self._spares.get(slot)
        return None if child is None else child.proc.pid

    def prestarter(self, enabled: bool, profile: Profile, env: dict[str, str], key: ChildKey, harness_dir: Path,
                   dataset: Dataset, boxed: bool, base: Path, slot: str = "") -> Callable[[_Marks | None], None]:
        """When to start the next run's spare: on an accelerator as soon as this run has finished its
        first step (compilation done, the CPU mostly idle); on the CPU profile only once this run is
        over (called with None), so that the spare's imports take no cores from training or evaluation."""
        started = not enabled

        def check(w: _Marks | None) -> None:
            nonlocal started
            if started:
                return
            if profile.device == "cpu" and w is not None:
                return  # on the CPU profile: only when the run is over (w is None), not to take cores from it
            moment = True if w is None else (w.t_first or w.t_exporting)
            if moment is not None:
                started = True
                try:
                    child = spawn(env, key, harness_dir, profile.compile, dataset, boxed, profile.device != "cpu", base)
                except OSError as e:  # out of processes or memory: this run goes on, the next starts fresh
                    print(f"harness: could not start the next run's spare child: {e}", file=sys.stderr)
                    return
                self.keep(child, slot)

        return check
