"""Pipelined proposals: the agent prepares experiment N+1 in its own tree while N trains; if N is
kept, N+1 is merged onto it (3-way), and a conflict is asked again with N's result known. Real
git repositories, real subprocesses, the real journal."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from engine import events as ev
from engine.agents.base import Agent, Proposal
from engine.control import Control
from engine.store.journal import Journal, duty_cycle
from engine.session.loop import Engine, Limits
from engine.session.merge import merge3
from engine.run.targets import CommandTarget
from engine.store.workspace import open_workspace
from test_engine import command_workspace

FILES = {
    "value.py": "A = 10\nB = 10\nC = 10\n",
    "measure.py": "import value\nprint(f'metric: {value.A + value.B + value.C}')\n",
}


class Scripted(Agent):
    """An agent that applies scripted edits to value.py, one per call, after `latency` seconds,
    and remembers what it saw."""

    name = "scripted"

    def __init__(self, ws: Path, edits: list[tuple[str, str]], latency: float = 0.0):
        self.ws, self.edits, self.latency = ws, list(edits), latency
        self.calls: list[dict] = []

    def propose(self, ctx, tools, emit):
        t0 = time.monotonic()
        call = {"n": ctx.n, "start": t0, "history": {e.n: e.status for e in ctx.history},
                "in_flight": {x.n: x.state for x in ctx.in_flight},
                "run_tree": (self.ws / "value.py").read_text(), "best_code": ctx.files["value.py"]}
        self.calls.append(call)
        time.sleep(self.latency)
        if self.edits[0] is None:  # nothing to propose (as a tuner that counts the run in flight as failed)
            self.edits.pop(0)
            call["end"] = time.monotonic()
            return None
        old, new = self.edits.pop(0)
        tools.edit_file("value.py", old, new)
        call["end"] = time.monotonic()
        return Proposal(f"{old.strip()} -> {new.strip()}")


def engine_for(ws: Path, agent, n: int, pipeline: bool = True, control: Control | None = None) -> Engine:
    if not pipeline:
        (ws / "cockpit.toml").write_text((ws / "cockpit.toml").read_text() + "\n[agent]\npipeline = false\n")
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "no pipeline"], cwd=ws, check=True)
    w = open_workspace(ws)
    return Engine(w, agent, CommandTarget(w.root, w.config.target, None), control=control, tag="p",
                  limits=Limits(max_experiments=n))


def show(ws: Path, rev: str, path: str = "value.py") -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ws, capture_output=True, text=True, check=True).stdout


def test_the_next_proposal_is_prepared_while_a_run_trains_and_merged_onto_a_kept_result(tmp_path):
    ws = command_workspace(tmp_path, FILES, ["value.py"], "python3 -c 'import time; time.sleep(1.5)'", "python3 measure.py",
                           baseline_runs=1)
    # #2 lowers A (kept); #3 is written against the baseline while #2 trains and lowers B, the
    # next line: git itself would call that a conflict; the engine's merge applies both.
    agent = Scripted(ws, [("A = 10", "A = 5"), ("B = 10", "B = 5")], latency=0.3)
    eng = engine_for(ws, agent, 2)
    t, best = {}, []
    eng.subscribe(lambda x: t.setdefault((type(x).__name__, getattr(x, "n", None)), time.monotonic()))
    eng.subscribe(lambda x: best.append(x.n) if isinstance(x, ev.BestChanged) else None)
    assert eng.run() == "reached --max-experiments 2"
    assert best == [1, 2, 3]  # the baseline is the first best, although #3 was already being proposed
    j = eng.journal
    e = {x.n: x for x in j.experiments(eng.session.id)}
    assert [e[n].status for n in (1, 2, 3)] == ["keep", "keep", "keep"]
    c2, c3 = agent.calls
    # #3 was proposed before #2's result was known (N + 1 in flight on one slot: during the baseline,
    # beside #2), against the best of that moment, in its own tree
    assert c3["n"] == 3 and 2 not in c3["history"]
    assert c3["end"] < t["ExperimentFinished", 2]
    assert c3["best_code"] == FILES["value.py"]
    assert c3["run_tree"] == FILES["value.py"]  # the branch holds measured code only: #2 runs in its slot's checkout
    # after #2 was kept, #3 was rebased onto it: its parent is #2 and it holds both changes
    assert e[3].parent_commit == e[2].commit_sha
    assert subprocess.run(["git", "rev-parse", f"{e[3].commit_sha}^"], cwd=ws, capture_output=True, text=True).stdout.strip() == e[2].commit_sha
    assert show(ws, e[3].commit_sha) == "A = 5\nB = 5\nC = 10\n"
    assert e[3].metric == 20 and eng.session.best_metric == 20
    assert (ws / "value.py").read_text() == "A = 5\nB = 5\nC = 10\n"
    assert subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True).stdout == ""


def test_a_proposal_that_conflicts_with_the_kept_result_is_asked_again_knowing_it(tmp_path):
    ws = command_workspace(tmp_path, FILES, ["value.py"], "python3 -c 'import time; time.sleep(1.0)'", "python3 measure.py",
                           baseline_runs=1)
    # #3's first version changes the same line as #2; the second is written on top of #2
    agent = Scripted(ws, [("A = 10", "A = 5"), ("A = 10", "A = 7"), ("A = 5", "A = 4")], latency=0.2)
    eng = engine_for(ws, agent, 2)
    notices = []
    eng.subscribe(lambda x: notices.append(x.text) if isinstance(x, ev.Notice) else None)
    eng.run()
    e = {x.n: x for x in eng.journal.experiments(eng.session.id)}
    assert [c["n"] for c in agent.calls] == [2, 3, 3]
    assert 2 not in agent.calls[1]["history"] and agent.calls[2]["history"][2] == "keep"
    assert agent.calls[2]["best_code"] == "A = 5\nB = 10\nC = 10\n"
    assert any("#3's change conflicts with the new best #2" in t for t in notices)
    assert e[3].status == "keep" and e[3].parent_commit == e[2].commit_sha and e[3].metric == 24
    assert show(ws, e[3].commit_sha) == "A = 4\nB = 10\nC = 10\n"


def _gaps(events) -> list[float]:
    """Seconds between one run's end and the next run's start: the device's idle time."""
    starts = [t for t, x in events if isinstance(x, ev.ExperimentStarted)]
    ends = [t for t, x in events if isinstance(x, ev.ExperimentFinished) and x.status != "interrupted"]
    return [s - e for s, e in zip(starts[1:], ends)]


