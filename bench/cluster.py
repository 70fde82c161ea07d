"""What running a slot through Ray costs: the same tuner session on the local slot and through a
one-node Ray cluster of this machine, in one call, with the per-run overhead of each.

    python bench/cluster.py [--budget 15] [--experiments 3] [--address auto] [--cache-dir DIR]

A Ray cluster must be running here (`ray start --head`); the bundled trainer, the built-in corpus
(prepared if the cache lacks it) and `--agent tuner` (no API). For each run, the overhead is the
head's wall time from ExperimentStarted to ExperimentFinished less the runner's own measure of
the run (`total_seconds`: from "go" to the verdict, on the node that ran it): the checkout, the
files sent, the log brought back, the polls. The difference between the two modes is what Ray
adds per run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.store.journal import Journal  # noqa: E402


def cockpit(*args: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cockpit", *args], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env)


def session(ws: Path, cache: str, budget: float, n: int, extra: list[str]) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("ANTHROPIC_API_KEY", None)
    tag = "ray" if extra else "local"
    p = cockpit("--cache-dir", cache, "run", "--headless", "--json", "--agent", "tuner", "--workspace", str(ws),
                "--budget", str(budget), "--max-experiments", str(n), "--tag", tag, *extra, env=env)
    started, finished, devices = {}, {}, {}
    for line in p.stdout:
        e = json.loads(line)
        t = time.monotonic()
        if e["type"] == "ExperimentStarted":
            started[e["n"]], devices[e["n"]] = t, e.get("device")
        elif e["type"] == "ExperimentFinished":
            finished[e["n"]] = t
        elif e["type"] in ("Notice", "Alert", "Error"):
            print(f"  [{tag}] {e['text']}", flush=True)
    p.wait()
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag(tag)
    rows = {e.n: e for e in j.experiments(s.id)}
    over = []
    for k, t in finished.items():
        r = rows.get(k)
        if k in started and r is not None and r.total_seconds is not None and r.status not in ("interrupted", "vetoed"):
            over.append((k, r.status, t - started[k], r.total_seconds, (t - started[k]) - r.total_seconds, devices[k]))
    return {"rc": p.returncode, "runs": over, "stop": s.stop_reason}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=15.0)
    ap.add_argument("--experiments", type=int, default=3)
    ap.add_argument("--address", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    a = ap.parse_args()
    cache = a.cache_dir or tempfile.mkdtemp(prefix="cockpit-cache-")
    subprocess.run([sys.executable, "-m", "cockpit", "--cache-dir", cache, "prepare", "--quiet"], cwd=ROOT, check=True)
    results = {}
    for mode, extra in (("local", []), ("ray", ["--cluster", "ray", "--address", a.address])):
        ws = Path(tempfile.mkdtemp()) / "ws"
        subprocess.run([sys.executable, "-m", "cockpit", "init", str(ws)], cwd=ROOT, check=True, capture_output=True)
        toml = ws / "cockpit.toml"
        toml.write_text(toml.read_text().replace("baseline_runs = 2", "baseline_runs = 1"))
        subprocess.run(["git", "commit", "-qam", "one baseline run"], cwd=ws, check=True)
        t0 = time.monotonic()
        r = session(ws, cache, a.budget, a.experiments, extra)
        r["wall"] = time.monotonic() - t0
        results[mode] = r
        print(f"{mode}: exit {r['rc']}, {r['stop']}, {r['wall']:.0f} s in all")
        for k, status, wall, total, over, dev in r["runs"]:
            print(f"  #{k} {status:8s} on {dev}: head {wall:.2f} s, runner {total:.2f} s, overhead {over:.2f} s")
    med = {m: statistics.median([x[4] for x in r["runs"]]) for m, r in results.items() if r["runs"]}
    if len(med) == 2:
        print(f"per-run overhead, median: local {med['local']:.2f} s, ray {med['ray']:.2f} s; "
              f"Ray adds {med['ray'] - med['local']:.2f} s per run")
    if a.out:
        Path(a.out).write_text(json.dumps({"results": results, "median_overhead": med}, indent=1))
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
