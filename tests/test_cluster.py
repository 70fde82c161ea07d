"""Slots on a Ray cluster (engine/run/cluster.py), on Ray's own multi-node test cluster on this
machine: two nodes (raylets) with their own caches, CPU slots, the real cockpit CLI as the head's
process (the Ray driver), real training runs on each node through the harness runner."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine.store.journal import Journal
from engine.numbers import never_ran

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from test_engine import cli  # noqa: E402

NODE = dict(num_cpus=1, object_store_memory=80 << 20)
SECRET = "cockpit-test-secret-" + os.urandom(8).hex()  # the API key the head has; it must never travel


@pytest.fixture
def cluster(tmp_path, tiny_cache):
    """A head node whose cache holds the prepared data (the same cache as cockpit's), and a
    second node whose cache is empty."""
    empty = tmp_path / "node2-cache"
    empty.mkdir()
    c = Cluster(initialize_head=True, head_node_args=dict(NODE, include_dashboard=False,
                                                          env_vars={"COCKPIT_CACHE": str(tiny_cache)}))
    node2 = c.add_node(**NODE, env_vars={"COCKPIT_CACHE": str(empty)})
    c.wait_for_nodes()
    yield c, node2, empty
    c.shutdown()


def _run(ws: Path, cache: Path, address: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", ANTHROPIC_API_KEY=SECRET)
    cmd = [sys.executable, "-m", "cockpit", "--cache-dir", str(cache), "run", "--headless", "--json", "--agent", "tuner",
           "--workspace", str(ws), "--cluster", "ray", "--address", address, "--devices", "cpu:1", *extra]
    # (not run from the repository: Ray puts the driver's working directory first on the workers'
    # import path, which would hide what a node has installed)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ws.parent)


def _training_processes(base: Path) -> list[psutil.Process]:
    """The training and evaluation processes of runs on the nodes (their folders are in the nodes' caches)."""
    out = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if any("harness" in a for a in p.info["cmdline"] or []) and str(base) in (p.info["cwd"] or "") + " ".join(
                    p.info["cmdline"] or []):
                out.append(p)
        except (psutil.Error, TypeError):
            pass
    return out


def test_a_session_runs_on_both_nodes_sends_the_data_once_and_survives_losing_a_node(tmp_path, tiny_cache, cluster):
    from conftest import use_light_trainer

    c, node2, empty = cluster
    ws = tmp_path / "ws"
    assert cli("init", ws).returncode == 0
    use_light_trainer(ws)  # the cluster is the subject: a light trainer (seconds per run, not tens)
    proc = _run(ws, tiny_cache, c.address, "--budget", "3", "--max-experiments", "6", "--tag", "ray")
    events, devices, finished, removed, lost_n = [], {}, set(), False, None
    second = f"~{node2.node_id[:3]}"  # the second node's name ends so (nodes that share a machine)
    for line in proc.stdout:  # (kept cheap per line: the stream must not lag behind the runs)
        e = json.loads(line)
        events.append(e)
        if e["type"] == "ExperimentStarted":
            devices[e["n"]] = e["device"].split("/")[0]
        elif e["type"] == "ExperimentFinished":
            finished.add(e["n"])
        # once experiments have finished on both nodes, the second node goes early in one of its runs
        elif (not removed and e["type"] == "RunProgress" and e["fraction"] < 0.5 and e["n"] not in finished
              and (devices.get(e["n"]) or "").endswith(second) and len({devices.get(n) for n in finished}) == 2):
            c.remove_node(node2)
            removed, lost_n = True, e["n"]
    proc.wait(timeout=600)
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert removed, "no run of the second node was seen"
    text = "\n".join(x.get("text", "") for x in events if x["type"] in ("Notice", "Alert"))
    assert "sent once through Ray's object store" in text
    # the second node's cache received the dataset, once, and it verifies
    from harness.dataset import open_dataset, current_dataset

    key = current_dataset(tiny_cache).folder.name
    received = empty / "datasets" / key
    open_dataset(received).verify()
    assert sorted(p.name for p in (empty / "datasets").iterdir() if not p.name.startswith(".")) == [key]

    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("ray")
    rows = {e.n: e for e in j.experiments(s.id)}
    assert rows[lost_n].status == "interrupted" and "node lost" in rows[lost_n].reason
    nodes = {r.device.split("/")[0] for r in rows.values() if r.device}
    assert len(nodes) == 2  # both nodes ran experiments
    after = [r for r in rows.values() if r.n > lost_n and r.device and r.run_started > rows[lost_n].run_started]
    assert after and not any(r.device.split("/")[0].endswith(second) for r in after)  # the rest ran on the head
    assert s.status == "stopped" and "max-experiments" in s.stop_reason
    experiments = [r for r in rows.values() if r.kind == "experiment"]
    assert len(experiments) == 6 and not any(r.status in ("running", "proposing") for r in rows.values())
    # results.tsv, the refs and the branch agree with the journal
    with open(ws / ".cockpit" / "results.tsv") as f:
        tsv = list(csv.DictReader(f, delimiter="\t"))
    assert len(tsv) == len([r for r in rows.values() if r.commit_sha and not never_ran(r)])
    assert {t["status"] for t in tsv} <= {r.status for r in rows.values()}
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname) %(objectname)", f"refs/cockpit/{s.tag}/"],
                          cwd=ws, capture_output=True, text=True).stdout.split("\n")
    pinned = {int(line.split()[0].rsplit("/", 1)[1]): line.split()[1] for line in refs if line}
    assert all(pinned[r.n] == r.commit_sha for r in experiments if r.commit_sha)
    head = subprocess.run(["git", "rev-parse", s.branch], cwd=ws, capture_output=True, text=True).stdout.strip()
    assert head == s.best_commit
    # every run's full log is on the head, under .cockpit/runs/, as locally; the API key never travelled
    for r in rows.values():
        if r.status in ("keep", "discard"):
            log = Path(r.log_path)
            assert log.is_relative_to(ws / ".cockpit" / "runs") and "harness: profile cpu" in log.read_text()
        if r.log_path and Path(r.log_path).exists():
            assert SECRET not in Path(r.log_path).read_text(errors="replace")


