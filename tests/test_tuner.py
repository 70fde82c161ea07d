"""The offline tuner on real files: a copy of trainer/train.py and a tiny non-ML file.

Each proposal runs the real Tools on a temporary workspace, like the loop does; the file is put
back to the starting text before each proposal (as the loop resets to the best commit).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from engine.agents.base import Context, PastExperiment, Proposal
from engine.agents.tuner import Tuner, find_constants, parse_description
from engine.events import AgentText
from engine.tools import Tools

REPO = Path(__file__).resolve().parents[1]
TRAIN = (REPO / "trainer" / "train.py").read_text()
ASSIGN = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=")


class Workspace:
    def __init__(self, root: Path, files: dict[str, str]):
        self.root, self.files = root, files
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)

    def propose(self, seed=0, n=1, profile="cpu", history=(), files=None, tuner=None):
        """Reset the files, run one proposal; returns (proposal, events, tools)."""
        files = files or self.files
        for rel, text in files.items():
            (self.root / rel).write_text(text)
        tools = Tools(self.root, list(files))
        ctx = Context(
            program="", files=dict(files), history=list(history), human_notes=[], agent_notes=[],
            direction="min", profile=profile, seed=seed, n=n,
        )
        events = []
        proposal = (tuner or Tuner()).propose(ctx, tools, events.append)
        return proposal, events, tools

    def text(self, rel="trainer/train.py") -> str:
        return (self.root / rel).read_text()


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """Durability is the tools' business (tested there); here it only slows hundreds of proposals."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws", {"trainer/train.py": TRAIN})


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.split("\n"), after.split("\n")
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b) if x != y]


def values(text: str, profile: str) -> dict[str, float]:
    return {c.name: c.value for c in find_constants("f.py", text, profile)}


def past(n, description, status="discard", delta=None) -> PastExperiment:
    return PastExperiment(n=n, status=status, metric=1.0, delta=delta, description=description, diff="")


# -- one proposal on train.py ----------------------------------------------------------------


@pytest.mark.parametrize("profile", ["cpu", "cuda"])
def test_changes_one_or_two_constant_lines_and_still_compiles(ws, profile):
    for n in range(1, 21):
        proposal, events, tools = ws.propose(seed=7, n=n, profile=profile)
        after = ws.text()
        compile(after, "train.py", "exec")
        lines = changed_lines(TRAIN, after)
        moves = parse_description(proposal.description)
        assert 1 <= len(lines) == len(moves) <= 2
        for old, new in lines:
            assert ASSIGN.match(old) and ASSIGN.match(old)[1] == ASSIGN.match(new)[1]
        before_v, after_v = values(TRAIN, profile), values(after, profile)
        assert {k for k in before_v if before_v[k] != after_v[k]} == {m.key for m in moves}
        for m in moves:  # the description tells the truth
            assert before_v[m.key] == pytest.approx(m.old) and after_v[m.key] == pytest.approx(m.new)
        assert "SEED = 42" in after and "ADAM_BETAS = (0.8, 0.95)" in after
        assert tools.touched == {"trainer/train.py"}
        assert [type(e) for e in events] == [AgentText] and events[0].n == n and events[0].text


def test_changes_the_branch_of_the_current_profile(ws):
    for profile, branch in (("cuda", 0), ("cpu", 1), ("mps", 1)):
        for n in range(1, 26):
            ws.propose(seed=1, n=n, profile=profile)
            for old, new in changed_lines(TRAIN, ws.text()):
                if " if GPU else " in old:
                    o, w = (s.split("#")[0].split("=", 1)[1].split(" if GPU else ") for s in (old, new))
                    assert o[1 - branch].strip() == w[1 - branch].strip() and o[branch] != w[branch]


def test_pow2_literals_keep_their_style(ws):
    gpu = re.search(r"TOTAL_BATCH_TOKENS = (2\*\*\d+) if GPU else 2\*\*12 ", ws.text()).group(1)
    for n in range(1, 200):
        proposal, _, _ = ws.propose(seed=3, n=n)
        if "TOTAL_BATCH_TOKENS" in proposal.description:
            assert re.search(rf"TOTAL_BATCH_TOKENS = {re.escape(gpu)} if GPU else 2\*\*1[13] ", ws.text())
            return
    pytest.fail("TOTAL_BATCH_TOKENS never chosen")


def test_deterministic_for_seed_and_n_and_varies_across_n(ws):
    runs = {}
    for n in range(1, 13):
        first, events1, _ = ws.propose(seed=5, n=n)
        text1 = ws.text()
        second, events2, _ = ws.propose(seed=5, n=n)
        assert first == second and text1 == ws.text() and events1[0].text == events2[0].text
        runs[n] = first.description
    assert len(set(runs.values())) >= 8
    other_seed = {ws.propose(seed=6, n=n)[0].description for n in range(1, 13)}
    assert other_seed != set(runs.values())


