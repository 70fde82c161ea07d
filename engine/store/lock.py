"""One session per workspace. The process that runs a workspace's session holds an OS lock on
.cockpit/session.lock (fcntl.flock, exclusive) for its whole life; the kernel drops it when the
process dies, kill -9 included, so a killed cockpit never blocks a restart. The holder writes its
pid, host, start time and terminal into the file, for the refusal a second cockpit prints, and
empties it when it ends cleanly: a record found by a process that got the lock is a previous
holder that died without a clean stop (kill -9, a crash, the machine went down).

The file descriptor is close-on-exec and subprocesses close inherited descriptors, so no
training process, evaluator or git command can keep the lock after cockpit is gone."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

LOCK_NAME = "session.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a workspace's lock, as its record says."""
    pid: int | None = None
    host: str | None = None
    since: float | None = None  # time.time() when it took the lock
    tty: str | None = None  # the terminal its TUI drew on, if it ran one

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The record in a lock file; None for an empty file (a clean stop, or a fresh one). A
        record that cannot be read (half written) is a holder that says nothing about itself."""
        if not text.strip():
            return None
        try:
            d = json.loads(text)
        except ValueError:
            return cls()
        if not isinstance(d, dict):
            return cls()
        pid, since = d.get("pid"), d.get("since")
        return cls(pid=pid if isinstance(pid, int) else None,
                   host=d.get("host") if isinstance(d.get("host"), str) else None,
                   since=float(since) if isinstance(since, (int, float)) else None,
                   tty=d.get("tty") if isinstance(d.get("tty"), str) else None)

    def dumps(self) -> str:
        return json.dumps({"pid": self.pid, "host": self.host, "since": self.since, "tty": self.tty})


def describe(h: Holder | None, now: float) -> str:
    """`pid 4242 on gpu-box since 2026-12-03 08:12:03 (5 min ago)`, with what the record has."""
    if h is None or (h.pid is None and h.host is None and h.since is None):
        return "another cockpit process (it has not written its pid yet)"
    parts = [f"pid {h.pid}" if h.pid is not None else "a cockpit process"]
    if h.host:
        parts.append(f"on {h.host}")
    if h.since is not None:
        parts.append(f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(h.since))} ({_ago(now - h.since)})")
    return " ".join(parts)


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min ago"
    return f"{s // 86400} d ago"


def refusal(h: Holder | None, now: float) -> str:
    """The one line a second cockpit prints (after `cockpit: error: `)."""
    stop = f" (q in its TUI, or `kill {h.pid}`)" if h is not None and h.pid is not None else ""
    return (f"this workspace's session is already being run by {describe(h, now)}; stop that one first{stop}, "
            f"or watch it with `cockpit status`")


class WorkspaceLock:
    """The lock on <workspace>/.cockpit/session.lock. acquire() refuses (HarnessError, one line)
    while a live process holds it; release() (or the process's death) gives it up."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_NAME
        self.fd: int | None = None
        self.previous: Holder | None = None  # a record left by a holder that died without a clean stop
        self._release = threading.Lock()  # the main thread and cockpit/lifeline.py's watcher may both release

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self, tty: str | None = None) -> None:
        if self.fd is not None:
            return
        try:
            self.path.parent.mkdir(exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise HarnessError(f"cannot create the session lock {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.parse(_read(fd))
            os.close(fd)
            raise HarnessError(refusal(holder, time.time())) from None
        except OSError as e:  # a filesystem without locks: say so rather than run unguarded
            os.close(fd)
            raise HarnessError(f"cannot lock {self.path} ({e.strerror}); a workspace must be on a filesystem "
                               f"that supports flock") from None
        self.previous = Holder.parse(_read(fd))
        me = Holder(pid=os.getpid(), host=socket.gethostname(), since=time.time(), tty=tty)
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.dumps().encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """A clean stop: the record goes, then the lock."""
        with self._release:
            fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)


    def remove(self) -> None:
        """After a refused start in a workspace that had no .cockpit/: the lock file goes, and the
        folder too when nothing else is in it (bad input changes nothing)."""
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # something else is in it (or it is gone): it stays as it is
            pass


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace")