def test_without_a_reachable_cluster_or_without_ray_it_is_one_line(tmp_path, tiny_cache, monkeypatch, capsys):
    ws = tmp_path / "ws"
    assert cli("init", ws).returncode == 0
    before = subprocess.run(["git", "for-each-ref"], cwd=ws, capture_output=True, text=True).stdout
    r = cli("--cache-dir", tiny_cache, "run", "--headless", "--workspace", ws, "--cluster", "ray",
            "--address", "127.0.0.1:9", "--agent", "tuner", timeout=180)
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "no Ray cluster is reachable at 127.0.0.1:9" in lines[0], r.stderr
    assert not (ws / ".cockpit" / "journal.sqlite").exists() or Journal(ws / ".cockpit" / "journal.sqlite").latest_session() is None
    assert subprocess.run(["git", "for-each-ref"], cwd=ws, capture_output=True, text=True).stdout == before
    # without Ray installed: how to install it, in one line
    from cockpit.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    assert main(["--cache-dir", str(tiny_cache), "run", "--headless", "--workspace", str(ws), "--cluster", "ray",
                 "--agent", "tuner"]) != 0
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and "pip install -e '.[ray]'" in err[0]


def test_a_veto_kills_the_remote_run_at_once_and_a_node_that_joins_adds_its_slot(tmp_path, tiny_cache):
    """In this process: the engine as the Ray driver, one node at first; a veto of its run, then a
    second node joins and takes the next baseline."""
    from engine import events as ev
    from engine.agents.tuner import Tuner
    from engine.run.cluster import Cluster as RayCluster
    from engine.control import Control
    from engine.session.loop import Engine, Limits
    from engine.run.targets import GptTarget
    from engine.store.workspace import init_workspace, open_workspace
    from harness.dataset import current_dataset
    from harness.profiles import CPU

    c = Cluster(initialize_head=True, head_node_args=dict(NODE, include_dashboard=False,
                                                          env_vars={"COCKPIT_CACHE": str(tiny_cache)}))
    try:
        import threading

        from conftest import use_light_trainer

        ws = tmp_path / "ws"
        use_light_trainer(init_workspace(ws))  # the veto and the join are the subject: a light trainer
        w = open_workspace(ws)
        target = GptTarget(w.root, w.config.target, tiny_cache, current_dataset(tiny_cache), CPU.with_budget(60))
        rc = RayCluster(c.address, "cpu:1", target)
        control = Control()
        eng = Engine(w, Tuner(), target, control=control, tag="j", limits=Limits(max_experiments=0), cluster=rc)
        seen: dict = {"events": []}
        finished, second_slot = threading.Event(), threading.Event()

        def on_event(e):
            seen["events"].append((time.monotonic(), e))
            if isinstance(e, ev.RunProgress) and e.n == 1 and "veto" not in seen:
                seen["veto"] = time.monotonic()
                control.veto("diverging", 1)
            if isinstance(e, ev.ExperimentFinished) and e.n == 1:
                seen["finished"] = (time.monotonic(), e.status)
                finished.set()
            if isinstance(e, ev.ExperimentStarted) and e.slot == 1:
                second_slot.set()

        def stopped(e):  # the session's end wakes the waits below too
            if isinstance(e, ev.SessionStopped):
                finished.set()
                second_slot.set()

        eng.subscribe(on_event)
        eng.subscribe(stopped)
        t = threading.Thread(target=eng.run, daemon=True)
        t.start()
        # events; the deadlines only catch a hang (a run's start on a busy 2-core machine takes minutes)
        assert finished.wait(900) and "finished" in seen, [type(e).__name__ for _, e in seen["events"]]
        assert seen["finished"][1] == "vetoed"
        assert seen["finished"][0] - seen["veto"] < 2.0  # the runner there returns once the process group is killed
        c.add_node(**NODE, env_vars={"COCKPIT_CACHE": str(tmp_path / "node2-cache")})
        assert second_slot.wait(900) and t.is_alive(), [getattr(e, "text", "") for _, e in seen["events"]]
        texts = [e.text for _, e in seen["events"] if isinstance(e, ev.Notice)]
        assert any(x.startswith("slot 1 added") for x in texts), texts
        control.stop("now")
        t.join(120)
        assert not t.is_alive()
        rows = eng.journal.experiments(eng.session.id)
        assert {r.device.split("/")[0] for r in rows if r.device} == set(rc.nodes.values()) and len(rc.nodes) == 2
    finally:
        ray.shutdown()
        c.shutdown()


