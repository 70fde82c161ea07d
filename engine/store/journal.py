"""The journal: SQLite in WAL mode under <workspace>/.cockpit/, the source of truth.

Sessions, experiments, events and notes. Every write is its own committed transaction, so a
kill -9 at any instant loses at most the write in flight. results.tsv is regenerated from here.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from harness.text import printable, printable_or_none

from ..analysis import DutyCycle, duty_cycle, never_ran  # noqa: F401  (re-exported: defined in engine/analysis.py)
from ..status import FINAL, KEPT, Status  # noqa: F401  (FINAL, KEPT: re-exported for the readers of the journal)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions(
  id INTEGER PRIMARY KEY, tag TEXT UNIQUE NOT NULL, branch TEXT NOT NULL, base_commit TEXT NOT NULL,
  agent TEXT, target TEXT, created REAL, updated REAL,
  best_n INTEGER, best_commit TEXT, best_metric REAL, noise REAL,
  status TEXT DEFAULT 'running', stop_reason TEXT, harness TEXT, origin TEXT, state TEXT, pid INTEGER);
CREATE TABLE IF NOT EXISTS experiments(
  id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id), n INTEGER NOT NULL,
  kind TEXT NOT NULL DEFAULT 'experiment', parent_commit TEXT, commit_sha TEXT, diff_stat TEXT,
  description TEXT, status TEXT NOT NULL, reason TEXT, metric REAL, delta REAL, confidence REAL,
  training_seconds REAL, total_seconds REAL, memory_gb REAL,
  tokens_in INTEGER DEFAULT 0, tokens_out INTEGER DEFAULT 0, cache_write INTEGER DEFAULT 0,
  cache_read INTEGER DEFAULT 0, cost_usd REAL DEFAULT 0,
  started REAL, finished REAL, log_path TEXT,
  propose_seconds REAL, startup_seconds REAL, eval_seconds REAL, run_started REAL, harness TEXT,
  holdout REAL, credit REAL, slot INTEGER, device TEXT, step_seconds REAL, abandoned INTEGER,
  UNIQUE(session_id, n));
CREATE TABLE IF NOT EXISTS events(
  id INTEGER PRIMARY KEY, session_id INTEGER, ts REAL, type TEXT, data TEXT);
CREATE TABLE IF NOT EXISTS curves(
  session_id INTEGER NOT NULL, n INTEGER NOT NULL, points TEXT NOT NULL, PRIMARY KEY(session_id, n));
CREATE TABLE IF NOT EXISTS notes(
  id INTEGER PRIMARY KEY, session_id INTEGER, ts REAL, author TEXT, kind TEXT, text TEXT);
"""

CURVE_POINTS = 200
T = TypeVar("T")


def thin(points: list[T], most: int = CURVE_POINTS) -> list[T]:
    """At most `most` points, evenly spaced over the list, the last one kept."""
    if len(points) <= most:
        return list(points)
    step = len(points) / most
    out = [points[int(i * step)] for i in range(most - 1)]
    return out + [points[-1]]


@dataclass
class Experiment:
    id: int
    session_id: int
    n: int
    kind: str
    parent_commit: str | None
    commit_sha: str | None
    diff_stat: str | None
    description: str | None
    status: str
    reason: str | None
    metric: float | None
    delta: float | None
    confidence: float | None
    training_seconds: float | None
    total_seconds: float | None
    memory_gb: float | None
    tokens_in: int
    tokens_out: int
    cache_write: int
    cache_read: int
    cost_usd: float
    started: float | None
    finished: float | None
    log_path: str | None
    propose_seconds: float | None = None
    startup_seconds: float | None = None
    eval_seconds: float | None = None
    run_started: float | None = None  # when its training process started (the row is made at proposal time)
    harness: str | None = None  # the version of the harness (or measure script) that measured it
    holdout: float | None = None  # the metric on the holdout split: for the human and the report, never the agent
    credit: float | None = None  # a baseline's allowance for compilation and export: the session's (seconds)
    slot: int | None = None  # the device slot it ran on
    device: str | None = None  # that slot's device ("cuda:3", "cpu:1")
    step_seconds: float | None = None  # a baseline's median step time: it bounds later runs' step tolerance
    abandoned: int | None = None  # 1: a proposal the session abandoned at its stop, never an experiment that ran

    def __post_init__(self) -> None:
        # The agent wrote the description, train.py the reason (an exception's message): the raw text
        # stays in the journal; every reader (report, status, TUI, results.tsv, the agent) gets it
        # without terminal control sequences.
        self.description = printable_or_none(self.description)
        self.reason = printable_or_none(self.reason)
        self.diff_stat = printable_or_none(self.diff_stat)

    @property
    def ran(self) -> bool:
        """Whether its run started: False for a proposal the session stopped (or the human vetoed)
        before it ran (engine/analysis.py: never_ran). The UIs read this, never a description."""
        return not never_ran(self)


