"""The red team's attacks on the evaluation (issue 22, points 5, 19, 20, 24), each a regression
test run for real: a train.py through the runner, or the model file an attacker can write.

- state kept in the exported graph through a view the schema does not annotate (`_unsafe_view`);
- a model that reads ahead everywhere but at T-2, exported with a 1-row batch (the old probe's
  fixed cuts overwrote each other there);
- a `.pth` planted in site-packages by train.py with the sandbox off, to rewrite the verdict;
- evaluation on a loaded machine: its limit is its own CPU time, and a hung evaluator still ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness import modelfile, runner, sandbox
from harness.dataset import current_dataset
from harness.profiles import CPU
import attacks as attacks_shared
from attacks import FAST, HEAD, UNIFORM

BOXED = sandbox.check() is None
PRELUDE = HEAD + UNIFORM  # tests/attacks.py


@pytest.fixture(scope="module")
def cache(tiny_cache) -> Path:
    return tiny_cache


@pytest.fixture(scope="module")
def uniform_bpb(tiny_cache) -> float:
    return attacks_shared.uniform_bpb(tiny_cache)


def run_script(tmp_path: Path, cache: Path, body: str, limits=FAST, **kw) -> runner.RunResult:
    script = tmp_path / "train.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    log = tmp_path / "runs" / "t" / "1" / "run.log"
    kw.setdefault("sandbox", "auto" if BOXED else "off")
    return runner.run(script, current_dataset(cache), CPU.with_budget(0.0), log, cache, limits=limits, spare=False, **kw)


def logged(r: runner.RunResult) -> str:
    return Path(r.log_path).read_text(errors="replace")


# ---- 19. no state in the exported graph, whatever the schemas say ----

def _unsafe_view_graph(folder: Path) -> None:
    """What an attacker's own writer puts on disk (the training process is theirs): each call
    adds 1 to a buffer through `_unsafe_view` (a view whose schema has no alias annotation) and
    returns the buffer's sum with the tokens, so a kept write shows in the next call's output."""
    folder.mkdir(parents=True)
    ref = lambda i: {"ref": i}  # noqa: E731 -- slots: 0 the buffer, 1 idx, then one per node
    nodes = [
        {"op": "aten._unsafe_view.default", "args": {"list": [ref(0), {"list": [-1]}]}, "kwargs": {}},
        {"op": "aten.add_.Tensor", "args": {"list": [ref(2), 1.0]}, "kwargs": {}},
        {"op": "aten.sum.default", "args": {"list": [ref(0)]}, "kwargs": {}},
        {"op": "aten._to_copy.default", "args": {"list": [ref(1)]}, "kwargs": {"dtype": {"dtype": "float32"}}},
        {"op": "aten.add.Tensor", "args": {"list": [ref(5), ref(4)]}, "kwargs": {}},
    ]
    graph = {"format": 1, "inputs": [{"tensor": "t0"}, {"user": True}], "nodes": nodes, "output": ref(6)}
    (folder / modelfile.GRAPH).write_text(json.dumps(graph))
    torch.save({"t0": torch.zeros(4, 16)}, folder / modelfile.TENSORS)


def test_a_graph_that_writes_through_an_unsafe_view_of_its_buffer_is_refused_or_keeps_nothing(tmp_path):
    _unsafe_view_graph(tmp_path / "model")
    idx = torch.zeros(1, 8, dtype=torch.long)
    try:
        program = modelfile.read(tmp_path / "model", "cpu")
    except modelfile.ModelFileError as e:
        assert "changes state" in str(e)
        return
    first, second = program(idx.clone()), program(idx.clone())
    assert torch.equal(first, second), "the graph kept what it wrote into its buffer from one call to the next"


def test_a_write_the_checks_would_miss_still_cannot_last_to_the_next_call(tmp_path):
    """Defence in depth: the evaluator gives each call fresh copies of the parameters and buffers."""
    _unsafe_view_graph(tmp_path / "model")
    raw = json.loads((tmp_path / "model" / modelfile.GRAPH).read_text())
    tensors = torch.load(tmp_path / "model" / modelfile.TENSORS, weights_only=True)
    ops = [(modelfile._op(n["op"]), n["args"], n["kwargs"]) for n in raw["nodes"]]
    program = modelfile.Program.__new__(modelfile.Program)  # as if check_pure had missed the write
    program.inputs, program.nodes, program.output = raw["inputs"], raw["nodes"], raw["output"]
    program.device = torch.device("cpu")
    program.tensors, program.ops = tensors, ops
    program.free, program.blank = [[] for _ in ops], [False for _ in ops]
    idx = torch.zeros(1, 8, dtype=torch.long)
    assert torch.equal(program(idx.clone()), program(idx.clone()))
    assert float(tensors["t0"].abs().sum()) == 0.0


@pytest.mark.parametrize("how", ["through rt.submit", "with the training-side checks patched out"])
def test_a_model_that_remembers_every_row_through_an_unsafe_view_is_invalid(tmp_path, cache, how):
    """The red team's memory: each call copies its rows into a buffer through `_unsafe_view`.
    Before, the graph was accepted and kept the memory (its logits here stay uniform, so nothing
    else could notice it)."""
    # past the static guard, as test_sandbox's attacks get (the training process is the attacker's)
    patch = ("torch.fx.graph_module._exec_with_source('import harness.modelfile as mf, torch\\n"
             "mf.check_pure = lambda *a, **k: None\\n"
             "torch.export.ExportedProgram.run_decompositions = lambda self, *a, **k: self\\n', {})\n"
             ) if how.startswith("with") else ""
    r = run_script(tmp_path, cache, patch + textwrap.dedent("""
    class Memory(Uniform):
        def __init__(self):
            super().__init__()
            self.register_buffer("mem", torch.zeros(64 * 256))
        def forward(self, idx):
            flat = torch.ops.aten._unsafe_view(self.mem, [-1])
            flat[: idx.numel()].copy_(idx.flatten().float())
            return super().forward(idx) + self.mem[:1] * 0
    print("ATTACK memory: submitted", flush=True)
    rt.submit(Memory())
    """))
    assert "ATTACK memory: submitted" in logged(r)
    assert r.status == "invalid" and "changes state" in r.reason, (r.status, r.reason)


# ---- 20. the evaluator's own batch shape; probes at random positions always ----

def test_a_model_that_peeks_everywhere_but_at_t_minus_2_exported_from_one_row_is_caught(tmp_path, cache):
    r = run_script(tmp_path, cache, """
    class Sneaky(Uniform):
        def forward(self, idx):
            T = idx.shape[1]
            peek = F.one_hot(idx.roll(-1, dims=1), V).float() * 30
            return torch.where((torch.arange(T) != T - 2)[None, :, None], peek, super().forward(idx))
    x, y = next(rt.train_batches(1))  # the last training batch has one row: the export takes that shape
    print(f"ATTACK one-row: batch {tuple(x.shape)}", flush=True)
    rt.submit(Sneaky())
    """)
    assert "ATTACK one-row: batch (1, 256)" in logged(r)
    assert r.status == "invalid" and "causality probe failed" in r.reason, (r.status, r.reason, r.val_bpb)


def test_an_honest_model_exported_from_one_row_is_scored_like_any_other(tmp_path, cache, uniform_bpb):
    r = run_script(tmp_path, cache, """
    x, y = next(rt.train_batches(1))
    rt.submit(Uniform())
    """)
    assert r.status == "ok", (r.status, r.reason)
    assert r.val_bpb == pytest.approx(uniform_bpb, rel=1e-6)


# ---- 5. the evaluation's limit is its own CPU time, not the wall clock ----

WORK = """
class Work(Uniform):
    '''Honest, and some arithmetic per call: a few CPU seconds of evaluation in all.'''
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, 768)
        self.mid = torch.nn.Sequential(torch.nn.Linear(768, 768), torch.nn.ReLU(), torch.nn.Linear(768, 768))
        self.out = torch.nn.Linear(768, V)
    def forward(self, idx):
        return self.out(torch.relu(self.mid(self.emb(idx))))
