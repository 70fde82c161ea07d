"""The evaluator client: the runner's side of the evaluation process (harness/evaluator.py).

The runner sends it the job and the validation and holdout tokens on its stdin and reads the
verdict on a pipe the training process never had. Its limit is the EvalClock: the clock rule
(clock.eval_over) fed with the process tree's CPU time on the CPU, wall time on an accelerator.
"""

from __future__ import annotations

import json
import os
import selectors
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from . import clock
from .clock import EVAL_BACKSTOP, Limits
from .dataset import Dataset
from .launch import Child, discard, exit_reason, spawn_evaluator
from .profiles import Profile

HOLDOUT_SHARE = 4  # the holdout scored per run: a quarter of the profile's evaluation tokens (2M on CUDA)

Verdict = tuple[str, str | None, dict[str, Any] | None]  # (status, reason, the evaluator's result message)


def evaluate(ev: Child, model: Path, dataset: Dataset, profile: Profile, trained: dict[str, Any], t_trained: float,
             limits: Limits, cancel: threading.Event) -> Verdict:
    """Send the job and the tokens to the evaluation process and wait for its verdict. `trained`:
    the training process's "trained" message (the model's input shape); `t_trained`: its arrival."""
    B = int(trained.get("batch") or 8)
    T = int(trained.get("seq_len") or profile.seq_len)
    if T != profile.seq_len or not 1 <= B <= 1024:
        return "invalid", "the exported model's input shape is not the harness's", None
    splits = [("val", _eval_stream(dataset.stream("val"), T, profile.eval_tokens))]
    if dataset.has_split("holdout"):
        splits.append(("holdout", _eval_stream(dataset.stream("holdout"), T, profile.eval_tokens // HOLDOUT_SHARE)))
    job = {"device": profile.device, "autocast": profile.autocast, "vocab": dataset.vocab_size, "batch": B,
           "seq_len": T, "model": str(model), "splits": [(n, len(x)) for n, x in splits]}
    payload = [(json.dumps(job) + "\n").encode(), dataset.token_bytes.astype("<i4").tobytes()]
    payload += [x.astype("<u2").tobytes() for _, x in splits]
    stdin = ev.proc.stdin
    assert stdin is not None  # started with stdin=PIPE

    def feed() -> None:
        try:
            for chunk in payload:
                stdin.write(chunk)
            stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass  # it died: judged by its exit below

    threading.Thread(target=feed, daemon=True).start()
    clk = EvalClock(ev.proc.pid, limits.eval, cpu=profile.device == "cpu", start=t_trained, stall=limits.eval_stall,
                    cores=_eval_cores(ev.proc.pid))
    if ev.ready:
        clk.ready()
    msg, late = _read_verdict(ev, clk, cancel)
    if msg is None:
        if cancel.is_set():
            return "cancelled", "cancelled by request", None
        if late is not None:
            return "timeout", late, None
        return "crash", "the evaluation process " + exit_reason(ev.proc.returncode).removeprefix("the training process "), None
    if msg["type"] == "result":
        msg["cpu_seconds"] = clk.used()
        return "ok", None, msg
    return ("crash" if msg["type"] == "crash" else "invalid"), str(msg.get("reason"))[:1000], None


def _eval_stream(stream: np.ndarray, T: int, max_tokens: int) -> np.ndarray:
    n = max(0, min((len(stream) - 1) // T, max(1, max_tokens // T)))
    return np.asarray(stream[: n * T + 1], dtype=np.uint16)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) of a process and all its descendants; the
    descendants that ended count through their parent (`children_*`)."""
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _eval_cores(pid: int) -> int:
    """How many cores the evaluation process may run on (its affinity: a CPU slot's own cores)."""
    try:
        return max(1, len(os.sched_getaffinity(pid)))
    except OSError:
        return max(1, len(os.sched_getaffinity(0)))


class EvalClock:
    """The evaluation's limit (the rule: clock.eval_over). On the CPU it follows the evaluation
    process's own CPU time (the work it did, counted from its imports being done: "ready"), not
    the wall clock, so a loaded machine slows it without failing it. A process that uses no CPU at
    all for `stall` seconds (Limits.eval_stall) hangs (blocked, or stopped), and EVAL_BACKSTOP
    times the allowance of wall time ends any evaluation. On an accelerator the work is the
    device's, so the limit is wall time."""

    def __init__(self, pid: int, allowance: float, cpu: bool, start: float, stall: float = 60.0,
                 backstop: float = EVAL_BACKSTOP, cores: int = 1):
        self.pid, self.allowance, self.cpu, self.start = pid, allowance, cpu, start
        self.cores, self.stall, self.backstop = cores, stall, backstop
        self.base: float | None = None  # CPU seconds at "ready"
        self.last = (time.monotonic(), tree_cpu_seconds(pid) if cpu else 0.0)  # (when, CPU seconds) of the last progress

    def ready(self) -> None:
        if self.cpu and self.base is None:
            self.base = tree_cpu_seconds(self.pid)

    def used(self) -> float | None:
        if not self.cpu or self.base is None:
            return None
        return tree_cpu_seconds(self.pid) - self.base

    def over(self) -> str | None:
        """None while the evaluation may go on; else why it is stopped (a `timeout`)."""
        now = time.monotonic()
        if not self.cpu:
            return clock.eval_over(self.allowance, now - self.start, cpu=False)
        cpu = tree_cpu_seconds(self.pid)
        if cpu > self.last[1] + 0.005:
            self.last = (now, cpu)
        return clock.eval_over(self.allowance, now - self.start, cpu=True,
                               cpu_used=None if self.base is None else cpu - self.base, cores=self.cores,
                               idle=now - self.last[0], stall=self.stall, backstop=self.backstop)


def _read_verdict(ev: Child, clk: EvalClock, cancel: threading.Event) -> tuple[dict[str, Any] | None, str | None]:
    """The evaluation process's verdict, or (None, why it was stopped when its clock ran out)."""
    sel = selectors.DefaultSelector()
    os.set_blocking(ev.rfd, False)
    sel.register(ev.rfd, selectors.EVENT_READ)
    buf = b""
    checked = 0.0
    try:
        while not cancel.is_set():
            if time.monotonic() - checked > 0.25:  # reading the process tree's times costs a little
                checked = time.monotonic()
                late = clk.over()
                if late is not None:
                    return None, late
            for _k, _e in sel.select(timeout=0.1):
                try:
                    chunk = os.read(ev.rfd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return None, None
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(msg, dict) and msg.get("type") == "ready":
                        ev.ready = True
                        clk.ready()
                    if isinstance(msg, dict) and msg.get("type") in ("result", "invalid", "crash"):
                        return msg, None
            if ev.proc.poll() is not None and not sel.select(timeout=0.2):
                return None, None
        return None, None
    finally:
        sel.close()


def early_evaluator(env: dict[str, str], harness_dir: Path, base: Path, profile: Profile, limits: Limits) -> Child | None:
    """An evaluation process started before train.py runs, once it has said "ready" (everything it
    runs imported); None when it could not get there (one is started after training, as with the
    sandbox)."""
    base.mkdir(parents=True, exist_ok=True)
    ev = spawn_evaluator(env, harness_dir, base, False, profile.device != "cpu")
    if _await_ready(ev, limits.startup):
        return ev
    discard(ev)
    return None


def _await_ready(ev: Child, timeout: float) -> bool:
    """Read the evaluation process's first line ("ready") from its pipe, byte by byte so that
    nothing after it is taken from _read_verdict."""
    sel = selectors.DefaultSelector()
    sel.register(ev.rfd, selectors.EVENT_READ)
    line = b""
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not sel.select(timeout=min(1.0, max(0.0, end - time.monotonic()))):
                if ev.proc.poll() is not None:
                    return False
                continue
            try:
                b = os.read(ev.rfd, 1)
            except BlockingIOError:
                continue
            if not b:
                return False
            if b != b"\n":
                line += b
                continue
            try:
                ev.ready = json.loads(line).get("type") == "ready"
            except (ValueError, AttributeError):
                ev.ready = False
            return ev.ready
        return False
    finally:
        sel.close()
