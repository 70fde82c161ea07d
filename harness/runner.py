"""The runner: one experiment = one training subprocess, watched from outside.

It verifies the harness and the data, hands the run to `python -m harness.child` in its own
process group with a scrubbed environment and the log on disk, streams progress to a callback,
enforces the time budget with its own clock (arrival times of the child's messages), and kills
the whole group on timeout or cancel. What train.py prints is never parsed: the verdict arrives
as typed messages on a private pipe, and the metric is computed by harness code.

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

from .dataset import Dataset
from .integrity import file_identity, harness_files, harness_paths, verify_harness
from .paths import HARNESS_DIR, inductor_cache
from .profiles import Profile

STATUSES = ("ok", "crash", "timeout", "invalid", "cancelled")
LOG_TAIL_LINES = 40
EXIT_GRACE = 30.0  # seconds a finished run may spend printing its summary before it is killed

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


@dataclass(frozen=True)
class RunResult:
    status: str  # ok | crash | timeout | invalid | cancelled
    reason: str | None
    val_bpb: float | None
    training_seconds: float | None
    total_seconds: float  # go -> end (go: run() asked the child to start this run)
    startup_seconds: float | None  # go -> first step reported (imports left, setup, compile)
    ready_seconds: float | None  # go -> harness ready (the imports a spare has not done already)
    eval_seconds: float | None  # trained -> result (causality probe + val_bpb)
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
    spare_seconds: float | None = None
    timing: bool = False  # the verdict is a timing rule's (over budget, evaluation cap, a deadline): load can cause it  # how long the spare child had been warming before go; None: fresh

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def outside_training_seconds(self) -> float | None:
        return None if self.training_seconds is None else self.total_seconds - self.training_seconds


@dataclass
class Limits:
    """Kill deadlines around the profile's budget (seconds)."""

    startup: float
    warmup: float
    eval: float
    over_budget_tolerance: float  # finishing this far past the budget is still valid

    @classmethod
    def for_profile(cls, p: Profile) -> "Limits":
        return cls(p.startup_allowance, p.warmup_allowance, p.eval_allowance, max(2.0, 0.05 * p.time_budget))


@dataclass
class _Watch:
    t_go: float
    t_ready: float | None = None
    t_first: float | None = None
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
    cpu: dict = field(default_factory=dict)  # the child's CPU seconds when it was ready / trained / judged


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
) -> RunResult:
    """Run one training script under the harness. Raises IntegrityError before starting when the
    harness or the data changed; every other outcome is a RunResult. With `spare`, the run uses
    the waiting spare child when it fits, and starts the next run's spare while it trains."""
    hashes = verify_harness(cache, harness_dir)
    dataset.verify()
    limits = limits or Limits.for_profile(profile)
    cancel = cancel or threading.Event()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.touch()

    env = child_env(cache, harness_dir)
    key = _key(env, harness_dir, hashes)
    args = {
        "script": str(script), "data": str(dataset.folder), "profile": profile.name,
        "budget": profile.time_budget, "warmup": limits.warmup, "log": str(log_path), "cwd": str(log_path.parent),
    }
    child = _take_spare(key) if spare else None
    t_go = time.monotonic()  # CLOCK_MONOTONIC is one clock for all processes: the child's timeline uses it
    if child is not None and not _send_go(child, dict(args, t_go=t_go)):
        _discard(child)  # it died after all: a fresh one takes the run
        child = None
    spare_s = None if child is None else t_go - child.t_spawn
    if child is None:
        t_go = time.monotonic()
        child = _spawn(env, key, harness_dir, preload_compile=profile.compile)
        _send_go(child, dict(args, t_go=t_go))  # a child that died at once is judged by its exit status below
    proc = child.proc
    w = _Watch(t_go, pid=proc.pid)
    prestart = _prestarter(spare, profile, env, key, harness_dir)
    try:
        if on_spawn:
            on_spawn(proc.pid)
        status, reason = _watch(proc, child.rfd, w, profile, limits, cancel, on_progress, on_message=prestart)
    finally:  # whatever happened here, the training process group does not outlive the call
        _discard(child, log_path)
    exit_code = proc.returncode
    t_end = time.monotonic()

    v = w.verdict or {}
    train_s = _training_seconds(w, limits) if w.t_trained is not None else None
    timing = status == "timeout"  # every kill deadline is a clock
    if status == "ok":
        tolerance = _tolerance(w, limits, profile.time_budget)
        eval_s, eval_cap, unit = _eval_measure(w, profile, limits, train_s)
        if not math.isfinite(v.get("val_bpb", math.nan)):
            status, reason = "crash", "the validation loss is not finite"
        elif train_s is not None and train_s > profile.time_budget + tolerance:
            status, reason, timing = "invalid", (
                f"training took {train_s:.1f}s, over the {profile.time_budget:g}s budget "
                f"(+{tolerance:.1f}s tolerance)"
            ), True
        elif eval_s > eval_cap:
            status, reason, timing = "invalid", (
                f"evaluation took {eval_s:.1f}{unit}, over the {eval_cap:.1f}{unit} its size allows at this model's "
                "training speed (work done at evaluation time counts as training)"
            ), True
    tok_s = _median(w.tok_s)
    mfu = _median(w.mfu)
    if tok_s is None and train_s and w.trained.get("tokens"):
        tok_s = w.trained["tokens"] / max(train_s, 1e-9)
    return RunResult(
        status=status,
        reason=reason,
        val_bpb=v.get("val_bpb") if status == "ok" else None,
        training_seconds=train_s,
        total_seconds=t_end - w.t_go,
        startup_seconds=(w.t_first or w.t_trained or t_end) - w.t_go if w.t_ready else None,
        ready_seconds=w.t_ready - w.t_go if w.t_ready else None,
        eval_seconds=(w.verdict_time - w.t_trained) if status == "ok" and w.t_trained else None,
        peak_memory_gb=v["peak_memory_bytes"] / 1e9 if "peak_memory_bytes" in v else None,
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
    )