def test_mostly_single_moves_sometimes_pairs(ws):
    sizes = [len(parse_description(ws.propose(seed=11, n=n)[0].description)) for n in range(1, 101)]
    pairs = sizes.count(2)
    assert 10 <= pairs <= 45 and set(sizes) == {1, 2}


# -- rules -------------------------------------------------------------------------------------


def test_model_dim_stays_divisible_by_an_even_head_dim(ws):
    seen = set()
    for seed in range(200):
        profile = ("cpu", "cuda")[seed % 2]
        proposal, _, _ = ws.propose(seed=seed, n=1 + seed % 7, profile=profile)
        v = values(ws.text(), profile)
        assert v["MODEL_DIM"] % v["HEAD_DIM"] == 0 and v["HEAD_DIM"] % 2 == 0
        seen |= {m.key for m in parse_description(proposal.description)}
    assert {"MODEL_DIM", "HEAD_DIM"} <= seen and "SEED" not in seen


def test_divisibility_filters_moves_that_would_break_it(tmp_path):
    # 96 +- 24 is not a multiple of 32, and HEAD_DIM 64 does not divide 96: only HEAD_DIM /2 is left.
    ws = Workspace(tmp_path, {"model.py": "MODEL_DIM = 96\nHEAD_DIM = 32\n"})
    descriptions = {ws.propose(seed=s, n=1, profile="cpu")[0].description for s in range(60)}
    assert descriptions == {"HEAD_DIM 32 -> 16 (/2)"}


def test_fractions_stay_inside_zero_one(tmp_path):
    ws = Workspace(tmp_path, {"f.py": "MUON_MOMENTUM = 0.95\nWARMDOWN_FRAC = 0.5\nDROP_RATIO = 0.02\n"})
    for s in range(50):
        ws.propose(seed=s, n=1, profile="")
        for name, v in values(ws.text("f.py"), "").items():
            assert 0 < v < 1, (name, v)


def test_leaves_seed_booleans_tuples_and_reassigned_names_alone(tmp_path):
    text = "SEED = 1\nDATA_SEED = 3\nFLAG = True\nBETAS = (0.9, 0.95)\nTWICE = 4\nTWICE = 5\nx = 7\nNAME = 'a'\nSIZE = 10\n"
    ws = Workspace(tmp_path, {"f.py": text})
    for s in range(50):
        proposal, _, _ = ws.propose(seed=s, n=1, profile="")
        assert proposal.description in {"SIZE 10 -> 12 (+2)", "SIZE 10 -> 8 (-2)"}


# -- memory ------------------------------------------------------------------------------------


def test_never_repeats_a_failed_move(ws):
    proposal, _, _ = ws.propose(seed=2, n=4)
    failed = parse_description(proposal.description)
    for status in ("discard", "crash", "timeout", "invalid", "vetoed"):
        history = [past(3, proposal.description, status=status)]
        for n in range(1, 21):
            again, _, _ = ws.propose(seed=2, n=n, history=history)
            for m in parse_description(again.description):
                assert all((m.key, m.old, m.new) != (f.key, f.old, f.new) for f in failed)


def test_a_whole_session_of_discards_never_repeats_a_move(tmp_path):
    ws = Workspace(tmp_path, {"f.py": "CHUNK = 64\nTHRESHOLD = 0.5\nRETRIES = 3\n"})
    history, moves = [], []
    for n in range(1, 200):
        proposal, events, _ = ws.propose(seed=9, n=n, profile="", history=history)
        if proposal is None:
            assert "nothing left" in events[-1].text
            break
        parsed = parse_description(proposal.description)
        moves += [(m.key, m.old, m.new) for m in parsed]
        history.append(past(n, proposal.description))
    else:
        pytest.fail("the tuner never ran out of moves")
    assert len(moves) == len(set(moves))
    # CHUNK x2 /2, THRESHOLD x0.5 x0.7 x1.4 x2, RETRIES +1 -1: eight moves from the start.
    assert len(moves) == 8


def test_failed_moves_from_other_values_and_interrupted_runs_do_not_block(tmp_path):
    ws = Workspace(tmp_path, {"f.py": "CHUNK = 64\n"})
    history = [past(1, "CHUNK 32 -> 64 (x2)"), past(2, "CHUNK 64 -> 128 (x2)", status="interrupted")]
    descriptions = {ws.propose(seed=s, n=3, profile="", history=history)[0].description for s in range(30)}
    assert descriptions == {"CHUNK 64 -> 128 (x2)", "CHUNK 64 -> 32 (/2)"}
    history.append(past(3, "CHUNK 64 -> 32 (/2)"))
    history.append(past(4, "the human's idea: CHUNK 64 -> 16 (x0.25)"))  # not the tuner's: ignored
    descriptions = {ws.propose(seed=s, n=5, profile="", history=history)[0].description for s in range(30)}
    assert descriptions == {"CHUNK 64 -> 128 (x2)"}


