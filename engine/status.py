"""An experiment's status in the journal, one name each, and the sets every reader uses, each
defined once here.

`Status` is a StrEnum: its members are the very strings the journal, results.tsv and the JSON
events hold ("keep", "discard", ...), so a row read back compares equal to a member, and nothing
written changes."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    # in flight (a row is made when its proposal is asked for)
    PROPOSING = "proposing"
    QUEUED = "queued"  # its commit is made; it waits for a slot (or the review gate)
    RUNNING = "running"
    # final
    KEEP = "keep"  # beat the best by more than the threshold: the new best
    FORCED = "forced"  # force-kept by the human, whatever it measured
    DISCARD = "discard"
    PRUNED = "pruned"  # stopped early, clearly behind the best (engine/early_stop.py): a discard
    CRASH = "crash"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    VETOED = "vetoed"
    INTERRUPTED = "interrupted"
    BASELINE = "baseline"  # written by early journals for baseline rows (today a baseline run is `keep`)


KEPT: frozenset[Status] = frozenset({Status.KEEP, Status.FORCED})  # the change became (part of) the best code
FAILED: frozenset[Status] = frozenset({Status.CRASH, Status.TIMEOUT, Status.INVALID})  # the code did not measure
DISCARDED: frozenset[Status] = frozenset({Status.DISCARD, Status.PRUNED})  # ran and lost (counted as discards)
CRASHED: frozenset[Status] = frozenset({Status.CRASH, Status.TIMEOUT})  # counted by --max-consecutive-crashes
NOT_RUN: frozenset[Status] = frozenset({Status.INTERRUPTED, Status.VETOED})  # may have ended before its run began
IN_FLIGHT: frozenset[Status] = frozenset({Status.PROPOSING, Status.QUEUED, Status.RUNNING})
FINAL: tuple[Status, ...] = (Status.KEEP, Status.DISCARD, Status.PRUNED, Status.CRASH, Status.TIMEOUT, Status.INVALID, Status.VETOED,
                             Status.FORCED, Status.INTERRUPTED, Status.BASELINE)  # a row in one of these is done

__all__ = ["CRASHED", "DISCARDED", "FAILED", "FINAL", "IN_FLIGHT", "KEPT", "NOT_RUN", "Status"]
