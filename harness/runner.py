"""The runner: one experiment = a training process, then an evaluation process, both watched from outside.

It verifies the harness and the data, then starts `python -m harness.child` in its own process
group, inside the sandbox (harness/sandbox.py) when the machine allows one, with a scrubbed
environment, its own writable folder and its output on a pipe that this process writes to the
run's log (capped: the head and the tail are kept). It streams progress to a callback, enforces
the time budget with its own clock (arrival times of the child's messages), and kills the whole
group on timeout or cancel. The training process ends by exporting the model (an aten graph,
harness/modelfile.py) into its folder. Then the runner kills it, starts the evaluation process
(harness/evaluator.py: harness code only, sandboxed, no data files), sends it the validation
and holdout tokens on its stdin and reads the verdict on a pipe the training process never had.
What train.py prints is never parsed, and nothing train.py sends is a verdict.

The spare: a child spends seconds importing torch (and Dynamo/Inductor) before it can start a
run. So while one run trains, the runner starts the next run's child (same scrubbed environment,
own process group, orphan watchdog), which imports and then waits on its stdin for "go". The next
`run()` with the same environment and harness hands it the run; any other `run()` discards it and
starts a fresh child as before. A spare never touches the GPU before "go" (the child checks), is
used for one run only, dies with the runner (the watchdog), at interpreter exit (atexit) and on
`shutdown_spare()`. All times of a run count from "go", the moment `run()` asked for it.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from . import resources
from . import sandbox as sbx
from .dataset import Dataset
from .errors import HarnessError
from .integrity import file_identity, harness_files, harness_paths, verify_harness
from .paths import HARNESS_DIR, inductor_cache
from .profiles import Profile
from .text import printable, printable_or_none

STATUSES = ("ok", "crash", "timeout", "invalid", "cancelled")
LOG_TAIL_LINES = 40
LOG_HEAD_BYTES = 8 << 20  # a run's log keeps its first 8 MB ...
LOG_TAIL_BYTES = 2 << 20  # ... and its last 2 MB; what lies between is cut (and said)
EARLY_BYTES = 1 << 20  # what a spare may print before its run starts (kept for the log)
EXPORT_ALLOWANCE = 60.0  # seconds the export may take before the run is killed
HOLDOUT_SHARE = 4  # the holdout scored per run: a quarter of the profile's evaluation tokens (2M on CUDA)
# Python loads the harness from its sources only: a planted __pycache__/*.pyc is never read, and
# -B writes none. The first argument is the harness folder; the rest is the module and its args.
_BOOT = """import sys, importlib.machinery as m, importlib.util as u
H = sys.argv[1]
class L(m.SourceFileLoader):
    def get_code(self, name):
        path = self.get_filename(name)
        return compile(self.get_data(path), path, "exec", dont_inherit=True)
class F:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "harness" and not name.startswith("harness."):
            return None
        spec = m.PathFinder.find_spec(name, path)
        if spec is None or not (spec.origin or "").endswith(".py") or not spec.origin.startswith(H + "/"):
            raise ImportError("harness module " + name + " is not a source file under " + H)
        return u.spec_from_file_location(name, spec.origin, loader=L(name, spec.origin),
                                         submodule_search_locations=spec.submodule_search_locations)
