"""Measuring aids of the in-process runtime (harness/runtime.py), never part of a run's result:
with COCKPIT_PROFILE=DIR, torch.profiler over a few optimizer steps (a summary in the log, a Chrome
trace in DIR); with COCKPIT_COMPILE_STATS=1, Dynamo's compile times and the compile caches' hits."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch

PROFILE_STEPS = (10, 3)  # with COCKPIT_PROFILE=DIR: profile 3 optimizer steps from step 10 (compiled, warm)

_PROFILE_DIR = os.environ.get("COCKPIT_PROFILE")  # made absolute by the runner
_prof: dict[str, Any] = {}  # the profiler while it records ("running"), then its result ("done")
_KERNEL_KINDS = (  # (kind, substrings of kernel names), first match wins; the rest is "other"
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "matmul", "aten::mm", "aten::addmm", "aten::bmm")),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("embedding", ("embedding", "index", "scatter", "gather", "sort", "radix")),
    ("optimizer", ("multi_tensor", "adam", "foreach")),
    ("fused (Inductor/Triton)", ("triton",)),
    ("copy/cast", ("copy", "cast", "convert")),
    ("reduce/elementwise", ("reduce", "elementwise", "vectorized")),
)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def profile_step(step: int, device: str) -> None:
    """With COCKPIT_PROFILE=DIR: record PROFILE_STEPS optimizer steps with torch.profiler. Only
    starting and stopping happen here, inside the training clock; the report is written by
    profile_report() once training has ended. A measuring aid, not part of the run's result."""
    if not _PROFILE_DIR:
        return
    start, n = PROFILE_STEPS
    try:
        if step == start - 1 and not _prof:
            from torch.profiler import ProfilerActivity, profile
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
            sync(device)
            p = profile(activities=acts)
            p.__enter__()  # type: ignore[no-untyped-call]  # torch.profiler's is unannotated
            _prof.update(running=p, t0=time.perf_counter(), first=step + 1)
        elif step >= start + n - 1 and "running" in _prof:
            _profile_stop(step, device)
    except Exception as e:  # a measuring aid never takes a run down
        _prof.clear()
        _prof["done"] = None
        print(f"harness: profile failed: {type(e).__name__}: {e}", flush=True)


def _profile_stop(last_step: int, device: str) -> None:
    sync(device)
    p = _prof.pop("running")
    _prof["wall"] = time.perf_counter() - _prof["t0"]
    _prof["steps"] = last_step - _prof["first"] + 1  # 0 when training ended right after it started
    p.__exit__(None, None, None)
    _prof["done"] = p


def profile_report(device: str, steps: int) -> None:
    """Print the recorded steps' summary to the log and write the Chrome trace (once training
    is over and reported: parsing and writing the trace take seconds that must not come off the
    training budget or its kill deadline). A run that ended before the last profiled step
    reports the steps it recorded."""
    if not _PROFILE_DIR or not _prof:
        return
    try:
        if "running" in _prof:
            _profile_stop(steps - 1, device)
        prof, n = _prof.get("done"), _prof.get("steps", 0)
        if prof is None:
            return
        _prof["done"] = None
        if n < 1:
            print(f"harness: profile: training ended before step {_prof['first']} finished; nothing recorded", flush=True)
            return
        cuda = device.startswith("cuda")
        try:
            os.makedirs(_PROFILE_DIR, exist_ok=True)
            path = os.path.join(_PROFILE_DIR, f"trace-{os.getpid()}.json")
            prof.export_chrome_trace(path)
        except OSError as e:
            path = f"not written ({e})"
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        events = [e for e in prof.key_averages() if getattr(e, key) > 0]
        if cuda:  # kernels only: CPU-side ops also carry the device time of the kernels they launch
            events = [e for e in events if e.device_type.name == "CUDA"]
        total = sum(getattr(e, key) for e in events) or 1
        kinds: dict[str, float] = {}
        for ev in events:
            name = ev.key.lower()
            kind = next((k for k, subs in _KERNEL_KINDS if any(x in name for x in subs)), "other")
            kinds[kind] = kinds.get(kind, 0.0) + getattr(ev, key)
        first = _prof["first"]
        print(f"harness: profile of steps {first}-{first + n - 1}: {_prof['wall'] / n * 1e3:.1f} ms per step (wall), "
              f"{total / n / 1e3:.1f} ms of {'GPU kernels' if cuda else 'CPU ops'} per step; trace {path}", flush=True)
        split = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
        print(f"harness: profile by kind: {split}", flush=True)
        for ev in sorted(events, key=lambda ev: -getattr(ev, key))[:15]:
            v = getattr(ev, key)
            print(f"harness: profile {100 * v / total:5.1f}% {v / n / 1e3:7.2f} ms/step x{ev.count // n:<4d} {ev.key[:100]}", flush=True)
    except Exception as e:  # a measuring aid never takes a run down
        print(f"harness: profile failed: {type(e).__name__}: {e}", flush=True)


def print_compile_stats() -> None:
    """With COCKPIT_COMPILE_STATS=1: Dynamo's compile times and the compile caches' hits, in the log."""
    dynamo = sys.modules.get("torch._dynamo.utils")
    if not os.environ.get("COCKPIT_COMPILE_STATS") or dynamo is None:
        return
    print(dynamo.compile_times(repr="str"), flush=True)
    for name in ("inductor", "aot_autograd", "stats"):
        print(f"harness: counters[{name}] = {dict(dynamo.counters[name])}", flush=True)


