"""Scheduler at scale, by simulation: the real engine, journal, git, scheduler and decision rule,
with a stand-in run of fixed length (no GPU, no training process) and a stand-in agent with a
fixed latency, on N simulated slots.

    python bench/simulate.py [--slots 64] [--experiments 500] [--run-seconds 20] [--agent-latency 5] [--tui]
    python bench/parallel.py --simulate 64 [...]          (the same)

Measures, from the session itself:
- the scheduling overhead per run: each slot's idle time between a run's end and its next run's
  start (engine work, waiting for a proposal), and the rate reached against the ideal
  N / run-seconds;
- the journal's write rate and its lock contention (time waiting for the journal's lock);
- the engine's events per second (what the TUI's bridge would receive);
- memory growth (the process's RSS) over the session;
- the proposal rate the agent must sustain, and the API requests per minute it implies;
- with --tui, the session runs inside the real TUI (CockpitApp, headless, its bridge and
  widgets), and the table's cursor is moved (up, then down) every 0.25 s: the key's latency to
  the screen under the session's own flood of events.
What limits the rate first shows as idle time per run growing with N.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import events as ev  # noqa: E402
from engine.agents.base import Agent, Proposal  # noqa: E402
from engine.store.journal import Journal  # noqa: E402
from engine.build import SessionOptions, build_session  # noqa: E402
from engine.run.slots import Device  # noqa: E402
from engine.run.targets import Outcome, Target  # noqa: E402
from harness.runner import Progress  # noqa: E402
from engine.store.workspace import open_workspace  # noqa: E402

LINES = 4000  # value.py holds this many constants: each proposal changes one, far from the others


class SimTarget(Target):
    """A run of fixed length: progress ticks, then a metric (the baseline's, better by chance)."""

    metric_name, direction, label = "val_bpb", "min", "sim"

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.rng = random.Random(1)

    def version(self) -> str:
        return "sim"

    def run(self, log_path: Path, cancel, on_progress=None, baseline=False, tree=None) -> Outcome:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        step = 0
        while (left := self.seconds - (time.monotonic() - t0)) > 0:
            if cancel.wait(min(0.5, left)):
                return Outcome("cancelled", None, "cancelled", None, time.monotonic() - t0, None, str(log_path))
            step += 1
            if on_progress is not None:
                f = min(1.0, (time.monotonic() - t0) / self.seconds)
                on_progress(Progress(step=step, loss=3.0 - f, tokens=0, tokens_per_second=1e6, mfu=0.4, fraction=f,
                                     elapsed=time.monotonic() - t0))
        metric = 3.0 + self.rng.gauss(0, 0.01) - (0.0 if baseline else self.rng.random() * 0.012)
        return Outcome("ok", metric, None, self.seconds, time.monotonic() - t0, 1.0, str(log_path), startup_seconds=0.0,
                       eval_seconds=0.0)


class SimAgent(Agent):
    """Thinks for `latency` seconds, then changes one constant of value.py (a different one each time)."""

    name = "sim"
    concurrent = True

    def __init__(self, latency: float):
        self.latency = latency
        self.calls = 0
        self.lock = threading.Lock()

    def propose(self, ctx, tools, emit):
        with self.lock:
            self.calls += 1
        time.sleep(self.latency)
        i = (ctx.n * 7919) % LINES
        tools.edit_file("value.py", f"\nA{i} = ", f"\nA{i} = 1 + ")
        return Proposal(f"A{i} += 1 (#{ctx.n})")


def workspace() -> Path:
    ws = Path(tempfile.mkdtemp()) / "sim"
    ws.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=ws, check=True)
    (ws / "value.py").write_text("".join(f"A{i} = 0\n" for i in range(LINES)))
    (ws / "program.md").write_text("simulated\n")
    (ws / ".gitignore").write_text(".cockpit/\n")
    (ws / "cockpit.toml").write_text('[target]\nkind = "command"\neditable = ["value.py"]\nrun = "true"\n'
                                     'measure = "true"\nmetric = "val_bpb"\n[decision]\nbaseline_runs = 1\n')
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run(["git", "-c", "user.name=sim", "-c", "user.email=sim@localhost", "commit", "-qm", "sim"], cwd=ws, check=True)
    return ws


class JournalMeter:
    """Counts the journal's statements and the time spent waiting for its lock."""

    def __init__(self, journal: Journal):
        self.n, self.wait, self.worst = 0, 0.0, 0.0
        inner_exec, lock = journal._exec, journal._lock

        def _exec(sql, args=()):
            t = time.perf_counter()
            with lock:
                waited = time.perf_counter() - t
                self.n += 1
                self.wait += waited
                self.worst = max(self.worst, waited)
                return inner_exec(sql, args)

        journal._exec = _exec