# ---- the child process: started fresh, or ahead of time as the spare ----

@dataclass
class _Child:
    proc: subprocess.Popen
    rfd: int  # read end of its message pipe
    early: object  # the temporary file holding what it printed before "go"
    key: tuple  # what it was started with; it serves only a run that needs the same
    t_spawn: float


_spare: _Child | None = None
_spare_lock = threading.Lock()
_atexit_registered = False


def child_env(cache: Path, harness_dir: Path = HARNESS_DIR) -> dict[str, str]:
    """The training subprocess's environment: this one without secrets, plus the harness's
    import path and the compile caches under the cache dir."""
    env = scrub_env(dict(os.environ))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(harness_dir.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    ind = inductor_cache(cache)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ind))
    env.setdefault("TRITON_CACHE_DIR", str(ind / "triton"))
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if env.get("COCKPIT_PROFILE"):  # the child runs in its log's folder: a relative DIR means ours
        env["COCKPIT_PROFILE"] = os.path.abspath(env["COCKPIT_PROFILE"])
    return env


def _key(env: dict[str, str], harness_dir: Path, hashes: dict[str, str]) -> tuple:
    """What a child is started for. Besides the hashes, each harness file's identity (inode,
    mtime, ctime): a spare imports the harness while the previous run's train.py still runs,
    and a file that code rewrote and then put back hashes right again but has a new ctime."""
    stats = tuple((str(p), *file_identity(p.stat())) for p in harness_paths(harness_dir))
    return (sys.executable, str(harness_dir), tuple(sorted(env.items())), tuple(sorted(hashes.items())), stats)


def _spawn(env: dict[str, str], key: tuple, harness_dir: Path, preload_compile: bool) -> _Child:
    rfd, wfd = os.pipe()
    early = tempfile.TemporaryFile(prefix="cockpit-child-")
    # -P: neither the working directory nor the script's folder goes on sys.path, so nothing
    # planted next to train.py can shadow the harness or its dependencies.
    cmd = [
        sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "harness.child",
        "--fd", str(wfd), "--parent", str(os.getpid()), *(["--preload-compile"] if preload_compile else []),
    ]
    try:
        proc = subprocess.Popen(
            cmd, cwd=str(harness_dir.parent), env=env, stdin=subprocess.PIPE, stdout=early,
            stderr=subprocess.STDOUT, pass_fds=(wfd,), start_new_session=True,
        )
    except BaseException:
        os.close(rfd)
        early.close()
        raise
    finally:
        os.close(wfd)
    return _Child(proc, rfd, early, key, time.monotonic())


