"""The training clock against train.py (issue #22, points 21, 25 and 28): the clock's rules as pure
functions with table tests, and each attack from the red team run for real through the runner.

Every attack prints `ATTACK <name>: <what happened>` to its log, so each test also checks that the
attack really ran (the guard did not stop it first)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from harness import runner
from harness.dataset import current_dataset
from harness.profiles import CPU

FAST = runner.Limits(startup=60, warmup=5, eval=60, over_budget_tolerance=1.0)

# The escape hatch of tests/test_sandbox.py (any Python source, past the guard), and the
# runtime's session object, reached the way the red team did: through gc.get_objects().
PRELUDE = '''
import time
import torch
import torch.nn.functional as F
from harness import runtime as rt

def attack(name, src, **values):
    g = dict(values)
    src = "import os, sys, gc\\n" + src
    try:
        torch.fx.graph_module._exec_with_source(src, g)
        print(f"ATTACK {name}: " + str(g.get("result", "done")), flush=True)
    except Exception as e:
        print(f"ATTACK {name}: blocked ({type(e).__name__}: {e})", flush=True)
    return g

V = rt.vocab_size()
rt.fraction()  # the runtime's session exists from here on
S = attack("session", "S = next(o for o in gc.get_objects() if type(o).__name__ == '_Session'); result = 'found'")["S"]
model = torch.nn.Sequential(torch.nn.Embedding(V, 32), torch.nn.Linear(32, V))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
batches = rt.train_batches(8, 64)

def one_step():
    x, y = next(batches)
    loss = F.cross_entropy(model(x).view(-1, V), y.reshape(-1))
    loss.backward(); opt.step(); opt.zero_grad()
    return loss.detach(), x.numel()
'''


@pytest.fixture(scope="module")
def cache(tiny_cache) -> Path:
    return tiny_cache


def run_attack(tmp_path, cache, body: str, budget=2.0, limits=FAST, name="train.py") -> runner.RunResult:
    script = tmp_path / name
    script.write_text(PRELUDE + textwrap.dedent(body))
    log = tmp_path / (name + ".log")
    return runner.run(script, current_dataset(cache), CPU.with_budget(budget), log, cache, limits=limits, spare=False)


def attacks(r: runner.RunResult) -> dict[str, str]:
    out = {}
    for line in Path(r.log_path).read_text(errors="replace").splitlines():
        if line.startswith("ATTACK "):
            name, _, what = line[7:].partition(": ")
            out[name] = what
    return out


# ---- 21. the protocol: each mark of the clock once, in order ----

@pytest.mark.parametrize("phase, kind, after, broken", [
    ("launched", "ready", "ready", False),
    ("launched", "step", "launched", True),
    ("launched", "exporting", "launched", True),
    ("launched", "trained", "launched", True),
    ("ready", "ready", "ready", True),  # the attack: "ready" again restarts nothing, the run is invalid
    ("ready", "step", "training", False),
    ("ready", "exporting", "exporting", False),  # no step at all (an untrained model)
    ("ready", "trained", "trained", False),
    ("training", "ready", "training", True),
    ("training", "step", "training", False),
    ("training", "exporting", "exporting", False),
    ("training", "trained", "trained", False),
    ("exporting", "ready", "exporting", True),
    ("exporting", "step", "exporting", False),  # a report after the export began moves nothing
    ("exporting", "exporting", "exporting", True),  # a forged early "exporting", then the real one
    ("exporting", "trained", "trained", False),
    ("trained", "ready", "trained", False),  # the run is over: nothing it says counts
    ("training", "result", "training", False),  # not the clock's (and never a verdict)
    ("launched", "crash", "launched", False),  # a verdict, not a mark of the clock
])
def test_the_protocol_takes_each_mark_of_the_clock_once_and_in_order(phase, kind, after, broken):
    new, reason = runner.protocol(phase, kind)
    assert (new, reason is not None) == (after, broken)


def test_whatever_the_child_says_its_whole_life_is_bounded_at_launch():
    """A run that has said "exporting" is killed 60 s later, unless that is past the bound fixed
    at launch: startup cap + allowance cap + budget + tolerance cap + slack."""
    limits = runner.Limits(startup=60, warmup=10, eval=60, over_budget_tolerance=2.0)
    w = runner._Watch(t_go=0.0, t_ready=1.0, t_first=2.0, t_exporting=10_000.0, phase="exporting")
    deadline, why = runner._deadline(w, CPU.with_budget(10), limits)
    assert deadline == limits.wall(10) == 60 + (10 + 60) + 10 + (10 + 1) + 5
    assert "most a run may take" in why


def test_resending_ready_does_not_restart_the_clock(tmp_path, cache):
    """The red team's train.py re-sent "ready" every few seconds through the runtime's session
    and trained for 4x the budget with ~0 s of recorded training. A second "ready" now makes the
    run invalid, and it is killed at once."""
    body = """
    t_end = time.monotonic() + 8.0  # 4x the 2 s budget
    last, step = time.monotonic(), 0
    while time.monotonic() < t_end:
        if time.monotonic() - last > 0.5:
            S.send("ready", pid=0, profile="cpu", budget=2.0)
            S.t_ready = last = time.monotonic()
            print("ATTACK ready: sent again", flush=True)
        loss, n = one_step()
        rt.progress(step, loss, tokens=n); step += 1
    print("ATTACK end: trained 4x the budget", flush=True)
    rt.submit(model)
    """
    r = run_attack(tmp_path, cache, body)
    assert attacks(r)["session"] == "found" and "ready" in attacks(r)
    assert r.status == "invalid" and "'ready' a second time" in r.reason, (r.status, r.reason, r.training_seconds)
    assert "end" not in attacks(r)  # killed at the second "ready", long before the attack's end
