"""All git access goes through GitRepo. The engine works on branch cockpit/<tag> only, pins each
experiment's commit at refs/cockpit/<tag>/<n> so its diff stays reachable after a reset, and
only ever resets to commits it recorded (the session's base or a kept experiment)."""

from __future__ import annotations

import threading
from pathlib import Path

import git

from harness.errors import HarnessError

_WORKTREES = threading.Lock()  # git worktree add/prune change the repository's shared list of trees

class GitError(HarnessError):
    """A git precondition failed (no repository, dirty tree, unknown commit)."""


class GitRepo:
    def __init__(self, root: Path):
        try:
            self.repo = git.Repo(root)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitError(f"{root} is not a git repository; run `cockpit init {root}` to create a workspace") from None
        if self.repo.bare:
            raise GitError(f"{root} is a bare git repository")
        self.root = Path(str(self.repo.working_tree_dir))
        self.g = self.repo.git
        # cockpit's reads (`git status` every few seconds) never take .git/index.lock: git's
        # optional lock refreshes the index, and a human's `git commit` in the workspace at
        # that moment failed with "index.lock: File exists".
        self.g.update_environment(GIT_OPTIONAL_LOCKS="0")
        self.removed_stale_lock = self._remove_stale_index_lock()
        try:
            self.g.config("user.email")
        except git.GitCommandError:  # no identity configured (a fresh CI box): commit as cockpit
            self.g.update_environment(
                GIT_AUTHOR_NAME="cockpit", GIT_AUTHOR_EMAIL="cockpit@localhost",
                GIT_COMMITTER_NAME="cockpit", GIT_COMMITTER_EMAIL="cockpit@localhost",
            )

    def _remove_stale_index_lock(self) -> bool:
        """A cockpit killed inside a git command leaves .git/index.lock, and every later git
        command fails. Remove it only when no git process is working in this repository."""
        lock = Path(self.repo.git_dir) / "index.lock"
        if not lock.exists():
            return False
        import psutil

        root = str(self.root)
        for p in psutil.process_iter(["name", "cwd", "cmdline"]):
            try:
                busy = (p.info["name"] or "").startswith("git") and "cat-file" not in (p.info["cmdline"] or [])
                if busy and (p.info["cwd"] or "").startswith(root):  # GitPython's readers take no lock
                    return False
            except (psutil.Error, TypeError):
                continue
        try:
            lock.unlink()
        except FileNotFoundError:
            return False
        return True

    # ---- state ----
    def head(self) -> str:
        # A fresh `git rev-parse`, not GitPython's long-lived cat-file process: Ctrl-C or a
        # SIGTERM to cockpit's process group kills that one, and the repair after a stop needs HEAD.
        try:
            return str(self.g.rev_parse("--verify", "-q", "HEAD"))
        except git.GitCommandError:
            raise GitError(f"{self.root} has no commits yet; commit the workspace first") from None

    def branch(self) -> str | None:
        return None if self.repo.head.is_detached else self.repo.active_branch.name

    def dirty_files(self) -> list[str]:
        """Tracked files with uncommitted changes (staged or not). Untracked files are left alone."""
        out = self.g.status("--porcelain", "--untracked-files=no")
        return sorted(line[3:] for line in out.splitlines() if line.strip())

    def ensure_clean(self, allow: tuple[str, ...] = ()) -> None:
        dirty = [f for f in self.dirty_files() if f not in allow]
        if dirty:
            more = f" (+{len(dirty) - 3} more)" if len(dirty) > 3 else ""
            raise GitError(f"the working tree has uncommitted changes: {', '.join(dirty[:3])}{more}; commit or stash them first")

    def changed_files(self, new_allowed: list[str] | tuple[str, ...] = ()) -> list[str]:
        """Tracked files changed relative to HEAD, plus untracked files among `new_allowed` (the
        editable paths): other untracked files (editor swap files, logs) are not the agent's."""
        out = self.g.status("--porcelain", "--untracked-files=no")
        files = []
        for line in out.splitlines():
            path = line[3:]
            if " -> " in path:
                path = path.split(" -> ", 1)[1]
            files.append(path.strip('"'))
        if new_allowed:
            untracked = self.g.ls_files("--others", "--exclude-standard", "--", *new_allowed)
            files.extend(p for p in untracked.splitlines() if p)
        return sorted(set(files))

    # ---- history ----
    def resolve(self, ref: str) -> str | None:
        """The commit `ref` names, or None."""
        try:
            return str(self.g.rev_parse("--verify", "-q", f"{ref}^{{commit}}"))
        except git.GitCommandError:
            return None

    def is_ancestor(self, a: str, b: str) -> bool:
        """True when commit a is b or one of its ancestors."""
        try:
            self.g.merge_base("--is-ancestor", a, b)
            return True
        except git.GitCommandError:
            return False

    def commits_between(self, a: str, b: str) -> list[str]:
        """The commits reachable from b but not from a, oldest first."""
        out = self.g.rev_list("--reverse", f"{a}..{b}")
        return [x for x in out.splitlines() if x]

    def subject(self, sha: str) -> str:
        return str(self.g.log("-1", "--format=%s", sha))

    # ---- branches and refs ----
    def checkout_session_branch(self, tag: str, start: str | None = None) -> str:
        """Check out cockpit/<tag>, creating it at `start` (default HEAD) when new."""
        name = f"cockpit/{tag}"
        if name in [h.name for h in self.repo.heads]:
            self.g.checkout(name)
        else:
            self.g.checkout("-b", name, start or self.head())
        return name

    def commit_all(self, files: list[str], message: str) -> str:
        self.g.add("--", *files)
        self.g.commit("-m", message, "--no-verify", "--allow-empty")
        return self.head()

    def pin(self, tag: str, n: int, sha: str) -> None:
        self.g.update_ref(f"refs/cockpit/{tag}/{n}", sha)

    def mark(self, kind: str, tag: str, sha: str) -> None:
        """Keep sha reachable and known under refs/cockpit-<kind>/<tag>/<sha> (kind: sync for
        cockpit's program.md commits, human for the human's commits it kept aside)."""
        self.g.update_ref(f"refs/cockpit-{kind}/{tag}/{sha}", sha)

    def marked(self, kind: str, tag: str) -> set[str]:
        out = self.g.for_each_ref("--format=%(objectname)", f"refs/cockpit-{kind}/{tag}/")
        return {x for x in out.split() if x}

    def cherry_pick(self, commits: list[str]) -> bool:
        """Apply commits onto HEAD in order; False (and nothing applied) on a conflict."""
        try:
            self.g.cherry_pick("--allow-empty", "--keep-redundant-commits", *commits)
            return True
        except git.GitCommandError:
            try:
                self.g.cherry_pick("--abort")
            except git.GitCommandError:
                pass
            return False

    def pinned(self, tag: str) -> dict[int, str]:
        out = self.g.for_each_ref("--format=%(refname) %(objectname)", f"refs/cockpit/{tag}/")
        refs = {}
        for line in out.splitlines():
            name, sha = line.split()
            refs[int(name.rsplit("/", 1)[1])] = sha
        return refs

    def reset_hard(self, sha: str, keep: tuple[str, ...] = ()) -> None:
        """Reset the branch and tree to sha; the working-tree content of `keep` files (the human's,
        like program.md) survives the reset."""
        saved = {}
        for rel in keep:
            p = self.root / rel
            if p.is_file():
                saved[rel] = p.read_bytes()
        self.g.reset("--hard", sha)
        for rel, data in saved.items():
            p = self.root / rel
            if not p.is_file() or p.read_bytes() != data:
                p.write_bytes(data)

    def diff(self, a: str, b: str | None = None) -> str:
        return str(self.g.diff(a, b) if b else self.g.diff(a))

    def diff_stat(self, a: str, b: str | None = None) -> str:
        args = ["--shortstat", a] + ([b] if b else [])
        return str(self.g.diff(*args)).strip()

    def show(self, sha: str, path: str) -> str | None:
        """The file's content at sha, or None when the commit has no such file."""
        try:
            return str(self.g.show(f"{sha}:{path}", strip_newline_in_stdout=False))
        except git.GitCommandError:
            return None

    def files_changed(self, a: str, b: str) -> list[str]:
        return [p for p in self.g.diff("--name-only", a, b).splitlines() if p]

    # ---- the agent's tree ----
    def agent_worktree(self, path: Path, sha: str) -> "GitRepo":
        """A second working tree of this repository at `path`, detached at sha: the agent edits
        there while a run uses the main tree. Made (or repaired) on demand; left clean at sha."""
        path = Path(path)
        if (path / ".git").is_file():
            try:
                wt = GitRepo(path)._confined()
                wt.g.reset("--hard", sha)
                wt.g.clean("-fdq")
                return wt
            except (GitError, git.GitCommandError):
                pass
        import shutil

        with _WORKTREES:  # the slots' threads check their trees out beside the engine's: one add or prune at a time
            shutil.rmtree(path, ignore_errors=True)
            self.g.worktree("prune")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.g.worktree("add", "--detach", "-f", str(path), sha)
        return GitRepo(path)._confined()

    def _confined(self) -> "GitRepo":
        """GitPython runs git in the process's working directory when the tree's folder is gone
        (someone deleted .cockpit/agent): `git clean` would then clean whatever repository that
        is. Named explicitly, git acts on this tree or fails."""
        self.g.update_environment(GIT_DIR=self.repo.git_dir, GIT_WORK_TREE=str(self.root))
        return self
