"""The training subprocess's driver: `python -m harness.child --script train.py ...`.

It checks the script against the guard, sets up harness.runtime (profile, data, the channel to
the runner), runs the script as __main__, and turns whatever happens into one verdict message.
The runner kills this process's whole group when it is done, cancelled or out of time.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import threading
import time
import traceback
from pathlib import Path


def _send(fd: int, kind: str, **fields) -> None:
    os.write(fd, (json.dumps({"type": kind, **fields}) + "\n").encode())


def _orphan_watchdog(parent: int) -> None:
    """If the runner dies (kill -9), take the whole process group down with us."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.killpg(0, 9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="harness.child")
    ap.add_argument("--script", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--budget", type=float, required=True)
    ap.add_argument("--warmup", type=float, required=True)
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True)
    a = ap.parse_args(argv)
    fd = a.fd
    threading.Thread(target=_orphan_watchdog, args=(a.parent,), daemon=True).start()

    from . import guard

    script = Path(a.script)
    rule = guard.check(script.read_text(encoding="utf-8"), script.name)
    if rule:
        _send(fd, "invalid", reason=rule)
        print(f"harness: {rule}", flush=True)
        return 2

    from . import runtime
    from .profiles import by_name

    from dataclasses import replace

    prof = replace(by_name(a.profile).with_budget(a.budget), warmup_allowance=a.warmup)
    session = runtime._configure(prof, Path(a.data), fd)
    _send(fd, "ready", pid=os.getpid(), profile=prof.name, budget=prof.time_budget)
    print(f"harness: profile {prof.name}, budget {prof.time_budget:g}s, data {a.data}", flush=True)
    sys.argv = [str(script)]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        if not session.submitted and e.code not in (None, 0):
            _send(fd, "crash", reason=f"train.py exited with status {e.code}")
            return 1
    except BaseException as e:  # the script's own failure: record it, with the traceback in the log
        traceback.print_exc()
        sys.stderr.flush()
        if not session.submitted:
            lines = traceback.format_exception_only(type(e), e)
            _send(fd, "crash", reason=lines[-1].strip()[:500])
            return 1
    if not session.submitted:
        _send(fd, "crash", reason="train.py ended without calling runtime.submit(model)")
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip slow interpreter teardown (compile workers, CUDA context)
