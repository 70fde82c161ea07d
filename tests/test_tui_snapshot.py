"""Snapshot tests of the main screen at 80x24 and 160x48: a scripted engine (a fixed stream of
events, no clock in what is drawn) feeds the real app; the screen's text must match the
committed snapshot in tests/snapshots/. Set COCKPIT_UPDATE_SNAPSHOTS=1 to rewrite them after an
intended change, and review the diff."""

from __future__ import annotations

import html
import os
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from cockpit.app import CockpitApp
from engine import events as ev
from engine.control import Control
from engine.gpu import Sample

SNAPSHOTS = Path(__file__).parent / "snapshots"
DIFF = """diff --git a/trainer/train.py b/trainer/train.py
--- a/trainer/train.py
+++ b/trainer/train.py
@@ -41,7 +41,7 @@
-WARMDOWN_FRAC = 0.5                          # linear LR decay over the last part of the budget
+WARMDOWN_FRAC = 0.6                          # linear LR decay over the last part of the budget
"""


def script():
    yield ev.SessionStarted(session_id=1, tag="nov27", branch="cockpit/nov27", agent="claude", resumed=False,
                            best_commit="a" * 40, best_metric=None, next_experiment=1)
    for n, metric in ((1, 0.9981), (2, 0.9979)):
        yield ev.ExperimentProposed(n=n, description=f"baseline {n}/2", diff_stat="", kind="baseline")
        yield ev.ExperimentStarted(n=n, commit=f"{n:07x}" + "0" * 33, kind="baseline")
        yield ev.ExperimentFinished(n=n, commit=f"{n:07x}" + "0" * 33, status="keep", metric=metric, delta=None, confidence=None,
                                    best_metric=None, description=f"baseline {n}/2", kind="baseline")
    rows = [(3, "keep", 0.9911, -0.0069, 4.9, "MATRIX_LR 0.04 -> 0.05: faster early progress"),
            (4, "discard", 0.9923, 0.0012, -0.9, "HEAD_DIM 128 -> 64"),
            (5, "crash", None, None, None, "value embeddings on every layer"),
            (6, "keep", 0.9874, -0.0037, 2.6, "WARMDOWN_FRAC 0.5 -> 0.7")]
    best = 0.998
    for n, status, metric, delta, conf, desc in rows:
        yield ev.ExperimentProposed(n=n, description=desc, diff_stat="1 file changed")
        yield ev.ExperimentStarted(n=n, commit=f"{n:07x}" + "0" * 33)
        if status == "keep":
            best = metric
            yield ev.BestChanged(n=n, commit=f"{n:07x}" + "0" * 33, metric=metric)
        yield ev.ExperimentFinished(n=n, commit=f"{n:07x}" + "0" * 33, status=status, metric=metric, delta=delta,
                                    confidence=conf, best_metric=best, description=desc,
                                    reason="CUDA out of memory" if status == "crash" else None)
    yield ev.AgentThinking(n=7, text="The warmdown change helped; a longer one may help more, but the LR floor matters too.")
    yield ev.AgentText(n=7, text="Trying WARMDOWN_FRAC 0.7 -> 0.8.")
    yield ev.ToolCalled(n=7, name="edit_file", summary="trainer/train.py")
    yield ev.DiffUpdated(n=7, diff=DIFF)
    yield ev.ExperimentProposed(n=7, description="WARMDOWN_FRAC 0.7 -> 0.8", diff_stat="1 file changed")
    yield ev.ExperimentStarted(n=7, commit="7" * 40)
    yield ev.RunProgress(n=7, step=180, loss=0.7712, tokens_per_second=1.53e6, mfu=0.35, fraction=0.5, elapsed=150.0)


class ScriptedEngine:
    def __init__(self, program: Path):
        self.control = Control()
        self.error = None
        self._subs = []
        self.target = SimpleNamespace(metric_name="val_bpb", direction="min")
        self.ws = SimpleNamespace(program_path=program)
        self.session = None
        self.journal = SimpleNamespace(total_cost=lambda sid: 1.23, session=lambda sid: SimpleNamespace(best_n=None, best_metric=None),
                                       experiments=lambda sid: [])
        self.done = threading.Event()

    def subscribe(self, fn):
        self._subs.append(fn)

    def run(self):
        for e in script():
            for fn in self._subs:
                fn(e)
        self.done.set()
        while self.control.stop_mode is None:
            self.control.cancel_run.wait(0.05)
        return "stopped"


class FixedTelemetry:
    """One device sample, however often the UI's timer asks (a busy machine asks fewer times)."""

    kind = "gpu"

    def __init__(self):
        self.given = False

    def sample(self):
        if self.given:
            return []
        self.given = True
        return [Sample("GPU0", 97.0, 24.3, 79.6, 61.0, 512.0)]


def screen_text(svg: str) -> str:
    lines: dict[float, list[str]] = {}
    for m in re.finditer(r'<text[^>]*y="([0-9.]+)"[^>]*>(.*?)</text>', svg):
        lines.setdefault(float(m.group(1)), []).append(html.unescape(m.group(2)).replace("\xa0", " "))
    return "\n".join("".join(parts).rstrip() for _, parts in sorted(lines.items())) + "\n"


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_main_screen_snapshot(tmp_path, size):
    program = tmp_path / "program.md"
    program.write_text("# program\n")
    engine = ScriptedEngine(program)
    app = CockpitApp(engine, ["ANTHROPIC_API_KEY is set: claude"], telemetry=FixedTelemetry())
    async with app.run_test(size=size) as pilot:
        while not engine.done.is_set() or app.bridge._buf or app._render_scheduled:
            await pilot.pause(0.05)
        # the device sample, then a frame: waited for, not timed, so a busy machine renders the same screen
        while "GPU0" not in app.gpu.lines:
            await pilot.pause(0.05)
        await pilot.pause(0.5)
        text = screen_text(app.export_screenshot())
        engine.control.stop("now")
        await pilot.pause(0.2)
    name = SNAPSHOTS / f"main-{size[0]}x{size[1]}.txt"
    if os.environ.get("COCKPIT_UPDATE_SNAPSHOTS") or not name.exists():
        name.write_text(text)
        if not os.environ.get("COCKPIT_UPDATE_SNAPSHOTS"):
            pytest.fail(f"wrote a new snapshot {name.name}; review and commit it")
    assert text == name.read_text()