def test_nothing_to_propose_while_a_run_trains_is_asked_again_once_its_result_is_known(tmp_path):
    ws = command_workspace(tmp_path, FILES, ["value.py"], "python3 -c 'import time; time.sleep(0.5)'", "python3 measure.py",
                           baseline_runs=1)
    agent = Scripted(ws, [("A = 10", "A = 9"), None, ("A = 9", "A = 8")])
    eng = engine_for(ws, agent, 2)
    notices = []
    eng.subscribe(lambda x: notices.append(x.text) if isinstance(x, ev.Notice) else None)
    assert eng.run() == "reached --max-experiments 2"
    e = {x.n: x for x in eng.journal.experiments(eng.session.id)}
    assert [c["n"] for c in agent.calls] == [2, 3, 3] and agent.calls[2]["history"][2] == "keep"
    assert any("nothing to propose for #3 while other runs trained" in t for t in notices)
    assert e[3].status == "keep" and show(ws, e[3].commit_sha) == "A = 8\nB = 10\nC = 10\n"


def test_pipelining_hides_the_agents_thinking_time_between_runs(tmp_path):
    latency, runs = 1.5, 4
    results = {}
    for pipeline in (True, False):
        (tmp_path / str(pipeline)).mkdir()
        files = {"value.py": "A = 10\nB = 10\nC = 10\nD = 10\n",
                 "measure.py": "import value as v\nprint(f'metric: {v.A + v.B + v.C + v.D}')\n"}
        ws = command_workspace(tmp_path / str(pipeline), files, ["value.py"], "python3 -c 'import time; time.sleep(2.0)'",
                               "python3 measure.py", baseline_runs=1)
        edits = [(f"{x} = 10", f"{x} = 9") for x in "ABCD"]  # each one improves: kept, and the next merged onto it
        eng = engine_for(ws, Scripted(ws, edits, latency=latency), runs, pipeline=pipeline)
        seen = []
        eng.subscribe(lambda x, seen=seen: seen.append((time.monotonic(), x)))
        eng.run()
        exps = Journal(ws / ".cockpit" / "journal.sqlite").experiments(eng.session.id)
        assert [x.status for x in exps] == ["keep"] * (runs + 1)
        results[pipeline] = (_gaps(seen), duty_cycle([x for x in exps if x.kind == "experiment"]))
    (gaps_on, duty_on), (gaps_off, duty_off) = results[True], results[False]
    assert len(gaps_on) == runs and len(gaps_off) == runs
    # one at a time, the device waits for every proposal; pipelined, only for the first (made
    # during the baseline, so not even that one)
    assert min(gaps_off) >= latency
    assert max(gaps_on) < latency / 2, gaps_on
    assert duty_on.ratio > duty_off.ratio
    print(f"idle between runs: pipelined {max(gaps_on):.2f}s, one at a time {min(gaps_off):.2f}s; "
          f"duty (sleep 2 s as 'training') {duty_on.ratio:.0%} vs {duty_off.ratio:.0%}")


