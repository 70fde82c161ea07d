"""The TUI's state line: what the session does now, with what the human asked for and is still
pending. A pure function of what the app knows (the engine's own line, the experiments running
and waiting, the human's requests), table-tested in tests/test_state_line.py."""

from __future__ import annotations

from collections.abc import Iterable


def state_line(*, stopped: str | None, stop_mode: str | None, engine_state: str | None, awaiting_n: int | None,
               running: Iterable[int], force_pending: Iterable[int | None], paused: bool, review: bool) -> str:
    """`stopped`: the stop reason once the session has stopped; `stop_mode`: the stop the human
    asked for ("now", "after_run"); `running`: the experiments running now; `force_pending`: the
    force-keeps not carried out yet (None: the running experiment's)."""
    if stopped is not None:
        return f"stopped: {stopped}"
    if stop_mode == "now":
        return "stopping now"
    running = sorted(running)
    parts = [engine_state or "starting"]
    if awaiting_n is not None and not parts[0].startswith("awaiting"):
        parts[0] = f"awaiting approval of #{awaiting_n}"
    latest = running[-1] if running else None  # the latest started, when several run
    for n in force_pending:
        parts.append(f"force-keep pending for #{latest if n is None else n}")
    runs = "the runs" if len(running) > 1 else "this run"
    if stop_mode == "after_run":
        parts.append(f"stopping after {runs}")
    elif paused and not parts[0].startswith("paused"):
        parts.append(f"pausing after {runs}" if running else "paused")
    if review and awaiting_n is None:
        parts.append("review gate on")
    return " · ".join(parts)
