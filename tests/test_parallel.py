"""Several experiments at once, one per device slot (CPU slots here: `cpu:N` splits the cores):
the baselines in parallel, N + 1 proposals in flight, the decision rule for runs whose best moved
while they ran (a confirmation run), duplicates refused, control with several runs, and the
branch that only ever holds measured code. Real git repositories, real subprocesses, the real
journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from engine import events as ev
from engine.agents.base import Agent, Proposal
from engine.agents.tuner import Tuner
from engine.control import Control
from engine.store.journal import Journal
from engine.session.loop import Engine, Limits
from engine.run.slots import DeviceError, resolve
from engine.run.targets import CommandTarget
from engine.store.workspace import open_workspace
from test_engine import command_workspace, git

# The run sleeps value.S seconds (part of the code, so an experiment can be slower); the metric is A + B + C.
FILES = {
    "value.py": "A = 10\nB = 10\nC = 10\nS = 0.6\n",
    "sleep.py": "import time, value\ntime.sleep(value.S)\n",
    "measure.py": "import value\nprint(f'metric: {value.A + value.B + value.C}')\n",
}


class ByNumber(Agent):
    """An agent whose proposal for experiment n is scripted: a list of (old, new) edits of value.py,
    or None (nothing to propose). It records the context each call saw."""

    name = "scripted"

    def __init__(self, edits: dict[int, list[tuple[str, str]] | None], latency: float = 0.0):
        self.edits, self.latency = edits, latency
        self.seen: dict[int, object] = {}
        self.lock = threading.Lock()

    def propose(self, ctx, tools, emit):
        with self.lock:
            self.seen[ctx.n] = ctx
        time.sleep(self.latency)
        edits = self.edits.get(ctx.n)
        if not edits:
            return None
        for old, new in edits:
            tools.edit_file("value.py", old, new)
        return Proposal("; ".join(f"{o} -> {n}" for o, n in edits))


def workspace(tmp_path: Path, baseline_runs: int = 1) -> Path:
    return command_workspace(tmp_path, FILES, ["value.py"], "python3 sleep.py", "python3 measure.py",
                             baseline_runs=baseline_runs)


def engine(ws: Path, agent, slots: int, n: int, control: Control | None = None) -> Engine:
    w = open_workspace(ws)
    devices, _ = resolve(f"cpu:{slots}", False, cores=list(range(max(slots, 2))))
    return Engine(w, agent, CommandTarget(w.root, w.config.target, None), control=control or Control(), tag="par",
                  limits=Limits(max_experiments=n), devices=devices)


def show(ws: Path, rev: str, path: str = "value.py") -> str:
    return git(ws, "show", f"{rev}:{path}")


class Watch:
    """Every event with its time, and the branch head each time the best changes."""

    def __init__(self, ws: Path):
        self.ws, self.events, self.heads = ws, [], []

    def __call__(self, e):
        self.events.append((time.monotonic(), e))
        if isinstance(e, ev.BestChanged):
            self.heads.append((e.n, e.commit, git(self.ws, "rev-parse", "HEAD")))

    def spans(self) -> dict[int, tuple[float, float]]:
        start = {e.n: t for t, e in self.events if isinstance(e, ev.ExperimentStarted)}
        end = {e.n: t for t, e in self.events if isinstance(e, ev.ExperimentFinished) and e.n in start}
        return {n: (start[n], end[n]) for n in start if n in end}


def overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# ---- the slots ----

def test_devices_resolve_to_one_slot_per_device_and_refuse_what_is_not_there():
    gpus = [("0", "NVIDIA H200"), ("1", "NVIDIA H200"), ("2", "NVIDIA A100"), ("3", "NVIDIA H200")]
    slots, notices = resolve("auto", True, gpus)
    # one model only: the A100 is left out, and said
    assert [d.label for d in slots] == ["cuda:0", "cuda:1", "cuda:3"]
    assert [d.env["CUDA_VISIBLE_DEVICES"] for d in slots] == ["0", "1", "3"]
    assert len(notices) == 1 and "cuda:2 (NVIDIA A100)" in notices[0]
    slots, _ = resolve("1,3", True, gpus)
    assert [d.label for d in slots] == ["cuda:1", "cuda:3"]
    slots, notices = resolve("2", True, gpus)
    assert [d.model for d in slots] == ["NVIDIA A100"] and not notices  # named alone: used
    # through CUDA_VISIBLE_DEVICES: cockpit's cuda:0 is the physical GPU 5
    slots, _ = resolve("0", True, [("5", "NVIDIA H200")])
    assert slots[0].env["CUDA_VISIBLE_DEVICES"] == "5"
    slots, _ = resolve("cpu:3", False, cores=list(range(8)))
    assert [d.env["COCKPIT_CPUS"] for d in slots] == ["0,1", "2,3", "4,5"]
    assert all(d.env["OMP_NUM_THREADS"] == "2" and d.env["CUDA_VISIBLE_DEVICES"] == "" for d in slots)
    assert [d.label for d in resolve("auto", False)[0]] == ["cpu"]
    for spec, accel, said in [("4", True, "there is no CUDA device 4"), ("0,1", False, "no CUDA GPU is visible"),
                              ("cpu:9", False, "more slots than this machine has cores"), ("gpu", True, "is not auto"),
                              ("cpu:0", False, "N >= 1")]:
        with pytest.raises(DeviceError, match=said):
            resolve(spec, accel, gpus, cores=list(range(8)))


def test_a_bad_devices_setting_is_one_line_and_changes_nothing(tmp_path):
    from test_engine import cli

    ws = workspace(tmp_path)
    head = git(ws, "rev-parse", "HEAD")
    r = cli("run", "--headless", "--workspace", ws, "--devices", "0,banana", "--max-experiments", "1")
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "0,banana" in lines[0], r.stderr
    assert git(ws, "rev-parse", "HEAD") == head and not (ws / ".cockpit" / "journal.sqlite").exists()


# ---- N runs at once ----

def test_two_slots_run_the_baselines_and_the_experiments_side_by_side(tmp_path):
    ws = workspace(tmp_path, baseline_runs=1)
    edits = {n: [(f"{v} = 10", f"{v} = 9")] for n, v in zip(range(3, 9), "ABCABC")}
    agent = ByNumber(edits, latency=0.1)
    eng = engine(ws, agent, 2, 4)
    w = Watch(ws)
    eng.subscribe(w)
    assert eng.run() == "reached --max-experiments 4"
    j = eng.journal
    rows = {e.n: e for e in j.experiments(eng.session.id)}
    spans = w.spans()
    # the first N runs are baselines, one per slot, at the same time; the noise comes from both
    assert [rows[n].kind for n in (1, 2)] == ["baseline", "baseline"]
    assert {rows[1].slot, rows[2].slot} == {0, 1} and overlap(spans[1], spans[2])
    assert eng.session.noise is not None and "over 2 runs" in " ".join(e.text for _, e in w.events if isinstance(e, ev.Notice))
    # experiments ran two at a time, each on its slot's device
    exps = [n for n, e in rows.items() if e.kind == "experiment" and n in spans]
    assert any(overlap(spans[a], spans[b]) for a in exps for b in exps if a < b)
    assert all(rows[n].device in ("cpu:0", "cpu:1") and rows[n].slot in (0, 1) for n in spans)
    started = [e for _, e in w.events if isinstance(e, ev.ExperimentStarted)]
    assert all(e.device == f"cpu:{e.slot}" for e in started)
    # the branch head only ever held the code of a measured keep row
    for n, commit, head in w.heads:
        assert head == commit
    s = eng.session
    assert git(ws, "rev-parse", "HEAD") == s.best_commit
    assert rows[s.best_n].status in ("keep", "forced") or rows[s.best_n].kind == "baseline"
    assert git(ws, "status", "--porcelain") == ""


def test_a_result_that_beat_its_base_after_the_best_moved_is_kept_only_through_its_confirmation(tmp_path):
    ws = workspace(tmp_path)
    # #3 lowers A quickly; #4 lowers B but runs longer (S 0.6 -> 2.0), so #3 is kept while #4 runs
    agent = ByNumber({3: [("A = 10", "A = 5")], 4: [("B = 10", "B = 5"), ("S = 0.6", "S = 2.0")]})
    eng = engine(ws, agent, 2, 2)
    w = Watch(ws)
    eng.subscribe(w)
    eng.run()
    rows = {e.n: e for e in eng.journal.experiments(eng.session.id)}
    assert rows[3].status == "keep" and rows[3].metric == 25
    # #4 beat its own base (the baseline, 30) by 5, but the best moved to #3 while it ran: not kept
    # as measured; re-applied onto #3 and run again as #5, the confirmation
    assert rows[4].status == "discard" and rows[4].metric == 25
    assert "the best moved to #3 while it ran" in rows[4].reason and "#5" in rows[4].reason
    assert rows[5].description.startswith("confirm #4") and rows[5].parent_commit == rows[3].commit_sha
    assert show(ws, rows[5].commit_sha) == "A = 5\nB = 5\nC = 10\nS = 2.0"
    assert rows[5].status == "keep" and rows[5].metric == 20
    # the branch went baseline -> #3 -> #5: never to #4, whose code was never measured on top of #3
    assert [n for n, _, _ in w.heads] == [2, 3, 5]
    assert all(head == commit for _, commit, head in w.heads)
    assert git(ws, "rev-parse", "HEAD") == rows[5].commit_sha == eng.session.best_commit
    assert rows[4].commit_sha not in git(ws, "rev-list", "HEAD").split()
    # the agent reads why #4 was not kept
    assert any(h.n == 4 and "re-applied" in (h.reason or "") for h in eng.context(6).history)


def test_a_confirmation_that_conflicts_with_the_new_best_is_a_discard_with_its_reason(tmp_path):
    ws = workspace(tmp_path)
    agent = ByNumber({3: [("A = 10", "A = 5")], 4: [("A = 10", "A = 4"), ("S = 0.6", "S = 2.0")]})
    eng = engine(ws, agent, 2, 2)
    eng.run()
    rows = {e.n: e for e in eng.journal.experiments(eng.session.id)}
    assert rows[3].status == "keep"
    assert rows[4].status == "discard" and "conflicts with #3" in rows[4].reason
    assert not any(r.description and r.description.startswith("confirm") for r in rows.values())
    assert show(ws, "HEAD") == "A = 5\nB = 10\nC = 10\nS = 0.6"


def test_the_same_change_as_one_in_flight_is_refused_before_it_runs(tmp_path):
    ws = workspace(tmp_path)
    same = [("C = 10", "C = 9")]
    agent = ByNumber({3: same, 4: same, 5: [("B = 10", "B = 9")]})
    eng = engine(ws, agent, 2, 3)
    w = Watch(ws)
    eng.subscribe(w)
    eng.run()
    rows = {e.n: e for e in eng.journal.experiments(eng.session.id)}
    dup = [n for n in (3, 4) if rows[n].status == "invalid"]
    assert len(dup) == 1 and "the same code as #" in rows[dup[0]].reason
    assert dup[0] not in w.spans()  # it never used a device


def test_the_tuner_proposes_distinct_moves_side_by_side(tmp_path):
    ws = workspace(tmp_path)
    eng = engine(ws, Tuner(), 3, 9)
    eng.run()
    rows = [e for e in eng.journal.experiments(eng.session.id) if e.kind == "experiment"]
    assert len(rows) >= 9
    refused = [e for e in rows if e.status == "invalid" and "the same code" in (e.reason or "")]
    assert not refused
    pinned = [e.commit_sha for e in rows if e.commit_sha]
    assert len(pinned) == len(set(pinned))


# ---- control with N runs ----

def test_a_veto_names_its_run_and_pause_and_stop_apply_to_all(tmp_path):
    ws = workspace(tmp_path)
    slow = ("S = 0.6", "S = 30")
    agent = ByNumber({n: [(f"{v} = 10", f"{v} = 9"), slow] for n, v in zip(range(3, 12), "ABCABCABC")})
    control = Control()
    eng = engine(ws, agent, 2, 20, control=control)
    w = Watch(ws)
    eng.subscribe(w)
    t = threading.Thread(target=eng.run)
    t.start()
    deadline = time.monotonic() + 60
    while len(control.running()) < 2 or min(control.running()) < 3:
        assert time.monotonic() < deadline, "two experiments running"
        time.sleep(0.05)
    a, b = control.running()
    control.pause()  # no new run starts, not even on the slot the veto frees
    assert not control.veto("which one?")  # several run: a veto must name one
    assert control.veto("too slow", a)
    deadline = time.monotonic() + 10
    while eng.journal.experiment(eng.session.id, a).status != "vetoed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert eng.journal.experiment(eng.session.id, b).status == "running"  # the other goes on
    time.sleep(2.0)
    running = control.running()
    assert running == [b] and eng.journal.experiment(eng.session.id, b).status == "running"
    control.stop("now")  # every run is killed
    t.join(30)
    assert not t.is_alive()
    rows = {e.n: e for e in eng.journal.experiments(eng.session.id)}
    assert rows[a].status == "vetoed" and rows[a].reason == "too slow"
    assert rows[b].status == "interrupted"
    assert not any(e.status in ("running", "queued", "proposing") for e in rows.values())
    assert git(ws, "rev-parse", "HEAD") == eng.session.best_commit


# ---- kill -9 with N runs in flight ----

def _descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def test_kill_9_with_two_runs_in_flight_leaves_no_process_and_both_become_interrupted(tmp_path, tiny_cache):
    from test_engine import cli

    from conftest import use_light_trainer

    ws = tmp_path / "ws"
    assert cli("init", ws).returncode == 0
    use_light_trainer(ws)  # the kill is the subject: a light trainer
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("ANTHROPIC_API_KEY", None)
    base = [sys.executable, "-m", "cockpit", "--cache-dir", str(tiny_cache), "run", "--headless", "--json",
            "--workspace", str(ws), "--devices", "cpu:2"]
    proc = subprocess.Popen(base + ["--budget", "30", "--tag", "k9"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    started = set()
    for line in proc.stdout:
        e = json.loads(line)
        if e["type"] == "ExperimentStarted":
            started.add(e["n"])
        if e["type"] == "RunProgress":
            started.add(e["n"])
        if len(started) >= 2 and e["type"] == "RunProgress":
            break
    children = _descendants(proc.pid)
    assert children
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from test_engine import _alive

    deadline = time.monotonic() + 120  # each process's end is waited for; the deadline only catches a hang
    while left := _alive(children):
        assert time.monotonic() < deadline, "a training process outlived cockpit"
        psutil.wait_procs(left, timeout=2.0)
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("k9")
    running = [e.n for e in j.experiments(s.id) if e.status == "running"]
    assert len(running) == 2 and {e.device for e in j.experiments(s.id) if e.n in running} == {"cpu:0", "cpu:1"}
    r = subprocess.run(base + ["--budget", "1.5", "--max-experiments", "0"], capture_output=True, text=True, env=env,
                       timeout=1800)
    assert r.returncode == 0, r.stderr
    rows = {e.n: e for e in j.experiments(s.id)}
    assert all(rows[n].status == "interrupted" for n in running)
    assert not any(e.status in ("running", "queued", "proposing") for e in rows.values())


def test_a_kill_between_recording_a_keep_and_moving_the_branch_is_repaired_at_the_next_start(tmp_path):
    ws = workspace(tmp_path)
    eng = engine(ws, ByNumber({3: [("A = 10", "A = 5")]}), 2, 1)
    eng.run()
    s = eng.journal.session_by_tag("par")
    assert eng.journal.experiment(s.id, 3).status == "keep" and git(ws, "rev-parse", "HEAD") == s.best_commit
    # as if cockpit was killed after the journal recorded #3 as the best, before the branch moved to it
    git(ws, "reset", "--hard", s.base_commit)
    again = engine(ws, ByNumber({}), 2, 0)
    notices = []
    again.subscribe(lambda e: notices.append(e.text) if isinstance(e, ev.Notice) else None)
    assert again.run() == "reached --max-experiments 0"
    assert git(ws, "rev-parse", "HEAD") == s.best_commit and show(ws, "HEAD") == "A = 5\nB = 10\nC = 10\nS = 0.6"
    assert any("recorded but not yet checked out" in t for t in notices)
