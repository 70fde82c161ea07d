"""Read access to a prepared dataset (see harness/prepare.py for the layout)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import tokenizer as tokmod
from .errors import HarnessError, NotPreparedError
from .integrity import verify_dataset
from .paths import current_pointer, datasets_dir
from .prepare import PUBLIC_RULE_FORMATS, load_manifest

if TYPE_CHECKING:
    import tiktoken


@dataclass
class Dataset:
    folder: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def bos_id(self) -> int:
        return int(self.manifest["bos_id"])

    @cached_property
    def tokenizer(self) -> tiktoken.Encoding:
        return tokmod.load(self.folder)

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """(vocab,) int32 UTF-8 byte length of each token; 0 for BOS."""
        lengths: np.ndarray = np.load(self.folder / "token_bytes.npy")
        return lengths

    def stream(self, split: str) -> np.ndarray:
        """The split's uint16 token stream, memory-mapped (read-only)."""
        return np.memmap(self.folder / f"{split}.bin", dtype=np.uint16, mode="r")

    def has_split(self, split: str) -> bool:
        return f"{split}.bin" in self.manifest["files"]

    def doc_offsets(self, split: str) -> np.ndarray:
        offsets: np.ndarray = np.load(self.folder / f"{split}_docs.npy")
        return offsets

    def verify(self) -> None:
        verify_dataset(self.folder, self.manifest)


class PublicSplitError(HarnessError):
    """Data prepared by an earlier cockpit, split by a public rule: refused, never re-prepared
    silently (that could change the corpus under a session)."""


def _again(manifest: dict[str, Any]) -> str:
    """The command that prepares the same source again."""
    src = manifest.get("source") or {}
    kind, spec = src.get("kind"), str(src.get("spec", ""))
    if kind == "text":
        folder, _, include = spec.partition(" [")
        return f"`cockpit prepare --text {folder}" + (f" --include '{include.rstrip(']')}'" if include else "") + "`"
    if kind == "parquet":
        return f"`cockpit prepare --parquet '{spec}'`"
    return "`cockpit prepare`"


def open_dataset(folder: Path) -> Dataset:
    manifest = load_manifest(folder)
    if manifest is None:
        try:
            old = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            old = {}
        if isinstance(old, dict) and old.get("format") in PUBLIC_RULE_FORMATS:
            raise PublicSplitError(f"the prepared data in {folder} was split by the old public rule, which train.py "
                                   f"could use to rebuild its validation text; prepare it again: {_again(old)}")
        raise NotPreparedError(f"no complete prepared dataset in {folder}; run `cockpit prepare`")
    return Dataset(folder, manifest)


def current_dataset(cache: Path) -> Dataset:
    """The most recently prepared dataset in a cache."""
    try:
        key = current_pointer(cache).read_text().strip()
    except OSError:
        raise NotPreparedError(f"no prepared data in {cache}; run `cockpit prepare`") from None
    return open_dataset(datasets_dir(cache) / key)
