"""Verdicts that do not depend on what else the machine is doing: unchanged code on a busy
machine may score worse, but it is never `invalid` or `timeout`, and a session never stops
because the machine was busy. Real processes: CPU-bound programs beside a real session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager

from engine.store.journal import Journal
from test_engine import SLOW, cli, command_workspace

HOG = "while True: pass"


@contextmanager
def busy(n: int | None = None):
    """n CPU-bound processes (default: one per core), killed on exit."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(n or os.cpu_count() or 2)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_a_baseline_and_three_experiments_on_a_busy_machine_are_judged_not_refused(tmp_path, tiny_cache):
    ws = tmp_path / "ws"
    assert cli("init", ws).returncode == 0
    with busy():
        r = cli("--cache-dir", tiny_cache, "run", "--headless", "--json", "--workspace", ws, "--agent", "tuner",
                "--budget", "4", "--device", "cpu", "--max-experiments", "3", "--tag", "busy", timeout=SLOW)
    assert r.returncode == 0, r.stderr + r.stdout[-3000:]
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    rows = j.experiments(j.session_by_tag("busy").id)
    statuses = [e.status for e in rows]
    assert [e.status for e in rows if e.kind == "baseline"] == ["keep", "keep"], [(e.status, e.reason) for e in rows]
    assert len([e for e in rows if e.kind == "experiment"]) == 3
    assert not {"invalid", "timeout"} & set(statuses), [(e.n, e.status, e.reason) for e in rows]
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert not any(e["type"] == "Error" for e in events)


SLOW_ONCE = """
import os, time
marker = os.path.join(".cockpit", "slowed-once")
if not os.path.exists(marker):  # the first run meets a busy machine
    os.makedirs(".cockpit", exist_ok=True)
    open(marker, "w").close()
    time.sleep(6)
"""


def test_a_baseline_that_breaks_a_timing_rule_is_run_again_with_a_notice(tmp_path):
    files = {"value.py": "VALUE = 10.0\n", "slow_once.py": SLOW_ONCE, "measure.py": "import value\nprint(f'metric: {value.VALUE}')\n"}
    ws = command_workspace(tmp_path, files, ["value.py"], "python3 slow_once.py", "python3 measure.py", baseline_runs=1)
    toml = (ws / "cockpit.toml").read_text().replace("budget = 30", "budget = 2")
    (ws / "cockpit.toml").write_text(toml)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "budget 2"], cwd=ws, check=True)
    r = cli("run", "--headless", "--workspace", ws, "--agent", "tuner", "--tag", "t", "--max-experiments", "1", timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "broke a timing rule" in r.stdout and "running it again (1/3)" in r.stdout
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    base = [e for e in j.experiments(j.session_by_tag("t").id) if e.kind == "baseline"]
    assert [e.status for e in base] == ["timeout", "keep"]


NOISY_MEASURE = """
import os
path = os.path.join(os.environ["NOISY_STATE"], "measured")  # outside the checkout: each slot runs in its own
n = int(open(path).read()) if os.path.exists(path) else 0
open(path, "w").write(str(n + 1))
print(f"metric: {10.0 + 2.0 * (n % 2)}")
"""


def test_noise_too_high_to_keep_small_gains_is_said_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISY_STATE", str(tmp_path))
    files = {"value.py": "VALUE = 10.0\n", "measure.py": NOISY_MEASURE}
    ws = command_workspace(tmp_path, files, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=2)
    r = cli("run", "--headless", "--workspace", ws, "--agent", "tuner", "--tag", "t", "--max-experiments", "0", timeout=300)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "warning: the noise is high" in x)
    assert "1.414" in line and "25.7%" in line and "--budget" in line and "baseline_runs" in line
