"""cockpit reads the workspace's state with `git status` every few seconds while a session runs.
Git's status refreshes the index when it can, under .git/index.lock; a human's `git commit` in
the workspace at that moment failed with "index.lock: File exists". cockpit's reads take no
optional lock, so they never write the index."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from engine.store.git import GitRepo


def _git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=ws, check=True,
                          capture_output=True, text=True).stdout


def test_reading_the_tree_never_rewrites_the_index(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    _git(ws, "init", "-q")
    for i in range(20):
        (ws / f"f{i}.py").write_text(f"X = {i}\n")
    _git(ws, "add", "-A")
    _git(ws, "commit", "-qm", "files")
    index = ws / ".git" / "index"
    for i in range(20):  # the same content, newer times: a status that may lock refreshes (rewrites) the index
        os.utime(ws / f"f{i}.py", (1_900_000_000, 1_900_000_000))
    before = (index.stat().st_ino, index.stat().st_mtime_ns)
    repo = GitRepo(ws)
    assert repo.dirty_files() == [] and repo.changed_files() == []
    assert (index.stat().st_ino, index.stat().st_mtime_ns) == before, "cockpit's read rewrote .git/index under its lock"
