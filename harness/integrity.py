"""Hashes that make the metric trustworthy: the harness's own files and the prepared data.

`cockpit prepare` locks the harness (records a hash of each of its files in the cache). Before
every run the runner re-hashes them and the data shards and refuses to run on any difference.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import IntegrityError
from .paths import HARNESS_DIR, atomic_write_text


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def harness_files(harness_dir: Path = HARNESS_DIR) -> dict[str, str]:
    """{relative path: hash} for every Python file of the harness package."""
    return {
        p.relative_to(harness_dir).as_posix(): file_hash(p)
        for p in sorted(harness_dir.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


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


def verify_harness(cache: Path, harness_dir: Path = HARNESS_DIR) -> None:
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


def verify_dataset(folder: Path, manifest: dict) -> None:
    """Re-hash every file the manifest lists; refuse on the first mismatch."""
    for name, rec in manifest["files"].items():
        p = folder / name
        if not p.exists():
            raise IntegrityError(f"prepared data file missing: {p}; run `cockpit prepare --force`")
        if p.stat().st_size != rec["size"] or file_hash(p) != rec["hash"]:
            raise IntegrityError(f"prepared data file changed since it was built: {p}; run `cockpit prepare --force`")
