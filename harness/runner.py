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

This module is the run itself and the harness's public API. Its parts, one job each:
  launch.py       process launch: the harness's processes, their environment and their groups
  spares.py       SparePool: the waiting spare child of each slot
  clock.py        the clock rules (allowance, deadlines, tolerance, the evaluation's limit): pure
  watch.py        the message watch: the training process's messages move the clock
  runlog.py       the run's log: the capped log pump, and the log's tail
  eval_client.py  the evaluator client: the job, the tokens and the verdict, under its EvalClock
"""

from __future__ import annotations

import math
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import resources
from . import sandbox as sbx
from .clock import EXPORT_ALLOWANCE, Limits, counted_training, over_budget, protocol, tolerance
from .clock import own_credit as _own_credit_rule
from .dataset import Dataset
from .errors import HarnessError
from .eval_client import early_evaluator, evaluate
from .integrity import harness_files, verify_harness
from .launch import (bounds_verdict, child_env, child_key, discard, kill_group, piped, private_compile_cache,
                     scrub_env, send_go, spawn, spawn_evaluator, stage)
from .paths import HARNESS_DIR
from .profiles import Profile
from .results import Progress, RunResult
from .runlog import log_tail
from .spares import SparePool
from .watch import Watch, run_tolerance, watch

__all__ = [  # the harness's API (engine, cockpit, bench, calibrate); the rest lives in the parts above
    "EXPORT_ALLOWANCE", "Limits", "Progress", "RunResult", "SandboxRequired", "child_env", "kill_group", "log_tail",
    "piped", "private_compile_cache", "protocol", "run", "sandbox_state", "scrub_env", "shutdown_spare",
    "spare_pid", "start_spare", "tolerance",
]

_spares = SparePool()  # each slot's waiting spare child, for every run() of this process


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
    key = child_key(env, harness_dir, hashes, dataset, boxed, profile)
    # Without the sandbox, train.py can write wherever the user can: the evaluation process starts
    # now and has imported everything it runs before train.py's first line (it also starts with
    # -I -S: no site-packages .pth files). With the sandbox it starts later (on_message).
    evaluator = None if boxed else early_evaluator(env, harness_dir, log_path.parent.parent, profile, limits)
    try:
        child = _spares.take(key, slot) if spare else None
    except BaseException:
        if evaluator is not None:
            discard(evaluator)
        raise
    t_go = time.monotonic()  # CLOCK_MONOTONIC is one clock for all processes: the child's timeline uses it
    go = {"data": str(dataset.folder), "profile": profile.name, "budget": profile.time_budget,
          "warmup": limits.warmup, "credit": limits.credit_in_process()}
    if child is not None:
        stage(child, source)
        if not send_go(child, dict(go, script=str(child.workdir / "train.py"), cwd=str(child.workdir), t_go=t_go)):
            discard(child)  # it died after all: a fresh one takes the run
            child = None
    spare_s = None if child is None else t_go - child.t_spawn
    if child is None:
        t_go = time.monotonic()
        try:
            child = spawn(env, key, harness_dir, preload_compile=profile.compile, dataset=dataset, boxed=boxed,
                          gpu=profile.device != "cpu", base=log_path.parent.parent)
        except BaseException:
            if evaluator is not None:
                discard(evaluator)
            raise
        stage(child, source)
        # a child that died at once is judged by its exit status below
        send_go(child, dict(go, script=str(child.workdir / "train.py"), cwd=str(child.workdir), t_go=t_go))
    child.pump.attach(log_path)
    proc = child.proc
    w = Watch(t_go, pid=proc.pid)
    prestart = _spares.prestarter(spare, profile, env, key, harness_dir, dataset, boxed, log_path.parent.parent, slot)
    workdir = child.workdir

    def on_message(w: Watch) -> None:
        nonlocal evaluator
        prestart(w)
        # The evaluation process imports torch while the run trains (on the CPU profile only once
        # the model is being exported: its imports would take cores from training).
        moment = w.t_exporting if profile.device == "cpu" else (w.t_first or w.t_exporting)
        if evaluator is None and moment is not None:
            evaluator = spawn_evaluator(env, harness_dir, workdir, boxed, profile.device != "cpu")

    eval_s: float | None = None
    result: dict[str, Any] | None = None
    try:
        if on_spawn:
            on_spawn(proc.pid)
        status, reason = watch(proc, child.rfd, w, profile, limits, cancel, on_progress, on_message=on_message)
        status, reason = bounds_verdict(child, status, reason)
        kill_group(proc)  # trained or not, the training process is done: nothing it does from here counts
        if status == "trained" and w.t_trained is not None:
            if evaluator is None:
                evaluator = spawn_evaluator(env, harness_dir, workdir, boxed, profile.device != "cpu")
            evaluator.pump.attach(log_path)
            status, reason, result = evaluate(evaluator, workdir / "model", dataset, profile, w.trained, w.t_trained,
                                              limits, cancel)
            eval_s = time.monotonic() - w.t_trained
    finally:  # whatever happened here, no process of the run outlives the call
        discard(child)
        if evaluator is not None:
            discard(evaluator)
        _keep_files(workdir, log_path.parent)
    prestart(None)  # the run is over: the next run's spare starts now if it has not yet
    dataset.verify()  # the data the run could have touched is still what was prepared (else IntegrityError)
    return _result(w, status, reason, result, profile, limits, log_path, proc.returncode, time.monotonic(),
                   eval_s=eval_s, spare_s=spare_s, boxed=boxed)


def _result(w: Watch, status: str, reason: str | None, result: dict[str, Any] | None, profile: Profile,
            limits: Limits, log_path: Path, exit_code: int | None, t_end: float, eval_s: float | None,
            spare_s: float | None, boxed: bool) -> RunResult:
    """The run's result from its watch and the evaluator's verdict: its training time (the
    allowance taken off), the budget's verdict, and its measures."""
    own_credit = None
    train_s = counted = None
    credit = limits.credit
    if w.t_trained is not None and w.t_ready is not None:
        own_credit = _own_credit_rule(limits.warmup, w.t_ready, w.t_first, w.t_exporting, w.t_trained)
        credit = limits.credit if limits.credit is not None else own_credit
        train_s = w.t_trained - w.t_ready - credit  # against the budget: a slow export is charged
        exported = (w.t_trained - w.t_exporting) if w.t_exporting is not None else 0.0
        counted = counted_training(w.t_ready, w.t_exporting, w.t_trained, credit,
                                   limits.export_estimate if limits.credit is not None else min(exported, EXPORT_ALLOWANCE))
    timing = status == "timeout"  # every kill deadline is a clock
    val = holdout = None
    if status == "ok" and result is not None:
        tol = run_tolerance(w, limits, profile.time_budget)
        val = result["val"]["bpb"]
        holdout = (result.get("holdout") or {}).get("bpb")
        late = None if train_s is None or credit is None else over_budget(train_s, profile.time_budget, tol, credit)
        if not math.isfinite(val):
            status, reason = "crash", "the validation loss is not finite"
        elif late is not None:
            status, reason, timing = "invalid", late, True
    tok_s = _median(w.tok_s)
    mfu = _median(w.mfu)
    if tok_s is None and counted and w.trained.get("tokens"):
        tok_s = w.trained["tokens"] / max(counted, 1e-9)
    peak = w.trained.get("peak_memory_bytes")
    if result and result.get("peak_memory_bytes"):
        peak = max(peak or 0, result["peak_memory_bytes"])
    return RunResult(
        status=status,
        reason=reason,
        val_bpb=val if status == "ok" else None,
        training_seconds=counted,
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


def _median(xs: Sequence[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs[len(xs) // 5 :] if len(xs) >= 5 else xs)  # skip the warm-up reports
    return s[len(s) // 2]


# ---- the spares, through the pool of this process (harness/spares.py) ----

def start_spare(cache: Path, dataset: Dataset, harness_dir: Path = HARNESS_DIR, preload_compile: bool = False,
                gpu: bool = False, base: Path | None = None, sandbox: str = "auto", compile_cache: str = "private",
                profile: Profile | None = None, slot: str = "", env_extra: dict[str, str] | None = None) -> int:
    """Start a spare child now, for the slot's next `run()` with this cache, data and harness; returns its pid."""
    boxed, _ = sandbox_state(sandbox)
    env = dict(child_env(cache, harness_dir, boxed, compile_cache == "shared"), **(env_extra or {}))
    from .profiles import detect

    prof = profile or detect()
    key = child_key(env, harness_dir, harness_files(harness_dir), dataset, boxed, prof)
    child = spawn(env, key, harness_dir, preload_compile, dataset, boxed, gpu, base or cache / "runs")
    _spares.keep(child, slot)
    return child.proc.pid


def shutdown_spare(slot: str | None = None) -> None:
    """Kill the slot's waiting spare (None: every slot's; also run at interpreter exit)."""
    _spares.shutdown(slot)


def spare_pid(slot: str = "") -> int | None:
    """The slot's waiting spare's pid, or None."""
    return _spares.pid(slot)
