"""Hashes that make the metric trustworthy: the harness's own files and the prepared data.

`cockpit prepare` locks the harness (records a hash of each of its files in the cache). Before
every run the runner re-hashes them and the data shards and refuses to run on any difference;
after every run it checks the data again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .errors import IntegrityError
from .paths import HARNESS_DIR, atomic_write_text


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def harness_paths(harness_dir: Path = HARNESS_DIR) -> list[Path]:
    """Every file of the harness package (sources, and anything planted beside them: a .pth, a .so,
    a data file), except byte-compiled caches: the runner's processes load the harness from its
    sources only (launch.BOOT), so a __pycache__ file is never read there."""
    return sorted(p for p in harness_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def harness_files(harness_dir: Path = HARNESS_DIR) -> dict[str, str]:
    """{relative path: hash} for every file of the harness package."""
    return {p.relative_to(harness_dir).as_posix(): file_hash(p) for p in harness_paths(harness_dir)}


def lock_path(cache: Path, harness_dir: Path = HARNESS_DIR) -> Path:
    tag = hashlib.sha1(str(harness_dir.resolve()).encode()).hexdigest()[:12]
    return cache / f"harness-{tag}.lock.json"


def lock_harness(cache: Path, harness_dir: Path = HARNESS_DIR) -> bool:
    """Record the harness's hashes. Returns True when the lock was new or changed."""
    path = lock_path(cache, harness_dir)
    files = harness_files(harness_dir)
    old = None
    if path.exists():
        old = json.loads(path.read_text()).get("files")
    if old == files:
        return False
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"harness_dir": str(harness_dir), "files": files}, indent=1))
    return True


def harness_version(files: dict[str, str]) -> str:
    """A short name for one state of the harness: a digest of all its files' hashes."""
    h = hashlib.blake2b(digest_size=6)
    for rel, digest in sorted(files.items()):
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def ensure_locked(cache: Path, harness_dir: Path = HARNESS_DIR) -> bool:
    """Lock this checkout's harness in `cache` when the cache holds no lock for it (a fresh clone
    beside another, or a moved one). True when it locked now. An existing lock is never
    rewritten here: a harness that changed since its lock is still refused by verify_harness."""
    if lock_path(cache, harness_dir).exists():
        return False
    return lock_harness(cache, harness_dir)


def verify_harness(cache: Path, harness_dir: Path = HARNESS_DIR) -> dict[str, str]:
    """Refuse when a harness file differs from the lock; return the files' hashes."""
    path = lock_path(cache, harness_dir)
    if not path.exists():
        raise IntegrityError("the harness is not locked in this cache; run `cockpit prepare`")
    locked = json.loads(path.read_text())["files"]
    now = harness_files(harness_dir)
    changed = sorted(k for k in locked.keys() | now.keys() if locked.get(k) != now.get(k))
    if changed:
        raise IntegrityError(
            f"harness file changed since `cockpit prepare` locked it: harness/{changed[0]}"
            + (f" (+{len(changed) - 1} more)" if len(changed) > 1 else "")
            + "; restore it, or review the change and run `cockpit prepare` to re-lock"
        )
    return now


# Data files this process has hashed and found as recorded: (path, recorded hash) -> the file's
# identity when it was hashed. Hashing a large corpus costs seconds per run; re-stat'ing costs
# microseconds. The identity holds the change time (ctime), which the kernel sets to "now" on any
# write to the file (write(2), a write through a shared mapping, truncate) and on any change of
# its metadata (utime, chmod, rename onto it). No unprivileged process can set ctime back, so a
# file with the same (device, inode, size, mtime, ctime) as when its bytes hashed right is the
# same file with the same bytes. Timestamps are coarse (one kernel tick), so a file whose ctime
# is within STAT_CACHE_MIN_AGE of now is re-hashed every time: a write in the same tick as the
# hash could otherwise leave ctime unchanged. The cache lives only in this process's memory (the
# runner's), where the training subprocess cannot reach it.
_verified: dict[tuple[str, str], tuple[int, ...]] = {}
STAT_CACHE_MIN_AGE = 2.0  # seconds


def file_identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def verify_dataset(folder: Path, manifest: dict[str, Any]) -> None:
    """Check every file the manifest lists against its recorded hash; refuse on the first mismatch.
    A file hashed earlier by this process and not changed since (see _verified) is not re-read."""
    for name, rec in manifest["files"].items():
        p = folder / name
        try:
            st = p.stat()  # before hashing: a write during the hash changes ctime after this
        except FileNotFoundError:
            raise IntegrityError(f"prepared data file missing: {p}; run `cockpit prepare --force`") from None
        key, ident = (str(p), rec["hash"]), file_identity(st)
        if st.st_size == rec["size"] and _verified.get(key) == ident:
            continue
        if st.st_size != rec["size"] or file_hash(p) != rec["hash"]:
            _verified.pop(key, None)
            raise IntegrityError(f"prepared data file changed since it was built: {p}; run `cockpit prepare --force`")
        if time.time_ns() - st.st_ctime_ns > STAT_CACHE_MIN_AGE * 1e9:
            _verified[key] = ident
