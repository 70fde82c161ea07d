"""Nothing the user made is lost: commits the human adds are taken into the session (or named,
with what to do), never reset away; results under another harness version are never compared
with new ones. Real git repositories, real `cockpit` processes, the real journal."""

from __future__ import annotations

import subprocess

from engine.store.journal import Journal
from test_engine import cli, command_workspace, commit_all, git

BROKEN = {
    "value.py": "VALUE = 10.0\nOTHER = 3\nraise SystemExit('value.py is broken')\n",
    "measure.py": "import value\nprint(f'metric: {value.VALUE + 0.001 * value.OTHER}')\n",
}


def run(ws, *args):
    return cli("run", "--headless", "--workspace", ws, "--agent", "tuner", "--tag", "t", *args, timeout=300)


def all_commits(ws) -> set[str]:
    return set(git(ws, "rev-list", "--all").split())


def working(tmp_path, run_cmd="python3 -c 'import value'"):
    """A command workspace whose code runs (one baseline run)."""
    files = dict(BROKEN, **{"value.py": "VALUE = 10.0\nOTHER = 3\n"})
    return command_workspace(tmp_path, files, ["value.py"], run_cmd, "python3 measure.py", baseline_runs=1)


def kept_baselines(ws) -> list[str]:
    """The commits of session t's kept baseline runs, in order."""
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    return [e.commit_sha for e in j.experiments(j.session_by_tag("t").id) if e.kind == "baseline" and e.status == "keep"]


def failed_session(tmp_path):
    ws = command_workspace(tmp_path, BROKEN, ["value.py"], "python3 -c 'import value'", "python3 measure.py", baseline_runs=1)
    r = run(ws, "--max-experiments", "1")
    assert r.returncode != 0 and "baseline" in r.stderr
    return ws


def fix(ws):
    text = (ws / "value.py").read_text().replace("raise SystemExit('value.py is broken')\n", "")
    (ws / "value.py").write_text(text)
    commit_all(ws, "fix value.py")
    return git(ws, "rev-parse", "HEAD")


def test_a_fix_committed_on_the_session_branch_after_a_failed_baseline_is_what_runs_next(tmp_path):
    ws = failed_session(tmp_path)
    assert git(ws, "rev-parse", "--abbrev-ref", "HEAD") == "cockpit/t"
    fixed = fix(ws)
    r = run(ws, "--max-experiments", "1")
    assert r.returncode == 0, r.stderr + r.stdout[-2000:]
    assert "the human committed 1 change(s) on cockpit/t (latest: fix value.py)" in r.stdout
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("t")
    base = [e for e in j.experiments(s.id) if e.kind == "baseline"]
    assert [e.status for e in base] == ["crash", "keep"] and base[-1].commit_sha == fixed
    assert any("fix value.py" in x["text"] for x in j.notes(s.id, "human"))
    assert git(ws, "merge-base", "--is-ancestor", fixed, "cockpit/t") == ""  # still on the branch
    assert fixed in all_commits(ws)


def test_a_fix_committed_on_the_branch_the_session_started_from_is_taken_while_nothing_was_kept(tmp_path):
    ws = failed_session(tmp_path)
    git(ws, "checkout", "-q", "main")
    fixed = fix(ws)
    r = run(ws, "--max-experiments", "1")
    assert r.returncode == 0, r.stderr + r.stdout[-2000:]
    assert "main has 1 new commit(s) since this session started (latest: fix value.py)" in r.stdout
    assert kept_baselines(ws) == [fixed]
    assert git(ws, "rev-parse", "main") == fixed


def test_a_human_commit_on_the_branch_mid_session_becomes_its_base_and_no_commit_is_lost(tmp_path):
    ws = working(tmp_path)
    assert run(ws, "--max-experiments", "2").returncode == 0
    (ws / "notes.txt").write_text("the human's notes\n")
    commit_all(ws, "notes, not code")
    notes = git(ws, "rev-parse", "HEAD")
    (ws / "value.py").write_text((ws / "value.py").read_text() + "VALUE = VALUE - 1  # by hand\n")
    commit_all(ws, "VALUE minus one, by hand")
    by_hand = git(ws, "rev-parse", "HEAD")
    before = all_commits(ws)
    r = run(ws, "--max-experiments", "3")
    assert r.returncode == 0, r.stderr
    assert "the human committed 2 change(s)" in r.stdout and "measured again as the new baseline" in r.stdout
    assert before <= all_commits(ws)  # every commit the human made is still there
    assert git(ws, "merge-base", "--is-ancestor", notes, "cockpit/t") == ""
    assert git(ws, "merge-base", "--is-ancestor", by_hand, "cockpit/t") == ""
    assert kept_baselines(ws)[-1] == by_hand


def test_a_rewritten_session_branch_is_refused_in_one_line_and_nothing_moves(tmp_path):
    ws = working(tmp_path)
    assert run(ws, "--max-experiments", "2").returncode == 0
    git(ws, "reset", "-q", "--hard", "main~0")
    (ws / "other.txt").write_text("x\n")
    commit_all(ws, "a different history")
    head = git(ws, "rev-parse", "HEAD")
    r = run(ws, "--max-experiments", "1")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "cockpit --tag NEW" in r.stderr, r.stderr
    assert git(ws, "rev-parse", "HEAD") == head


