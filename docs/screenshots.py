"""Screenshots of a real CPU session for the README: the bundled GPT trainer on the built-in
corpus, the offline tuner, a short budget. Writes docs/cockpit-160x48.svg and docs/cockpit-80x24.svg.

    python docs/screenshots.py [--budget 8] [--experiments 4] [--devices cpu:2] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cockpit.app import CockpitApp  # noqa: E402
from cockpit.cli import ensure_prepared  # noqa: E402
from engine.agents.tuner import Tuner  # noqa: E402
from engine.control import Control  # noqa: E402
from engine.session.loop import Engine, Limits  # noqa: E402
from engine.run.targets import GptTarget  # noqa: E402
from engine.store.workspace import init_workspace, open_workspace  # noqa: E402
from harness.paths import cache_root  # noqa: E402
from harness.profiles import CPU  # noqa: E402


async def shoot(budget: float, experiments: int, devices: str, cache_dir: str | None) -> None:
    from engine.run.slots import resolve

    ws = Path(tempfile.mkdtemp()) / "research"
    init_workspace(ws)
    cache = cache_root(cache_dir)
    dataset = ensure_prepared(cache)
    w = open_workspace(ws)
    slots, _ = resolve(devices, False)
    engine = Engine(w, Tuner(), GptTarget(w.root, w.config.target, cache, dataset, CPU.with_budget(budget)),
                    control=Control(), tag="demo", limits=Limits(max_experiments=experiments), devices=slots)
    app = CockpitApp(engine, ["no API key: offline tuner", "no GPU: CPU profile"])
    async with app.run_test(size=(160, 48)) as pilot:
        done = 0
        while app.stop_reason is None:
            await pilot.pause(0.2)
            finished = sum(1 for r in app.table.data_rows.values() if r["metric"] is not None)
            training = [r for r in app.run_panel.runs.values() if r["loss"] is not None]
            if finished >= len(slots) + experiments - len(slots) and training and not done:
                await pilot.pause(2.0)
                (ROOT / "docs" / "cockpit-160x48.svg").write_text(app.export_screenshot(title="cockpit"))
                await pilot.resize_terminal(80, 24)
                await pilot.pause(0.5)
                (ROOT / "docs" / "cockpit-80x24.svg").write_text(app.export_screenshot(title="cockpit"))
                done = 1
                app.control.stop("now")
    if not done:
        raise SystemExit(f"the session stopped before the screenshot: {app.stop_reason}")
    print("wrote docs/cockpit-160x48.svg and docs/cockpit-80x24.svg")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=8.0)
    ap.add_argument("--experiments", type=int, default=4)
    ap.add_argument("--devices", default="cpu:2")
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args()
    asyncio.run(shoot(a.budget, a.experiments, a.devices, a.cache_dir))
