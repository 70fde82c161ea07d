"""Bounds on what one run may take from the machine, set by the operating system from outside it.

Each training (and evaluation) process is started inside its own control group, made by the
runner before the process exists, so nothing the run does can leave it or widen it (inside the
sandbox /sys is read-only and every capability is dropped):
  - cpuset: the slot's own cores (`cpu:N` slots) or the cores cockpit itself may use; a
    sched_setaffinity() to every core gives only these;
  - pids: at most PIDS_MAX processes and threads (a fork bomb stops there; RLIMIT_NPROC is not
    enforced for root);
  - memory: at most MEMORY_FRACTION of RAM, charged by the kernel at once (tmpfs files included;
    the runner's once-a-second poll stays as the reason for the record).
cgroup v2 (a writable unified hierarchy with the cpuset, memory and pids controllers) or v1 (the
named controllers' own hierarchies, writable as root) are used, whichever this machine has.
Where neither is writable, `notice()` says what is not bounded, once, at start.

Disk: a run's folder is watched while it runs (RUN_DISK_CAP bytes, RUN_FILES_CAP entries, or over
1 GB with under DISK_RESERVE free on its disk: the run is killed), and after it the `files/` it leaves are kept only up to FILES_KEEP_CAP
bytes per run and FILES_TOTAL_CAP for all the runs of one session's folder (oldest pruned first).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from .errors import HarnessError

PIDS_MAX = 4096  # processes and threads of one run
MEMORY_FRACTION = 0.85  # of the machine's RAM, for all of one run's processes (and its tmpfs files)
MEMORY_LIMIT: int | None = None  # bytes, instead of MEMORY_FRACTION (tests)
RUN_DISK_CAP = 64 << 30  # bytes a run may have in its folder while it runs (its exported model included)
DISK_RESERVE = 2 << 30  # a run holding over 1 GB is also stopped when its disk has less than this free
RUN_FILES_CAP = 200_000  # entries (files and folders) a run may have in its folder while it runs
FILES_KEEP_CAP = 1 << 30  # a run's files/ kept after it, at most (bytes); a larger one is not kept
FILES_TOTAL_CAP = 10 << 30  # all kept files/ of one session's runs; the oldest go first
DISK_POLL_SECONDS = 0.5
CONTROLLERS = ("cpuset", "memory", "pids")
_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Backend:
    version: int  # 1 or 2
    parents: dict[str, Path]  # controller -> the folder new groups are made in (v2: one folder for all)


@functools.lru_cache(maxsize=1)
def backend() -> Backend | None:
    try:
        return _probe()
    except OSError:
        return None


def _own_paths() -> dict[str, str]:
    """controller (v1) or "" (v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for n in (names.split(",") if names else [""]):
            out[n] = path
    return out


def _probe() -> Backend | None:
    own = _own_paths()
    unified = _ROOT / "cgroup.controllers"
    if unified.exists():  # pure v2
        return _probe_v2(_ROOT, own.get("", "/"))
    v1 = {c: _ROOT / c / own[c].lstrip("/") for c in CONTROLLERS if c in own and (_ROOT / c / "tasks").exists()}
    if len(v1) == len(CONTROLLERS):
        parents = {}
        for c, base in v1.items():
            _remove_stale(base)
            parent = base / f"cockpit-{os.getpid()}"
            parent.mkdir(exist_ok=True)
            parents[c] = parent
        if not _write_ok(parents["cpuset"] / "cpuset.cpus", (parents["cpuset"].parent / "cpuset.cpus").read_text()):
            return None
        _write_ok(parents["cpuset"] / "cpuset.mems", (parents["cpuset"].parent / "cpuset.mems").read_text())
        return Backend(1, parents)
    if (_ROOT / "unified" / "cgroup.controllers").exists():
        return _probe_v2(_ROOT / "unified", own.get("", "/"))
    return None


def _probe_v2(root: Path, own: str) -> Backend | None:
    # A v2 group with processes cannot hand controllers to children, so groups are made beside
    # this process's own: in its parent, which must delegate the controllers.
    parent = (root / own.lstrip("/")).parent if own not in ("", "/") else root
    have = set((parent / "cgroup.controllers").read_text().split())
    if not set(CONTROLLERS) <= have:
        return None
    enabled = set((parent / "cgroup.subtree_control").read_text().split())
    if not set(CONTROLLERS) <= enabled:
        if not _write_ok(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in CONTROLLERS)):
            return None
    _remove_stale(parent)
    mine = parent / f"cockpit-{os.getpid()}"
    mine.mkdir(exist_ok=True)
    if not _write_ok(mine / "cgroup.subtree_control", " ".join(f"+{c}" for c in CONTROLLERS)):
        return None
    return Backend(2, {c: mine for c in CONTROLLERS})


