"""The read model of a session (engine/store/view.py; issue 23, point 3): one read-only view with its
own SQLite connection, over a real journal and a real git repository. It answers what the UIs
show (history, an experiment, a curve, cost and usage, duty, holdout, a diff, a log tail, the
program's path), it can write nothing, and the engine's journal lock never stops it."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from engine import analysis
from engine.store.journal import Journal
from engine.store.view import SessionView
from harness.errors import HarnessError


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def ws(tmp_path) -> Path:
    """A workspace with a base commit, an experiment's commit on top, and a journal of one session:
    two baselines, a keep (with a log), a proposal that never ran."""
    root = tmp_path / "ws"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    (root / "train.py").write_text("LR = 0.1\n")
    (root / "program.md").write_text("# program\n")
    (root / ".gitignore").write_text(".cockpit/\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    base = _git(root, "rev-parse", "HEAD")
    (root / "train.py").write_text("LR = 0.2\n")
    _git(root, "commit", "-qam", "double the learning rate")
    sha = _git(root, "rev-parse", "HEAD")
    _git(root, "checkout", "-q", base)
    log = root / ".cockpit" / "runs" / "t1" / "3" / "run.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"step {i}\n" for i in range(100)) + "\x1b[31mdone\x1b[0m\n")
    j = Journal(root / ".cockpit" / "journal.sqlite")
    s = j.create_session("t1", "cockpit/t1", base, "tuner", "gpt/cpu/60s")
    rows = [(1, "baseline", "keep", 1.000, 2.00, base), (2, "baseline", "keep", 1.020, 2.02, base),
            (3, "experiment", "keep", 0.990, 1.99, sha)]
    for n, kind, status, metric, holdout, commit in rows:
        j.add_experiment(s.id, n, kind, base, "running", f"#{n}")
        j.update_experiment(s.id, n, status=status, commit_sha=commit, metric=metric, holdout=holdout, harness="h1",
                            training_seconds=50.0, run_started=1000.0 + 100 * n, started=1000.0 + 100 * n,
                            finished=1060.0 + 100 * n, tokens_in=10 * n, tokens_out=n, cost_usd=0.25 * (n - 2 if n > 2 else 0),
                            log_path=str(log) if n == 3 else None)
    j.add_experiment(s.id, 4, "experiment", sha, "running", "prepared, never ran")
    j.update_experiment(s.id, 4, status="interrupted", finished=1500.0, tokens_in=7, cost_usd=0.5)
    j.save_curve(s.id, 3, [(0.1, 3.0), (0.5, 2.0), (1.0, 1.5)])
    j.update_session(s.id, best_n=3, best_commit=sha, best_metric=0.990, noise=0.014, harness="h1")
    j.close()
    return root


def test_the_view_answers_what_the_uis_show(ws):
    v = SessionView.open(ws)
    s = v.session()
    assert (s.tag, s.best_n) == ("t1", 3)
    assert [e.n for e in v.history()] == [1, 2, 3, 4]
    e3 = v.experiment(3)
    assert e3.metric == 0.990 and v.experiment(99) is None
    assert v.curve(3) == [(0.1, 3.0), (0.5, 2.0), (1.0, 1.5)] and v.curve(1) == []
    assert v.cost() == pytest.approx(0.75)
    assert v.usage() == {"tokens_in": 67, "tokens_out": 6, "cache_read": 0, "cache_write": 0}
    d = v.duty()
    assert (d.experiments, d.training) == (3, pytest.approx(150.0))
    hc = v.holdout(3)
    assert (hc.val_gain, hc.holdout_gain) == (pytest.approx(0.020), pytest.approx(0.020)) and hc.carried is True
    assert v.program_path == ws / "program.md"
    assert "-LR = 0.1" in v.diff(e3) and "+LR = 0.2" in v.diff(e3)
    assert v.diff(v.experiment(1)) == "", "a baseline has no diff"
    tail = v.log_tail(e3, 3)
    assert tail.splitlines() == ["step 98", "step 99", "done"], "the end of the log, without control sequences"
    assert v.log_tail(v.experiment(1)) == ""


def test_whether_a_row_ran_is_a_field_not_a_description(ws):
    v = SessionView.open(ws)
    assert [e.ran for e in v.history()] == [True, True, True, False]
    assert v.experiment(4).description == "prepared, never ran", "the description stays the agent's"


def test_the_view_cannot_write_the_journal(ws):
    v = SessionView.open(ws)
    v.history()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        v._db.execute("UPDATE experiments SET status='keep' WHERE n=4")
    assert v.experiment(4).status == "interrupted"


def test_the_engines_journal_lock_does_not_stop_the_view(ws):
    """The view has its own connection: a reader never waits on the engine's journal lock (the TUI
    read through it on the UI thread), and it sees each committed write."""
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    v = SessionView.open(ws)
    try:
        with j._lock:  # the engine busy in the journal
            got: list = []
            t = threading.Thread(target=lambda: got.append(v.experiment(3).metric))
            t.start()
            t.join(timeout=10)
            assert got == [0.990], "the view answered while the engine held its lock"
        j.update_experiment(v.session_id, 3, metric=0.985)
        assert v.experiment(3).metric == 0.985
    finally:
        j.close()
        v.close()


def test_the_view_uses_the_analysis_rules(ws):
    v = SessionView.open(ws)
    rows = v.history()
    assert v.duty() == analysis.duty_cycle(rows)
    assert v.holdout(3) == analysis.holdout_check(rows, 3, "min", "h1")


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("not git", "is not a git repository"),
    ("no journal", "no cockpit session in"),
    ("unknown tag", r"no session 'x' in .* \(sessions: t1\)"),
    ("bad journal", "cannot read the journal"),
])
def test_bad_input_is_one_clear_error(tmp_path, ws, case, match):
    path, tag = ws, None
    if case == "missing":
        path = tmp_path / "nowhere"
    elif case == "not git":
        path = tmp_path / "plain"
        path.mkdir()
    elif case == "no journal":
        (ws / ".cockpit" / "journal.sqlite").unlink()
    elif case == "unknown tag":
        tag = "x"
    elif case == "bad journal":
        (ws / ".cockpit" / "journal.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(HarnessError, match=match):
        SessionView.open(path, tag)


def test_an_old_journal_without_the_newer_columns_is_readable(tmp_path, ws):
    """A journal written before a column existed (no migration: the view writes nothing) reads with
    the newer fields empty."""
    db = sqlite3.connect(ws / ".cockpit" / "journal.sqlite")
    db.execute("CREATE TABLE old AS SELECT id, session_id, n, kind, parent_commit, commit_sha, diff_stat, description, "
               "status, reason, metric, delta, confidence, training_seconds, total_seconds, memory_gb, tokens_in, "
               "tokens_out, cache_write, cache_read, cost_usd, started, finished, log_path FROM experiments")
    db.execute("DROP TABLE experiments")
    db.execute("ALTER TABLE old RENAME TO experiments")
    db.commit()
    db.close()
    v = SessionView.open(ws)
    e = v.experiment(3)
    assert e.metric == 0.990 and e.slot is None and e.holdout is None


def test_an_old_journal_gains_the_abandoned_column_and_reads_it_empty(ws):
    """A journal from before `experiments.abandoned`: the engine's journal adds the column (nothing
    is rewritten); its rows read as not abandoned."""
    db = sqlite3.connect(ws / ".cockpit" / "journal.sqlite")
    db.execute("ALTER TABLE experiments DROP COLUMN abandoned")
    db.commit()
    db.close()
    assert SessionView.open(ws).experiment(4).abandoned is None, "readable before the migration"
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    try:
        j.update_experiment(j.session_by_tag("t1").id, 4, abandoned=1)
    finally:
        j.close()
    v = SessionView.open(ws)
    assert [e.abandoned for e in v.history()] == [None, None, None, 1]


# ---- the boundary: the UIs read through the view ----

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("engine.store.journal", "engine.store.git", "git", "harness.runner")
# the composition root builds the engine (it checks the sandbox through the runner), and `cockpit
# train` runs the harness itself: neither reads a session
EXEMPT = {"cockpit/cli.py": {"harness.runner"}, "cockpit/commands/train.py": {"harness.runner"}}


def _imports(path: Path) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_ui_module_opens_the_journal_git_or_the_runner():
    found = []
    for path in sorted((ROOT / "cockpit").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for name in _imports(path):
            hit = next((f for f in FORBIDDEN if name == f or name.startswith(f + ".")), None)
            if hit is not None and hit not in EXEMPT.get(rel, set()):
                found.append(f"{rel}: {name}")
    assert not found, found
