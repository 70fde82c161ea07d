"""UI benchmark: key-to-screen latency under an event flood, and the TUI's CPU use at a normal rate.

    python bench/ui.py [--rate 2000] [--seconds 10] [--normal-rate 20]

Latency is measured from the key entering the app's driver until the state line shows
the new state, plus one frame (1/60 s). A stand-in engine (same interface as engine.session.loop.Engine: control, subscribe, run) emits
RunProgress ticks, streamed agent deltas, tool calls, diffs and finished experiments from its own
thread at --rate events/s, into the real CockpitApp running headless. Meanwhile the benchmark
presses `p` (pause/resume: a state-line change) every 100 ms and times each press until the state line
shows the new state, with the screen refreshed. Prints p50/p99/max latency, events delivered,
and the process CPU percentage at the flood rate and at --normal-rate.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
from textual import events

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cockpit.app import CockpitApp  # noqa: E402
from engine import events as ev  # noqa: E402
from engine.control import Control  # noqa: E402


class FloodEngine:
    """Emits a realistic mix of engine events at a fixed rate until stopped."""

    def __init__(self, rate: float, program: Path):
        self.rate = rate
        self.control = Control()
        self._subs = []
        self.error = None
        self.target = SimpleNamespace(metric_name="val_bpb", direction="min")
        self.ws = SimpleNamespace(program_path=program)
        self.session = None
        self.journal = SimpleNamespace(total_cost=lambda sid: 0.0, session=lambda sid: None, experiments=lambda sid: [])
        self.sent = 0

    def subscribe(self, fn):
        self._subs.append(fn)

    def emit(self, e):
        for fn in self._subs:
            fn(e)
        self.sent += 1

    def run(self) -> str:
        n, step = 1, 0
        period = 1.0 / self.rate
        t_next = time.perf_counter()
        self.emit(ev.SessionStarted(session_id=0, tag="bench", branch="cockpit/bench", agent="flood", resumed=False,
                                    best_commit=None, best_metric=None, next_experiment=1))
        self.emit(ev.ExperimentStarted(n=n, commit="0" * 40))
        while self.control.stop_mode is None:
            step += 1
            k = step % 1000  # the mix of a busy night: ticks and streamed deltas, a finish every 1000
            if k < 700:
                self.emit(ev.RunProgress(n=n, step=step, loss=3.0 / (1 + step / 1e4), tokens_per_second=1.5e6, mfu=0.35,
                                         fraction=(step % 5000) / 5000, elapsed=step * period))
            elif k < 900:
                self.emit(ev.AgentThinking(n=n + 1, text="considering the learning rate schedule; "))
            elif k < 980:
                self.emit(ev.AgentText(n=n + 1, text="I will try a longer warmdown. "))
            elif k < 990:
                self.emit(ev.ToolCalled(n=n + 1, name="edit_file", summary="trainer/train.py"))
            elif k < 999:
                self.emit(ev.DiffUpdated(n=n + 1, diff="--- a/trainer/train.py\n+++ b/trainer/train.py\n-WARMDOWN_FRAC = 0.5\n+WARMDOWN_FRAC = 0.6\n"))
            else:
                self.emit(ev.ExperimentFinished(n=n, commit=f"{n:040x}", status="discard" if n % 3 else "keep", metric=1.0 - n * 1e-4,
                                                delta=-1e-4, confidence=1.2, best_metric=1.0 - n * 1e-4, description=f"experiment {n}"))
                n += 1
                self.emit(ev.ExperimentStarted(n=n, commit=f"{n:040x}"))
            t_next += period
            delay = t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        return "stopped"


class FloodView:
    """The read model (engine/store/view.py's surface) of a session with no journal: the app takes every
    row from the events."""

    def __init__(self, program: Path):
        self.program_path = program
        self.state = program.parent / ".cockpit"

    def bind(self, sid):
        pass

    def session(self):
        return None

    def history(self):
        return []

    def experiment(self, n):
        return None

    def curve(self, n):
        return []

    def cost(self):
        return 0.0


async def measure(rate: float, seconds: float, presses: bool) -> dict:
    program = Path(tempfile.mkdtemp()) / "program.md"
    program.write_text("# program\n")
    eng = FloodEngine(rate, program)
    app = CockpitApp(eng, [], telemetry=None, view=FloodView(program))
    lat = []
    proc = psutil.Process()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(1.0)
        c0, t0, s0 = proc.cpu_times(), time.perf_counter(), eng.sent
        while time.perf_counter() - t0 < seconds:
            if presses:
                want = "" if app.control.paused else "paus"
                t = time.perf_counter()
                # The key enters through the driver exactly as a keystroke does (pilot.press would
                # also wait for the whole process to go idle, which a flood never allows).
                app._driver.send_message(events.Key("p", "p"))
                deadline = t + 5.0
                while ("paus" in str(app.state_bar.content)) != bool(want) and time.perf_counter() < deadline:
                    await asyncio.sleep(0.001)
                await asyncio.sleep(1 / 60)  # the next frame paints it (Textual refreshes at 60 fps)
                lat.append(time.perf_counter() - t)
            await asyncio.sleep(0.1)
        c1, t1, s1 = proc.cpu_times(), time.perf_counter(), eng.sent
        eng.control.stop("now")
        await pilot.pause(0.2)
    cpu = 100 * ((c1.user - c0.user) + (c1.system - c0.system)) / (t1 - t0)
    out = {"rate": rate, "events": s1 - s0, "events_per_s": (s1 - s0) / (t1 - t0), "cpu_percent": cpu,
           "dropped": app.bridge.dropped}
    if lat:
        lat.sort()
        out.update(p50_ms=1e3 * statistics.median(lat), p99_ms=1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                   max_ms=1e3 * lat[-1], presses=len(lat))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--normal-rate", type=float, default=5)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    flood = asyncio.run(measure(a.rate, a.seconds, presses=True))
    normal = asyncio.run(measure(a.normal_rate, a.seconds, presses=False))
    print(f"flood  {flood['events_per_s']:.0f} events/s: key->screen p50 {flood['p50_ms']:.1f} ms, p99 {flood['p99_ms']:.1f} ms, "
          f"max {flood['max_ms']:.1f} ms over {flood['presses']} presses; CPU {flood['cpu_percent']:.0f}%")
    print(f"normal {normal['events_per_s']:.0f} events/s: CPU {normal['cpu_percent']:.1f}%")
    return 0 if flood["p99_ms"] < 100 else 1


if __name__ == "__main__":
    raise SystemExit(main())
