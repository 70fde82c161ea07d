"""The training clock against train.py (issue #22, points 21, 25 and 28): the clock's rules as pure
functions with table tests, and each attack from the red team run for real through the runner.

Every attack prints `ATTACK <name>: <what happened>` to its log, so each test also checks that the
attack really ran (the guard did not stop it first)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness import clock, runner, watch
from harness.dataset import current_dataset
from harness.profiles import CPU
from attacks import ATTACK, FAST, HEAD

# The escape hatch (tests/attacks.py: any Python source, past the guard), and the runtime's
# session object, reached the way the red team did: through gc.get_objects().
PRELUDE = HEAD + ATTACK + '''
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
    w = watch.Watch(t_go=0.0, t_ready=1.0, t_first=2.0, t_exporting=10_000.0, phase="exporting")
    deadline, why = watch.deadline(w, CPU.with_budget(10), limits)
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
            print("ATTACK ready: sent again", flush=True)  # before: the runner may end the process at once
            S.send("ready", pid=0, profile="cpu", budget=2.0)
            S.t_ready = last = time.monotonic()
        loss, n = one_step()
        rt.progress(step, loss, tokens=n); step += 1
    print("ATTACK end: trained 4x the budget", flush=True)
    rt.submit(model)
    """
    r = run_attack(tmp_path, cache, body)
    assert attacks(r)["session"] == "found" and "ready" in attacks(r)
    assert r.status == "invalid" and "'ready' a second time" in r.reason, (r.status, r.reason, r.training_seconds)
    assert "end" not in attacks(r)  # killed at the second "ready", long before the attack's end


# ---- 25. the allowance: the same for every run, fixed before the first, by harness code ----

@pytest.mark.parametrize("first, export, allowance", [
    (1.0, 2.0, (2.0 + 6.0, 6.0)),  # twice the reference's first step, three times its export
    (0.1, 0.1, (1.0 + 5.0, 5.0)),  # at least a second, and 5 s for the export
    (30.0, 2.0, (10.0 + 6.0, 6.0)),  # the first step at most the warm-up allowance
    (3.0, 40.0, (6.0 + 60.0, 60.0)),  # the export at most the export allowance
])
def test_the_allowance_is_the_reference_measurement_scaled_and_capped(first, export, allowance):
    from harness import calibrate

    assert calibrate.allowance(first, export, 10.0, 60.0) == allowance


@pytest.mark.parametrize("calibrated, stored, allowance", [
    ((5.0, 2.0), [], (5.0, 2.0)),  # a new session: the harness's measurement
    ((5.0, 2.0), [4.0, 4.0], (4.0, 2.0)),  # a resumed one keeps what its baselines ran under
    ((5.0, 2.0), [61.0, 4.0], (4.0, 2.0)),  # never the largest of what is stored
    ((5.0, 2.0), [1.5], (1.5, 1.5)),  # the export's part is never more than the whole
])
def test_the_session_allowance_is_calibrated_or_what_its_baselines_ran_under(calibrated, stored, allowance):
    from engine.run.targets import session_allowance

    assert session_allowance(calibrated, stored) == allowance


def gpt_target(tmp_path, cache, budget):
    from engine.config import TargetConfig
    from engine.run.targets import GptTarget

    (tmp_path / "trainer").mkdir(exist_ok=True)
    return GptTarget(tmp_path, TargetConfig(), cache, current_dataset(cache), CPU.with_budget(budget))


SANDBAG = """
role = "baseline" if S.credit is None else "experiment"  # a baseline had no allowance yet
print(f"ATTACK role: {role}", flush=True)

class Slow(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.exporting = inner, False
    def forward(self, idx):
        if self.exporting:
            time.sleep(6.0)  # the export is "slow": its time was the baseline's own allowance
        return self.inner(idx)

if role == "baseline":
    time.sleep(4.0)  # idle before the first step: its warm-up was the baseline's own allowance
step = 0
while rt.fraction() < (0.3 if role == "baseline" else 1.0):  # a baseline trains only 30%
    loss, n = one_step()
    rt.progress(step, loss, tokens=n); step += 1
m = Slow(model)
m.exporting = role == "baseline"
rt.submit(m)
"""


def test_a_run_cannot_tell_a_baseline_nor_inflate_the_allowance_of_later_runs(tmp_path, cache):
    """The red team's sandbagging train.py: as a baseline (no allowance yet) it idled before its
    first step, made its export slow and trained 30%, so the session's allowance became 61-63 s
    on a 10 s budget, and the same code as an experiment trained 54.6 s with 3.3 s recorded. Now
    every run gets the same allowance, measured on the harness's own reference before the first
    run: the baseline cannot tell it is one, and nothing it does changes what later runs get."""
    target = gpt_target(tmp_path, cache, budget=2.0)
    before = target.allowance(baseline=True)
    assert before == target.allowance(baseline=False)  # nothing differs: a run cannot tell
    target.script.write_text(PRELUDE + textwrap.dedent(SANDBAG))
    import threading

    base = target.run(tmp_path / "b.log", threading.Event(), baseline=True)
    assert "session" in attacks_of(tmp_path / "b.log")
    assert attacks_of(tmp_path / "b.log")["role"] == "experiment"  # the same go as any run
    assert base.credit == before[0]  # the baseline ran under the session's allowance, as stored
    assert target.allowance(baseline=False) == before  # ... and its own idling changed nothing
    exp = target.run(tmp_path / "e.log", threading.Event(), baseline=False)
    assert exp.status == "ok", (exp.status, exp.reason)
    assert target.allowance(baseline=False) == before


