"""Early stop in a real session on the CPU: the real engine, harness, training processes, git and
journal (the light trainer of tests/conftest.py). A clearly worse change is `pruned` with its
reason, its slot takes the next experiment at once, and the human can let a run finish."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine import events as ev
from engine.agents.base import Agent, Proposal
from engine.control import Control
from engine.run.targets import GptTarget
from engine.session.loop import Engine, Limits
from engine.store.view import SessionView
from engine.store.workspace import init_workspace, open_workspace
from harness.dataset import current_dataset
from harness.profiles import CPU

from conftest import use_light_trainer

ROOT = Path(__file__).resolve().parents[1]

BUDGET = 8.0  # seconds of training: ~16 loss reports a run


class Edits(Agent):
    """One scripted edit of trainer/train.py per proposal (None: propose an unchanged comment)."""

    name = "scripted"

    def __init__(self, edits: list[tuple[str, str] | None]):
        self.edits = list(edits)

    def propose(self, ctx, tools, emit):
        edit = self.edits.pop(0) if self.edits else None
        if edit is None:
            tools.edit_file("trainer/train.py", "step = 0\n", f"step = 0  # experiment {ctx.n}\n")
            return Proposal(f"a comment (#{ctx.n})")
        old, new = edit
        tools.edit_file("trainer/train.py", old, new)
        return Proposal(f"{old.strip()} -> {new.strip()}")


def session(tmp_path: Path, tiny_cache: Path, agent: Agent, n: int, control: Control | None = None,
            early_stop: str = "auto") -> tuple[Engine, list[ev.Event]]:
    ws = tmp_path / "ws"
    use_light_trainer(init_workspace(ws), baseline_runs=2)
    if early_stop != "auto":
        text = (ws / "cockpit.toml").read_text()
        assert 'early_stop = "auto"' in text
        (ws / "cockpit.toml").write_text(text.replace('early_stop = "auto"', f'early_stop = "{early_stop}"'))
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "settings"], cwd=ws, check=True)
    w = open_workspace(ws)
    target = GptTarget(w.root, w.config.target, tiny_cache, current_dataset(tiny_cache), CPU.with_budget(BUDGET))
    eng = Engine(w, agent, target, control=control, tag="es", limits=Limits(max_experiments=n))
    seen: list[ev.Event] = []
    eng.subscribe(seen.append)
    return eng, seen


def test_a_clearly_worse_change_is_pruned_early_with_its_reason_and_its_slot_runs_the_next_at_once(tmp_path, tiny_cache):
    # WIDTH 32 -> 1: the bigram model squeezed through one number, hopeless against the baselines
    eng, seen = session(tmp_path, tiny_cache, Edits([("WIDTH = 32", "WIDTH = 1"), None]), 2)
    eng.run()
    s = eng.journal.session_by_tag("es")
    rows = {e.n: e for e in eng.journal.experiments(s.id)}
    worse = next(e for e in rows.values() if e.description == "WIDTH = 32 -> WIDTH = 1")
    assert worse.status == "pruned", [(e.n, e.status, e.reason) for e in rows.values()]
    pruned = next(e for e in seen if isinstance(e, ev.RunPruned) and e.n == worse.n)
    assert not pruned.held and pruned.fraction < 0.7
    assert worse.reason == pruned.reason and worse.reason.startswith(f"pruned at {100 * pruned.fraction:.0f}%: loss ")
    assert "vs best" in worse.reason and "(band " in worse.reason
    assert worse.metric is None and 0 < worse.training_seconds < 0.7 * BUDGET  # counted as what it trained
    # its slot takes the next experiment (proposed while it ran) within a second of the decision
    nxt = next(e for e in seen if isinstance(e, ev.ExperimentStarted) and e.n > worse.n and e.kind == "experiment")
    assert nxt.ts - pruned.ts < 1.0, f"the next run started {nxt.ts - pruned.ts:.2f}s after the prune"
    print(f"pruned at {pruned.fraction:.0%}; the next run started {nxt.ts - pruned.ts:.3f}s later")
    # the line the UIs draw came first
    band = next(e for e in seen if isinstance(e, ev.EarlyStopBand) and e.n == worse.n)
    assert band.line and band.line[0][0] == eng.pruner.s.grace
    print("the next one:", rows[nxt.n].status, rows[nxt.n].reason)  # (a busy machine's clock decides its fate)
    # a row of results.tsv (its status; the file has no reason column), and in what the agent reads
    tsv = (eng.ws.root / ".cockpit" / "results.tsv").read_text()
    assert "\t\t\tpruned\tWIDTH = 32 -> WIDTH = 1\n" in tsv  # no metric, no memory
    ctx = eng.context(99)
    past = next(p for p in ctx.history if p.n == worse.n)
    assert (past.status, past.reason) == ("pruned", worse.reason)
    # the duty cycle counts it, and `cockpit status` says experiments per device-hour
    view = SessionView.open(eng.ws.root)
    try:
        assert worse.n in {e.n for e in view.history() if e.training_seconds is not None}
    finally:
        view.close()


def test_the_human_lets_a_losing_run_finish_and_it_is_journaled(tmp_path, tiny_cache):
    control = Control()
    eng, seen = session(tmp_path, tiny_cache, Edits([("WIDTH = 32", "WIDTH = 1")]), 1, control=control)

    def let_it_finish(e):
        if isinstance(e, ev.ExperimentStarted) and e.kind == "experiment":
            assert control.let_finish(e.n)

    eng.subscribe(let_it_finish)
    eng.run()
    s = eng.journal.session_by_tag("es")
    worse = next(e for e in eng.journal.experiments(s.id) if e.kind == "experiment")
    # ran to its end: measured (`discard`), or, on a machine too busy for its clock, judged by the
    # harness's timing rules; never stopped by the rule
    assert worse.status != "pruned" and not (worse.reason or "").startswith("pruned"), (worse.status, worse.reason)
    assert worse.status in ("discard", "invalid", "timeout"), (worse.status, worse.reason)
    held = [e for e in seen if isinstance(e, ev.RunPruned) and e.n == worse.n]
    assert len(held) == 1 and held[0].held  # the rule said where it would have stopped it, once
    notes = eng.journal.notes(s.id, "human")
    assert any(n["kind"] == "let-finish" and f"#{worse.n}" in n["text"] for n in notes), notes


def test_with_early_stop_off_a_losing_run_runs_to_its_end(tmp_path, tiny_cache):
    eng, seen = session(tmp_path, tiny_cache, Edits([("WIDTH = 32", "WIDTH = 1")]), 1,
                        early_stop="off")
    eng.run()
    s = eng.journal.session_by_tag("es")
    worse = next(e for e in eng.journal.experiments(s.id) if e.kind == "experiment")
    assert worse.status != "pruned", (worse.status, worse.reason)  # (a busy machine's clock may judge it otherwise)
    assert not any(isinstance(e, (ev.RunPruned, ev.EarlyStopBand)) for e in seen)
    # the replay of such a session (bench/early_stop.py, run with early stop off): its table and its line
    r = subprocess.run([sys.executable, "bench/early_stop.py", str(eng.ws.root), "--k", "2,4"], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    replayed = 1 if worse.status == "discard" else 0  # (the replay takes what was measured)
    assert f"{replayed} experiments replayed from 1 workspace(s): {replayed} discards, 0 keeps" in r.stdout, r.stdout
    last = r.stdout.strip().splitlines()[-1]
    k = eng.pruner.s.k  # the shipped default
    assert " of discard GPU-seconds, pruned 0 of 0 keeps" in last and last.startswith(f"default (k {k:g}"), r.stdout