def test_a_changed_measure_script_starts_a_new_baseline_and_is_journaled(tmp_path):
    ws = working(tmp_path)
    assert run(ws, "--max-experiments", "1").returncode == 0
    git(ws, "checkout", "-q", "cockpit/t")
    (ws / "measure.py").write_text("import value\nprint(f'metric: {2 * value.VALUE}')\n")
    commit_all(ws, "measure twice the value")
    r = run(ws, "--max-experiments", "2")
    assert r.returncode == 0, r.stderr
    assert "the harness changed since this session's baseline" in r.stdout
    j = Journal(ws / ".cockpit" / "journal.sqlite")
    s = j.session_by_tag("t")
    rows = j.experiments(s.id)
    versions = {e.harness for e in rows if e.harness}
    assert len(versions) == 2 and s.harness in versions
    base = [e for e in rows if e.kind == "baseline" and e.status == "keep"]
    assert len(base) == 2 and base[0].harness != base[1].harness == s.harness
    assert s.best_metric >= 19  # the new scale (2 x ~10), not a comparison with the old one


def test_a_second_checkout_beside_the_first_locks_its_own_harness_and_a_changed_one_is_still_refused(tmp_path, tiny_cache):
    import os
    import shutil
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    clone = tmp_path / "clone"
    for part in ("cockpit", "engine", "harness", "trainer"):
        shutil.copytree(root / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(root / "engine" / "template" / "train.py", clone / "trainer" / "train.py")  # as shipped
    env = dict(os.environ, PYTHONPATH=str(clone))
    env.pop("ANTHROPIC_API_KEY", None)

    def train():
        return subprocess.run([sys.executable, "-m", "cockpit", "--cache-dir", str(tiny_cache), "train", "--workspace", str(clone),
                               "--budget", "0", "--device", "cpu", "--json"], cwd=clone, env=env, capture_output=True, text=True, timeout=1800)

    first = train()
    assert first.returncode == 0, first.stderr
    assert f"locked this checkout's harness ({clone / 'harness'})" in first.stderr
    again = train()
    assert again.returncode == 0 and "locked" not in again.stderr  # locked once
    with open(clone / "harness" / "evaluate.py", "a") as f:
        f.write("\n# changed after the lock\n")
    changed = train()
    assert changed.returncode != 0 and "harness file changed" in changed.stderr and "evaluate.py" in changed.stderr


def _session_in_flight(ws, *args):
    """`cockpit run` in the background, returned once experiment #2 is running."""
    import os
    import sys
    import time

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "cockpit", "run", "--headless", "--workspace", str(ws), "--agent", "tuner",
                             "--tag", "t", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "#2 running at" in line:
            return proc, lines
        assert time.monotonic() < deadline, "".join(lines)
    raise AssertionError("".join(lines) + proc.stderr.read())


def test_a_commit_made_while_a_run_trains_stops_the_session_and_is_taken_at_the_next_start(tmp_path):
    ws = working(tmp_path, "python3 -c 'import time; time.sleep(3)'")
    proc, lines = _session_in_flight(ws, "--max-experiments", "5")
    (ws / "notes.txt").write_text("written while #2 trained\n")
    commit_all(ws, "my notes, committed mid-run")
    mine = git(ws, "rev-parse", "HEAD")
    out, err = proc.communicate(timeout=120)
    assert "a commit was made on cockpit/t while the session ran (my notes, committed mid-run)" in out + err
    assert mine in all_commits(ws) and (ws / "notes.txt").read_text() == "written while #2 trained\n"
    r = run(ws, "--max-experiments", "1")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "the human committed 1 change(s) on cockpit/t (latest: my notes, committed mid-run)" in r.stdout
    assert git(ws, "show", "cockpit/t:notes.txt") == "written while #2 trained"


def test_an_edit_left_uncommitted_in_the_tree_while_a_run_trains_is_never_reset_away(tmp_path):
    ws = working(tmp_path, "python3 -c 'import time; time.sleep(3)'")
    proc, _ = _session_in_flight(ws, "--max-experiments", "4")
    (ws / "notes.txt").write_text("not committed\n")
    subprocess.run(["git", "add", "notes.txt"], cwd=ws, check=True)  # tracked, not committed: survives every reset
    (ws / "value.py").write_text((ws / "value.py").read_text() + "# the human's edit\n")
    out, err = proc.communicate(timeout=120)
    assert "value.py changed in the working tree while the session ran" in out + err
    assert (ws / "value.py").read_text().endswith("# the human's edit\n")
    assert (ws / "notes.txt").read_text() == "not committed\n"


def test_a_second_fix_on_the_origin_branch_is_taken_too_while_nothing_was_kept(tmp_path):
    ws = failed_session(tmp_path)
    git(ws, "checkout", "-q", "main")
    (ws / "value.py").write_text((ws / "value.py").read_text().replace("VALUE = 10.0", "VALUE = 11.0"))
    commit_all(ws, "a first try, still broken")
    r = run(ws, "--max-experiments", "1")
    assert r.returncode != 0 and "main has 1 new commit(s)" in r.stdout
    git(ws, "checkout", "-q", "main")
    second = fix(ws)
    r = run(ws, "--max-experiments", "1")
    assert r.returncode == 0, r.stderr + r.stdout[-2000:]
    assert kept_baselines(ws) == [second]