def _harness_processes(among: list[psutil.Process] | None = None) -> list[psutil.Process]:
    """This test's training and evaluation processes that still run: the ones among `among`, or
    else among this process's descendants (the test's Ray nodes are started from here). Never the
    machine's: another cockpit running beside the tests is not this test's business."""
    out = []
    for p in psutil.Process().children(recursive=True) if among is None else among:
        try:
            cmd = " ".join(p.cmdline())
            if ("harness.child" in cmd or "harness.evaluator" in cmd) and p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_kill_9_of_the_head_leaves_nothing_training_on_the_nodes(tmp_path, tiny_cache, cluster):
    """Also: a third node whose cockpit differs (one harness file changed) is refused by name."""
    import shutil

    c, node2, empty = cluster
    other = tmp_path / "other-cockpit"
    for pkg in ("cockpit", "engine", "harness", "trainer"):
        shutil.copytree(Path(__file__).resolve().parents[1] / pkg, other / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "harness" / "errors.py", "a") as f:
        f.write("# another version\n")
    c.add_node(**NODE, env_vars={"COCKPIT_CACHE": str(tmp_path / "node3-cache"), "PYTHONPATH": str(other)})
    c.wait_for_nodes()
    from conftest import use_light_trainer

    ws = tmp_path / "ws"
    assert cli("init", ws).returncode == 0
    use_light_trainer(ws)  # the kill is the subject: a light trainer
    proc = _run(ws, tiny_cache, c.address, "--budget", "60", "--tag", "k9")
    progress, notices = set(), []
    for line in proc.stdout:
        e = json.loads(line)
        if e["type"] == "Notice":
            notices.append(e["text"])
        if e["type"] == "RunProgress":
            progress.add(e["n"])
        if len(progress) >= 2:  # both nodes train
            break
    refused = [t for t in notices if "refused" in t]
    assert len(refused) == 1 and "harness/errors.py" in refused[0] and "same cockpit version" in refused[0], notices
    assert sum("slot(s)" in t for t in notices) == 2  # the two good nodes only
    training = _harness_processes()  # (taken now: once its actor is gone, a run's process is no longer our descendant)
    assert training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Ray kills the actors the head owned, and their runs die with them: waited for as events (each
    # process's end), with a deadline far past what a loaded machine takes, so that only a process
    # that really outlives the head fails the test
    deadline = time.monotonic() + 180
    while left := _harness_processes(training) + [p for p in _harness_processes() if p not in training]:
        assert time.monotonic() < deadline, f"a training process outlived the head: {[p.pid for p in left]}"
        psutil.wait_procs(left, timeout=min(5.0, max(0.0, deadline - time.monotonic())))
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("k9")
    running = [e.n for e in j.experiments(s.id) if e.status == "running"]
    assert len(running) == 2
    again = _run(ws, tiny_cache, c.address, "--budget", "2", "--max-experiments", "0", "--tag", "k9")
    out, err = again.communicate(timeout=1200)
    assert again.returncode == 0, err
    rows = {e.n: e for e in j.experiments(s.id)}
    assert all(rows[n].status == "interrupted" for n in running)
