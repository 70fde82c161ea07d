"""The training subprocess's driver: `python -m harness.child --fd N --parent PID [--preload-compile]`.

Two phases. Before "go" it imports what every run needs (torch, the harness's runtime, and for
compiling profiles Dynamo and Inductor) and then blocks on stdin; the runner may start it this
way ahead of time, as a spare, while the previous run still trains. Nothing here touches the GPU
before "go": importing torch creates no CUDA context, and the child checks that it did not.
On "go" (one JSON line: script, data, profile, budget, warm-up, allowance, cwd) it moves into the
run's own folder, checks the script against the guard, sets up harness.runtime (profile, data,
the channel to the runner), and runs the script as __main__; the script's `rt.submit(model)`
exports the model and ends the process. A failure becomes one message ("crash", "invalid").
Its output goes to a pipe that the runner writes to the run's log. The runner kills this
process's whole group (in the sandbox: its PID namespace) when the model is exported, or the run
is cancelled or out of time, and a spare that is no longer wanted.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import runpy
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# What a run imports anyway, loaded before "go" so that a spare has it ready. Dynamo comes with
# the first torch.optim optimizer even without compiling; Inductor (seconds) only where the
# profile compiles; triton only where it is installed.
PRELOAD = ("torch", "torch.nn.functional", "torch._dynamo", "torch.export", "harness.guard", "harness.profiles",
           "harness.runtime", "harness.modelfile")
PRELOAD_COMPILE = ("torch._inductor.compile_fx", "torch._functorch.aot_autograd")
SPARE_EXIT = 0  # stdin closed before "go": the runner no longer wants this spare


def _send(fd: int, kind: str, **fields: Any) -> None:
    os.write(fd, (json.dumps({"type": kind, **fields}) + "\n").encode())


def _orphan_watchdog(parent: int) -> None:
    """If the runner dies (kill -9), take the whole process group down with us."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.killpg(0, 9)


def _preload(compile_: bool) -> None:
    for name in PRELOAD + (PRELOAD_COMPILE if compile_ else ()):
        importlib.import_module(name)
    if compile_:
        if importlib.util.find_spec("triton") is not None:
            importlib.import_module("triton")
        codecache = importlib.import_module("torch._inductor.codecache")
        if hasattr(codecache, "torch_key"):
            codecache.torch_key()  # a hash of torch's own files, part of every compile cache key (cached)
    import torch

    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]  # (torch's is unannotated)  # a run must never share the GPU: a spare holds no context
        raise RuntimeError("harness: CUDA was initialised before the run started")


def _enter_run(cwd: str) -> None:
    """stdin to /dev/null (the go line has been read) and into the run's own folder. stdout and
    stderr are already the runner's pipe, which writes the run's log (capped)."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.chdir(cwd)


def main(argv: list[str] | None = None) -> int:
    t_start = time.monotonic()
    ap = argparse.ArgumentParser(prog="harness.child")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--parent", type=int, default=None)
    ap.add_argument("--preload-compile", action="store_true")
    a = ap.parse_args(argv)
    fd = a.fd
    # In the sandbox the runner is outside this PID namespace: bwrap --die-with-parent ends the
    # namespace (and everything in it) when the runner dies; this watchdog covers the unsandboxed case.
    threading.Thread(target=_orphan_watchdog, args=(a.parent or os.getppid(),), daemon=True).start()

    _preload(a.preload_compile)
    t_loaded = time.monotonic()
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return SPARE_EXIT
    go = json.loads(line)
    # The runner's clock (CLOCK_MONOTONIC is system-wide): the moment the run was asked for.
    t_go = min(float(go.get("t_go", time.monotonic())), time.monotonic())
    _enter_run(go["cwd"])

    from . import guard

    script = Path(go["script"])
    rule = guard.check(script.read_text(encoding="utf-8"), script.name)
    if rule:
        _send(fd, "invalid", reason=rule)
        print(f"harness: {rule}", flush=True)
        return 2

    from dataclasses import replace

    from . import runtime
    from .profiles import by_name

    prof = replace(by_name(go["profile"]).with_budget(go["budget"]), warmup_allowance=go["warmup"])
    session = runtime._configure(prof, Path(go["data"]), fd, t_go=t_go, credit=go.get("credit"))
    _send(fd, "ready", pid=os.getpid(), profile=prof.name, budget=prof.time_budget)
    print(
        f"harness: profile {prof.name}, budget {prof.time_budget:g}s, data {go['data']}; "
        f"imports {t_loaded - t_start:.1f}s, " + (f"then {t_go - t_loaded:.1f}s waiting for the run, " if t_go > t_loaded else "")
        + f"ready {session.t_ready - t_go:.2f}s after the run was asked for",
        flush=True,
    )
    sys.argv = [str(script)]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            _send(fd, "crash", reason=f"train.py exited with status {e.code}")
            return 1
    except BaseException as e:  # the script's own failure: record it, with the traceback in the log
        traceback.print_exc()
        sys.stderr.flush()
        lines = traceback.format_exception_only(type(e), e)
        _send(fd, "crash", reason=lines[-1].strip()[:500])
        return 1
    _send(fd, "crash", reason="train.py ended without calling runtime.submit(model)")
    return 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip slow interpreter teardown (compile workers, CUDA context)
