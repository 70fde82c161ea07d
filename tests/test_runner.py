"""The runner and the honest metric, each case through a real training subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from attacks import HEAD, UNIFORM, uniform_bpb  # tests/attacks.py: the uniform model and its exact val_bpb
from harness import runner, watch
from harness.dataset import current_dataset
from harness.errors import IntegrityError
from harness.integrity import lock_harness
from harness.paths import HARNESS_DIR
from harness.profiles import CPU

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 2.0
FAST = runner.Limits(startup=60, warmup=5, eval=60, over_budget_tolerance=1.0)


# ---- a small prepared corpus shared by the module ----

@pytest.fixture(scope="module")
def cache(tiny_cache) -> Path:
    return tiny_cache


@pytest.fixture
def dataset(cache):
    return current_dataset(cache)


def run_script(tmp_path, cache, body: str, budget=BUDGET, limits=FAST, **kw) -> runner.RunResult:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(body))
    return runner.run(script, current_dataset(cache), CPU.with_budget(budget), tmp_path / "run.log", cache, limits=limits, **kw)


BIGRAM = """
import time
import torch
import torch.nn as nn
import torch.nn.functional as F
from harness import runtime as rt

V = rt.vocab_size()

class Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.out = nn.Linear(32, V)

    def forward(self, idx):
        return self.out(self.emb(idx{shift}))