def test_a_proposal_prepared_before_the_human_rewrote_program_md_is_asked_again(tmp_path):
    ws = command_workspace(tmp_path, dict(FILES, **{"program.md": "Lower the metric.\n"}), ["value.py"],
                           "python3 -c 'import time; time.sleep(1.0)'", "python3 measure.py", baseline_runs=1)
    control = Control()
    agent = Scripted(ws, [("A = 10", "A = 9"), ("B = 10", "B = 9"), ("C = 10", "C = 9")])
    eng = engine_for(ws, agent, 2, control=control)

    def on(x):  # while #2 trains (and #3 is prepared), the human changes the instructions
        if isinstance(x, ev.ExperimentStarted) and x.n == 2:
            (ws / "program.md").write_text("Never touch B.\n")
    eng.subscribe(on)
    progs = []
    orig = agent.propose
    agent.propose = lambda ctx, tools, emit: (progs.append(ctx.program), orig(ctx, tools, emit))[1]
    eng.run()
    e = {x.n: x for x in eng.journal.experiments(eng.session.id)}
    assert [c["n"] for c in agent.calls] == [2, 3, 3] and progs[-1] == "Never touch B.\n"
    assert show(ws, e[3].commit_sha) == "A = 9\nB = 10\nC = 9\n"  # the first #3 (B) never ran
    assert show(ws, e[3].commit_sha, "program.md") == "Never touch B.\n"


def test_a_proposal_still_thinking_when_the_session_stops_records_its_cost_when_it_returns(tmp_path, monkeypatch):
    import engine.session.scheduler
    from engine.agents.base import Usage

    monkeypatch.setattr(engine.session.scheduler, "ABANDON_WAIT", 0.1)
    ws = command_workspace(tmp_path, FILES, ["value.py"], "python3 -c 'import time; time.sleep(0.5)'", "python3 measure.py",
                           baseline_runs=1)

    class Stubborn(Scripted):  # ignores the interrupt, as a model call in flight would
        def propose(self, ctx, tools, emit):
            self.last_usage = Usage(input_tokens=1000, output_tokens=100, cost_usd=0.25)
            if ctx.n == 3:
                time.sleep(1.5)
            return super().propose(ctx, tools, emit)

    control = Control()
    agent = Stubborn(ws, [("A = 10", "A = 9"), ("B = 10", "B = 9")])
    eng = engine_for(ws, agent, 10, control=control)
    eng.subscribe(lambda x: control.stop("after_run") if isinstance(x, ev.ExperimentStarted) and x.n == 2 else None)
    eng.run()
    j = eng.journal
    assert j.experiment(eng.session.id, 3).status == "interrupted"
    deadline = time.monotonic() + 5
    while j.experiment(eng.session.id, 3).cost_usd == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    e3 = j.experiment(eng.session.id, 3)
    assert e3.cost_usd == 0.25 and e3.tokens_in == 1000
    assert j.total_cost(eng.session.id) == 0.5  # #2's proposal and the abandoned #3's


def test_stop_after_the_run_abandons_the_prepared_proposal_and_records_it(tmp_path):
    ws = command_workspace(tmp_path, FILES, ["value.py"], "python3 -c 'import time; time.sleep(1.0)'", "python3 measure.py",
                           baseline_runs=1)
    control = Control()
    agent = Scripted(ws, [("A = 10", "A = 9"), ("B = 10", "B = 9")])
    eng = engine_for(ws, agent, 10, control=control)
    eng.subscribe(lambda x: control.stop("after_run") if isinstance(x, ev.ExperimentStarted) and x.n == 2 else None)
    assert eng.run() == "stopped by the human (after the run)"
    e = {x.n: x for x in eng.journal.experiments(eng.session.id)}
    assert e[2].status == "keep"
    assert e[3].status == "interrupted" and "stopped before it ran" in e[3].reason and e[3].commit_sha is None
    assert (ws / "value.py").read_text() == "A = 9\nB = 10\nC = 10\n"  # the unrun proposal never reached the tree


# ---- the merge itself ----

def test_merge3_applies_both_sides_when_they_touch_different_lines():
    base = "a\nb\nc\nd\n"
    assert merge3(base, "A\nb\nc\nd\n", "a\nb\nc\nD\n") == "A\nb\nc\nD\n"
    assert merge3(base, "A\nb\nc\nd\n", "a\nB\nc\nd\n") == "A\nB\nc\nd\n"  # adjacent lines
    assert merge3(base, "a\nb\nc\nd\nx\n", "y\na\nb\nc\nd\n") == "y\na\nb\nc\nd\nx\n"  # insertions apart
    assert merge3(base, "a\nc\nd\n", "a\nb\nc\nD\n") == "a\nc\nD\n"  # a deletion and a change
    assert merge3(base, "A\nb\nc\nd\n", "A\nb\nc\nd\n") == "A\nb\nc\nd\n"  # the same change
    assert merge3(base, base, "z\n") == "z\n" and merge3(base, "z\n", base) == "z\n"