async def in_tui(eng, seconds_cap: float) -> dict:
    """The engine inside the real app (it runs the engine in its worker thread); the table's
    cursor moved (up, then down) through the driver every 0.25 s, each press timed until the
    cursor has moved, plus one frame: what a person paging through the experiments waits."""
    import asyncio

    from textual import events as tev

    from cockpit.app import CockpitApp

    app = CockpitApp(eng, [], telemetry=None)
    lat: list[float] = []
    async with app.run_test(size=(160, 48)) as pilot:
        t0 = time.monotonic()
        app.table.focus()
        while app.stop_reason is None and time.monotonic() - t0 < seconds_cap:
            for key in ("up", "down"):
                row = app.table.cursor_row
                if app.table.row_count < 3 or (key == "up" and row == 0):
                    break
                t = time.perf_counter()
                app._driver.send_message(tev.Key(key, None))
                deadline = t + 5.0
                while app.table.cursor_row == row and time.perf_counter() < deadline:
                    await asyncio.sleep(0.001)
                await asyncio.sleep(1 / 60)  # the next frame paints it
                lat.append(time.perf_counter() - t)
            await asyncio.sleep(0.25)
        if app.stop_reason is None:
            eng.control.stop("now")
        while app.stop_reason is None:
            await pilot.pause(0.1)
    lat.sort()
    return {"presses": len(lat), "p50": statistics.median(lat) if lat else None,
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None, "max": lat[-1] if lat else None,
            "dropped": app.bridge.dropped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--experiments", type=int, default=500)
    ap.add_argument("--run-seconds", type=float, default=20.0)
    ap.add_argument("--agent-latency", type=float, default=5.0)
    ap.add_argument("--requests-per-proposal", type=float, default=6.0, help="API requests one proposal takes")
    ap.add_argument("--tui", action="store_true", help="run the session inside the real TUI, pressing keys")
    a = ap.parse_args(argv)

    ws = workspace()
    w = open_workspace(ws)
    devices = [Device(f"sim:{i}", "sim") for i in range(a.slots)]
    agent = SimAgent(a.agent_latency)
    eng, _ = build_session(w, agent, SessionOptions(tag="sim", max_experiments=a.experiments),
                           target=SimTarget(a.run_seconds), devices=devices)
    meter = JournalMeter(eng.journal)
    proc = psutil.Process()
    events = {"n": 0}
    starts: dict[int, list[float]] = {}
    ends: dict[int, float] = {}
    slot_of: dict[int, int] = {}
    rss: list[tuple[int, float]] = []

    def on(e) -> None:
        events["n"] += 1
        if isinstance(e, ev.ExperimentStarted):
            starts.setdefault(e.slot, []).append(time.monotonic())
            slot_of[e.n] = e.slot
        elif isinstance(e, ev.ExperimentFinished) and e.n in slot_of:
            ends[e.n] = time.monotonic()
            if len(ends) % 100 == 0:
                rss.append((len(ends), proc.memory_info().rss / 1e6))

    eng.subscribe(on)
    rss.append((0, proc.memory_info().rss / 1e6))
    t0 = time.monotonic()
    keys = None
    if a.tui:
        import asyncio

        keys = asyncio.run(in_tui(eng, 24 * 3600))
        reason = eng.journal.session(eng.session.id).stop_reason
    else:
        reason = eng.run()
    wall = time.monotonic() - t0
    rows = eng.journal.experiments(eng.session.id)
    finished = [e for e in rows if e.kind == "experiment" and e.status not in ("interrupted",)]
    # idle per slot: from a run's end to the next start on the same slot
    by_slot: dict[int, list[tuple[float, float]]] = {}
    for n, s in slot_of.items():
        if n in ends:
            by_slot.setdefault(s, []).append((ends[n], 0.0))
    gaps = []
    for s, st in starts.items():
        fin = sorted(t for n, t in ends.items() if slot_of[n] == s)
        for f in fin:
            nxt = [x for x in st if x >= f]
            if nxt:
                gaps.append(nxt[0] - f)
    runs = sum(len(v) for v in starts.values())
    steady = [t for v in starts.values() for t in v[1:]]
    span = (max(ends.values()) - min(min(v) for v in starts.values())) if ends else wall
    rate = len(ends) / span if span else 0.0
    ideal = a.slots / a.run_seconds
    print(f"{a.slots} slots, {a.experiments} experiments, runs of {a.run_seconds:g}s, agent {a.agent_latency:g}s: {reason}")
    print(f"  wall {wall:.0f}s, {runs} runs ({len(finished)} experiments finished); "
          f"rate {rate * 3600:.0f}/h of an ideal {ideal * 3600:.0f}/h ({100 * rate / ideal:.0f}%)")
    if gaps:
        q = statistics.quantiles(gaps, n=100) if len(gaps) >= 2 else [gaps[0]] * 99
        print(f"  idle per slot between runs: median {statistics.median(gaps):.2f}s, p99 {q[98]:.2f}s, max {max(gaps):.2f}s "
              f"({len(gaps)} gaps; {len(steady)} steady-state starts)")
    print(f"  journal: {meter.n} statements, {meter.n / wall:.0f}/s; lock wait total {meter.wait:.2f}s, worst {1e3 * meter.worst:.1f} ms")
    print(f"  events: {events['n']} ({events['n'] / wall:.0f}/s into the UI's bridge)")
    print("  memory (RSS, MB) by experiments finished: " + ", ".join(f"{k}: {v:.0f}" for k, v in rss))
    if keys is not None:
        print(f"  TUI: key -> screen p50 {1e3 * keys['p50']:.1f} ms, p99 {1e3 * keys['p99']:.1f} ms, max "
              f"{1e3 * keys['max']:.1f} ms over {keys['presses']} presses; events dropped by the bridge {keys['dropped']}")
    per_min = agent.calls / wall * 60
    print(f"  the agent: {agent.calls} proposals, {per_min:.1f}/min -> {per_min * a.requests_per_proposal:.0f} API "
          f"requests/min at {a.requests_per_proposal:g} requests per proposal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