x, y = next(rt.train_batches(8))
rt.submit(Work())
"""

CORE = max(os.sched_getaffinity(0))  # the evaluation's core, in the load test


def _evaluator_pids() -> list[int]:
    """The evaluation process (python, inside bwrap or not) among this test's descendants."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "harness.evaluator" in cmd and not os.path.basename(cmd[0]).startswith("bwrap"):
            out.append(p.pid)
    return out


def _on_phase(phase: str, action):
    """An on_progress callback that runs `action` in a thread once the run reaches `phase`."""
    import threading

    done = threading.Event()

    def on_progress(p):
        if p.phase == phase and not done.is_set():
            done.set()
            threading.Thread(target=action, daemon=True).start()

    return on_progress


def _cpu_line(r: runner.RunResult) -> str:
    return next((ln for ln in logged(r).splitlines() if "CPU" in ln and ln.startswith("evaluator:")), "")


def test_evaluation_on_a_core_shared_with_busy_loops_is_not_a_timeout(tmp_path, cache):
    """Three busy loops share the evaluation's one core from the export on: the evaluation takes
    about four times its CPU time in wall time, past a limit that its CPU time is well within."""
    loops: list[subprocess.Popen] = []

    def load():
        for _ in range(3):
            loops.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                          preexec_fn=lambda: os.sched_setaffinity(0, {CORE})))

    limits = runner.Limits(startup=120, warmup=5, eval=8, over_budget_tolerance=1.0, eval_stall=30)
    try:
        r = run_script(tmp_path, cache, WORK, limits=limits, env_extra={"COCKPIT_CPUS": str(CORE)},
                       on_progress=_on_phase("export", load))
    finally:
        for p in loops:
            p.kill()
            p.wait()
    assert len(loops) == 3
    assert r.status == "ok", (r.status, r.reason, _cpu_line(r))
    assert r.eval_seconds > limits.eval, f"the load did not slow the evaluation ({r.eval_seconds:.1f}s): {_cpu_line(r)}"