sys.meta_path.insert(0, F)
mod = sys.argv[2]
sys.argv = [mod] + sys.argv[3:]
import runpy
runpy.run_module(mod, run_name="__main__", alter_sys=True)
"""

_SECRET_NAME = re.compile(
    r"(API_?KEY|_TOKEN|^TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|_KEY$|^ANTHROPIC_|SESSION_ID"
    r"|^SSH_AUTH_SOCK$|NETRC|ASKPASS|_URL$|_URI$|^DATABASE|PROXY$|^AWS_|^GOOGLE_APPLICATION)",
    re.I,
)


def scrub_env(env: dict[str, str]) -> dict[str, str]:
    """Drop every variable that looks like a secret: code an LLM wrote runs with this environment."""
    return {k: v for k, v in env.items() if not _SECRET_NAME.search(k)}


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


@dataclass
class Limits:
    """Kill deadlines around the profile's budget (seconds), and the run's allowance.

    `credit`: the seconds of compilation and export taken off the run's clock. None: the run
    measures its own (its first step, up to the warm-up allowance, plus its export, up to
    EXPORT_ALLOWANCE), as `cockpit train` does. In a session: the session's fixed allowance
    (measured on the harness's reference model, harness/calibrate.py), the same for every run,
    baselines included: nothing a run does before its first step or inside its export buys it
    training time, and no run can tell a baseline from an experiment by it. `export_estimate`: the baseline's
    export seconds, the part of the credit the run spends after its in-process clock has run out."""

    startup: float
    warmup: float
    eval: float
    over_budget_tolerance: float  # finishing this far past the budget is still valid
    credit: float | None = None
    export_estimate: float = 0.0
    memory_bytes: int | None = None  # resident memory of all the run's processes; past it: killed
    eval_stall: float = 60.0  # seconds in which the evaluation process used no CPU at all: it hangs (EvalClock)

    session_step: float | None = None  # the session's step time, measured on its baselines (bounds the tolerance)

    @classmethod
    def for_profile(cls, p: Profile) -> "Limits":
        return cls(p.startup_allowance, p.warmup_allowance, p.eval_allowance, max(2.0, 0.05 * p.time_budget),
                   memory_bytes=int(0.85 * psutil.virtual_memory().total))

    def wall(self, budget: float) -> float:
        """The training process's whole life, fixed at launch, whatever it says: the startup cap,
        the allowance cap (the warm-up allowance, or the session's allowance when larger, plus the
        export's), the budget, the tolerance cap and the slack for the step in flight."""
        allowance = max(self.warmup, self.credit or 0.0) + EXPORT_ALLOWANCE
        return self.startup + allowance + budget + _tolerance_cap(budget) + _slack(budget)


@dataclass
class _Watch:
    t_go: float
    phase: str = "launched"  # where the protocol stands (protocol()): the clock's marks are taken once, in order
    t_ready: float | None = None
    t_first: float | None = None
    t_exporting: float | None = None
    t_trained: float | None = None
    verdict: dict | None = None
    verdict_time: float | None = None
    exit_seen: float | None = None
    trained: dict = field(default_factory=dict)
    last_progress: dict | None = None
    tok_s: list = field(default_factory=list)
    mfu: list = field(default_factory=list)
    step_s: list = field(default_factory=list)  # seconds per optimizer step, from successive progress reports
    last_step: tuple | None = None  # (arrival time, step) of the last progress report
    pid: int | None = None
    last_memory_check: float = 0.0


class SandboxRequired(HarnessError):
    """`[run] sandbox = "required"` on a machine where the sandbox does not work."""


def sandbox_state(mode: str = "auto") -> tuple[bool, str | None]:
    """(whether runs are sandboxed, the reason when they are not). Raises SandboxRequired when
    the mode requires a sandbox this machine cannot give."""
    if mode not in sbx.MODES:
        raise HarnessError(f"[run] sandbox must be one of {', '.join(sbx.MODES)}, not {mode!r}")
    if mode == "off":
        return False, "turned off by [run] sandbox = \"off\""
    why = sbx.check()
    if why is None:
        return True, None
    if mode == "required":
        raise SandboxRequired(f"[run] sandbox = \"required\", but {why}")
    return False, why


def run(
    script: Path,
    dataset: Dataset,
    profile: Profile,
    log_path: Path,
    cache: Path,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    limits: Limits | None = None,
    harness_dir: Path = HARNESS_DIR,
    on_spawn: Callable[[int], None] | None = None,
    spare: bool = True,
    sandbox: str = "auto",
    compile_cache: str = "private",
    slot: str = "",
    env_extra: dict[str, str] | None = None,
) -> RunResult:
    """Run one training script under the harness. Raises IntegrityError before starting when the
    harness or the data changed, and after the run when the data changed during it; every other
    outcome is a RunResult. With `spare`, the run uses the waiting spare child when it fits, and
    starts the next run's spare while it trains. `slot` names the device slot the run belongs to
    (each slot keeps its own spare); `env_extra` is that slot's device environment
    (CUDA_VISIBLE_DEVICES, or its CPU cores as COCKPIT_CPUS and the thread counts)."""
    hashes = verify_harness(cache, harness_dir)
    dataset.verify()
    boxed, _why = sandbox_state(sandbox)
    limits = limits or Limits.for_profile(profile)
    cancel = cancel or threading.Event()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.touch()
    source = Path(script).read_bytes()

    env = dict(child_env(cache, harness_dir, boxed, compile_cache == "shared"), **(env_extra or {}))
    key = _key(env, harness_dir, hashes, dataset, boxed, profile)
    # Without the sandbox, train.py can write wherever the user can: the evaluation process starts
    # now and has imported everything it runs before train.py's first line (it also starts with
    # -I -S: no site-packages .pth files). With the sandbox it starts later (on_message).
    evaluator = None if boxed else _early_evaluator(env, harness_dir, log_path.parent.parent, profile, limits)
    try:
        child = _take_spare(key, slot) if spare else None
    except BaseException:
        if evaluator is not None:
            _discard(evaluator)
        raise
    t_go = time.monotonic()  # CLOCK_MONOTONIC is one clock for all processes: the child's timeline uses it
    credit_train = None if limits.credit is None else max(0.0, limits.credit - limits.export_estimate)
    go = {"data": str(dataset.folder), "profile": profile.name, "budget": profile.time_budget,
          "warmup": limits.warmup, "credit": credit_train}
    if child is not None:
        _stage(child, source)
        if not _send_go(child, dict(go, script=str(child.workdir / "train.py"), cwd=str(child.workdir), t_go=t_go)):
            _discard(child)  # it died after all: a fresh one takes the run
            child = None
    spare_s = None if child is None else t_go - child.t_spawn
    if child is None:
        t_go = time.monotonic()
        try:
            child = _spawn(env, key, harness_dir, preload_compile=profile.compile, dataset=dataset, boxed=boxed,
                           gpu=profile.device != "cpu", base=log_path.parent.parent)
        except BaseException:
            if evaluator is not None:
                _discard(evaluator)
            raise
        _stage(child, source)
        # a child that died at once is judged by its exit status below
        _send_go(child, dict(go, script=str(child.workdir / "train.py"), cwd=str(child.workdir), t_go=t_go))
    child.pump.attach(log_path)
    proc = child.proc
    w = _Watch(t_go, pid=proc.pid)
    prestart = _prestarter(spare, profile, env, key, harness_dir, dataset, boxed, log_path.parent.parent, slot)

    def on_message(w: _Watch) -> None:
        nonlocal evaluator
        prestart(w)
        # The evaluation process imports torch while the run trains (on the CPU profile only once
        # the model is being exported: its imports would take cores from training).
        moment = w.t_exporting if profile.device == "cpu" else (w.t_first or w.t_exporting)
        if evaluator is None and moment is not None:
            evaluator = _spawn_evaluator(env, harness_dir, child.workdir, boxed, profile.device != "cpu")

    eval_s = result = None
    try:
        if on_spawn:
            on_spawn(proc.pid)
        status, reason = _watch(proc, child.rfd, w, profile, limits, cancel, on_progress, on_message=on_message)
        status, reason = _bounds_verdict(child, status, reason)
        kill_group(proc)  # trained or not, the training process is done: nothing it does from here counts
        if status == "trained":
            if evaluator is None:
                evaluator = _spawn_evaluator(env, harness_dir, child.workdir, boxed, profile.device != "cpu")
            evaluator.pump.attach(log_path)
            status, reason, result = _evaluate(evaluator, child.workdir / "model", dataset, profile, w, limits, cancel)
            eval_s = time.monotonic() - w.t_trained
    finally:  # whatever happened here, no process of the run outlives the call
        _discard(child)
        if evaluator is not None:
            _discard(evaluator)
        _keep_files(child.workdir, log_path.parent)
    prestart(None)  # the run is over: the next run's spare starts now if it has not yet
    dataset.verify()  # the data the run could have touched is still what was prepared (else IntegrityError)
    exit_code = proc.returncode
    t_end = time.monotonic()

    own_credit = None
    if w.t_trained is not None and w.t_ready is not None:
        own_credit = _own_credit(w, limits)
    credit = limits.credit if limits.credit is not None else own_credit
    train_s = (w.t_trained - w.t_ready - credit) if (w.t_trained is not None and w.t_ready is not None) else None
    timing = status == "timeout"  # every kill deadline is a clock
    val = holdout = None
    if status == "ok":
        tolerance = _tolerance(w, limits, profile.time_budget)
        val = result["val"]["bpb"]
        holdout = (result.get("holdout") or {}).get("bpb")
        if not math.isfinite(val):
            status, reason = "crash", "the validation loss is not finite"
        elif train_s is not None and train_s > profile.time_budget + tolerance:
            status, reason, timing = "invalid", (
                f"training took {train_s:.1f}s, over the {profile.time_budget:g}s budget "
                f"(+{tolerance:.1f}s tolerance; compilation and export are allowed {credit:.1f}s)"
            ), True
    tok_s = _median(w.tok_s)
    mfu = _median(w.mfu)
    if tok_s is None and train_s and w.trained.get("tokens"):
        tok_s = w.trained["tokens"] / max(train_s, 1e-9)
    peak = w.trained.get("peak_memory_bytes")
    if result and result.get("peak_memory_bytes"):
        peak = max(peak or 0, result["peak_memory_bytes"])
    return RunResult(
        status=status,
        reason=reason,
        val_bpb=val if status == "ok" else None,
        training_seconds=train_s,
        total_seconds=t_end - w.t_go,
        startup_seconds=(w.t_first or w.t_trained or t_end) - w.t_go if w.t_ready else None,
        ready_seconds=w.t_ready - w.t_go if w.t_ready else None,
        eval_seconds=eval_s if status == "ok" else None,
        peak_memory_gb=peak / 1e9 if isinstance(peak, (int, float)) else None,
        steps=int(w.trained.get("steps") or (w.last_progress or {}).get("step", -1) + 1),
        tokens=int(w.trained.get("tokens") or (w.last_progress or {}).get("tokens", 0)),
        params=int(w.trained.get("params") or 0),
        tokens_per_second=tok_s,
        mfu=mfu,
        log_path=str(log_path),
        log_tail=None if status == "ok" else log_tail(log_path),
        exit_code=exit_code,
        profile=profile.name,
        budget=profile.time_budget,
        spare_seconds=spare_s,
        timing=timing,
        holdout_bpb=holdout if status == "ok" else None,
        credit_seconds=own_credit,
        export_seconds=(w.t_trained - w.t_exporting) if w.t_trained and w.t_exporting else None,
        credit_used=credit if train_s is not None else None,
        sandbox=boxed,
        step_seconds=statistics.median(w.step_s) if w.step_s else None,
    )


def _own_credit(w: _Watch, limits: Limits) -> float:
    """This run's own allowance: its first step up to the warm-up allowance, plus its export (from
    the runner's clock: "exporting" to "trained") up to EXPORT_ALLOWANCE."""
    warm = (w.t_first if w.t_first is not None else (w.t_exporting or w.t_trained)) - w.t_ready
    export = (w.t_trained - w.t_exporting) if w.t_exporting is not None else 0.0
    return min(max(warm, 0.0), limits.warmup) + min(max(export, 0.0), EXPORT_ALLOWANCE)


def _evaluate(ev: "_Child", model: Path, dataset: Dataset, profile: Profile, w: _Watch, limits: Limits, cancel):
    """Send the job and the tokens to the evaluation process and wait for its verdict."""
    B = int(w.trained.get("batch") or 8)
    T = int(w.trained.get("seq_len") or profile.seq_len)
    if T != profile.seq_len or not 1 <= B <= 1024:
        return "invalid", "the exported model's input shape is not the harness's", None
    splits = [("val", _eval_stream(dataset.stream("val"), T, profile.eval_tokens))]
    if dataset.has_split("holdout"):
        splits.append(("holdout", _eval_stream(dataset.stream("holdout"), T, profile.eval_tokens // HOLDOUT_SHARE)))
    job = {"device": profile.device, "autocast": profile.autocast, "vocab": dataset.vocab_size, "batch": B,
           "seq_len": T, "model": str(model), "splits": [(n, len(x)) for n, x in splits]}
    payload = [(json.dumps(job) + "\n").encode(), dataset.token_bytes.astype("<i4").tobytes()]
    payload += [x.astype("<u2").tobytes() for _, x in splits]

    def feed():
        try:
            for chunk in payload:
                ev.proc.stdin.write(chunk)
            ev.proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass  # it died: judged by its exit below

    threading.Thread(target=feed, daemon=True).start()
    clock = EvalClock(ev.proc.pid, limits.eval, cpu=profile.device == "cpu", start=w.t_trained, stall=limits.eval_stall,
                      cores=_eval_cores(ev.proc.pid))
    if ev.ready:
        clock.ready()
    msg, late = _read_verdict(ev, clock, cancel)
    if msg is None:
        if cancel.is_set():
            return "cancelled", "cancelled by request", None
        if late is not None:
            return "timeout", late, None
        return "crash", "the evaluation process " + _exit_reason(ev.proc.returncode).removeprefix("the training process "), None
    if msg["type"] == "result":
        msg["cpu_seconds"] = clock.used()
        return "ok", None, msg
    return ("crash" if msg["type"] == "crash" else "invalid"), str(msg.get("reason"))[:1000], None


def _eval_stream(stream, T: int, max_tokens: int):
    import numpy as np

    n = max(0, min((len(stream) - 1) // T, max(1, max_tokens // T)))
    return np.asarray(stream[: n * T + 1], dtype=np.uint16)


EVAL_BACKSTOP = 10.0  # the evaluation's wall-clock backstop, in multiples of its allowance


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
    """The evaluation's limit. On the CPU it follows the evaluation process's own CPU time (the
    work it did, counted from its imports being done: "ready"), not the wall clock, so a loaded
    machine slows it without failing it: the allowance on each of the cores it may use (an idle
    machine's wall-clock allowance; its threads' time adds up). A process that uses no CPU at all
    for `stall` seconds (Limits.eval_stall) hangs (blocked, or stopped), and EVAL_BACKSTOP times
    the allowance of wall time ends any evaluation. On an accelerator the work is the device's, so
    the limit is wall time."""

    def __init__(self, pid: int, allowance: float, cpu: bool, start: float, stall: float = 60.0,
                 backstop: float = EVAL_BACKSTOP, cores: int = 1):
        self.pid, self.allowance, self.cpu, self.start = pid, allowance, cpu, start
        self.cores, self.cpu_limit = cores, allowance * cores
        self.stall, self.backstop = max(stall, 0.0), backstop * allowance
        self.base: float | None = None  # CPU seconds at "ready"
        self.last = (time.monotonic(), tree_cpu_seconds(pid)) if cpu else None  # (when, CPU seconds) of the last progress

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
            if now > self.start + self.allowance:
                return f"evaluation took longer than {self.allowance:g}s"
            return None
        cpu = tree_cpu_seconds(self.pid)
        if self.base is not None and cpu - self.base > self.cpu_limit:
            return (f"evaluation used more than {self.cpu_limit:g}s of CPU time ({self.allowance:g}s on each of its "
                    f"{self.cores} cores)")
        if cpu > self.last[1] + 0.005:
            self.last = (now, cpu)
        elif now - self.last[0] > self.stall:
            return f"the evaluation process hangs: it used no CPU time for {self.stall:g}s"
        if now > self.start + self.backstop:
            return f"evaluation took longer than {self.backstop:g}s of wall time (its backstop)"
        return None


def _read_verdict(ev: "_Child", clock: EvalClock, cancel) -> tuple[dict | None, str | None]:
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
                late = clock.over()
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
                        clock.ready()
                    if isinstance(msg, dict) and msg.get("type") in ("result", "invalid", "crash"):
                        return msg, None
            if ev.proc.poll() is not None and not sel.select(timeout=0.2):
                return None, None
        return None, None
    finally:
        sel.close()


# ---- the child process: started fresh, or ahead of time as the spare ----

class LogPump(threading.Thread):
    """Reads a process's stdout+stderr pipe and writes the run's log: everything until the log is
    attached is held (up to EARLY_BYTES), then the first LOG_HEAD_BYTES go to the file as they
    come, and past that only the last LOG_TAIL_BYTES are kept, written with a line saying how
    much was cut when the pump stops."""

    def __init__(self, fd: int):
        super().__init__(daemon=True)
        self.fd = fd
        self.lock = threading.Lock()
        self.early = bytearray()
        self.file = None
        self.written = 0
        self.tail = bytearray()
        self.cut = 0
        self.closed = False

    def attach(self, path: Path) -> None:
        with self.lock:
            if self.file is None and not self.closed:
                self.file = open(path, "ab")
                early, self.early = bytes(self.early), bytearray()
                self._write(early)

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            with self.lock:
                if self.closed:
                    continue
                if self.file is None:
                    room = EARLY_BYTES - len(self.early)
                    self.early += chunk[: max(room, 0)]
                else:
                    self._write(chunk)
        os.close(self.fd)

    def _write(self, chunk: bytes) -> None:
        room = LOG_HEAD_BYTES - self.written
        if room > 0:
            self.file.write(chunk[:room])
            self.file.flush()
            self.written += min(room, len(chunk))
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > LOG_TAIL_BYTES:
                drop = len(self.tail) - LOG_TAIL_BYTES
                self.cut += drop
                del self.tail[:drop]

    def stop(self, timeout: float = 2.0) -> None:
        """Wait for the pipe to end (every writer is gone), then finish the log."""
        self.join(timeout)
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if self.file is not None:
                if self.cut:
                    self.file.write(f"\n[... {self.cut:,} bytes of output cut: the log keeps its first "
                                    f"{LOG_HEAD_BYTES >> 20} MB and last {LOG_TAIL_BYTES >> 20} MB ...]\n".encode())
                self.file.write(bytes(self.tail))
                self.file.close()


@dataclass
class _Child:
    proc: subprocess.Popen
    rfd: int  # read end of its message pipe
    pump: LogPump  # its output, on its way to the run's log
    key: tuple  # what it was started with; it serves only a run that needs the same
    t_spawn: float
    workdir: Path  # its own writable folder (its working directory)
    ready: bool = False  # an evaluation process: it said its imports are done
    disk: "resources.DiskWatch | None" = None  # watches its folder's size while it runs


_spares: dict[str, _Child] = {}  # slot -> its waiting spare child
_spare_lock = threading.Lock()
_atexit_registered = False


def child_env(cache: Path, harness_dir: Path = HARNESS_DIR, boxed: bool = False, shared_cache: bool = False) -> dict[str, str]:
    """The training subprocess's environment: of this one only the allowed names
    (sandbox.allowed_env: PATH, locale, the device and thread settings; a secret under any other
    name stays out), plus the harness's import path and the compile caches (in the sandbox: the
    run's own folder, so that nothing persists from one run to the next, unless
    `[run] compile_cache = "shared"`; outside it: shared under the cache dir). HOME is the run's
    own folder (set where the folder is made)."""
    env = sbx.allowed_env(scrub_env(dict(os.environ)))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(harness_dir.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if not boxed or shared_cache:
        ind = inductor_cache(cache)
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ind))
        env.setdefault("TRITON_CACHE_DIR", str(ind / "triton"))
    if boxed:
        for k in ("HOME", "XDG_CACHE_HOME", "TMPDIR") + (() if shared_cache else ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")):
            env.pop(k, None)
        env["TMPDIR"] = "/tmp"
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if env.get("COCKPIT_PROFILE"):  # the child runs in its own folder: a relative DIR means ours
        env["COCKPIT_PROFILE"] = os.path.abspath(env["COCKPIT_PROFILE"])
    return env


def _key(env: dict[str, str], harness_dir: Path, hashes: dict[str, str], dataset: Dataset, boxed: bool,
         profile: Profile) -> tuple:
    """What a child is started for. Besides the hashes, each harness file's identity (inode,
    mtime, ctime): a spare imports the harness while the previous run's train.py still runs,
    and a file that code rewrote and then put back hashes right again but has a new ctime."""
    stats = tuple((str(p), *file_identity(p.stat())) for p in harness_paths(harness_dir))
    return (sys.executable, str(harness_dir), tuple(sorted(env.items())), tuple(sorted(hashes.items())), stats,
            str(dataset.folder), boxed, profile.device, profile.compile)


# What the training process may read of a prepared dataset: never the validation or holdout split.
TRAIN_FILES = ("manifest.json", "train.bin", "train_docs.npy", "token_bytes.npy", "tokenizer.tiktoken", "tokenizer.json")


def _python(module: str, harness_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-P", "-B", "-c", _BOOT, str(harness_dir), module, *args]


def _python_isolated(module: str, harness_dir: Path, *args: str) -> list[str]:
    """The evaluation process's interpreter: `-I -S` (no PYTHON* variables, no user site, no
    site-packages processing: a planted `.pth` or `sitecustomize` is never run) and an import path
    fixed here: the standard library, the folders torch and numpy are installed in, then the
    harness's parent (the harness itself is loaded from its sources by the bootstrap finder)."""
    path = [*_eval_import_path(), str(harness_dir.parent)]
    return [sys.executable, "-I", "-S", "-B", "-c", f"import sys\nsys.path[:] = {path!r}\n" + _BOOT,
            str(harness_dir), module, *args]


def _eval_import_path() -> list[str]:
    """Where the evaluation process imports from: this interpreter's standard library, and the
    site folders that hold torch, numpy and what torch imports (found without importing them)."""
    import importlib.util

    out: list[str] = []
    for p in [os.path.dirname(os.__file__), *(p for p in sys.path if p.endswith("lib-dynload"))]:
        if p and os.path.isdir(p) and p not in out:
            out.append(p)
    for name in _EVAL_PACKAGES:
        spec = importlib.util.find_spec(name)
        where = spec and (list(spec.submodule_search_locations or []) or [spec.origin])
        site = os.path.dirname(where[0]) if where and where[0] else None
        if site and os.path.isdir(site) and site not in out:
            out.append(site)
    return out


# torch, numpy and the packages torch imports (typing_extensions ... mpmath: sympy's)
_EVAL_PACKAGES = ("torch", "numpy", "typing_extensions", "sympy", "mpmath", "filelock", "networkx", "jinja2",
                  "markupsafe", "fsspec")


def _popen(cmd, env, rfd_w, workdir, boxed, read, gpu, cwd, write=()) -> tuple[subprocess.Popen, LogPump]:
    out_r, out_w = os.pipe()
    group = None
    if boxed:
        # What the user put on PYTHONPATH is importable (read-only), as it would be without the
        # sandbox, but never a workspace or a repository (sandbox.bindable): the harness's own
        # parent (a clone, in the README's set-up the workspace) is not bound, only the harness.
        harness_parent = Path(cmd[cmd.index(_BOOT) + 1]).parent if _BOOT in cmd else None
        extra = [Path(p) for p in env.get("PYTHONPATH", "").split(os.pathsep)
                 if p and os.path.isdir(p) and Path(p) != harness_parent and sbx.bindable(Path(p))]
        minors = [int(m) for m in env.get("COCKPIT_GPU_MINORS", "").split(",") if m.isdigit()] or None
        cmd = sbx.command(cmd, workdir=workdir, read=read + extra, gpu=gpu, write=write, gpu_minors=minors)
        group = resources.make_group(env)
    try:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out_w, stderr=out_w, pass_fds=(rfd_w,),
            start_new_session=True, preexec_fn=_preexec(env, group),
        )
    except BaseException:
        os.close(out_r)
        if group is not None:
            group.remove()
        raise
    finally:
        os.close(out_w)
    proc.cockpit_group = group  # removed (and anything left in it killed) by _discard
    pump = LogPump(out_r)
    pump.start()
    return proc, pump


def _preexec(env: dict[str, str], group: "resources.Group | None" = None):
    """In the child before exec: into its control group (cores, memory, processes: bounds the run
    cannot widen), the resource limits, and a CPU slot's own cores (COCKPIT_CPUS)."""
    cpus = {int(c) for c in env.get("COCKPIT_CPUS", "").split(",") if c.strip().isdigit()}
    join = group.procs_files() if group is not None else []

    def pre() -> None:
        if join:
            resources.join(join)
        sbx.limit_resources()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return pre


def private_compile_cache(env: dict[str, str], workdir: Path) -> None:
    """The compile caches (Inductor, Triton) inside the process's own folder: nothing persists to
    the next run, and a compile is cold, as a run's."""
    env["TORCHINDUCTOR_CACHE_DIR"] = str(workdir / ".cache" / "inductor")
    env["TRITON_CACHE_DIR"] = str(workdir / ".cache" / "triton")


def piped(make_cmd: Callable[[int], list[str]], env: dict[str, str], workdir: Path | None, boxed: bool, read, gpu: bool,
          cwd: str, write=(), owned: Path | None = None) -> tuple[subprocess.Popen, "LogPump", int]:
    """A harness process with a message pipe of its own (its command is made with the pipe's write
    end): the process, its log pump and the pipe's read end. The write end is closed here (the
    child has it); if the start fails, the read end is closed and `owned` (a folder made for the
    process) removed."""
    rfd, wfd = os.pipe()
    try:
        proc, pump = _popen(make_cmd(wfd), env, wfd, workdir, boxed, read, gpu, cwd=cwd, write=write)
    except BaseException:
        os.close(rfd)
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    finally:
        os.close(wfd)
    return proc, pump, rfd


def _spawn(env: dict[str, str], key: tuple, harness_dir: Path, preload_compile: bool, dataset: Dataset,
           boxed: bool, gpu: bool, base: Path) -> _Child:
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".run-", dir=base))
    read = [harness_dir] + [dataset.folder / f for f in TRAIN_FILES if (dataset.folder / f).exists()]
    env = dict(env, HOME=str(workdir), XDG_CACHE_HOME=str(workdir / ".cache"))
    write: tuple = ()
    if boxed and "TORCHINDUCTOR_CACHE_DIR" not in env:  # private: nothing persists to the next run
        private_compile_cache(env, workdir)
    elif boxed:  # [run] compile_cache = "shared": writable by every run (a channel between runs)
        os.makedirs(env["TORCHINDUCTOR_CACHE_DIR"], exist_ok=True)
        os.makedirs(env["TRITON_CACHE_DIR"], exist_ok=True)
        write += (Path(env["TORCHINDUCTOR_CACHE_DIR"]), Path(env["TRITON_CACHE_DIR"]))
    if boxed and env.get("COCKPIT_PROFILE"):  # a measuring aid: its traces go where the user asked
        os.makedirs(env["COCKPIT_PROFILE"], exist_ok=True)
        write += (Path(env["COCKPIT_PROFILE"]),)
    proc, pump, rfd = piped(
        lambda fd: _python("harness.child", harness_dir, "--fd", str(fd), *([] if boxed else ["--parent", str(os.getpid())]),
                           *(["--preload-compile"] if preload_compile else [])),
        env, workdir, boxed, read, gpu, cwd=str(workdir), write=write, owned=workdir)
    disk = resources.DiskWatch(workdir, proc.pid)
    disk.start()
    return _Child(proc, rfd, pump, key, time.monotonic(), workdir, disk=disk)


def _spawn_evaluator(env: dict[str, str], harness_dir: Path, workdir: Path, boxed: bool, gpu: bool) -> _Child:
    """The evaluation process: harness code, the run's folder read-only, nothing writable."""
    env = {k: v for k, v in env.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    proc, pump, rfd = piped(lambda fd: _python_isolated("harness.evaluator", harness_dir, "--fd", str(fd)),
                            env, None, boxed, [harness_dir, workdir], gpu, cwd=str(harness_dir.parent))
    return _Child(proc, rfd, pump, (), time.monotonic(), workdir)


def _early_evaluator(env: dict[str, str], harness_dir: Path, base: Path, profile: Profile, limits: Limits) -> _Child | None:
    """An evaluation process started before train.py runs, once it has said "ready" (everything it
    runs imported); None when it could not get there (one is started after training, as with the
    sandbox)."""
    base.mkdir(parents=True, exist_ok=True)
    ev = _spawn_evaluator(env, harness_dir, base, False, profile.device != "cpu")
    if _await_ready(ev, limits.startup):
        return ev
    _discard(ev)
    return None


def _await_ready(ev: _Child, timeout: float) -> bool:
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


def _stage(child: _Child, source: bytes) -> None:
    """The run's train.py, copied into the child's folder (the child reads it there)."""
    (child.workdir / "train.py").write_bytes(source)


def _send_go(child: _Child, go: dict) -> bool:
    """Hand the run to the child; False when it is gone."""
    try:
        child.proc.stdin.write((json.dumps(go) + "\n").encode())
        child.proc.stdin.close()
    except (BrokenPipeError, OSError):
        return False
    return True


def _discard(child: _Child) -> None:
    """Kill the child's group (and its control group, with anything left in it), close our ends,
    and finish its log."""
    kill_group(child.proc)
    if child.disk is not None:
        child.disk.stop()
    group = getattr(child.proc, "cockpit_group", None)
    if group is not None:
        group.remove()
        child.proc.cockpit_group = None
    try:
        child.proc.stdin.close()
    except (OSError, ValueError):  # the pipe broke: the child is gone, nothing left to flush
        pass
    try:
        os.close(child.rfd)
    except OSError:
        pass
    child.pump.stop()


def _bounds_verdict(child: _Child, status: str, reason: str | None) -> tuple[str, str | None]:
    """A run that died of a bound (its folder's size, its control group's memory) says which."""
    if status in ("trained", "cancelled"):
        return status, reason
    if child.disk is not None and child.disk.reason:
        return "crash", child.disk.reason
    group = getattr(child.proc, "cockpit_group", None)
    if status == "crash" and group is not None and group.oom_kills():
        return "crash", (f"the run went over its memory limit of {group.memory / 1e9:.1f} GB and the kernel "
                         "killed it (SIGKILL)")
    return status, reason


def _keep_files(workdir: Path, run_dir: Path) -> None:
    """After a run: the exported model goes (the evaluation has read it); anything else the run
    wrote in its folder is kept under the run's folder as `files/`, up to resources.FILES_KEEP_CAP;
    the oldest runs' files/ of the session go past resources.FILES_TOTAL_CAP (said in the log)."""
    shutil.rmtree(workdir / "model", ignore_errors=True)
    shutil.rmtree(workdir / ".cache", ignore_errors=True)
    try:
        (workdir / "train.py").unlink(missing_ok=True)
        if any(workdir.iterdir()):
            dest = run_dir / "files"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(str(workdir), str(dest))
            notes = [resources.keep_files(dest)]
            notes += [f"harness: files/ of {f.parent.name} deleted: the session's runs keep at most "
                      f"{resources.FILES_TOTAL_CAP / 1e9:.1f} GB" for f in resources.prune_files(run_dir.parent, dest)]
            with open(run_dir / "run.log", "a") as log:
                log.writelines(n + "\n" for n in notes if n)
        else:
            workdir.rmdir()
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)


def _take_spare(key: tuple, slot: str = "") -> _Child | None:
    """The slot's waiting spare if it is alive and was started for runs like this one (else it goes)."""
    with _spare_lock:
        child = _spares.pop(slot, None)
    if child is None:
        return None
    if child.key != key or child.proc.poll() is not None:
        _discard(child)
        shutil.rmtree(child.workdir, ignore_errors=True)
        return None
    return child


def _keep_spare(child: _Child, slot: str = "") -> None:
    global _atexit_registered
    with _spare_lock:
        old, _spares[slot] = _spares.get(slot), child
        if not _atexit_registered:
            atexit.register(shutdown_spare)
            _atexit_registered = True
    if old is not None:
        _discard(old)
        shutil.rmtree(old.workdir, ignore_errors=True)


def start_spare(cache: Path, dataset: Dataset, harness_dir: Path = HARNESS_DIR, preload_compile: bool = False,
                gpu: bool = False, base: Path | None = None, sandbox: str = "auto", compile_cache: str = "private",
                profile: Profile | None = None, slot: str = "", env_extra: dict[str, str] | None = None) -> int:
    """Start a spare child now, for the slot's next `run()` with this cache, data and harness; returns its pid."""
    boxed, _ = sandbox_state(sandbox)
    env = dict(child_env(cache, harness_dir, boxed, compile_cache == "shared"), **(env_extra or {}))
    from .profiles import detect

    prof = profile or detect()
    key = _key(env, harness_dir, harness_files(harness_dir), dataset, boxed, prof)
    child = _spawn(env, key, harness_dir, preload_compile, dataset, boxed, gpu, base or cache / "runs")
    _keep_spare(child, slot)
    return child.proc.pid


def shutdown_spare(slot: str | None = None) -> None:
    """Kill the slot's waiting spare (None: every slot's; also run at interpreter exit)."""
    with _spare_lock:
        children = list(_spares.values()) if slot is None else [_spares.get(slot)]
        if slot is None:
            _spares.clear()
        else:
            _spares.pop(slot, None)
    for child in children:
        if child is not None:
            _discard(child)
            shutil.rmtree(child.workdir, ignore_errors=True)


def spare_pid(slot: str = "") -> int | None:
    """The slot's waiting spare's pid, or None."""
    child = _spares.get(slot)
    return None if child is None else child.proc.pid


def _prestarter(enabled: bool, profile: Profile, env: dict, key: tuple, harness_dir: Path, dataset: Dataset,
                boxed: bool, base: Path, slot: str = ""):
    """When to start the next run's spare: on an accelerator as soon as this run has finished its
    first step (compilation done, the CPU mostly idle); on the CPU profile only once this run is
    over (called with None), so that the spare's imports take no cores from training or evaluation."""
    started = not enabled

    def check(w: _Watch) -> None:
        nonlocal started
        if started:
            return
        if profile.device == "cpu" and w is not None:
            return  # on the CPU profile: only when the run is over (w is None), not to take cores from it
        moment = True if w is None else (w.t_first or w.t_exporting)
        if moment is not None:
            started = True
            try:
                child = _spawn(env, key, harness_dir, profile.compile, dataset, boxed, profile.device != "cpu", base)
            except OSError as e:  # out of processes or memory: this run goes on, the next starts fresh
                print(f"harness: could not start the next run's spare child: {e}", file=sys.stderr)
                return
            _keep_spare(child, slot)

    return check


STEP_TOLERANCE = 4.0  # the step-based tolerance is at most this many of the session's measured step times


def tolerance(floor: float, cap: float, step_s: list[float], first_overrun: float | None,
              session_step: float | None) -> float:
    """How far past the budget training may end: the step in progress when the budget ran out may
    finish. The larger of `floor` (the profile's share of the budget) and what a loaded machine
    needs: three median step times, 1.2x the last step (a spike), or how far the first step ran
    past its warm-up allowance (when the budget ran out during it). The step times are the run's
    own claim (train.py numbers its steps), so that part is bounded: by `cap` (10 s plus a tenth
    of the budget) and, once the session's baselines have measured it, by STEP_TOLERANCE times
    the session's step time. A run that reports one "step" every few seconds claims nothing
    past that."""
    candidates = []
    if step_s:
        candidates += [3.0 * statistics.median(step_s), 1.2 * step_s[-1]]
    if first_overrun is not None:
        candidates.append(first_overrun)
    bound = cap if session_step is None else min(cap, STEP_TOLERANCE * session_step)
    return max(floor, min(max(candidates, default=0.0), bound))


def _tolerance(w: _Watch, limits: Limits, budget: float) -> float:
    first = w.t_first - w.t_ready - limits.warmup if (w.t_first is not None and w.t_ready is not None) else None
    return tolerance(limits.over_budget_tolerance, _tolerance_cap(budget), w.step_s, first, limits.session_step)


def _tolerance_cap(budget: float) -> float:
    return 10.0 + 0.1 * budget


def _slack(budget: float) -> float:
    """Seconds past budget and tolerance before a run that does not stop is killed (messages in flight)."""
    return max(5.0, 0.1 * budget)


def _memory(pid: int) -> int:
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


def _watch(proc, rfd, w: _Watch, profile: Profile, limits: Limits, cancel, on_progress, on_message=None):
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
                used = _memory(proc.pid)
                if used > limits.memory_bytes:
                    return "crash", (f"the run used {used / 1e9:.1f} GB of memory, over its limit of "
                                     f"{limits.memory_bytes / 1e9:.1f} GB, and was killed")
            if proc.poll() is not None:
                if eof:
                    return "crash", _exit_reason(proc.returncode)
                # A descendant may still hold the pipe open: allow a second for messages in
                # flight, then judge by the exit status rather than wait for EOF.
                if w.exit_seen is None:
                    w.exit_seen = now
                elif now - w.exit_seen > 1.0:
                    return "crash", _exit_reason(proc.returncode)
            deadline, what = _deadline(w, profile, limits)
            if now > deadline:
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
                        _handle(msg, w, profile, on_progress)
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


PHASES = ("launched", "ready", "training", "exporting", "trained")
CLOCK_MESSAGES = ("ready", "step", "exporting", "trained")  # "step": a progress report or "warm"


def protocol(phase: str, kind: str) -> tuple[str, str | None]:
    """The training process's protocol as it moves the clock: (the phase after a message of this
    kind, a reason when the message breaks the protocol). Each mark is taken once, in order:
    launched -> ready -> training (its first step) -> exporting -> trained. "ready" comes once,
    before anything else, and "exporting" once: train.py can reach the channel (it runs in the
    same process), and a repeat is how it would restart or stretch the clock, so a repeat makes
    the run invalid. A step report after the export began moves nothing (ignored); so does any
    message the clock does not read."""
    if kind not in CLOCK_MESSAGES or phase == "trained":
        return phase, None
    if phase == "launched":
        return ("ready", None) if kind == "ready" else (phase, f"the training process sent {kind!r} before 'ready'")
    if kind == "ready":
        return phase, "the training process sent 'ready' a second time (the harness's clock cannot be restarted)"
    if kind == "step":
        return ("training" if phase == "ready" else phase), None
    if kind == "exporting" and phase == "exporting":
        return phase, "the training process sent 'exporting' a second time"
    return kind, None


def _handle(msg: dict, w: _Watch, profile: Profile, on_progress) -> None:
    now = time.monotonic()
    kind = msg.get("type")
    clock = "step" if kind in ("progress", "warm") else kind
    phase, broken = protocol(w.phase, clock)
    if broken is not None:
        if w.verdict is None:
            w.verdict, w.verdict_time = {"type": "invalid", "reason": broken + "; the run is invalid"}, now
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
        w.verdict_time = now
    # anything else ("result" included) is not the training process's to say


def _phase(w: _Watch, phase: str, now: float, on_progress) -> None:
    """Tell the caller the run moved on from training (export, then evaluation)."""
    if on_progress is None:
        return
    last = w.last_progress or {}
    try:
        on_progress(Progress(int(last.get("step", 0)), float(last.get("loss", 0.0)), int(last.get("tokens", 0)), None, None,
                             1.0, now - w.t_go, phase))
    except Exception:  # a broken display must not take the run down
        traceback.print_exc()


def _deadline(w: _Watch, profile: Profile, limits: Limits) -> tuple[float, str]:
    """When the training process is killed (`timeout`): the earlier of the deadline of the phase it
    is in and its whole life's, fixed at launch (Limits.wall), whatever it has said."""
    wall = (w.t_go + limits.wall(profile.time_budget),
            f"the training process ran past {limits.wall(profile.time_budget):.0f}s, the most a run may take "
            f"with a {profile.time_budget:g}s budget, and was killed")
    if w.t_ready is None:
        phase = (w.t_go + limits.startup, f"no start within {limits.startup:g}s")
    elif w.t_exporting is not None:
        phase = (w.t_exporting + EXPORT_ALLOWANCE, f"exporting the model took longer than {EXPORT_ALLOWANCE:g}s")
    else:
        slack = _tolerance(w, limits, profile.time_budget) + _slack(profile.time_budget)
        if w.t_first is None:  # still in the first step: on a loaded machine it may run past its allowance
            slack += _tolerance_cap(profile.time_budget)
        allowance = limits.warmup if limits.credit is None else max(limits.credit, limits.warmup)
        phase = (w.t_ready + allowance + profile.time_budget + slack,
                 f"training ran past its {profile.time_budget:g}s budget and was killed")
    return min(phase, wall)


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"the training process was killed by {name}{hint}"
    return f"the training process exited with status {code} without a result"


def kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's whole process group (it leads its own session) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _median(xs: list) -> float | None:
    if not xs:
        return None
    s = sorted(xs[len(xs) // 5 :] if len(xs) >= 5 else xs)  # skip the warm-up reports
    return s[len(s) // 2]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(printable(data).splitlines()[-lines:])  # train.py's output, for a screen
