"""Loop benchmark: the duty cycle (training seconds / wall-clock seconds) of a real session.

    python bench/loop.py [--budget S] [--experiments N] [--agent-latency S] [--device cpu|cuda|auto]
                         [--cache-dir DIR] [--baseline-runs N] [--no-pipeline] [--only REGEX]

Runs the research loop headless on a fresh workspace (the bundled trainer, the offline tuner with
an injected think time standing in for a remote model), then prints each run's phases, the
session's duty cycle read back from the journal exactly as `cockpit status` does, and what the
measured per-run overhead gives at other budgets. --only restricts the tuner to constants whose
name matches (e.g. 'LR|FRAC|MOMENTUM|BETAS|DECAY': changes that keep the shapes, so the compile
cache is warm); --no-pipeline makes the agent wait for each run (the one-at-a-time baseline).
CPU smoke: `--budget 3 --experiments 3 --agent-latency 1`.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cockpit.cli import _profile, ensure_prepared  # noqa: E402
from engine.agents.tuner import Tuner  # noqa: E402
from engine.store.journal import duty_cycle  # noqa: E402
from engine.build import SessionOptions, build_session  # noqa: E402
from engine.store.workspace import init_workspace, open_workspace  # noqa: E402
from harness.paths import cache_root  # noqa: E402


class SlowTuner(Tuner):
    """The tuner, thinking for a fixed time first (a model's latency), optionally limited to some
    constants. Like a remote model, several of its proposals think at once."""

    concurrent = True

    def __init__(self, latency: float, only: str | None = None):
        super().__init__()
        self.latency = latency
        self.only = re.compile(only) if only else None

    def propose(self, ctx, tools, emit):
        time.sleep(self.latency)
        return super().propose(ctx, tools, emit)

    def _constants(self, ctx, tools):
        texts, constants = Tuner._constants(ctx, tools)
        if self.only is not None:
            constants = [c for c in constants if self.only.search(c.name)]
        return texts, constants


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--experiments", type=int, default=3)
    ap.add_argument("--agent-latency", type=float, default=1.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--baseline-runs", type=int, default=1)
    ap.add_argument("--no-pipeline", action="store_true")
    ap.add_argument("--only", default=None, help="regex: the tuner moves only constants whose name matches")
    a = ap.parse_args()

    cache = cache_root(a.cache_dir)
    dataset = ensure_prepared(cache)
    ws = Path(tempfile.mkdtemp()) / "bench"
    init_workspace(ws)
    toml = (ws / "cockpit.toml").read_text().replace("baseline_runs = 2", f"baseline_runs = {a.baseline_runs}")
    if a.no_pipeline:
        toml += "pipeline = false\n"  # the [agent] table is the file's last
    (ws / "cockpit.toml").write_text(toml)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", "bench settings"],
                   cwd=ws, check=True)
    w = open_workspace(ws)
    prof = _profile(a.device, a.budget)
    engine, _ = build_session(w, SlowTuner(a.agent_latency, a.only),
                              SessionOptions(tag="bench", cache=cache, dataset=dataset, profile=prof,
                                             max_experiments=a.experiments), devices=[])  # one slot
    reason = engine.run()
    exps = list(engine.journal.experiments(engine.session.id))
    ran = [e for e in exps if e.run_started]
    print(f"session: {reason}; {len(ran)} runs ({sum(e.kind == 'baseline' for e in ran)} baseline) on {prof.name}, "
          f"budget {prof.time_budget:g}s, agent latency {a.agent_latency:g}s, "
          f"{'one at a time' if a.no_pipeline else 'pipelined'}")
    print(f"{'#':>3} {'status':>11} {'idle_before':>11} {'startup':>7} {'train':>7} {'eval':>6} {'total':>7} {'agent':>6}  description")
    prev_end = None
    fmt = lambda v, f=".1f": "-" if v is None else format(v, f)  # noqa: E731
    for e in ran:
        idle = None if prev_end is None else e.run_started - prev_end
        print(f"{e.n:>3} {e.status:>11} {fmt(idle, '.2f'):>11} {fmt(e.startup_seconds):>7} {fmt(e.training_seconds):>7} "
              f"{fmt(e.eval_seconds):>6} {fmt(e.total_seconds):>7} {fmt(e.propose_seconds):>6}  {(e.description or '')[:50]}")
        prev_end = e.finished
    d = duty_cycle([e for e in exps if e.kind == "experiment"])
    print("experiments only: " + d.summary())
    print("whole session:    " + duty_cycle(exps).summary())
    if d.experiments:
        overhead = (d.wall - d.training) / d.experiments
        proj = ", ".join(f"{t:g}s -> {100 * t / (t + overhead):.1f}%" for t in (60, 120, 300, 600))
        print(f"per-run overhead {overhead:.1f}s; duty cycle at other budgets with the same overhead: {proj}")
    return 0 if engine.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