model = Bigram()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
batches = rt.train_batches(8, 64)
step = 0
while not rt.done():
    x, y = next(batches)
    loss = F.cross_entropy(model(x).view(-1, V), y.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()
    rt.progress(step, loss.detach(), tokens=x.numel())
    step += 1
{tail}
"""


def bigram(shift="", tail="rt.submit(model)"):
    return BIGRAM.replace("{shift}", shift).replace("{tail}", tail)


def pgid_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- the honest metric ----

def test_a_fake_printed_val_bpb_does_not_change_the_recorded_value(tmp_path, cache):
    r = run_script(tmp_path, cache, bigram(tail='print("val_bpb: 0.000001")\nrt.submit(model)\nprint("val_bpb: 0.000001")'))
    assert r.status == "ok", r.log_tail
    assert "val_bpb: 0.000001" in Path(r.log_path).read_text()
    assert r.val_bpb is not None and r.val_bpb > 0.5
    assert r.steps > 1 and r.tokens > 0 and r.training_seconds <= BUDGET + FAST.over_budget_tolerance


def test_val_bpb_is_computed_by_the_harness_from_logits(tmp_path, cache):
    """A model with uniform logits scores exactly ln(V) nats per text token."""
    r = run_script(tmp_path, cache, HEAD + UNIFORM + "rt.submit(Uniform())\n", budget=0)
    assert r.status == "ok", r.log_tail
    assert r.val_bpb == pytest.approx(uniform_bpb(cache), rel=1e-6)


def test_training_lowers_val_bpb_below_the_untrained_model(tmp_path, cache):
    untrained = run_script(tmp_path / "a", cache, bigram(), budget=0) if (tmp_path / "a").mkdir() is None else None
    trained = run_script(tmp_path / "b", cache, bigram(), budget=3) if (tmp_path / "b").mkdir() is None else None
    assert untrained.status == trained.status == "ok"
    assert untrained.steps == 0
    assert trained.val_bpb < untrained.val_bpb - 0.5


def test_a_model_that_sees_future_tokens_is_invalid(tmp_path, cache):
    r = run_script(tmp_path, cache, bigram(shift=".roll(-1, dims=1)"))
    assert r.status == "invalid"
    assert "causality" in r.reason and "future" in r.reason
    assert r.val_bpb is None


def test_a_model_that_mixes_batch_rows_is_invalid(tmp_path, cache):
    # The next evaluation window is the continuation of this one: mixing rows leaks the future.
    r = run_script(tmp_path, cache, bigram(shift=") + self.emb(idx.roll(1, dims=0)"))
    assert r.status == "invalid"
    assert r.reason.startswith("causality probe failed")


def test_logits_of_the_wrong_shape_are_invalid(tmp_path, cache):
    body = """
    import torch
    from harness import runtime as rt
    class Bad(torch.nn.Module):
        def forward(self, idx):
            return torch.zeros(idx.shape[0], 10)
    rt.submit(Bad())
    """
    r = run_script(tmp_path, cache, body, budget=0)
    assert r.status == "invalid" and "shape" in r.reason


# ---- the budget ----

def test_a_run_that_sleeps_past_the_budget_is_killed_as_timeout(tmp_path, cache):
    pids = []
    body = """
    import time
    from harness import runtime as rt
    rt.progress(0, 1.0, tokens=1)
    time.sleep(1000)
    """
    t0 = time.monotonic()
    r = run_script(tmp_path, cache, body, on_spawn=pids.append)
    assert r.status == "timeout"
    assert "budget" in r.reason
    assert time.monotonic() - t0 < 60
    assert not pgid_alive(pids[0])


def test_finishing_over_budget_is_invalid(tmp_path, cache):
    body = bigram().replace("while not rt.done():", "t_end = time.time() + 5.0\nwhile time.time() < t_end:")
    r = run_script(tmp_path, cache, body)
    assert r.status == "invalid"
    assert "over the 2s budget" in r.reason
    assert r.val_bpb is None


# ---- failures ----

def test_an_exception_is_a_crash_with_the_traceback_tail(tmp_path, cache):
    body = """
    from harness import runtime as rt
    def build_model():
        raise RuntimeError("shape mismatch in layer 3")
    build_model()
    """
    r = run_script(tmp_path, cache, body)
    assert r.status == "crash"
    assert "RuntimeError: shape mismatch in layer 3" in r.reason
    assert "Traceback" in r.log_tail and "build_model" in r.log_tail


def test_a_nan_loss_ends_the_run_early_as_crash(tmp_path, cache):
    # From step 3 on the weights are NaN, as after a diverged update.
    body = bigram().replace("    step += 1", "    step += 1\n    if step == 3:\n        model.out.weight.data.fill_(float('nan'))")
    r = run_script(tmp_path, cache, body, budget=30)
    assert r.status == "crash"
    assert "loss is NaN at step" in r.reason
    assert r.total_seconds < 25


def test_ending_without_submit_is_a_crash(tmp_path, cache):
    r = run_script(tmp_path, cache, "from harness import runtime as rt\nrt.progress(0, 1.0, tokens=1)\n")
    assert r.status == "crash" and "submit" in r.reason


def test_importing_os_is_refused_before_the_run(tmp_path, cache):
    r = run_script(tmp_path, cache, "import os\nfrom harness import runtime as rt\n")
    assert r.status == "invalid" and "imports os" in r.reason


# ---- process control and secrets ----

def test_cancel_kills_the_process_group_within_two_seconds(tmp_path, cache):
    cancel = threading.Event()
    pids, seen = [], threading.Event()
    body = """
    import time
    from harness import runtime as rt
    rt.progress(0, 1.0, tokens=1)
    time.sleep(1000)
    """
    timer = {}

    def on_progress(p):
        if not seen.is_set():
            seen.set()
            timer["t"] = time.monotonic()
            cancel.set()

    r = run_script(tmp_path, cache, body, budget=300, cancel=cancel, on_progress=on_progress, on_spawn=pids.append)
    assert r.status == "cancelled"
    assert time.monotonic() - timer["t"] < 2.0
    assert not pgid_alive(pids[0])


def test_no_secret_reaches_the_training_subprocess(tmp_path, cache, monkeypatch):
    secrets = {
        "ANTHROPIC_API_KEY": "fake-secret-1-" + os.urandom(8).hex(),
        "OPENAI_API_KEY": "fake-secret-2-" + os.urandom(8).hex(),
        "GITHUB_TOKEN": "ghp-test-secret-3",
        "AWS_SECRET_ACCESS_KEY": "aws-test-secret-4",
        "ANTHROPIC_AUTH_TOKEN": "auth-test-secret-5",
    }
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("COCKPIT_HARMLESS", "not on the allow-list")
    monkeypatch.setenv("TZ", "Europe/Paris")  # on the allow-list
    environs = []

    def capture(pid):
        environs.append(environ(pid))

    body = bigram(tail='print("env check")\nrt.submit(model)')
    r = run_script(tmp_path, cache, body, on_spawn=capture)
    assert r.status == "ok", r.log_tail
    env = environs[0]
    assert b"TZ=Europe/Paris" in env and b"COCKPIT_HARMLESS" not in env  # an allow-list (sandbox.allowed_env)
    for k, v in secrets.items():
        assert k.encode() not in env and v.encode() not in env
        assert v not in Path(r.log_path).read_text()


# ---- integrity ----

def test_a_changed_data_shard_is_refused(tmp_path, cache):
    ds = current_dataset(cache)
    val = ds.folder / "val.bin"
    original = val.read_bytes()
    try:
        val.write_bytes(original[:-2] + bytes([original[-2] ^ 1, original[-1]]))
        with pytest.raises(IntegrityError, match="val.bin"):
            run_script(tmp_path, cache, bigram())
        assert not (tmp_path / "run.log").exists()
    finally:
        val.write_bytes(original)


def test_a_changed_harness_file_is_refused(tmp_path, cache):
    copy = tmp_path / "harness"
    shutil.copytree(HARNESS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    lock_harness(cache, copy)
    with open(copy / "evaluate.py", "a") as f:
        f.write("\n# tampered\n")
    with pytest.raises(IntegrityError, match="evaluate.py"):
        run_script(tmp_path, cache, bigram(), harness_dir=copy)
    assert not (tmp_path / "run.log").exists()


# ---- the CLI and the bundled trainer ----

def test_cockpit_train_runs_the_bundled_trainer_and_learns(tmp_path, cache):
    env = {k: v for k, v in os.environ.items()}
    env["COCKPIT_CACHE"] = str(cache)
    # a fresh workspace: the shipped trainer, never the clone's working copy (a session in the
    # clone leaves the agent's train.py there)
    from engine.store.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws")

    def train(budget):
        out = subprocess.run(
            [sys.executable, "-m", "cockpit", "train", "--workspace", str(ws), "--budget", str(budget), "--json", "--device", "cpu"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800,  # catches a hang only
        )
        assert out.returncode == 0, out.stderr + out.stdout
        return json.loads(out.stdout)

    untrained, trained = train(0), train(8)
    assert untrained["status"] == trained["status"] == "ok"
    assert untrained["steps"] == 0 and trained["steps"] > 1
    assert trained["val_bpb"] < untrained["val_bpb"] - 0.3
    assert trained["params"] > 0 and trained["peak_memory_gb"] > 0


def test_engine_and_harness_never_import_textual():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import engine, harness
        for pkg in (engine, harness):
            for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                if m.name != "harness.child":
                    importlib.import_module(m.name)
        bad = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
        print(len([m for m in sys.modules if m.startswith(("engine", "harness"))]))
        assert not bad, bad
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 10  # the walk really imported the harness's modules


# ---- exploits found in review: each must fail to improve the recorded number ----

def test_a_model_that_writes_into_its_input_cannot_change_the_targets(tmp_path, cache):
    # The model overwrites idx[:, 1:] with one token and predicts that token everywhere.
    body = bigram(tail="""
class Cheat(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
    def forward(self, idx):
        idx[:, 1:] = 7
        out = torch.full((*idx.shape, V), -10.0)
        out[..., 7] = 10.0
        return out
rt.submit(Cheat(model))
""")
    r = run_script(tmp_path, cache, body)
    assert r.status == "invalid" and "changes state" in r.reason  # it writes into its input: refused at export


def test_inflating_the_logit_scale_does_not_hide_a_leak_from_the_probe(tmp_path, cache):
    body = """
    import torch
    from harness import runtime as rt
    V = rt.vocab_size()
    B = rt.bos_id()
    class Leak(torch.nn.Module):
        def forward(self, idx):
            out = torch.zeros(*idx.shape, V)
            out[..., B] = -1e6  # BOS targets are not scored: free scale for a naive tolerance
            nxt = idx.roll(-1, dims=1)
            out.scatter_(2, nxt.unsqueeze(-1), 20.0)  # peek at the next token
            return out
    rt.submit(Leak())
    """
    r = run_script(tmp_path, cache, body, budget=0)
    assert r.status == "invalid" and "sees the future" in r.reason


def test_a_row_that_reads_the_next_row_is_invalid(tmp_path, cache):
    # Row r+1 of an evaluation batch continues row r: reading it is reading the future.
    r = run_script(tmp_path, cache, bigram(shift=") + self.emb(idx.roll(-1, dims=0)"))
    assert r.status == "invalid" and r.reason.startswith("causality probe failed")


def test_training_without_progress_reports_still_counts_against_the_budget(tmp_path, cache):
    body = bigram().replace("while not rt.done():", "t_end = time.time() + 6.0\nwhile time.time() < t_end:").replace(
        "    rt.progress(step, loss.detach(), tokens=x.numel())\n", "")
    r = run_script(tmp_path, cache, body)
    assert r.status == "invalid" and "over the 2s budget" in r.reason


def test_weights_that_diverge_to_nan_are_a_crash_not_a_causality_failure(tmp_path, cache):
    body = bigram(tail="model.out.weight.data.fill_(float('nan'))\nrt.submit(model)")
    r = run_script(tmp_path, cache, body)
    assert r.status == "crash" and "diverged" in r.reason


def test_a_failing_progress_callback_does_not_take_the_run_down(tmp_path, cache):
    def boom(p):
        raise RuntimeError("display broke")

    r = run_script(tmp_path, cache, bigram(), on_progress=boom)
    assert r.status == "ok"


def _watch_subprocess(code: str, **kw):
    rfd, wfd = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", code, str(wfd)], pass_fds=(wfd,), start_new_session=True)
    os.close(wfd)
    w = watch.Watch(time.monotonic())
    t0 = time.monotonic()
    try:
        out = watch.watch(proc, rfd, w, CPU.with_budget(5), FAST, threading.Event(), None)
    finally:
        os.close(rfd)
        runner.kill_group(proc)
    return out, time.monotonic() - t0


def test_garbage_on_the_harness_pipe_is_invalid_not_an_exception():
    (status, reason), _ = _watch_subprocess("import os, sys, time; os.write(int(sys.argv[1]), b'\\xff oops\\n'); time.sleep(30)")
    assert status == "invalid" and "malformed" in reason


def test_a_killed_child_is_a_crash_even_when_a_descendant_holds_the_pipe():
    code = "import os, sys, time, signal\nif os.fork() == 0:\n    time.sleep(60)\nelse:\n    time.sleep(0.5); os.kill(os.getpid(), signal.SIGKILL)"
    (status, reason), seconds = _watch_subprocess(code)
    assert status == "crash" and "SIGKILL" in reason
    assert seconds < 5


@pytest.mark.parametrize("src", [
    "import torch.nn.functional as F\nF.cross_entropy = lambda *a, **k: 0",
    "import torch\ntorch.Tensor.sum = None",
    "from harness import runtime as rt\nrt._get().dataset.stream('val')",
    "from harness.runtime import evaluate",
    "import harness.evaluate",
    "from harness import runtime as rt\nx = getattr(rt, '_get')",
    "import random\nrandom._os.system('id')",
    "import torch\ntorch.serialization.pickle.loads(b'')",
    "import torch.multiprocessing as mp",
    "from torch.utils.data import DataLoader",
    "import os",
    "x = open('/etc/passwd').read()",
    "import torch\nt = torch.from_file('/x', size=1)",
])
def test_the_guard_refuses_the_ways_to_game_the_metric(src):
    from harness.guard import check

    assert check(src) is not None


def test_the_guard_accepts_the_bundled_trainer_and_its_settings():
    from harness.guard import check

    from engine.store.workspace import TRAINER

    assert check(TRAINER.read_text()) is None
    assert check("import torch\ntorch.backends.cuda.matmul.allow_tf32 = True\ntorch._inductor.config.coordinate_descent_tuning = True") is None


# ---- the spare: the next run's child, started while this one trains ----

@pytest.fixture(autouse=True, scope="module")
def _no_spare_outlives_this_module():
    yield
    runner.shutdown_spare()


def gone(pid: int, timeout: float = 60.0) -> bool:
    """True once the process has exited (a zombie counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_the_next_run_takes_the_spare_and_a_used_child_is_never_reused(tmp_path, cache):
    runner.shutdown_spare()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = run_script(tmp_path / "a", cache, bigram())
    assert first.status == "ok" and first.spare_seconds is None  # nothing was waiting: a fresh child
    spare = runner.spare_pid()
    assert spare is not None  # started for the next run once this one had its verdict (CPU profile)
    pids = []
    second = run_script(tmp_path / "b", cache, bigram(), on_spawn=pids.append)
    assert second.status == "ok", second.log_tail
    assert pids == [spare] and second.spare_seconds is not None and second.spare_seconds > 0
    assert second.ready_seconds is not None and second.ready_seconds < second.startup_seconds
    assert "harness: profile cpu" in Path(second.log_path).read_text()
    assert gone(spare)
    assert runner.spare_pid() not in (None, spare)  # the run after it gets a new process


def test_a_spare_started_for_another_environment_is_not_used(tmp_path, cache, monkeypatch):
    old = runner.start_spare(cache, current_dataset(cache))
    monkeypatch.setenv("TZ", "Pacific/Auckland")  # a variable the run gets (sandbox.allowed_env)
    pids = []
    r = run_script(tmp_path, cache, bigram(), on_spawn=pids.append)
    assert r.status == "ok" and r.spare_seconds is None
    assert pids[0] != old and gone(old)


def test_a_spare_that_died_is_replaced_by_a_fresh_child(tmp_path, cache):
    pid = runner.start_spare(cache, current_dataset(cache))
    os.kill(pid, 9)
    assert gone(pid)
    pids = []
    r = run_script(tmp_path, cache, bigram(), on_spawn=pids.append)
    assert r.status == "ok", r.log_tail
    assert r.spare_seconds is None and pids[0] != pid


def test_a_spare_that_imported_the_harness_while_a_file_was_tampered_with_is_not_used(tmp_path, cache):
    # The next run's spare starts while a run's train.py (code an LLM wrote; the guard is "not a
    # sandbox") is still running. If that code rewrites a harness file and puts it back later,
    # the spare has imported the rewritten harness while the next run's hash check passes: the
    # spare must not be handed the run. (Here the test itself plays the tampering train.py.)
    copy = tmp_path / "harness"
    shutil.copytree(HARNESS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    lock_harness(cache, copy)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    runner.shutdown_spare()
    original = (copy / "evaluate.py").read_bytes()

    def tamper(p):
        (copy / "evaluate.py").write_bytes(original + b"\nTAMPERED = True\n")

    first = run_script(tmp_path / "a", cache, bigram(), harness_dir=copy, on_progress=tamper)
    assert first.status == "ok", first.log_tail
    spare = runner.spare_pid()
    assert spare is not None  # started at the verdict, while the file was rewritten
    time.sleep(6.0)  # it has imported the harness by now
    (copy / "evaluate.py").write_bytes(original)  # put back: the hashes match the lock again
    pids = []
    second = run_script(tmp_path / "b", cache, bigram(), harness_dir=copy, on_spawn=pids.append)
    assert second.status == "ok", second.log_tail
    assert second.spare_seconds is None and pids[0] != spare and gone(spare)


def environ(pid: int) -> bytes:
    """A process's environment; read again while the kernel is still setting it up after exec."""
    deadline = time.monotonic() + 5.0
    while not (env := Path(f"/proc/{pid}/environ").read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return env


def test_no_secret_reaches_a_spare(tmp_path, cache, monkeypatch):
    secrets = {"ANTHROPIC_API_KEY": "fake-secret-s1-" + os.urandom(8).hex(), "GH_TOKEN": "fake-secret-s2"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    pid = runner.start_spare(cache, current_dataset(cache))
    env = environ(pid)
    assert b"PYTHONPATH=" in env
    pids = []
    r = run_script(tmp_path, cache, bigram(), on_spawn=pids.append)
    assert r.status == "ok" and pids == [pid]  # the secrets do not make it incompatible: they never reach it
    for k, v in secrets.items():
        assert k.encode() not in env and v.encode() not in env


SPARE_OWNER = """
import os, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from harness import runner
from harness.dataset import current_dataset
print(runner.start_spare(Path({cache!r}), current_dataset(Path({cache!r}))), flush=True)
{then}
"""


def _spare_owner(cache, then: str):
    code = SPARE_OWNER.format(root=str(ROOT), cache=str(cache), then=then)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def test_a_spare_dies_when_its_runner_is_killed(cache):
    owner, pid = _spare_owner(cache, "time.sleep(60)")
    assert not gone(pid, timeout=0.5)
    owner.kill()  # SIGKILL: no atexit, only the spare's orphan watchdog
    owner.wait()
    assert gone(pid)


def test_a_spare_is_shut_down_when_its_runner_exits(cache):
    owner, pid = _spare_owner(cache, "time.sleep(0.5)")
    assert owner.wait(timeout=30) == 0
    assert gone(pid, timeout=60.0)  # its end is the event; the deadline only catches one that never ends


def test_shutdown_spare_kills_the_waiting_spare(cache):
    pid = runner.start_spare(cache, current_dataset(cache))
    runner.shutdown_spare()
    assert runner.spare_pid() is None and gone(pid, timeout=60.0)


def test_a_child_that_dies_while_importing_leaves_its_error_in_the_log(tmp_path, cache, monkeypatch):
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "torch.py").write_text("raise ImportError('planted: torch is broken here')\n")
    monkeypatch.setenv("PYTHONPATH", str(planted))
    r = run_script(tmp_path, cache, bigram())
    assert r.status == "crash" and "exited with status" in r.reason
    assert "planted: torch is broken here" in r.log_tail


def test_cockpit_profile_writes_a_step_profile_to_the_log_and_a_trace(tmp_path, cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COCKPIT_PROFILE", "prof")  # relative to where cockpit runs, not the child's folder
    r = run_script(tmp_path, cache, bigram(), budget=3)
    assert r.status == "ok" and r.steps > 13
    log = (tmp_path / "run.log").read_text()
    summary = next(line for line in log.splitlines() if line.startswith("harness: profile of steps 10-12:"))
    assert "ms per step" in summary
    assert "harness: profile by kind:" in log and "matmul" in log  # the bigram's output layer is a matmul
    traces = list((tmp_path / "prof").glob("trace-*.json"))
    assert len(traces) == 1 and str(traces[0]) in summary
    assert json.loads(traces[0].read_text())["traceEvents"]
    assert log.count("harness: profile of steps") == 1  # three steps profiled once, not again


def test_a_run_that_ends_inside_the_profiled_steps_reports_what_it_recorded(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("COCKPIT_PROFILE", str(tmp_path / "prof"))
    body = bigram().replace("while not rt.done():", "while not rt.done() and step < 11:")
    r = run_script(tmp_path, cache, body, budget=3)
    assert r.status == "ok" and r.steps == 11
    log = (tmp_path / "run.log").read_text()
    assert "harness: profile of steps 10-10:" in log
    assert len(list((tmp_path / "prof").glob("trace-*.json"))) == 1


def test_a_run_that_ends_as_profiling_starts_says_nothing_was_recorded(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("COCKPIT_PROFILE", str(tmp_path / "prof"))
    body = bigram().replace("while not rt.done():", "while not rt.done() and step < 10:")
    r = run_script(tmp_path, cache, body, budget=3)
    assert r.status == "ok" and r.steps == 10
    assert "harness: profile: training ended before step 10 finished; nothing recorded" in (tmp_path / "run.log").read_text()


def test_without_cockpit_profile_nothing_is_profiled(tmp_path, cache, monkeypatch):
    monkeypatch.delenv("COCKPIT_PROFILE", raising=False)
    # 20 steps whatever the machine's speed (the profiler's steps are 10-12), within a budget that
    # a busy machine does not run out of
    body = bigram().replace("while not rt.done():", "while not rt.done() and step < 20:")
    r = run_script(tmp_path, cache, body, budget=120)
    assert r.status == "ok" and r.steps == 20
    assert "harness: profile of steps" not in (tmp_path / "run.log").read_text()


def test_evaluation_batches_are_capped_at_64_rows_whatever_the_training_batch(tmp_path, cache):
    """The evaluation holds fp32 rows x T x vocab log-probs: a 96-row training batch must not make
    evaluation run out of memory after the whole budget. The model is exported for 64 rows."""
    body = bigram().replace("batches = rt.train_batches(8, 64)", "batches = rt.train_batches(96, rt.profile().seq_len)")
    r = run_script(tmp_path, cache, body, budget=1)
    assert r.status == "ok", r.reason
    assert f"batches of 64 x {CPU.seq_len}" in (tmp_path / "run.log").read_text()


# ---- a busy machine: verdicts that do not depend on what else runs ----

def test_on_a_slow_machine_the_step_in_progress_may_finish_past_the_budget(tmp_path, cache):
    """Each step takes 3 s (a loaded machine): the one running when the 16 s budget ends finishes
    about 2 s past it. The fixed 1 s tolerance alone would make this honest run invalid; three
    median steps (9 s, under the cap of 10 s + a tenth of the budget) let it finish."""
    body = bigram().replace("    rt.progress(step, loss.detach(), tokens=x.numel())",
                            "    time.sleep(3.0)\n    rt.progress(step, loss.detach(), tokens=x.numel())")
    r = run_script(tmp_path, cache, body, budget=16)
    assert r.status == "ok", (r.reason, r.log_tail)
    assert r.training_seconds > 16 + FAST.over_budget_tolerance  # past the fixed tolerance, within the step-scaled one


def test_one_slow_step_does_not_buy_extra_training_time(tmp_path, cache):
    """The tolerance follows the median step: a single long pause cannot stretch it."""
    body = bigram().replace("while not rt.done():", "t_end = time.time() + 7.0\nwhile time.time() < t_end:").replace(
        "    rt.progress(step, loss.detach(), tokens=x.numel())",
        "    if step == 3:\n        time.sleep(2.5)\n    rt.progress(step, loss.detach(), tokens=x.numel())")
    r = run_script(tmp_path, cache, body, budget=2)
    assert r.status == "invalid" and "over the 2s budget" in r.reason and r.timing


def test_an_honest_evaluation_passes_while_other_processes_take_the_cores(tmp_path, cache):
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 2))]
    try:
        r = run_script(tmp_path, cache, bigram(), budget=3)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert r.status == "ok", (r.reason, r.log_tail)