@dataclass
class Session:
    id: int
    tag: str
    branch: str
    base_commit: str
    agent: str | None
    target: str | None
    created: float
    updated: float
    best_n: int | None
    best_commit: str  # set when the session is made (its base commit)
    best_metric: float | None
    noise: float | None
    status: str
    stop_reason: str | None
    harness: str | None = None  # the harness version its baseline was measured with
    origin: str | None = None  # the branch the session started from
    state: str | None = None  # the engine's state line, kept current while it runs
    pid: int | None = None  # the process running the session (its state is stale when that is gone)

    def __post_init__(self) -> None:
        self.stop_reason = printable_or_none(self.stop_reason)  # may quote the agent or train.py
        self.state = printable_or_none(self.state)


class Journal:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Journals written by an earlier version gain the newer columns (nothing is rewritten)."""
        have = {r[1] for r in self.db.execute("PRAGMA table_info(experiments)")}
        for col, kind in (("propose_seconds", "REAL"), ("startup_seconds", "REAL"), ("eval_seconds", "REAL"),
                          ("run_started", "REAL"), ("harness", "TEXT"), ("holdout", "REAL"), ("credit", "REAL"),
                          ("slot", "INTEGER"), ("device", "TEXT"), ("step_seconds", "REAL"),
                          ("abandoned", "INTEGER")):
            if col not in have:
                self.db.execute(f"ALTER TABLE experiments ADD COLUMN {col} {kind}")
        have = {r[1] for r in self.db.execute("PRAGMA table_info(sessions)")}
        for col, kind in (("harness", "TEXT"), ("origin", "TEXT"), ("state", "TEXT"), ("pid", "INTEGER")):
            if col not in have:
                self.db.execute(f"ALTER TABLE sessions ADD COLUMN {col} {kind}")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Several writes that must land together (a keep and the new best)."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _exec(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self.db.execute(sql, args)

    # ---- sessions ----
    def create_session(self, tag: str, branch: str, base_commit: str, agent: str, target: str) -> Session:
        now = time.time()
        self._exec(
            "INSERT INTO sessions(tag, branch, base_commit, agent, target, created, updated, best_commit) VALUES(?,?,?,?,?,?,?,?)",
            (tag, branch, base_commit, agent, target, now, now, base_commit),
        )
        s = self.session_by_tag(tag)
        assert s is not None, f"session {tag} was just made"
        return s

    def session_by_tag(self, tag: str) -> Session | None:
        row = self._exec("SELECT * FROM sessions WHERE tag=?", (tag,)).fetchone()
        return Session(**dict(row)) if row else None

    def latest_session(self) -> Session | None:
        row = self._exec("SELECT * FROM sessions ORDER BY updated DESC, id DESC LIMIT 1").fetchone()
        return Session(**dict(row)) if row else None

    def session(self, sid: int) -> Session:
        return Session(**dict(self._exec("SELECT * FROM sessions WHERE id=?", (sid,)).fetchone()))

    def update_session(self, sid: int, **fields: object) -> None:
        fields["updated"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        self._exec(f"UPDATE sessions SET {cols} WHERE id=?", (*fields.values(), sid))

    # ---- experiments ----
    def add_experiment(self, sid: int, n: int, kind: str, parent_commit: str, status: str, description: str = "") -> Experiment:
        self._exec(
            "INSERT INTO experiments(session_id, n, kind, parent_commit, status, description, started) VALUES(?,?,?,?,?,?,?)",
            (sid, n, kind, parent_commit, status, description, time.time()),
        )
        return self._one(sid, n)

    def update_experiment(self, sid: int, n: int, **fields: object) -> Experiment:
        cols = ", ".join(f"{k}=?" for k in fields)
        self._exec(f"UPDATE experiments SET {cols} WHERE session_id=? AND n=?", (*fields.values(), sid, n))
        return self._one(sid, n)

    def _one(self, sid: int, n: int) -> Experiment:
        e = self.experiment(sid, n)
        if e is None:
            raise KeyError(f"session {sid} has no experiment #{n}")
        return e

    def experiment(self, sid: int, n: int) -> Experiment | None:
        row = self._exec("SELECT * FROM experiments WHERE session_id=? AND n=?", (sid, n)).fetchone()
        return Experiment(**dict(row)) if row else None

    def experiments(self, sid: int) -> list[Experiment]:
        rows = self._exec("SELECT * FROM experiments WHERE session_id=? ORDER BY n", (sid,)).fetchall()
        return [Experiment(**dict(r)) for r in rows]

    def save_curve(self, sid: int, n: int, points: list[tuple[float, float]]) -> None:
        """Run n's training loss against the fraction of its budget (at most CURVE_POINTS points), so
        the loss comparison with the best run survives a restart."""
        self._exec("INSERT OR REPLACE INTO curves(session_id, n, points) VALUES(?,?,?)",
                   (sid, n, json.dumps([[round(f, 5), round(v, 6)] for f, v in thin(points)])))

    def curve(self, sid: int, n: int) -> list[tuple[float, float]]:
        row = self._exec("SELECT points FROM curves WHERE session_id=? AND n=?", (sid, n)).fetchone()
        return [(f, v) for f, v in json.loads(row[0])] if row else []

    def next_number(self, sid: int) -> int:
        row = self._exec("SELECT MAX(n) FROM experiments WHERE session_id=?", (sid,)).fetchone()
        return (row[0] or 0) + 1

    def mark_interrupted(self, sid: int) -> list[int]:
        """Experiments left unfinished by a dead cockpit become `interrupted`."""
        rows = self._exec(
            f"SELECT n FROM experiments WHERE session_id=? AND status NOT IN ({','.join('?' * len(FINAL))})", (sid, *FINAL)
        ).fetchall()
        ns = [r[0] for r in rows]
        for n in ns:
            self.update_experiment(sid, n, status=Status.INTERRUPTED, reason="cockpit stopped during this experiment", finished=time.time())
        return ns

    def set_harness(self, sid: int, version: str) -> None:
        """Rows measured before versions were recorded are taken as measured by `version`."""
        self._exec("UPDATE experiments SET harness=? WHERE session_id=? AND harness IS NULL", (version, sid))

    def total_cost(self, sid: int) -> float:
        return float(self._exec("SELECT COALESCE(SUM(cost_usd),0) FROM experiments WHERE session_id=?", (sid,)).fetchone()[0])

    # ---- events and notes ----
    def add_event(self, sid: int | None, type_: str, data: dict[str, Any]) -> None:
        self._exec("INSERT INTO events(session_id, ts, type, data) VALUES(?,?,?,?)", (sid, time.time(), type_, json.dumps(data, default=str)))

    def events(self, sid: int, type_: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT type, data FROM events WHERE session_id=?" + (" AND type=?" if type_ else "") + " ORDER BY id"
        rows = self._exec(q, (sid, type_) if type_ else (sid,)).fetchall()
        return [{"type": r[0], **{k: printable(v) if isinstance(v, str) else v for k, v in json.loads(r[1]).items()}} for r in rows]

    def add_note(self, sid: int, author: str, kind: str, text: str) -> None:
        self._exec("INSERT INTO notes(session_id, ts, author, kind, text) VALUES(?,?,?,?,?)", (sid, time.time(), author, kind, text))

    def notes(self, sid: int, author: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT author, kind, text, ts FROM notes WHERE session_id=?" + (" AND author=?" if author else "") + " ORDER BY id"
        return [{**dict(r), "text": printable(r["text"])} for r in self._exec(q, (sid, author) if author else (sid,)).fetchall()]


def write_results_tsv(path: Path, experiments: list[Experiment], metric_name: str = "val_bpb") -> None:
    """The anchor's 5-column format: commit, metric, memory_gb, status, description. A row without
    a measurement (crash, timeout, invalid, vetoed, interrupted) has empty metric and memory cells,
    never 0 (a script that sorts the lower-is-better column would take it for the best); a
    proposal that never ran is no row at all (engine/numbers.py: never_ran)."""
    lines = [f"commit\t{metric_name}\tmemory_gb\tstatus\tdescription"]
    for e in experiments:
        if e.status not in FINAL or never_ran(e):
            continue
        desc = (e.description or "").replace("\t", " ").replace("\n", " ")
        commit = (e.commit_sha or e.parent_commit or "")[:7]
        metric = f"{e.metric:.6f}" if e.metric is not None and math.isfinite(e.metric) else ""
        memory = f"{e.memory_gb:.1f}" if e.memory_gb is not None else ""
        lines.append(f"{commit}\t{metric}\t{memory}\t{e.status}\t{desc}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
