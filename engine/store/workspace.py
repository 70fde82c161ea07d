"""A research workspace: a git repository with the editable files, program.md and cockpit.toml,
plus the git-ignored .cockpit/ folder (journal, results.tsv, run logs)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

from .. import config as configmod
from .git import GitError, GitRepo

# What `cockpit init` copies: the trainer and program.md as this cockpit shipped them. They are
# package data that no session edits, not the clone's trainer/train.py and program.md: in the
# README's set-up the clone is a workspace too, so those are the agent's and the human's working
# copies (an editable install would otherwise hand a session's edits to every new workspace).
TEMPLATE = Path(__file__).resolve().parents[1] / "template"  # engine/template
TRAINER = TEMPLATE / "train.py"
PROGRAM_TEMPLATE = TEMPLATE / "program.md"


class Layout:
    """Where a workspace keeps its files, from its root alone: the engine's Workspace and the UIs'
    read-only SessionView (engine/store/view.py) both find them here."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / ".cockpit"

    @property
    def journal_path(self) -> Path:
        return self.state / "journal.sqlite"

    @property
    def results_path(self) -> Path:
        return self.state / "results.tsv"

    def run_dir(self, tag: str, n: int) -> Path:
        return self.state / "runs" / tag / str(n)

    @property
    def program_path(self) -> Path:
        """program.md, the human's file: the TUI watches and edits it."""
        return self.root / "program.md"


@dataclass
class Workspace(Layout):
    root: Path
    git: GitRepo
    config: configmod.Config

    def program(self) -> str:
        try:
            return self.program_path.read_text(encoding="utf-8")
        except OSError:
            return ""


def open_workspace(path: str | Path) -> Workspace:
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise HarnessError(f"workspace {p} does not exist")
    repo = GitRepo(p)
    cfg = configmod.load(repo.root)
    _ensure_workspace(repo, cfg)
    ws = Workspace(repo.root, repo, cfg)
    _ensure_ignored(ws)
    return ws


def _ensure_workspace(repo: GitRepo, cfg: configmod.Config) -> None:
    """Refuse, before anything is written or a branch is made, a repository that is not a research
    workspace (no cockpit.toml, no trainer/train.py) or that has none of its editable files (an
    agent may create a listed file, but it needs one to start from; the GPT target needs its script)."""
    root = repo.root
    toml = root / configmod.CONFIG_NAME
    if not toml.is_file() and not (root / "trainer" / "train.py").is_file():
        repo.head()  # a repository with no commits yet is told so first (its files may only be uncommitted)
        raise HarnessError(f"{root} is not a cockpit workspace (no {configmod.CONFIG_NAME}, no trainer/train.py); "
                           f"create one with `cockpit init DIR`")
    editable = cfg.target.editable
    missing = [f for f in editable if not (root / f).is_file()]
    if missing and (len(missing) == len(editable) or (cfg.target.kind == "gpt" and missing[0] == editable[0])):
        raise HarnessError(f"{toml}: [target].editable names {missing[0]}, which does not exist in {root}")


def _ensure_ignored(ws: Workspace) -> None:
    """.cockpit/ must never be committed or reset; git's own exclude file keeps the tree clean."""
    out = subprocess.run(["git", "check-ignore", "-q", ".cockpit/"], cwd=ws.root)
    if out.returncode != 0:
        exclude = Path(ws.git.repo.git_dir) / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with open(exclude, "a") as f:
            f.write("\n/.cockpit/\n")


def init_workspace(path: str | Path) -> Path:
    """Create a research workspace: a git repo with trainer/train.py, program.md, cockpit.toml and
    a .gitignore for .cockpit/, committed. Refuses a folder that already holds a workspace."""
    root = Path(path).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise HarnessError(f"{root} exists and is not a folder")
    if (root / configmod.CONFIG_NAME).exists() or (root / "trainer" / "train.py").exists():
        raise HarnessError(f"{root} already holds a workspace")
    if root.exists() and (root / ".git").exists():
        try:
            GitRepo(root).ensure_clean()
        except GitError as e:
            raise HarnessError(str(e)) from None
    root.mkdir(parents=True, exist_ok=True)
    (root / "trainer").mkdir(exist_ok=True)
    shutil.copyfile(TRAINER, root / "trainer" / "train.py")
    shutil.copyfile(PROGRAM_TEMPLATE, root / "program.md")
    (root / configmod.CONFIG_NAME).write_text(configmod.DEFAULT_TOML)
    gi = root / ".gitignore"
    existing = gi.read_text() if gi.exists() else ""
    if ".cockpit/" not in existing:
        gi.write_text(existing + ("" if existing.endswith("\n") or not existing else "\n") + ".cockpit/\n__pycache__/\n")

    def run(*a: str) -> None:
        subprocess.run(["git", *a], cwd=root, check=True, capture_output=True)

    if not (root / ".git").exists():
        run("init", "-q", "-b", "main")
    run("add", "trainer/train.py", "program.md", configmod.CONFIG_NAME, ".gitignore")
    env_user = ["-c", "user.name=cockpit", "-c", "user.email=cockpit@localhost"]
    subprocess.run(["git", *env_user, "commit", "-q", "-m", "cockpit workspace"], cwd=root, check=True, capture_output=True)
    return root