def _send_go(child: _Child, go: dict) -> bool:
    """Hand the run to the child; False when it is gone."""
    try:
        child.proc.stdin.write((json.dumps(go) + "\n").encode())
        child.proc.stdin.close()
    except (BrokenPipeError, OSError):
        return False
    return True


def _discard(child: _Child, log_path: Path | None = None) -> None:
    """Kill the child's group, close our ends, and keep in the log what it printed before it
    reached the log (a child that died while importing)."""
    kill_group(child.proc)
    try:
        child.proc.stdin.close()
    except OSError:  # the pipe broke: the child is gone, nothing left to flush
        pass
    os.close(child.rfd)
    if log_path is not None:
        child.early.seek(0)
        early = child.early.read()
        if early:
            with open(log_path, "ab") as log:
                log.write(early)
    child.early.close()


def _take_spare(key: tuple) -> _Child | None:
    """The waiting spare if it is alive and was started for runs like this one (else it goes)."""
    global _spare
    with _spare_lock:
        child, _spare = _spare, None
    if child is None:
        return None
    if child.key != key or child.proc.poll() is not None:
        _discard(child)
        return None
    return child


def _keep_spare(child: _Child) -> None:
    global _spare, _atexit_registered
    with _spare_lock:
        old, _spare = _spare, child
        if not _atexit_registered:
            atexit.register(shutdown_spare)
            _atexit_registered = True
    if old is not None:
        _discard(old)


def start_spare(cache: Path, harness_dir: Path = HARNESS_DIR, preload_compile: bool = False) -> int:
    """Start a spare child now, for the next `run()` with this cache and harness; returns its pid."""
    env = child_env(cache, harness_dir)
    child = _spawn(env, _key(env, harness_dir, harness_files(harness_dir)), harness_dir, preload_compile)
    _keep_spare(child)
    return child.proc.pid


def shutdown_spare() -> None:
    """Kill the waiting spare, if any (also run at interpreter exit)."""
    global _spare
    with _spare_lock:
        child, _spare = _spare, None
    if child is not None:
        _discard(child)


def spare_pid() -> int | None:
    """The waiting spare's pid, or None."""
    child = _spare
    return None if child is None else child.proc.pid


def _prestarter(enabled: bool, profile: Profile, env: dict, key: tuple, harness_dir: Path):
    """When to start the next run's spare: on an accelerator as soon as this run has finished its
    first step (compilation done, the CPU mostly idle); on the CPU profile only once this run has
    its verdict, so that the spare's imports do not take cores from training or evaluation."""
    started = not enabled

    def check(w: _Watch) -> None:
        nonlocal started
        if started:
            return
        moment = w.verdict if profile.device == "cpu" else (w.t_first or w.t_trained or w.verdict)
        if moment is not None:
            started = True
            try:
                child = _spawn(env, key, harness_dir, preload_compile=profile.compile)
            except OSError as e:  # out of processes or memory: this run goes on, the next starts fresh
                print(f"harness: could not start the next run's spare child: {e}", file=sys.stderr)
                return
            _keep_spare(child)

    return check


def _tolerance(w: _Watch, limits: Limits, budget: float) -> float:
    """How far past the budget training may end: the step in progress when the budget ran out may
    finish. The larger of the profile's share of the budget and, on a loaded machine, three median
    step times, the last step measured (a spike), or how far the first step ran past its warm-up
    allowance (when the budget ran out during it). Capped at 10 s plus a tenth of the budget:
    train.py reports its own step numbers, so it could claim long steps."""
    candidates = []
    if w.step_s:
        candidates += [3.0 * statistics.median(w.step_s), 1.2 * w.step_s[-1]]
    if w.t_first is not None and w.t_ready is not None:
        candidates.append(w.t_first - w.t_ready - limits.warmup)
    cap = _tolerance_cap(budget)
    return max(limits.over_budget_tolerance, min(max(candidates, default=0.0), cap))


def _tolerance_cap(budget: float) -> float:
    return 10.0 + 0.1 * budget


