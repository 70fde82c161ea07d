"""Loop benchmark: the duty cycle (training seconds / wall-clock seconds) of a real session.

    python bench/loop.py [--budget S] [--experiments N] [--agent-latency S] [--device cpu|cuda|auto] [--cache-dir DIR]

Runs the research loop headless on a fresh workspace (the bundled trainer, the offline tuner with
an injected think time standing in for a remote model), then prints the session's duty cycle and
the time per phase, read back from the journal exactly as `cockpit status` does. CPU smoke:
`--budget 3 --experiments 3 --agent-latency 1`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cockpit.cli import _profile, ensure_prepared  # noqa: E402
from engine.agents.tuner import Tuner  # noqa: E402
from engine.journal import duty_cycle  # noqa: E402
from engine.loop import Engine, Limits  # noqa: E402
from engine.targets import GptTarget  # noqa: E402
from engine.workspace import init_workspace, open_workspace  # noqa: E402
from harness.paths import cache_root  # noqa: E402


class SlowTuner(Tuner):
    """The tuner, thinking for a fixed time first (a model's latency)."""

    def __init__(self, latency: float):
        super().__init__()
        self.latency = latency

    def propose(self, ctx, tools, emit):
        time.sleep(self.latency)
        return super().propose(ctx, tools, emit)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--experiments", type=int, default=3)
    ap.add_argument("--agent-latency", type=float, default=1.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args()

    cache = cache_root(a.cache_dir)
    dataset = ensure_prepared(cache)
    ws = Path(tempfile.mkdtemp()) / "bench"
    init_workspace(ws)
    w = open_workspace(ws)
    prof = _profile(a.device, a.budget)
    engine = Engine(w, SlowTuner(a.agent_latency), GptTarget(w.root, w.config.target, cache, dataset, prof),
                    tag="bench", limits=Limits(max_experiments=a.experiments))
    reason = engine.run()
    exps = [e for e in engine.journal.experiments(engine.session.id)]
    d = duty_cycle([e for e in exps if e.kind == "experiment"])
    print(f"session: {reason}; {len(exps)} runs ({sum(e.kind == 'baseline' for e in exps)} baseline) on {prof.name}, "
          f"budget {prof.time_budget:g}s, agent latency {a.agent_latency:g}s")
    print("experiments only: " + d.summary())
    print("whole session:    " + duty_cycle(exps).summary())
    return 0 if engine.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
