"""Parallel-experiments benchmark: experiments per hour and per-slot duty cycle at 1 slot and at N
slots, with the bundled trainer and a stand-in agent of fixed latency.

    python bench/parallel.py [--slots 1,N] [--budget S] [--agent-latency S] [--runs-per-slot K]
                             [--devices auto|0,1|cpu:N] [--cache-dir DIR]

For each slot count, a fresh workspace and a real session (the engine, the journal, git, the
sandboxed harness; the offline tuner thinking for --agent-latency seconds first, standing in for a
remote model). Each slot runs K runs (the first is its baseline); the session then stops once
the next run on every slot has started. Each slot's cycle is the time from one run's start to
the next run's start on that slot (the run itself, then any idle gap: waiting for a proposal,
the engine's work), so the steady-state rate is the sum over slots of 3600 / cycle, without
waiting for the last runs to end. The scaling efficiency is the rate at N over N times the rate
at 1. Prints each run's timeline (slot, start, startup, train, eval, idle gap before the next).
CPU smoke: `--slots 1,2 --devices cpu:2 --budget 2 --agent-latency 0.5`.

    python bench/parallel.py --simulate N [--experiments 5000] [--run-seconds 20] [--tui] ...

The scheduler at N slots by simulation, without a GPU: bench/simulate.py (stand-in runs and agent,
the real engine, journal, scheduler, decision rule and, with --tui, the real TUI).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loop import SlowTuner  # noqa: E402
from cockpit.cli import _profile, ensure_prepared  # noqa: E402
from engine import events as ev  # noqa: E402
from engine.control import Control  # noqa: E402
from engine.build import SessionOptions, build_session  # noqa: E402
from engine.run.slots import resolve  # noqa: E402
from engine.store.workspace import init_workspace, open_workspace  # noqa: E402
from harness.paths import cache_root  # noqa: E402


def session(k: int, a, cache, dataset, devices) -> dict:
    """One session on the first k devices; the cycles of each slot."""
    ws = Path(tempfile.mkdtemp()) / "bench"
    init_workspace(ws)
    toml = (ws / "cockpit.toml").read_text().replace("baseline_runs = 2", "baseline_runs = 1")
    (ws / "cockpit.toml").write_text(toml)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", "bench"],
                   cwd=ws, check=True)
    w = open_workspace(ws)
    prof = _profile(a.device, a.budget)
    control = Control()
    eng, _ = build_session(w, SlowTuner(a.agent_latency, a.only),
                           SessionOptions(tag=f"par{k}", cache=cache, dataset=dataset, profile=prof),
                           devices=devices[:k], control=control)
    starts: dict[int, list[tuple[float, int]]] = {}  # slot -> (start time, n)
    done = threading.Event()

    def on(e) -> None:
        if isinstance(e, ev.ExperimentStarted):
            starts.setdefault(e.slot, []).append((time.monotonic(), e.n))
            if len(starts) == k and all(len(v) > a.runs_per_slot for v in starts.values()):
                done.set()
                control.stop("now")

    eng.subscribe(on)
    t0 = time.monotonic()
    reason = eng.run()
    rows = {e.n: e for e in eng.journal.experiments(eng.session.id)}
    print(f"\n{k} slot(s) on {', '.join(d.label for d in devices[:k])}: {reason}; wall {time.monotonic() - t0:.0f}s")
    print(f"{'slot':>4} {'#':>3} {'kind':>10} {'status':>11} {'start':>7} {'startup':>7} {'train':>6} {'eval':>5} "
          f"{'total':>6} {'idle':>5} {'cycle':>6}")
    cycles: dict[int, list[float]] = {}
    duty: dict[int, list[float]] = {}
    for slot, runs in sorted(starts.items()):
        for (t, n), nxt in zip(runs, runs[1:] + [None]):
            e = rows[n]
            cycle = None if nxt is None else nxt[0] - t
            idle = None if (nxt is None or e.total_seconds is None) else cycle - e.total_seconds
            if cycle is not None:
                cycles.setdefault(slot, []).append(cycle)
                duty.setdefault(slot, []).append((e.training_seconds or 0.0) / cycle)
            f = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
            print(f"{slot:>4} {n:>3} {e.kind:>10} {e.status:>11} {t - t0:>7.1f} {f(e.startup_seconds):>7} "
                  f"{f(e.training_seconds):>6} {f(e.eval_seconds):>5} {f(e.total_seconds):>6} {f(idle):>5} {f(cycle):>6}")
    rate = sum(3600.0 / statistics.mean(c) for c in cycles.values())
    per_slot = {s: statistics.mean(d) for s, d in duty.items()}
    print(f"rate {rate:.2f} experiments/hour; per-slot duty " +
          ", ".join(f"slot {s} {100 * d:.1f}%" for s, d in sorted(per_slot.items())))
    return {"rate": rate, "duty": per_slot, "slots": k}


def main() -> int:
    if "--simulate" in sys.argv:  # the scheduler at scale, by simulation (bench/simulate.py)
        import simulate

        argv = sys.argv[1:]
        i = argv.index("--simulate")
        return simulate.main(argv[:i] + ["--slots", argv[i + 1]] + argv[i + 2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", default="1,2", help="slot counts to measure, e.g. 1,2 or 1,8")
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--agent-latency", type=float, default=60.0)
    ap.add_argument("--runs-per-slot", type=int, default=1, help="runs measured per slot (each gives one cycle)")
    ap.add_argument("--devices", default="auto")
    ap.add_argument("--device", default="auto", help="the profile: auto | cuda | cpu")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--only", default="LR|FRAC|MOMENTUM|BETAS|DECAY", help="regex of the constants the tuner moves")
    a = ap.parse_args()
    cache = cache_root(a.cache_dir)
    dataset = ensure_prepared(cache)
    prof = _profile(a.device, a.budget)
    devices, notices = resolve(a.devices, prof.device == "cuda")
    for line in notices:
        print(line)
    counts = [int(x) for x in a.slots.split(",")]
    if max(counts) > len(devices):
        print(f"--slots {a.slots}: only {len(devices)} devices ({', '.join(d.label for d in devices)})")
        return 2
    print(f"budget {a.budget:g}s, agent latency {a.agent_latency:g}s, profile {prof.name}, devices "
          f"{', '.join(d.label for d in devices)}")
    results = [session(k, a, cache, dataset, devices) for k in counts]
    one = next((r for r in results if r["slots"] == 1), None)
    print()
    for r in results:
        eff = "" if one is None or r["slots"] == 1 or not one["rate"] else f"; scaling efficiency {r['rate'] / (r['slots'] * one['rate']):.3f}"
        print(f"{r['slots']} slot(s): {r['rate']:.2f} experiments/hour{eff}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
