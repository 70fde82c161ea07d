"""The message watch: follows the training process from outside until its model is exported.

The clock is the runner's own: the arrival time of each of the child's messages on its pipe
(CLOCK_MONOTONIC), moved only as the protocol allows (clock.protocol). What train.py prints is
never parsed, and nothing train.py sends is a verdict. When the run is out of time is the clock
rules' to say (harness/clock.py); this module takes the times and kills nothing itself: it
returns a status, and the run kills the group.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from . import clock
from .clock import Limits
from .launch import exit_reason
from .profiles import Profile
from .results import Progress

OnProgress = Callable[[Progress], None]


@dataclass
class Watch:
    t_go: float
    phase: str = "launched"  # where the protocol stands (clock.protocol): the clock's marks are taken once, in order
    t_ready: float | None = None
    t_first: float | None = None
    t_exporting: float | None = None
    t_trained: float | None = None
    verdict: dict[str, Any] | None = None
    exit_seen: float | None = None
    trained: dict[str, Any] = field(default_factory=dict)
    last_progress: dict[str, Any] | None = None
    tok_s: list[float] = field(default_factory=list)
    mfu: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)  # seconds per optimizer step, from successive progress reports
    last_step: tuple[float, int] | None = None  # (arrival time, step) of the last progress report
    pid: int | None = None
    last_memory_check: float = 0.0


def deadline(w: Watch, profile: Profile, limits: Limits) -> tuple[float, str]:
    """When the training process is killed (`timeout`), and why (clock.deadline)."""
    return clock.deadline(limits, profile.time_budget, w.t_go, w.t_ready, w.t_first, w.t_exporting, w.step_s)


def run_tolerance(w: Watch, limits: Limits, budget: float) -> float:
    return clock.run_tolerance(limits, budget, w.step_s, w.t_ready, w.t_first)


def memory(pid: int) -> int:
    """Resident bytes of a process and all its descendants (in the sandbox: the whole run)."""
    try:
        proc = psutil.Process(pid)
        total = 0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0


def watch(proc: subprocess.Popen[bytes], rfd: int, w: Watch, profile: Profile, limits: Limits, cancel: threading.Event,
          on_progress: OnProgress | None, on_message: Callable[[Watch], None] | None = None) -> tuple[str, str | None]:
    """Follow the training process until its model is exported ("trained") or it fails."""
    sel = selectors.DefaultSelector()
    os.set_blocking(rfd, False)
    sel.register(rfd, selectors.EVENT_READ)
    buf = b""
    eof = False
    try:
        while True:
            if cancel.is_set():
                return "cancelled", "cancelled by request"
            now = time.monotonic()
            if w.verdict is not None:
                return ("crash" if w.verdict["type"] == "crash" else "invalid"), w.verdict.get("reason")
            if w.t_trained is not None:
                return "trained", None
            if limits.memory_bytes and now - w.last_memory_check > 1.0:
                w.last_memory_check = now
                over = clock.over_memory(memory(proc.pid), limits.memory_bytes)
                if over is not None:
                    return "crash", over
            if proc.poll() is not None:
                if eof:
                    return "crash", exit_reason(proc.returncode)
                # A descendant may still hold the pipe open: allow a second for messages in
                # flight, then judge by the exit status rather than wait for EOF.
                if w.exit_seen is None:
                    w.exit_seen = now
                elif now - w.exit_seen > 1.0:
                    return "crash", exit_reason(proc.returncode)
            t_kill, what = deadline(w, profile, limits)
            if now > t_kill:
                return "timeout", what
            for _key, _ev in sel.select(timeout=0.1):
                try:
                    chunk = os.read(rfd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    eof = True
                    sel.unregister(rfd)
                    break
                buf += chunk
                if len(buf) > 1 << 20:
                    return "invalid", "malformed harness message (over 1 MB without a newline)"
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line)
                        if not isinstance(msg, dict):
                            raise ValueError("not an object")
                        _handle(msg, w, on_progress)
                    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
                        return "invalid", f"malformed harness message: {type(e).__name__}"
                    if on_message:
                        on_message(w)
                    if w.t_trained is not None or w.verdict is not None:
                        break
            if eof:
                time.sleep(0.05)
    finally:
        sel.close()


def _handle(msg: dict[str, Any], w: Watch, on_progress: OnProgress | None) -> None:
    now = time.monotonic()
    kind = msg.get("type")
    phase, broken = clock.protocol(w.phase, "step" if kind in ("progress", "warm") else str(kind))
    if broken is not None:
        if w.verdict is None:
            w.verdict = {"type": "invalid", "reason": broken + "; the run is invalid"}
        return
    moved, w.phase = phase != w.phase, phase
    if kind == "ready":
        w.t_ready = now
    elif kind == "progress":
        if w.phase != "training":
            return  # a step reported after the export began: nothing to count
        if moved:
            w.t_first = now
        step = msg.get("step")
        if isinstance(step, int) and not msg.get("first"):
            if w.last_step is not None and step > w.last_step[1]:
                w.step_s.append((now - w.last_step[0]) / (step - w.last_step[1]))
                del w.step_s[:-64]  # the recent steps are the ones that tell the machine's speed now
        if isinstance(step, int):
            w.last_step = (now, step)
        w.last_progress = msg
        if msg.get("tok_s"):
            w.tok_s.append(msg["tok_s"])
        if msg.get("mfu"):
            w.mfu.append(msg["mfu"])
        if on_progress:
            p = Progress(int(msg["step"]), float(msg["loss"]), int(msg["tokens"]), msg.get("tok_s"), msg.get("mfu"),
                         float(msg["fraction"]), now - w.t_go)
            try:
                on_progress(p)
            except Exception:  # a broken display must not take the run down
                traceback.print_exc()
    elif kind == "warm":
        if moved:
            w.t_first = now
    elif kind == "exporting":
        w.t_exporting = now
        _phase(w, "export", now, on_progress)
    elif kind == "trained":
        if moved:
            w.t_trained = now
            w.trained = msg
            if w.t_exporting is None:
                w.t_exporting = now
            _phase(w, "eval", now, on_progress)
    elif kind in ("crash", "invalid") and w.verdict is None:
        w.verdict = msg
    # anything else ("result" included) is not the training process's to say


def _phase(w: Watch, phase: str, now: float, on_progress: OnProgress | None) -> None:
    """Tell the caller the run moved on from training (export, then evaluation)."""
    if on_progress is None:
        return
    last = w.last_progress or {}
    try:
        on_progress(Progress(int(last.get("step", 0)), float(last.get("loss", 0.0)), int(last.get("tokens", 0)), None, None,
                             1.0, now - w.t_go, phase))
    except Exception:  # a broken display must not take the run down
        traceback.print_exc()