def test_merge3_refuses_overlapping_changes():
    base = "a\nb\nc\nd\n"
    assert merge3(base, "A\nb\nc\nd\n", "a2\nb\nc\nd\n") is None  # the same line, differently
    assert merge3(base, "a\nB\nC\nd\n", "a\nb\nX\nd\n") is None  # overlapping ranges
    assert merge3(base, "a\nx\nb\nc\nd\n", "a\ny\nb\nc\nd\n") is None  # two insertions at one place
    assert merge3(base, "a\nb\nc\nd\n" + "e\n", "a\nd\n") == "a\nd\ne\n"
    assert merge3(base, "a\nB\nC\nd\n", "a\nb\ny\nc\nd\n") is None  # an insertion inside a replaced range


def test_merge3_never_drops_or_doubles_a_change_among_repeated_lines():
    # N (kept) removes one of three identical block lines; N+1, written against the base,
    # rewrites the first of them. The copies make "which line" a guess: a merge must not undo
    # N's removal (three blocks again), nor remove two.
    base = "x = embed(idx)\nx = block(x)\nx = block(x)\nx = block(x)\nreturn x\n"
    ours = "x = embed(idx)\nx = block(x)\nx = block(x)\nreturn x\n"
    theirs = "x = embed(idx)\nx = wide_block(x)\nx = block(x)\nx = block(x)\nreturn x\n"
    m = merge3(base, ours, theirs)
    assert m is None or m == "x = embed(idx)\nx = wide_block(x)\nx = block(x)\nreturn x\n", m
    # both sides removed one of the two blank lines, one side also added a line below: the
    # removal is the same change, made once
    base = "a = 1\n\n\nb = 2\n\n\nc = 3\n"
    ours = "a = 1\n\n\nb = 2\n\nd = 4\nc = 3\n"
    theirs = "a = 1\n\n\nb = 2\n\nc = 3\n"
    m = merge3(base, ours, theirs)
    assert m is None or m == ours, m
    # both sides deleted "the" duplicated line, one also changed another: the line goes once
    base = "e\nd\ne\na\nd\n"
    m = merge3(base, "e\ne\nd\n", "e\ne\na\nd\na2\n")
    assert m is None or m == "e\ne\nd\na2\n", m


def test_merge3_agrees_with_git_wherever_git_merges_cleanly(tmp_path):
    import random

    rnd = random.Random(7)

    def mutate(lines):
        lines = list(lines)
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(lines) + 1)
            op = rnd.choice("rid")
            if op == "i":
                lines.insert(i, rnd.choice("abcdeXYZ") + "\n")
            elif i < len(lines):
                if op == "r":
                    lines[i] = rnd.choice("PQRS") + "\n"
                else:
                    del lines[i]
        return lines

    wrong = []
    for _ in range(600):
        base = [rnd.choice("abcde") + "\n" for _ in range(rnd.randint(0, 10))]
        texts = ["".join(base), "".join(mutate(base)), "".join(mutate(base))]
        for name, text in zip("bot", texts):
            (tmp_path / name).write_text(text)
        r = subprocess.run(["git", "merge-file", "-p", tmp_path / "o", tmp_path / "b", tmp_path / "t"], capture_output=True,
                           text=True)
        m = merge3(*texts)
        if r.returncode == 0 and m is not None and m != r.stdout:
            wrong.append((texts, m, r.stdout))
    assert not wrong, wrong[:3]


class TreeBreaker(Scripted):
    """A Scripted agent whose tree is deleted (by a person, a clean-up script) just as its first
    proposal is done."""

    def propose(self, ctx, tools, emit):
        p = super().propose(ctx, tools, emit)
        if len(self.calls) == 1:
            import shutil

            shutil.rmtree(tools.root)
        return p


def test_a_deleted_agent_tree_costs_one_proposal_not_the_session(tmp_path):
    ws = command_workspace(tmp_path, FILES, ["value.py"], "python3 -c 'import time; time.sleep(0.5)'", "python3 measure.py",
                           baseline_runs=1)
    agent = TreeBreaker(ws, [("A = 10", "A = 9"), ("B = 10", "B = 9"), ("C = 10", "C = 9")])
    eng = engine_for(ws, agent, 3)
    assert eng.run() == "reached --max-experiments 3", eng.error
    e = {x.n: x for x in eng.journal.experiments(eng.session.id)}
    assert e[2].status == "crash" and "agent's tree" in e[2].reason
    assert [e[n].status for n in (3, 4)] == ["keep", "keep"]
    assert (ws / "value.py").read_text() == "A = 10\nB = 9\nC = 9\n"
    assert subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True).stdout == ""
