"""The research loop on real git repositories, real subprocesses and a real SQLite journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from engine import events as ev
from engine.agents.tuner import Tuner
from engine.control import Control
from engine.store.journal import CURVE_POINTS, Journal
from engine.session.loop import Engine, Limits
from engine.numbers import never_ran
from engine.run.targets import CommandTarget, GptTarget, Target
from engine.store.workspace import TRAINER, init_workspace, open_workspace
from harness.dataset import current_dataset
from harness.profiles import CPU

from conftest import use_light_trainer

ROOT = Path(__file__).resolve().parents[1]


def git(ws: Path, *args) -> str:
    return subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True, check=True).stdout.strip()


# A wait on a process is an event; its deadline only catches a hang, so it is far past what a busy
# 2-core machine takes (a session's runs there take minutes, not seconds).
SLOW = 1800


def cli(*args, cwd=None, env_extra=None, timeout=SLOW):
    env = dict(os.environ)
    env.pop("ANTHROPIC_API_KEY", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "cockpit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def commit_all(ws: Path, msg="setup"):
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", msg, "--allow-empty"], cwd=ws, check=True)


def command_workspace(tmp_path: Path, files: dict[str, str], editable: list[str], run: str, measure: str, baseline_runs=2, min_delta=0.0003) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=ws, check=True)
    for name, text in files.items():
        (ws / name).write_text(textwrap.dedent(text))
    (ws / ".gitignore").write_text(".cockpit/\n__pycache__/\n")
    (ws / "cockpit.toml").write_text(textwrap.dedent(f"""
        [target]
        kind = "command"
        editable = {json.dumps(editable)}
        run = "{run}"
        measure = "{measure}"
        metric = "metric"
        direction = "min"
        budget = 30
        [decision]
        baseline_runs = {baseline_runs}
        min_delta = {min_delta}
    """))
    commit_all(ws)
    return ws


VALUE_FILES = {
    "value.py": "VALUE = 10.0\nOTHER = 3\n",
    "measure.py": "import value\nprint(f'metric: {value.VALUE + 0.001 * value.OTHER}')\n",
}


def command_engine(ws: Path, max_experiments: int, control: Control | None = None) -> Engine:
    w = open_workspace(ws)
    target = CommandTarget(w.root, w.config.target, None)
    return Engine(w, Tuner(), target, control=control, tag="t", limits=Limits(max_experiments=max_experiments))


# ---- workspace ----

def test_init_creates_a_committed_workspace_and_refuses_a_second_time(tmp_path):
    r = cli("init", tmp_path / "ws")
    assert r.returncode == 0, r.stderr
    ws = tmp_path / "ws"
    for f in ("trainer/train.py", "program.md", "cockpit.toml", ".gitignore"):
        assert (ws / f).is_file()
    assert ".cockpit/" in (ws / ".gitignore").read_text()
    assert git(ws, "status", "--porcelain") == ""
    assert (ws / "trainer/train.py").read_text() == TRAINER.read_text()  # as shipped
    again = cli("init", ws)
    assert again.returncode != 0
    assert again.stderr.strip().count("\n") == 0 and "already holds a workspace" in again.stderr


# ---- the acceptance session: 5 tuner experiments on the GPT trainer, headless, CPU ----

def test_headless_cpu_session_of_five_experiments_agrees_with_git_and_results(tmp_path, tiny_cache):
    ws = tmp_path / "ws"
    assert cli("init", ws).returncode == 0
    r = cli("--cache-dir", tiny_cache, "run", "--headless", "--json", "--workspace", ws, "--budget", "1.5",
            "--max-experiments", "5", "--device", "cpu", "--tag", "acc")
    assert r.returncode == 0, r.stderr + r.stdout
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["type"] == "Notice" and "no API key: offline tuner" in events[0]["text"]
    finished = [e for e in events if e["type"] == "ExperimentFinished"]
    # on a busy machine a baseline run that broke a timing rule is run again, each time with a notice
    # (README: "A busy machine"); two baselines measure the code, whatever else the machine does
    again = [e for e in events if e["type"] == "Notice" and "broke a timing rule" in e["text"]]
    assert [e["kind"] for e in finished] == ["baseline"] * (2 + len(again)) + ["experiment"] * 5, r.stdout[-3000:]
    assert len(again) <= 3 and [e["status"] for e in finished[:2 + len(again)]].count("keep") == 2
    assert events[-1]["type"] == "SessionStopped" and "max-experiments 5" in events[-1]["reason"]

    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("acc")
    exps = j.experiments(s.id)
    assert [e.n for e in exps] == list(range(1, 8 + len(again)))
    # (a proposal asked again may finish after a later one: compared by number)
    assert {e.n: e.status for e in exps} == {f["n"]: f["status"] for f in finished}
    # each run's loss curve is journaled, so the comparison with the best survives a restart
    for e in exps:
        live = [(p["fraction"], p["loss"]) for p in events if p["type"] == "RunProgress" and p["n"] == e.n]
        if live:
            got, want = j.curve(s.id, e.n), [(round(f, 5), round(v, 6)) for f, v in live]
            assert got == want if len(want) <= CURVE_POINTS else (len(got) == CURVE_POINTS and got[-1] == want[-1]), e.n
    refs = dict(line.split() for line in git(ws, "for-each-ref", "--format=%(refname) %(objectname)", "refs/cockpit/acc/").splitlines())
    rows = (ws / ".cockpit" / "results.tsv").read_text().splitlines()
    assert rows[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    ran = [e for e in exps if not never_ran(e)]  # a proposal the stop left unrun is no row of results.tsv
    assert len(rows) == 1 + len(ran)
    for e, row in zip(ran, rows[1:]):
        commit, metric, _mem, status, desc = row.split("\t")
        assert status == e.status and desc == e.description
        if e.kind == "experiment" and e.status != "invalid":
            assert refs[f"refs/cockpit/acc/{e.n}"] == e.commit_sha  # every experiment stays reachable
            assert commit == e.commit_sha[:7]
            assert git(ws, "diff", "--shortstat", e.parent_commit, e.commit_sha)  # and its diff shows
        if e.metric is not None:
            assert float(metric) == pytest.approx(e.metric, abs=1e-6)
    # the branch head is the best commit; the tree is clean and holds the best code
    assert git(ws, "rev-parse", "HEAD") == s.best_commit
    assert git(ws, "rev-parse", "--abbrev-ref", "HEAD") == "cockpit/acc"
    assert git(ws, "status", "--porcelain") == ""
    kept = [e for e in exps if e.kind == "experiment" and e.status in ("keep", "forced")]
    if kept:
        assert s.best_commit == kept[-1].commit_sha and s.best_metric == kept[-1].metric
    else:
        assert s.best_commit == s.base_commit
    # `cockpit status` agrees
    st = cli("status", "--workspace", ws)
    assert st.returncode == 0 and "session acc" in st.stdout and f"{s.best_metric:.6f}" in st.stdout


# ---- kill -9 and resume ----

def _alive(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_kill_9_during_a_run_then_restart_resumes_with_nothing_lost(tmp_path, tiny_cache):
    ws = tmp_path / "ws"
    assert cli("init", ws).returncode == 0
    use_light_trainer(ws, baseline_runs=1)  # the kill and the resume are the subject: a light trainer
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("ANTHROPIC_API_KEY", None)
    base = [sys.executable, "-m", "cockpit", "--cache-dir", str(tiny_cache), "run", "--headless", "--json", "--workspace", str(ws)]
    # first the baseline and one experiment on a short budget, so the kill lands in an experiment
    first = subprocess.run(base + ["--budget", "1.5", "--max-experiments", "1", "--tag", "k"], capture_output=True, text=True, env=env, timeout=SLOW)
    assert first.returncode == 0, first.stderr
    # the same budget: a new one would be a new harness version, measured by a new baseline first
    proc = subprocess.Popen(base + ["--budget", "1.5", "--tag", "k"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    child_pids = []
    for line in proc.stdout:
        e = json.loads(line)
        if e["type"] == "RunProgress":
            child_pids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True) if "harness.child" in " ".join(c.cmdline())]
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert child_pids, "the training subprocess was running"
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("k")
    before = {e.n: e for e in j.experiments(s.id)}
    running = [e for e in before.values() if e.status == "running"]
    assert len(running) == 1
    n_killed = running[0].n
    # the orphaned training process group dies with its runner
    # (waited for as each process's end; the deadline only catches one that never ends)
    deadline = time.monotonic() + 120
    while left := _alive(child_pids):
        assert time.monotonic() < deadline, "training processes outlived cockpit"
        psutil.wait_procs(left, timeout=2.0)
    # restart with no --tag: the latest session continues
    again = subprocess.run(base + ["--budget", "1.5", "--max-experiments", "1"], capture_output=True, text=True, env=env, timeout=SLOW)
    assert again.returncode == 0, again.stderr
    events = [json.loads(line) for line in again.stdout.splitlines()]
    started = next(e for e in events if e["type"] == "SessionStarted")
    # the next experiments were being prepared while #n_killed trained (N + 1 = 2 proposals in
    # flight on one slot): they never ran
    unfinished = {n for n, e in before.items() if e.status in ("running", "proposing", "queued")}
    assert unfinished <= {n_killed, n_killed + 1, n_killed + 2}
    assert started["resumed"] and started["tag"] == "k" and started["next_experiment"] == max(before) + 1
    after = {e.n: e for e in j.experiments(s.id)}
    for n in unfinished:
        assert after[n].status == "interrupted"
    for n, e in before.items():
        if n not in unfinished:
            assert after[n] == e  # nothing already recorded was lost or changed
    assert max(after) == max(before) + 1
    s2 = j.session(s.id)
    assert git(ws, "rev-parse", "HEAD") == s2.best_commit
    assert git(ws, "status", "--porcelain") == ""


def test_every_run_after_the_first_takes_the_spare_process_its_slot_started(tmp_path, tiny_cache, monkeypatch):
    """The next run's training process is started while a run is on (a spare); it must still be
    there when the slot's next run asks for it, on every slot (the sandbox kills a child when the
    thread that started it ends)."""
    from harness import runner

    ws = tmp_path / "ws"
    use_light_trainer(init_workspace(ws), baseline_runs=1)  # the loop is the subject: a light trainer
    w = open_workspace(ws)
    target = GptTarget(w.root, w.config.target, tiny_cache, current_dataset(tiny_cache), CPU.with_budget(1.0))
    results = []
    real = runner.run

    def run(*a, **kw):  # the real run; its result kept
        r = real(*a, **kw)
        results.append((kw.get("slot"), r))
        return r

    monkeypatch.setattr(runner, "run", run)
    from engine.run.slots import resolve

    devices, _ = resolve("cpu:2", False)
    eng = Engine(w, Tuner(), target, tag="spare", limits=Limits(max_experiments=4), devices=devices)
    eng.run()
    assert len(results) >= 6, [(s, r.status) for s, r in results]
    assert all(r.spare_seconds is not None for _, r in results), [(s, r.status, r.spare_seconds) for s, r in results]


# ---- veto and force-keep ----

def test_veto_ends_the_training_process_group_within_two_seconds(tmp_path, tiny_cache):
    ws = tmp_path / "ws"
    use_light_trainer(init_workspace(ws), baseline_runs=1)  # the loop is the subject: a light trainer
    w = open_workspace(ws)
    target = GptTarget(w.root, w.config.target, tiny_cache, current_dataset(tiny_cache), CPU.with_budget(1.5))
    control = Control()
    eng = Engine(w, Tuner(), target, control=control, tag="v", limits=Limits(max_experiments=1))
    seen = {}

    def on_event(e):
        if isinstance(e, ev.ExperimentStarted) and e.kind == "experiment":
            target.profile = CPU.with_budget(60)  # long enough that only the veto can end it
        if isinstance(e, ev.RunProgress) and e.n == 2 and "t" not in seen:
            seen["pids"] = [c.pid for c in psutil.Process().children(recursive=True) if "harness.child" in " ".join(c.cmdline())]
            seen["t"] = time.monotonic()
            control.veto("looks like it will diverge")
        if isinstance(e, ev.ExperimentFinished) and e.n == 2:
            seen["done"] = time.monotonic()
            seen["alive"] = [p for p in seen["pids"] if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
            seen["status"] = e.status

    eng.subscribe(on_event)
    # the baseline runs on the short budget; the experiment on the long one
    eng.run()
    s = eng.journal.session_by_tag("v")
    assert seen.get("status") == "vetoed", [(e.n, e.status, e.reason) for e in eng.journal.experiments(s.id)]
    assert seen["pids"] and not seen["alive"]
    assert seen["done"] - seen["t"] < 2.0
    print(f"veto -> process group gone and recorded: {seen['done'] - seen['t']:.3f}s")
    s = eng.journal.session_by_tag("v")
    e2 = eng.journal.experiment(s.id, 2)
    assert e2.status == "vetoed" and e2.reason == "looks like it will diverge"
    assert git(ws, "rev-parse", "HEAD") == s.best_commit == s.base_commit
    # the agent is told, through its next context
    assert any("looks like it will diverge" in t for t in eng.context(3).human_notes)
    from harness import runner

    assert runner.spare_pid() is None  # no training process outlives the session


def test_force_keep_of_a_discarded_experiment_makes_it_head_and_best(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    eng = command_engine(ws, max_experiments=6)
    eng.run()
    s = eng.journal.session_by_tag("t")
    discarded = [e for e in eng.journal.experiments(s.id) if e.status == "discard"]
    assert discarded, "the tuner should have made at least one worse move"
    victim = discarded[0]
    assert victim.metric > s.best_metric
    eng2 = command_engine(ws, max_experiments=0)
    eng2.control.force_keep(victim.n)
    eng2.run()
    s2 = eng2.journal.session(s.id)
    assert s2.best_commit == victim.commit_sha and s2.best_metric == victim.metric and s2.best_n == victim.n
    assert git(ws, "rev-parse", "HEAD") == victim.commit_sha
    assert eng2.journal.experiment(s.id, victim.n).status == "forced"
    assert "forced" in (ws / ".cockpit/results.tsv").read_text()


def test_pause_holds_the_next_experiment_until_resume(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    control = Control()
    eng = command_engine(ws, max_experiments=2, control=control)
    starts = []
    eng.subscribe(lambda e: starts.append(time.monotonic()) if isinstance(e, ev.ExperimentStarted) else None)
    control.pause()
    t = threading.Thread(target=eng.run)
    t.start()
    time.sleep(1.5)
    assert len(starts) == 1  # the baseline ran; nothing after it while paused
    control.resume()
    t.join(60)
    assert len(starts) == 3


def test_review_gate_holds_each_run_until_approved(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    control = Control(review=True)
    eng = command_engine(ws, max_experiments=1, control=control)
    got = []
    eng.subscribe(lambda e: got.append(e))
    t = threading.Thread(target=eng.run)
    t.start()
    deadline = time.monotonic() + 30
    while not any(isinstance(e, ev.AwaitingApproval) for e in got):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    assert sum(isinstance(e, ev.ExperimentStarted) for e in got) == 1  # only the baseline
    control.approve()
    t.join(60)
    assert sum(isinstance(e, ev.ExperimentStarted) for e in got) == 2


# ---- a target that is not ML ----

SLOW_FILES = {
    "slow.py": '''
        """Sum of squares in chunks: each chunk pays a fixed set-up cost, so small chunks are slow
        (doubling CHUNK from 4 nearly halves the time: a gain far outside a busy machine's noise)."""
        CHUNK = 4


        def _setup():
            return sum(range(400))


        def work(n=100_000):
            data = list(range(n))
            total = 0
            for i in range(0, n, CHUNK):
                _setup()
                total += sum(x * x for x in data[i : i + CHUNK])
            return total
    ''',
    "measure.py": '''
        import time
        import slow

        n = 100_000
        expected = sum(x * x for x in range(n))
        times = []
        for _ in range(5):
            t0 = time.process_time()  # this process's CPU time: other programs on the machine do not count
            got = slow.work(n)
            times.append(time.process_time() - t0)
            assert got == expected, "wrong answer"
        print(f"metric: {min(times):.6f}")
    ''',
}


def test_a_non_ml_target_improves_over_a_short_headless_session(tmp_path):
    ws = command_workspace(tmp_path, SLOW_FILES, ["slow.py"], "python3 -c 'import slow'", "python3 measure.py")
    r = cli("run", "--headless", "--workspace", ws, "--max-experiments", "4", "--tag", "fast")
    assert r.returncode == 0, r.stderr + r.stdout
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("fast")
    exps = j.experiments(s.id)
    base = [e.metric for e in exps if e.kind == "baseline"]
    assert s.best_metric < 0.8 * min(base), r.stdout
    kept = [e for e in exps if e.kind == "experiment" and e.status == "keep"]
    assert kept and all(e.description.startswith("CHUNK") for e in kept)
    assert "KEEP" in r.stdout


# ---- bad input: one line, non-zero, nothing modified ----

def _snapshot(ws: Path):
    return git(ws, "rev-parse", "HEAD"), git(ws, "status", "--porcelain", "--untracked-files=all"), sorted(p.name for p in ws.iterdir())


def test_a_dirty_tree_is_refused_naming_the_file(tmp_path, tiny_cache):
    ws = tmp_path / "ws"
    init_workspace(ws)
    with open(ws / "trainer/train.py", "a") as f:
        f.write("# local edit\n")
    before = _snapshot(ws)
    r = cli("--cache-dir", tiny_cache, "run", "--headless", "--workspace", ws, "--max-experiments", "1")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "trainer/train.py" in r.stderr and "uncommitted" in r.stderr
    assert _snapshot(ws) == before and not (ws / ".cockpit").exists()


@pytest.mark.parametrize("case", ["no_repo", "no_commits", "unknown_agent", "malformed_toml", "unknown_key", "bad_pipeline", "missing_measure", "missing_data"])
def test_bad_input_gets_one_clear_line_and_changes_nothing(tmp_path, tiny_cache, case):
    ws = tmp_path / "ws"
    extra = []
    if case == "no_repo":
        ws.mkdir()
        (ws / "program.md").write_text("x")
        needle = "not a git repository"
    elif case == "no_commits":
        ws.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
        needle = "has no commits yet"
        empty_cache = tmp_path / "empty-cache"  # nothing may be prepared for a workspace that is refused
        tiny_cache = empty_cache
    else:
        init_workspace(ws)
        if case == "unknown_agent":
            extra = ["--agent", "gpt5"]
            needle = "unknown agent 'gpt5'"
        elif case == "malformed_toml":
            (ws / "cockpit.toml").write_text("[target\nkind = 'gpt'\n")
            needle = "malformed TOML"
        elif case == "unknown_key":
            (ws / "cockpit.toml").write_text("[decision]\nnoise_kk = 2\n")
            needle = "unknown key [decision].noise_kk"
        elif case == "bad_pipeline":
            (ws / "cockpit.toml").write_text('[agent]\npipeline = "yes"\n')
            needle = "[agent].pipeline must be true or false"
        elif case == "missing_data":
            import shutil

            broken = tmp_path / "cache"
            shutil.copytree(tiny_cache, broken)
            for f in (broken / "datasets").glob("*/val.bin"):
                f.unlink()
            tiny_cache = broken
            needle = "prepared data file missing"
        elif case == "missing_measure":
            (ws / "cockpit.toml").write_text('[target]\nkind = "command"\neditable = ["trainer/train.py"]\nrun = "true"\nmeasure = "python3 measure.py"\n')
            needle = "measure.py, which does not exist"
        commit_all(ws)
    before = sorted(p.name for p in ws.iterdir())
    head = git(ws, "rev-parse", "HEAD") if case not in ("no_repo", "no_commits") else None
    r = cli("--cache-dir", tiny_cache, "run", "--headless", "--workspace", ws, "--max-experiments", "1", *extra)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cockpit: error:") and needle in lines[0], r.stderr
    assert sorted(p.name for p in ws.iterdir()) == before
    if case == "no_commits":
        assert not empty_cache.exists()
    if head:
        assert git(ws, "rev-parse", "HEAD") == head and git(ws, "status", "--porcelain") == ""


def test_a_path_escape_through_the_tools_is_a_tool_error_and_changes_nothing(tmp_path):
    from engine.tools import ToolError, Tools

    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py")
    secret = tmp_path / "outside.txt"
    secret.write_text("keep me")
    tools = Tools(ws, ["value.py"])
    for bad in ("../outside.txt", str(secret), "measure.py", "value.py/../../outside.txt"):
        with pytest.raises(ToolError):
            tools.write_file(bad, "pwned")
    assert secret.read_text() == "keep me"
    assert git(ws, "status", "--porcelain") == ""


def test_program_md_edited_mid_session_is_kept_committed_and_told_to_the_agent(tmp_path):
    files = dict(VALUE_FILES, **{"program.md": "# goal\nlower the metric\n"})
    ws = command_workspace(tmp_path, files, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    eng = command_engine(ws, max_experiments=3)
    new_text = "# goal\nlower the metric, and try OTHER first\n"
    contexts = []
    original = eng.context

    def spy(n):
        ctx = original(n)
        contexts.append(ctx)
        return ctx

    eng.context = spy

    def on_event(e):
        # the human edits program.md from another pane while experiment 2 runs
        if isinstance(e, ev.ExperimentStarted) and e.n == 2:
            (ws / "program.md").write_text(new_text)

    eng.subscribe(on_event)
    eng.run()
    assert (ws / "program.md").read_text() == new_text  # the resets never lost it
    assert git(ws, "show", "HEAD:program.md") == new_text.strip()  # committed on the session branch
    assert git(ws, "status", "--porcelain") == ""
    assert contexts[-1].program == new_text
    assert any("program.md" in t for t in contexts[-1].human_notes)
    s = eng.journal.session_by_tag("t")
    assert git(ws, "rev-parse", "HEAD") == s.best_commit


def test_consecutive_crashes_stop_the_session_with_a_clear_reason(tmp_path):
    files = dict(VALUE_FILES, **{"run.py": "import value\nassert value.VALUE == 10.0, 'only the original runs'\n"})
    ws = command_workspace(tmp_path, files, ["value.py"], "python3 run.py", "python3 measure.py", baseline_runs=1)
    toml = (ws / "cockpit.toml").read_text() + "\n[stop]\nmax_consecutive_crashes = 3\n"
    (ws / "cockpit.toml").write_text(toml)
    commit_all(ws)
    r = cli("run", "--headless", "--workspace", ws, "--max-experiments", "10")
    assert r.returncode == 0, r.stderr
    assert "session stopped: 3 consecutive crashes" in r.stdout
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.latest_session()
    assert s.stop_reason == "3 consecutive crashes"
    exps = j.experiments(s.id)
    ran = [e.status for e in exps if e.status != "interrupted"]
    assert ran[-3:] == ["crash"] * 3
    # the proposals prepared while the third crash trained (N + 1 = 2 on one slot) never ran, and say so
    never = [e for e in exps if e.status == "interrupted"]
    assert [e.n for e in never] == [e.n for e in exps[-len(never):]] and 1 <= len(never) <= 2
    assert all("stopped before it ran" in e.reason for e in never)


def test_max_cost_and_max_hours_stop_with_their_reason(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    r = cli("run", "--headless", "--workspace", ws, "--max-cost", "0")
    assert r.returncode == 0 and "session stopped: reached --max-cost $0" in r.stdout
    r = cli("run", "--headless", "--workspace", ws, "--max-hours", "0")
    assert r.returncode == 0 and "session stopped: reached --max-hours 0" in r.stdout
    bad = cli("run", "--headless", "--workspace", ws, "--budget", "nan")
    assert bad.returncode != 0 and "finite" in bad.stderr


def test_duty_cycle_and_phases_are_recorded_and_reported(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c 'import time; time.sleep(0.5)'", "python3 measure.py", baseline_runs=1)
    eng = command_engine(ws, max_experiments=2)
    eng.run()
    exps = eng.journal.experiments(eng.session.id)
    assert all(e.training_seconds and e.training_seconds >= 0.5 for e in exps if e.status in ("keep", "discard"))
    assert all(e.propose_seconds is not None for e in exps if e.kind == "experiment")
    from engine.store.journal import duty_cycle

    d = duty_cycle(exps)
    assert d.experiments == len(exps) and 0 < d.ratio < 1
    assert d.training <= d.wall
    st = cli("status", "--workspace", ws)
    assert f"duty cycle {100 * d.ratio:.1f}%" in st.stdout and "per run: startup" in st.stdout and "per proposal" in st.stdout


def test_an_older_journal_gains_the_new_columns_without_losing_rows(tmp_path):
    import sqlite3

    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE sessions(id INTEGER PRIMARY KEY, tag TEXT UNIQUE NOT NULL, branch TEXT NOT NULL, base_commit TEXT NOT NULL,
          agent TEXT, target TEXT, created REAL, updated REAL, best_n INTEGER, best_commit TEXT, best_metric REAL, noise REAL,
          status TEXT DEFAULT 'running', stop_reason TEXT);
        CREATE TABLE experiments(id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL, n INTEGER NOT NULL,
          kind TEXT NOT NULL DEFAULT 'experiment', parent_commit TEXT, commit_sha TEXT, diff_stat TEXT, description TEXT,
          status TEXT NOT NULL, reason TEXT, metric REAL, delta REAL, confidence REAL, training_seconds REAL, total_seconds REAL,
          memory_gb REAL, tokens_in INTEGER DEFAULT 0, tokens_out INTEGER DEFAULT 0, cache_write INTEGER DEFAULT 0,
          cache_read INTEGER DEFAULT 0, cost_usd REAL DEFAULT 0, started REAL, finished REAL, log_path TEXT, UNIQUE(session_id, n));
        INSERT INTO sessions(tag, branch, base_commit) VALUES('old', 'cockpit/old', 'abc');
        INSERT INTO experiments(session_id, n, status, metric) VALUES(1, 1, 'keep', 1.5);
    """)
    db.commit()
    db.close()
    j = Journal(path)
    e = j.experiment(1, 1)
    assert e.metric == 1.5 and e.propose_seconds is None
    j.update_experiment(1, 1, propose_seconds=2.0)
    assert j.experiment(1, 1).propose_seconds == 2.0


# ---- regressions from the engine review ----

def test_a_restart_after_a_kill_mid_proposal_discards_the_unsubmitted_edit(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    eng = command_engine(ws, max_experiments=1)
    eng.run()
    # as a kill -9 during the next proposal leaves things: a `proposing` row and the agent's
    # half-finished edit in its own tree
    n = eng.journal.next_number(eng.session.id)
    eng.journal.add_experiment(eng.session.id, n, "experiment", eng.session.best_commit, "proposing")
    agent_tree = ws / ".cockpit" / "agent"
    (agent_tree / "value.py").write_text("VALUE = 1.0  # half-finished agent edit\nOTHER = 3\n")
    (ws / ".value.py.swp").write_text("an editor's swap file")  # the human's untracked file
    r = cli("run", "--headless", "--workspace", ws, "--max-experiments", "1")
    assert r.returncode == 0, r.stderr
    assert "half-finished" not in (ws / "value.py").read_text() + (agent_tree / "value.py").read_text()
    assert (ws / ".value.py.swp").exists()  # untracked files elsewhere are never touched
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    exps = {e.n: e for e in j.experiments(j.latest_session().id)}
    assert exps[n].status == "interrupted" and all(e.status != "invalid" for e in exps.values())


def test_ctrl_c_to_the_whole_process_group_stops_cleanly_without_a_traceback(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c 'import time; time.sleep(30)'", "python3 measure.py",
                           baseline_runs=1)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "cockpit", "run", "--headless", "--json", "--workspace", str(ws)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    for line in proc.stdout:
        if json.loads(line)["type"] == "ExperimentStarted":
            break
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: git helpers die with cockpit
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert '"SessionStopped"' in out
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.latest_session()
    assert git(ws, "rev-parse", "HEAD") == s.best_commit and git(ws, "status", "--porcelain") == ""


def test_a_stale_veto_for_another_experiment_is_ignored_and_stop_ends_an_approval_wait():
    c = Control(review=True)
    five = c.begin_run(5)
    assert not c.veto("meant for #4", n=4)  # #4 is no longer running: ignored
    assert c.take_veto(5) is None and not five.is_set()
    six = c.begin_run(6)
    assert not c.veto("which one?")  # two run: a veto must name one (the UI asks)
    assert not five.is_set() and not six.is_set()
    assert c.veto("this one", n=6) and six.is_set() and not five.is_set()
    assert c.take_veto(6) == "this one"
    c.end_run(6)
    c.await_approval(7)
    assert c.approval(7) is None  # waits
    c.stop("after_run")
    assert c.approval(7) == "stopped"


class _BrokenTarget(Target):
    metric_name, direction, label = "metric", "min", "broken"

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def run(self, log_path, cancel, on_progress=None, baseline=False, tree=None):
        self.calls += 1
        if self.calls == 2:
            raise OSError(28, "No space left on device")
        return self.inner.run(log_path, cancel, on_progress, baseline=baseline, tree=tree)


def test_an_unexpected_error_stops_with_its_reason_and_leaves_nothing_running(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    w = open_workspace(ws)
    eng = Engine(w, Tuner(), _BrokenTarget(CommandTarget(w.root, w.config.target, None)), tag="t", limits=Limits(max_experiments=3))
    reason = eng.run()
    assert "No space left on device" in reason and eng.error == reason
    s = eng.journal.session_by_tag("t")
    assert s.stop_reason == reason
    assert all(e.status != "running" for e in eng.journal.experiments(s.id))
    assert git(ws, "rev-parse", "HEAD") == s.best_commit and git(ws, "status", "--porcelain") == ""


def test_an_uncommitted_human_edit_of_an_editable_file_is_refused_not_discarded(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    command_engine(ws, max_experiments=1).run()
    (ws / "value.py").write_text("VALUE = 2.0  # the human's idea\nOTHER = 3\n")
    r = cli("run", "--headless", "--workspace", ws, "--max-experiments", "1")
    assert r.returncode != 0 and "value.py" in r.stderr
    assert "the human's idea" in (ws / "value.py").read_text()
    # even when the last session was killed mid-proposal: the agent never edits this tree
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.latest_session()
    j.add_experiment(s.id, j.next_number(s.id), "experiment", s.best_commit, "proposing")
    r = cli("run", "--headless", "--workspace", ws, "--max-experiments", "1")
    assert r.returncode != 0 and "value.py" in r.stderr
    assert "the human's idea" in (ws / "value.py").read_text()


def test_a_stale_index_lock_from_a_killed_git_command_does_not_block_resume(tmp_path):
    ws = command_workspace(tmp_path, VALUE_FILES, ["value.py"], "python3 -c pass", "python3 measure.py", baseline_runs=1)
    command_engine(ws, max_experiments=1).run()
    (ws / ".git" / "index.lock").write_text("")  # as a kill -9 during `git commit` leaves it
    r = cli("run", "--headless", "--workspace", ws, "--max-experiments", "1")
    assert r.returncode == 0, r.stderr
    assert "removed a stale .git/index.lock" in r.stdout
    assert not (ws / ".git" / "index.lock").exists()


# ---- the holdout split, and the sandbox's state at start ----

def test_the_holdout_is_recorded_for_the_human_and_never_reaches_what_the_agent_reads(tmp_path, tiny_cache):
    ws = tmp_path / "ws"
    use_light_trainer(init_workspace(ws), baseline_runs=1)  # the loop is the subject: a light trainer
    w = open_workspace(ws)
    target = GptTarget(w.root, w.config.target, tiny_cache, current_dataset(tiny_cache), CPU.with_budget(1.5))
    contexts = []

    class Watching(Tuner):
        def propose(self, ctx, tools, emit):
            contexts.append(repr(ctx))
            return super().propose(ctx, tools, emit)

    eng = Engine(w, Watching(), target, tag="h", limits=Limits(max_experiments=2))
    eng.run()
    s = eng.journal.session_by_tag("h")
    rows = [e for e in eng.journal.experiments(s.id) if e.metric is not None]
    assert rows and all(e.holdout is not None and e.holdout > 0 for e in rows)
    assert all(abs(e.holdout - e.metric) > 1e-9 for e in rows)  # another split, another number
    readable = "\n".join(contexts) + (ws / "results.tsv").read_text() if (ws / "results.tsv").exists() else "\n".join(contexts)
    readable += "".join(Path(e.log_path).read_text() for e in rows if e.log_path)
    for e in rows:
        for text in (f"{e.holdout:.6f}", f"{e.holdout:.5f}", f"{e.holdout:.4f}", repr(e.holdout)):
            assert text not in readable, f"#{e.n}'s holdout {text} is where the agent can read it"
    assert contexts, "the agent was asked for proposals"


def test_a_session_without_the_sandbox_says_so_at_start_and_in_the_journal(tmp_path, tiny_cache):
    ws = tmp_path / "ws"
    use_light_trainer(init_workspace(ws), baseline_runs=1)  # the notice is the subject: a light trainer
    (ws / "cockpit.toml").write_text((ws / "cockpit.toml").read_text() + '\n[run]\nsandbox = "off"\n')
    commit_all(ws)
    w = open_workspace(ws)
    target = GptTarget(w.root, w.config.target, tiny_cache, current_dataset(tiny_cache), CPU.with_budget(1.5),
                       sandbox=w.config.sandbox)
    seen = []
    eng = Engine(w, Tuner(), target, tag="off", limits=Limits(max_experiments=0))
    eng.subscribe(lambda e: seen.append(e))
    eng.run()
    alerts = [e.text for e in seen if isinstance(e, ev.Alert)]
    assert any(a.startswith("sandbox: off — the agent's code runs with your rights") for a in alerts), alerts
    s = eng.journal.session_by_tag("off")
    stored = eng.journal.db.execute("SELECT data FROM events WHERE session_id=? AND type='Alert'", (s.id,)).fetchall()
    assert any("sandbox: off" in r[0] for r in stored)


def test_sandbox_folders_left_by_a_killed_cockpit_are_removed_at_the_next_start(tmp_path, tiny_cache):
    ws = tmp_path / "ws"
    init_workspace(ws)
    commit_all(ws)
    w = open_workspace(ws)
    left = ws / ".cockpit" / "runs" / "old" / ".run-abc"
    left.mkdir(parents=True)
    (left / "model").mkdir()
    (left / "model" / "tensors.pt").write_bytes(b"x" * 1000)
    busy = ws / ".cockpit" / "runs" / "old" / ".run-busy"
    busy.mkdir()
    holder = subprocess.Popen(["sleep", "30"], cwd=busy)  # a run still working there (another cockpit)
    try:
        target = GptTarget(w.root, w.config.target, tiny_cache, current_dataset(tiny_cache), CPU.with_budget(1.5))
        target.warm_up()
        target.close()
        assert not left.exists() and busy.exists()
    finally:
        holder.kill()
        holder.wait()