def _remove_stale(parent: Path) -> None:
    """Groups a cockpit process that is gone left behind (kill -9): emptied and removed."""
    for d in parent.glob("cockpit-*"):
        pid = d.name.removeprefix("cockpit-")
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            for sub in [*d.glob("run-*"), d]:
                Group.from_dirs([sub]).remove()


def _remove_own() -> None:
    b = backend.cache_info().currsize and backend()
    if b:
        for d in set(b.parents.values()):
            try:
                d.rmdir()
            except OSError:
                pass


atexit.register(_remove_own)


def _write_ok(path: Path, text: str) -> bool:
    try:
        path.write_text(text)
        return True
    except OSError:
        return False


def notice() -> str | None:
    """One line, when runs go without the kernel's bounds here; None when they have them."""
    if backend() is not None:
        return None
    root = os.geteuid() == 0
    return ("resource limits: no writable cgroup (cpuset, memory, pids) here, so a CPU slot's cores are an affinity "
            "the run can widen, memory is polled once a second"
            + (", and a fork bomb is not bounded (RLIMIT_NPROC does not apply to root)" if root else
               ", and processes are bounded by RLIMIT_NPROC only"))


class Group:
    """One run process's control group (one folder per controller on v1)."""

    _n = 0
    _lock = threading.Lock()

    def __init__(self, cpus: set[int] | None, memory: int | None = None, pids: int | None = None):
        b = backend()
        assert b is not None
        with Group._lock:
            Group._n += 1
            name = f"run-{Group._n}"
        self.dirs = sorted({b.parents[c] / name for c in CONTROLLERS})
        for d in self.dirs:
            d.mkdir(exist_ok=True)
        self.version = b.version
        try:
            self._limit(b, name, cpus, memory, pids)
        except OSError:
            self.remove()
            raise

    def _limit(self, b: Backend, name: str, cpus: set[int] | None, memory: int | None, pids: int | None) -> None:
        cs, mem, pid = (b.parents[c] / name for c in CONTROLLERS)
        cpus = cpus or set(os.sched_getaffinity(0))
        self.cpus = cpus
        (cs / "cpuset.cpus").write_text(",".join(map(str, sorted(cpus))))
        if b.version == 1:
            (cs / "cpuset.mems").write_text((cs.parent / "cpuset.mems").read_text())
        memory = memory or MEMORY_LIMIT or int(MEMORY_FRACTION * psutil.virtual_memory().total)
        (mem / ("memory.max" if b.version == 2 else "memory.limit_in_bytes")).write_text(str(memory))
        if b.version == 2:
            _write_ok(mem / "memory.swap.max", "0")
        (pid / "pids.max").write_text(str(pids or PIDS_MAX))
        self.memory, self.pids = memory, pids or PIDS_MAX

    @classmethod
    def from_dirs(cls, dirs: list[Path]) -> "Group":
        g = cls.__new__(cls)
        g.dirs = dirs
        return g

    def procs_files(self) -> list[str]:
        """The files a process writes its pid into to join (in the child, before exec)."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def oom_kills(self) -> int:
        """How many times the kernel killed a process of the group for its memory limit."""
        for d in self.dirs:
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                try:
                    for line in (d / name).read_text().splitlines():
                        k, _, v = line.partition(" ")
                        if k == key and v.strip().isdigit():
                            return int(v)
                except OSError:
                    continue
        return 0

    def members(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return out

    def remove(self) -> None:
        """Kill whatever is left in the group, then remove it."""
        deadline = time.monotonic() + 5
        while True:
            left = self.members()
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                for d in self.dirs:
                    if d.exists():
                        d.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)


def join(paths: list[str]) -> None:
    """In the child before exec: move this process into its group (its descendants follow)."""
    pid = str(os.getpid()).encode()
    for p in paths:
        fd = os.open(p, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def make_group(env: dict[str, str]) -> Group | None:
    """A group for one run process with the slot's cores (COCKPIT_CPUS), or None where this machine
    has none to give (notice() says so at start)."""
    if backend() is None:
        return None
    cpus = {int(c) for c in env.get("COCKPIT_CPUS", "").split(",") if c.strip().isdigit()}
    try:
        return Group(cpus or None)
    except OSError as e:  # e.g. a slot's cores outside the ones cockpit may use
        raise HarnessError(f"could not make the run's control group ({e.strerror}); "
                           "check the slot's cores (--devices cpu:N)") from None


# ---- disk ----

def usage(folder: Path, limit_entries: int = RUN_FILES_CAP) -> tuple[int, int]:
    """(bytes on disk, entries) under a folder, counting at most limit_entries + 1 entries."""
    total = n = 0
    stack = [str(folder)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                n += 1
                if n > limit_entries:
                    return total, n
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return total, n


class DiskWatch(threading.Thread):
    """Watches a run's folder while it runs; past RUN_DISK_CAP bytes or RUN_FILES_CAP entries it
    kills the run's process group and says so in `reason`."""

    def __init__(self, folder: Path, pgid: int, log: Callable[[bytes], object] | None = None):
        super().__init__(daemon=True, name="cockpit-disk-watch")
        self.folder, self.pgid, self.log = folder, pgid, log
        self.done = threading.Event()
        self.reason: str | None = None

    def run(self) -> None:
        while not self.done.wait(DISK_POLL_SECONDS):
            size, n = usage(self.folder)
            try:
                free = shutil.disk_usage(self.folder).free
            except OSError:
                free = DISK_RESERVE
            if size > RUN_DISK_CAP or n > RUN_FILES_CAP or (size > 1 << 30 and free < DISK_RESERVE):
                self.reason = (f"the run wrote {size / 1e9:.1f} GB in {n:,} entries in its folder, over its cap of "
                               f"{RUN_DISK_CAP / 1e9:.1f} GB and {RUN_FILES_CAP:,} entries (or leaving under "
                               f"{DISK_RESERVE / 1e9:.0f} GB free on its disk), and was killed")
                try:
                    os.killpg(self.pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                if self.log is not None:
                    self.log(f"harness: {self.reason}\n".encode())
                return

    def stop(self) -> None:
        self.done.set()


def keep_files_caps(per_run_mb: float, total_mb: float) -> None:
    """The caps on kept files/ from cockpit.toml (`[run] keep_files_mb`, `keep_files_total_mb`)."""
    global FILES_KEEP_CAP, FILES_TOTAL_CAP
    FILES_KEEP_CAP, FILES_TOTAL_CAP = int(per_run_mb * (1 << 20)), int(total_mb * (1 << 20))


def keep_files(files: Path) -> str | None:
    """After a run: its files/ is kept only up to FILES_KEEP_CAP; returns a line when it was not."""
    if not files.is_dir():
        return None
    size, n = usage(files)
    if size > FILES_KEEP_CAP or n > RUN_FILES_CAP:
        shutil.rmtree(files, ignore_errors=True)
        return (f"harness: the files this run left ({size / 1e9:.2f} GB, {n:,} entries) are over the "
                f"{FILES_KEEP_CAP / 1e9:.2f} GB kept per run and were deleted")
    return None


def prune_files(session_runs: Path, keep: Path | None = None) -> list[Path]:
    """Delete the oldest runs' files/ under a session's runs folder until all kept files/ fit
    FILES_TOTAL_CAP (the newest, `keep`, last of all). Returns the folders deleted."""
    kept = []
    for f in session_runs.glob("*/files"):
        try:
            kept.append((f.stat().st_mtime, f, usage(f)[0]))
        except OSError:
            continue
    kept.sort(key=lambda x: (x[1] == keep, x[0]))
    total = sum(s for _, _, s in kept)
    gone = []
    for _, f, size in kept:
        if total <= FILES_TOTAL_CAP:
            break
        shutil.rmtree(f, ignore_errors=True)
        total -= size
        gone.append(f)
    return gone