def attacks_of(log: Path) -> dict[str, str]:
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("ATTACK "):
            name, _, what = line[7:].partition(": ")
            out[name] = what
    return out


# ---- 28. the step tolerance: bounded by the session's measured step time ----

@pytest.mark.parametrize("steps, first_overrun, session_step, tol", [
    ([], None, None, 2.0),  # nothing measured: the profile's share
    ([0.5, 0.5, 0.5], None, None, 2.0),  # fast steps: the profile's share
    ([3.0, 3.0, 3.0], None, None, 9.0),  # a loaded machine: three median steps
    ([1.0, 1.0, 5.0], None, None, 6.0),  # a spike: 1.2x the last step
    ([4.0] * 5, None, None, 12.0),  # claimed 4 s steps on a 20 s budget: the cap (10 + 2)
    ([4.0] * 5, None, 0.5, 2.0),  # ... the session measured 0.5 s steps: 4 x 0.5, the profile's 2 s
    ([4.0] * 5, None, 0.8, 3.2),  # ... 0.8 s steps: at most 4 of them
    ([3.0, 3.0, 3.0], None, 1.0, 4.0),  # a busier machine than the baselines' still gets 4 session steps
    ([], 30.0, None, 12.0),  # the first step ran 30 s past its warm-up allowance: the cap
    ([], 30.0, 0.5, 2.0),  # ... bounded by the session's steps too
])
def test_the_step_tolerance_is_bounded_by_the_session_not_by_the_run(steps, first_overrun, session_step, tol):
    assert runner.tolerance(2.0, clock.tolerance_cap(20.0), steps, first_overrun, session_step) == pytest.approx(tol)


HONEST = """
step = 0
while not rt.done():
    loss, n = one_step()
    rt.progress(step, loss, tokens=n); step += 1
rt.submit(model)
"""

CLAIM = """
step, t_step = 0, time.monotonic()
print("ATTACK claim: one step reported every 3 s", flush=True)
while rt.fraction() < 1.0 + (4.5 + EXPORT) / 2.0:  # 4.5 s past the budget on the runner's clock: under 3 claimed steps
    loss, n = one_step()
    if step == 0 or time.monotonic() - t_step > 3.0:
        rt.progress(step, loss, tokens=n)
        step, t_step = step + 1, time.monotonic()
rt.submit(model)
"""


def test_reporting_long_steps_buys_no_training_time(tmp_path, cache):
    """The red team reported one "step" every 4 s and got 31 s of training accepted on a 20 s
    budget. The session's honest baseline measured its real step time; the tolerance of later
    runs is bounded by it, whatever they report."""
    import threading

    target = gpt_target(tmp_path, cache, budget=2.0)
    target.script.write_text(PRELUDE + textwrap.dedent(HONEST))
    base = target.run(tmp_path / "b.log", threading.Event(), baseline=True)
    assert base.status == "ok" and base.step_seconds is not None, (base.status, base.reason)
    export = target.allowance()[1]  # the in-process clock stops this much before the runner's (the export's part)
    target.script.write_text(PRELUDE + textwrap.dedent(CLAIM).replace("EXPORT", f"{export:.3f}"))
    r = target.run(tmp_path / "e.log", threading.Event(), baseline=False)
    assert "claim" in attacks_of(tmp_path / "e.log")
    assert r.status == "invalid" and "over the 2s budget" in r.reason, (r.status, r.reason, r.training_seconds)


def test_a_journal_written_before_step_times_were_kept_gains_the_column(tmp_path):
    """The baselines' step times are kept with their rows, like their allowance; an older journal
    gains the column when opened, and its rows are kept as they were."""
    import sqlite3

    from engine.store.journal import Journal

    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
    CREATE TABLE sessions(id INTEGER PRIMARY KEY, tag TEXT UNIQUE NOT NULL, branch TEXT NOT NULL,
      base_commit TEXT NOT NULL, agent TEXT, target TEXT, created REAL, updated REAL, best_n INTEGER,
      best_commit TEXT, best_metric REAL, noise REAL, status TEXT DEFAULT 'running', stop_reason TEXT);
    CREATE TABLE experiments(id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL, n INTEGER NOT NULL,
      kind TEXT NOT NULL DEFAULT 'experiment', parent_commit TEXT, commit_sha TEXT, diff_stat TEXT,
      description TEXT, status TEXT NOT NULL, reason TEXT, metric REAL, delta REAL, confidence REAL,
      training_seconds REAL, total_seconds REAL, memory_gb REAL, tokens_in INTEGER DEFAULT 0,
      tokens_out INTEGER DEFAULT 0, cache_write INTEGER DEFAULT 0, cache_read INTEGER DEFAULT 0,
      cost_usd REAL DEFAULT 0, started REAL, finished REAL, log_path TEXT, UNIQUE(session_id, n));
    INSERT INTO sessions(tag, branch, base_commit) VALUES ('old', 'b', 'c');
    INSERT INTO experiments(session_id, n, kind, status, metric) VALUES (1, 1, 'baseline', 'keep', 3.5);
    """)
    db.commit()
    db.close()
    j = Journal(path)
    old = j.experiment(1, 1)
    assert old.metric == 3.5 and old.step_seconds is None
    j.update_experiment(1, 1, step_seconds=0.25, credit=4.0)
    assert (j.experiment(1, 1).step_seconds, j.experiment(1, 1).credit) == (0.25, 4.0)