def _eval_measure(w: _Watch, profile: Profile, limits: Limits, train_s: float | None) -> tuple[float, float, str]:
    """(evaluation's cost, the cap it must stay under, the unit). Evaluation is forward passes
    only: at most ~1/3 of a training step's work per token. It may take 3x that at the speed this
    process trained at, plus a fixed 20 s (compilation for inference, the probe), never more than
    the profile's eval allowance. On the CPU both sides are counted in the process's CPU seconds,
    so that other programs taking the cores during evaluation do not make unchanged code invalid;
    on a GPU, in wall seconds."""
    eval_wall = w.verdict_time - w.t_trained
    tokens = w.trained.get("loader_tokens") or 0
    scored = w.verdict.get("val_tokens", 0) + w.verdict.get("probe_tokens", 0)
    if not tokens or not train_s or train_s <= 0:
        return eval_wall, limits.eval, "s"
    cpu = w.cpu
    start = "first" if "first" in cpu and w.t_first is not None else "ready"  # after the first step's compile
    t_start = w.t_first if start == "first" else w.t_ready
    if profile.name == "cpu" and {start, "trained", "verdict"} <= cpu.keys() and t_start is not None:
        train_cpu = cpu["trained"] - cpu[start]
        if train_cpu > 0:
            cores = max(1.0, train_cpu / max(w.t_trained - t_start, 1e-9))  # cores it used while training
            cap = min(limits.eval * cores, min(limits.eval, 20.0) * cores + 3.0 * scored / (3.0 * tokens / train_cpu))
            return cpu["verdict"] - cpu["trained"], cap, " CPU-s"
    rate = tokens / train_s  # tokens the harness's loader handed out, per training second
    return eval_wall, min(limits.eval, 20.0 + 3.0 * scored / (3.0 * rate)), "s"


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of the training process (all its threads) so far."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:  # work handed to a forked worker counts too
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total
    except (psutil.Error, OSError):
        return None


def _training_seconds(w: _Watch, limits: Limits) -> float:
    """The runner's own measure, mirroring runtime._Session.training_seconds."""
    ready = w.t_ready if w.t_ready is not None else w.t_go
    warm = (w.t_first if w.t_first is not None else w.t_trained) - ready
    return (w.t_trained - ready) - min(warm, limits.warmup)


def _watch(proc, rfd, w: _Watch, profile: Profile, limits: Limits, cancel, on_progress, on_message=None):
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
            if w.verdict is not None and w.verdict["type"] != "result":
                return ("crash" if w.verdict["type"] == "crash" else "invalid"), w.verdict.get("reason")
            if w.verdict is not None and (proc.poll() is not None or now - w.verdict_time > EXIT_GRACE):
                return "ok", None
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
            if eof:
                time.sleep(0.05)
    finally:
        sel.close()


def _handle(msg: dict, w: _Watch, profile: Profile, on_progress) -> None:
    now = time.monotonic()
    kind = msg.get("type")
    if kind == "ready":
        w.t_ready = now
        _sample_cpu(w, "ready")
    elif kind == "progress":
        if msg.get("first") and w.t_first is None:
            w.t_first = now
            _sample_cpu(w, "first")
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
        if w.t_first is None:
            w.t_first = now
    elif kind == "trained":
        if w.t_trained is None:
            w.t_trained = now
            w.trained = msg
            _sample_cpu(w, "trained")
    elif kind in ("result", "crash", "invalid") and w.verdict is None:
        if kind == "result" and w.t_trained is None:
            return  # a result without the trained marker is not the harness's
        w.verdict = msg
        w.verdict_time = now
        _sample_cpu(w, "verdict")


def _sample_cpu(w: _Watch, when: str) -> None:
    t = _cpu_seconds(w.pid)
    if t is not None:
        w.cpu[when] = t


def _deadline(w: _Watch, profile: Profile, limits: Limits) -> tuple[float, str]:
    if w.t_ready is None:
        return w.t_go + limits.startup, f"no start within {limits.startup:g}s"
    if w.t_trained is None:
        slack = _tolerance(w, limits, profile.time_budget) + max(5.0, 0.1 * profile.time_budget)
        if w.t_first is None:  # still in the first step: on a loaded machine it may run past its allowance
            slack += _tolerance_cap(profile.time_budget)
        return (
            w.t_ready + limits.warmup + profile.time_budget + slack,
            f"training ran past its {profile.time_budget:g}s budget and was killed",
        )
    return w.t_trained + limits.eval, f"evaluation took longer than {limits.eval:g}s"


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
    return "\n".join(data.splitlines()[-lines:])