def test_an_evaluator_stopped_for_longer_than_its_limit_still_finishes(tmp_path, cache, uniform_bpb):
    import signal
    import time

    def pause():
        pids = []
        while not pids:  # started at the export; found as soon as it exists
            pids = _evaluator_pids()
            time.sleep(0.05)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(5)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    limits = runner.Limits(startup=60, warmup=5, eval=3, over_budget_tolerance=1.0, eval_stall=20)
    r = run_script(tmp_path, cache, "rt.submit(Uniform())\n", limits=limits, on_progress=_on_phase("eval", pause))
    assert r.status == "ok", (r.status, r.reason)
    assert r.val_bpb == pytest.approx(uniform_bpb, rel=1e-6)
    assert r.eval_seconds > 5


def test_a_hung_evaluator_is_still_stopped(tmp_path, cache):
    import signal
    import time

    def hang():
        pids = []
        while not pids:
            pids = _evaluator_pids()
            time.sleep(0.05)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)  # never continued: it uses no CPU from here on

    limits = runner.Limits(startup=60, warmup=5, eval=60, over_budget_tolerance=1.0, eval_stall=4)
    t0 = time.monotonic()
    r = run_script(tmp_path, cache, "rt.submit(Uniform())\n", limits=limits, on_progress=_on_phase("eval", hang))
    assert r.status == "timeout" and "hangs" in r.reason, (r.status, r.reason)
    assert time.monotonic() - t0 < 50
    assert _evaluator_pids() == []


# ---- 24. without the sandbox, a .pth planted in site-packages does not reach the evaluation ----

DRIVER = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from harness import runner
from harness.dataset import current_dataset
from harness.profiles import CPU
limits = runner.Limits(startup=60, warmup=5, eval=60, over_budget_tolerance=1.0)
r = runner.run(Path({script!r}), current_dataset(Path({cache!r})), CPU.with_budget(0.0), Path({log!r}), Path({cache!r}),
               limits=limits, spare=False, sandbox="off")
print("RESULT " + r.to_json(), flush=True)
"""

# The planted line: every verdict this process writes on a pipe says val_bpb 0.001.
EVIL = (r"""import os; _w = os.write; os.write = lambda fd, b, _w=_w: _w(fd, b.replace(b'"bpb": ', """
        r"""b'"bpb": 0.001, "was": ', 1) if b.startswith(b'{"type": "result"') else b)""" "\n")
PLANT = """
import os, site
where = os.path.join(site.getsitepackages()[0], "zz_verdict.pth")
with open(where, "w") as f:
    f.write(evil)
result = "planted " + where
"""


def test_a_pth_planted_in_site_packages_without_the_sandbox_does_not_change_the_verdict(tmp_path, cache, uniform_bpb):
    """A throwaway virtual environment (never the real one) whose site-packages reaches the real
    one's through a path line; the runner runs in it with the sandbox off, and train.py plants a
    `.pth` there that rewrites any verdict line to val_bpb 0.001."""
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site_dir = Path(subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                                   capture_output=True, text=True).stdout.strip())
    assert site_dir.is_relative_to(venv)
    (site_dir / "real.pth").write_text(sysconfig.get_path("purelib") + "\n")
    script = tmp_path / "train.py"
    script.write_text(PRELUDE + textwrap.dedent(f"""
    g = {{"evil": {EVIL!r}}}
    torch.fx.graph_module._exec_with_source({PLANT!r}, g)
    print("ATTACK pth: " + g["result"], flush=True)
    rt.submit(Uniform())
    """))
    log = tmp_path / "runs" / "t" / "1" / "run.log"
    repo = str(Path(__file__).resolve().parents[1])
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(repo=repo, script=str(script), cache=str(cache), log=str(log)))
    p = subprocess.run([str(py), str(driver)], capture_output=True, text=True, timeout=300)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, p.stdout[-2000:] + p.stderr[-2000:]
    r = json.loads(line[7:])
    assert f"ATTACK pth: planted {site_dir}" in log.read_text(), log.read_text()[-2000:]
    assert (site_dir / "zz_verdict.pth").exists()
    assert r["status"] == "ok", r
    assert r["val_bpb"] == pytest.approx(uniform_bpb, rel=1e-6)
