"""The read model of a session, for the UIs (the TUI, `cockpit status`, `cockpit report`): one
read-only view with its OWN SQLite connection to the journal (opened `mode=ro`: it can write
nothing, and it never takes the engine's journal lock), the git reads a screen needs (an
experiment's diff), a run's log tail and program.md's path. No UI module opens the journal, git
or the harness runner itself; they read through this.

A view is made for a workspace and bound to one session: `SessionView.open(path, tag)` picks the
session (the latest by default) and says in one line what is wrong with bad input;
`SessionView.of_workspace(ws)` is the TUI's, bound when the engine says which session it runs
(`bind`). The rules it answers with are engine/analysis.py's.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, cast

import git

from harness.errors import HarnessError
from harness.runner import log_tail as _log_tail

from .. import analysis
from .. import config as configmod
from .journal import Experiment, Session  # Experiment: the row type the UIs read (re-exported)
from .workspace import Layout

if TYPE_CHECKING:
    from .workspace import Workspace

LOG_LINES = 40  # what the TUI shows of a run's log when it is opened
SESSIONS = object()  # holdout(): the session's own harness version


class SessionView(Layout):  # its paths (state, journal_path, program_path) are the workspace's
    def __init__(self, root: Path, config: configmod.Config | None = None, session_id: int | None = None,
                 once: bool = False):
        self.root = Path(root)
        self.once = once  # a one-off read (`cockpit status`, `cockpit report`), not a view kept open beside the engine
        self.config = config if config is not None else configmod.load(self.root)
        self.session_id = session_id
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, callers on any thread
        self._git: git.Git | None = None

    # ---- making one ----
    @classmethod
    def of_workspace(cls, ws: Workspace) -> SessionView:
        """The view of an open workspace (engine.store.workspace.Workspace), bound later (`bind`)."""
        return cls(ws.root, ws.config)

    @classmethod
    def open(cls, path: str | Path, tag: str | None = None) -> SessionView:
        """The view of session `tag` (default: the latest) of the workspace at `path`, for one read
        (`cockpit status`, `cockpit report`), touching nothing there. Bad input is a HarnessError
        with one clear line."""
        p = Path(path).expanduser().resolve()
        if not p.is_dir():
            raise HarnessError(f"workspace {p} does not exist")
        try:
            root = Path(git.Repo(p).working_tree_dir or p)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise HarnessError(f"{p} is not a git repository; run `cockpit init {p}` to create a workspace") from None
        view = cls(root, once=True)
        if not view.journal_path.is_file():
            raise HarnessError(f"no cockpit session in {root} yet; run `cockpit` there first")
        s = view.session_by_tag(tag) if tag else view.latest_session()
        if s is None:
            if tag:
                tags = view.tags()
                known = f" (sessions: {', '.join(tags)})" if tags else ""
                raise HarnessError(f"no session {tag!r} in {root}{known}")
            raise HarnessError(f"no session in {root} yet")
        view.bind(s.id)
        return view

    def bind(self, session_id: int) -> None:
        self.session_id = session_id

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ---- the journal, read-only ----
    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                if self._db is None:
                    uri = f"{self.journal_path.resolve().as_uri()}?mode=ro"
                    if self.once and not self.journal_path.with_name(self.journal_path.name + "-wal").exists():
                        # no cockpit has the journal open (the last one to close folded its log in):
                        # read the file as it is, so that not even SQLite's -wal/-shm are left behind
                        uri += "&immutable=1"
                    self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
                    self._db.row_factory = sqlite3.Row
                return self._db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                raise HarnessError(f"cannot read the journal {self.journal_path}: {e}") from None

    def _sid(self) -> int:
        if self.session_id is None:
            raise HarnessError("no session chosen yet")
        return self.session_id

    def tags(self) -> list[str]:
        return [r[0] for r in self._query("SELECT tag FROM sessions ORDER BY id")]

    def session_by_tag(self, tag: str) -> Session | None:
        rows = self._query("SELECT * FROM sessions WHERE tag=?", (tag,))
        return Session(**dict(rows[0])) if rows else None

    def latest_session(self) -> Session | None:
        rows = self._query("SELECT * FROM sessions ORDER BY updated DESC, id DESC LIMIT 1")
        return Session(**dict(rows[0])) if rows else None

    def session(self) -> Session:
        """The bound session, as the journal holds it now."""
        rows = self._query("SELECT * FROM sessions WHERE id=?", (self._sid(),))
        if not rows:
            raise HarnessError(f"no session {self._sid()} in {self.journal_path}")
        return Session(**dict(rows[0]))

    def history(self) -> list[Experiment]:
        """The session's experiments (baselines too), in order."""
        return [Experiment(**dict(r)) for r in
                self._query("SELECT * FROM experiments WHERE session_id=? ORDER BY n", (self._sid(),))]

    def experiment(self, n: int) -> Experiment | None:
        rows = self._query("SELECT * FROM experiments WHERE session_id=? AND n=?", (self._sid(), n))
        return Experiment(**dict(rows[0])) if rows else None

    def curve(self, n: int) -> list[tuple[float, float]]:
        """Run n's training loss against the fraction of its budget, as the journal kept it."""
        import json

        rows = self._query("SELECT points FROM curves WHERE session_id=? AND n=?", (self._sid(), n))
        return [(f, v) for f, v in json.loads(rows[0][0])] if rows else []

    def cost(self) -> float:
        rows = self._query("SELECT COALESCE(SUM(cost_usd),0) FROM experiments WHERE session_id=?", (self._sid(),))
        return float(rows[0][0])

    def usage(self) -> dict[str, int]:
        """The agent's tokens over the session, by kind."""
        rows = self._query("SELECT COALESCE(SUM(tokens_in),0), COALESCE(SUM(tokens_out),0), COALESCE(SUM(cache_read),0), "
                           "COALESCE(SUM(cache_write),0) FROM experiments WHERE session_id=?", (self._sid(),))
        return dict(zip(("tokens_in", "tokens_out", "cache_read", "cache_write"), map(int, rows[0])))

    # ---- the analysis of the rows ----
    def duty(self) -> analysis.DutyCycle:
        return analysis.duty_cycle(self.history())

    def holdout(self, best_n: int | None, direction: str | None = None, harness: str | None | object = SESSIONS) -> analysis.HoldoutCheck:
        """The best code's gain on the holdout beside its gain on validation (`harness`: the
        version compared, None for every row; by default the session's)."""
        h = self.session().harness if harness is SESSIONS else cast("str | None", harness)
        return analysis.holdout_check(self.history(), best_n, direction or self.config.target.direction, h)

    # ---- git and the run's files ----
    def diff(self, e: Experiment) -> str:
        """An experiment's change against the best it was built on ("" for a baseline or a row
        without a commit)."""
        if e.kind != "experiment" or not e.commit_sha or not e.parent_commit:
            return ""
        if self._git is None:
            self._git = git.Git(str(self.root))
        try:
            return str(self._git.diff(e.parent_commit, e.commit_sha))
        except git.GitCommandError as err:  # a commit gone (a pruned ref): said in the pane, not a crash
            return f"(no diff: {(err.stderr or '').strip() or err})"

    def log_tail(self, e: Experiment, lines: int = LOG_LINES) -> str:
        """The end of the run's log, cleaned for a screen ("" when it has none)."""
        return _log_tail(Path(e.log_path), lines) if e.log_path else ""
