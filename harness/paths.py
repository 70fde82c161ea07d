"""Where prepared data lives: the user cache dir, COCKPIT_CACHE, or an explicit --cache-dir."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HARNESS_DIR = Path(__file__).resolve().parent


def cache_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: explicit argument > $COCKPIT_CACHE > the platform's user cache dir."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("COCKPIT_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("cockpit")).resolve()


def datasets_dir(root: Path) -> Path:
    return root / "datasets"


def current_pointer(root: Path) -> Path:
    """A small file naming the most recently prepared dataset (written atomically)."""
    return root / "current"


def inductor_cache(root: Path) -> Path:
    """torch.compile artefacts persist here across runs, so warm runs recompile fast."""
    return root / "inductor"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
