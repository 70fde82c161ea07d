"""The benchmarks' CPU smoke modes run in CI: each one runs end to end and prints its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(tiny_cache, *args):
    env = dict(os.environ, COCKPIT_CACHE=str(tiny_cache))
    env.pop("ANTHROPIC_API_KEY", None)
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)  # catches a hang only


def test_trainer_bench_smoke(tiny_cache, tmp_path):
    # the bench is the subject, not a trainer: the tests' light one (the bundled trainer is trained by
    # test_runner and test_engine), and never the clone's working copy, which a session there edits
    from conftest import LIGHT_TRAINER

    script = tmp_path / "train.py"
    script.write_text(LIGHT_TRAINER)
    r = bench(tiny_cache, "bench/trainer.py", "--no-prepare", "--budget", "1.5", "--runs", "1", "--device", "cpu",
              "--script", script)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "val_bpb" in r.stdout and "outside" in r.stdout


def test_loop_bench_smoke(tiny_cache):
    r = bench(tiny_cache, "bench/loop.py", "--budget", "1.5", "--experiments", "1", "--agent-latency", "0.2", "--device", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "experiments only: duty cycle" in r.stdout


def test_ui_bench_smoke(tiny_cache):
    r = bench(tiny_cache, "bench/ui.py", "--rate", "500", "--seconds", "2", "--normal-rate", "5")
    assert "key->screen p50" in r.stdout and "normal" in r.stdout, r.stdout + r.stderr