def test_after_a_kept_move_it_mostly_pushes_the_same_way(ws):
    kept_text = TRAIN.replace("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.056")
    history = [past(1, "baseline", status="keep"), past(2, "MATRIX_LR 0.04 -> 0.056 (x1.4)", status="keep", delta=-0.012)]
    files = {"trainer/train.py": kept_text}
    results = [ws.propose(seed=4, n=n, history=history, files=files) for n in range(3, 43)]
    pushed = [(p, e) for p, e, _ in results if p.description == "MATRIX_LR 0.056 -> 0.0784 (x1.4)"]
    assert 20 <= len(pushed) <= 39
    assert pushed[0][1][0].text == "MATRIX_LR: last x1.4 was kept (-0.012); trying x1.4 again"
    # once that push has failed, it explores instead
    history.append(past(3, "MATRIX_LR 0.056 -> 0.0784 (x1.4)"))
    for n in range(4, 24):
        p, events, _ = ws.propose(seed=4, n=n, history=history, files=files)
        assert p.description != "MATRIX_LR 0.056 -> 0.0784 (x1.4)"
        assert "already failed" in events[0].text or "exploring" in events[0].text


def test_momentum_on_integers_and_fractions(tmp_path):
    ws = Workspace(tmp_path, {"f.py": "CHUNK = 50\nMOMENTUM = 0.9\n"})
    cases = [
        ("CHUNK 40 -> 50 (+10)", "CHUNK 50 -> 62 (+12)"),
        ("MOMENTUM 0.8 -> 0.9 (gap to 1 x0.5)", "MOMENTUM 0.9 -> 0.95 (gap to 1 x0.5)"),
    ]
    for kept, expected in cases:
        history = [past(1, kept, status="forced")]
        got = [ws.propose(seed=0, n=n, profile="", history=history)[0].description for n in range(2, 22)]
        assert got.count(expected) >= 10


# -- other targets and confinement -------------------------------------------------------------


def test_tiny_non_ml_file_with_empty_profile(tmp_path):
    text = "CHUNK = 64\nTHRESHOLD = 0.5\n"
    ws = Workspace(tmp_path, {"tune.py": text})
    seen = set()
    for n in range(1, 40):
        proposal, events, tools = ws.propose(seed=1, n=n, profile="")
        after = ws.text("tune.py")
        compile(after, "tune.py", "exec")
        assert 1 <= len(changed_lines(text, after)) <= 2
        assert tools.touched == {"tune.py"}
        seen |= {m.key for m in parse_description(proposal.description)}
    assert seen == {"CHUNK", "THRESHOLD"}


def test_names_in_several_files_are_qualified(tmp_path):
    ws = Workspace(tmp_path, {"a.py": "LR = 0.1\n", "b.py": "LR = 0.2\nSTEPS = 10\n"})
    keys = set()
    for n in range(1, 40):
        proposal, _, _ = ws.propose(seed=0, n=n, profile="")
        keys |= {m.key for m in parse_description(proposal.description)}
    assert keys == {"a.py:LR", "b.py:LR", "STEPS"}


def test_a_symlinked_editable_file_is_not_touched(tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("CHUNK = 64\n")
    root = tmp_path / "ws"
    root.mkdir()
    (root / "tune.py").symlink_to(outside)
    ctx = Context("", {"tune.py": "CHUNK = 64\n"}, [], [], [], "min", "", 0, 1)
    events = []
    assert Tuner().propose(ctx, Tools(root, ["tune.py"]), events.append) is None
    assert outside.read_text() == "CHUNK = 64\n" and "nothing left" in events[0].text


def test_a_line_that_ends_another_line_is_edited_in_place(tmp_path):
    text = "MAX_CHUNK = 64\nCHUNK = 64\nX_CHUNK = 64\n"
    ws = Workspace(tmp_path, {"f.py": text})
    for n in range(1, 30):
        proposal, _, _ = ws.propose(seed=0, n=n, profile="")
        (old, new), *more = changed_lines(text, ws.text("f.py"))
        if not more:
            assert old.split(" = ")[0] == parse_description(proposal.description)[0].key == new.split(" = ")[0]


def test_nothing_to_tune(tmp_path):
    ws = Workspace(tmp_path, {"f.py": "print('hello')\n", "notes.md": "A = 1\n"})
    proposal, events, tools = ws.propose(profile="")
    assert proposal is None and "no UPPER_CASE" in events[0].text and not tools.touched


def test_comment_column_is_kept(tmp_path):
    ws = Workspace(tmp_path, {"f.py": "LR = 0.5                # the learning rate\n"})
    for n in range(1, 10):
        ws.propose(seed=0, n=n, profile="")
        assert ws.text("f.py").index("#") == 24


def test_proposal_type(ws):
    proposal, _, _ = ws.propose()
    assert isinstance(proposal, Proposal) and Tuner.name == "tuner"
