"""`cockpit prepare`: documents -> pinned validation split -> BPE tokenizer -> uint16 token shards.

Layout of one prepared dataset (a folder under <cache>/datasets/):
    train.bin / val.bin        uint16 token streams; every document starts with BOS
    train_docs.npy / val_docs.npy   int64 offsets of each document's BOS in its stream
    tokenizer.tiktoken, tokenizer.json, token_bytes.npy
    manifest.json              counts, hashes, settings; written last

Atomic: everything is built in a temporary folder that is renamed into place only after the
manifest is written and synced, so an interrupted prepare never leaves a dataset that loads.
Idempotent: the folder's name is a hash of the source's fingerprint and the settings, so a
second run with nothing changed finds it and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import tokenizer as tokmod
from .errors import SourceError
from .integrity import file_hash, lock_harness
from .paths import atomic_write_text, current_pointer, datasets_dir
from .progress import Bar
from .sources import Source

FORMAT_VERSION = 3  # bump when the on-disk layout or the split/tokenizer rules change (2: the holdout split; 3: salted)
READABLE_FORMATS = (3,)
# Formats 1 and 2 split by a public rule (a hash of the document's name), so a run that could read
# the corpus rebuilt the validation text; they are refused with one line (run `cockpit prepare`).
PUBLIC_RULE_FORMATS = (1, 2)
DEFAULT_VOCAB = 8192
DEFAULT_VAL_FRACTION = 0.05
HOLDOUT_FRACTION = 0.05  # the holdout split: the next slice of the hash range after validation
DEFAULT_TOKENIZER_CHARS = 2_000_000_000
MIN_VAL_TOKENS = 2049  # one CUDA evaluation window: 2048 inputs + 1 target shift
ENCODE_BATCH_CHARS = 8_000_000


def _position(identity: str, salt: str = "") -> float:
    key = (salt + "\0" + identity) if salt else identity
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2**64


def is_val(identity: str, fraction: float, salt: str = "") -> bool:
    """The pinned split: a stable hash of the cache's secret salt and the document's identity,
    independent of order and machine ("" : the unsalted rule of formats 1 and 2)."""
    return _position(identity, salt) < fraction


def split_of(identity: str, val_fraction: float, holdout_fraction: float = HOLDOUT_FRACTION, salt: str = "",
             eligible: bool = True, scale: float = 1.0) -> str:
    """"val" (the first `val_fraction` of the hash range), "holdout" (the next `holdout_fraction`:
    scored for kept experiments, never shown to the agent) or "train". Only an `eligible` document
    can be held out (the built-in corpus holds out only what the sandbox hides: Source.eligible);
    `scale` raises both fractions so that they stay shares of the whole corpus."""
    if not eligible:
        return "train"
    v = min(val_fraction * scale, 0.45)
    h = _position(identity, salt)
    return "val" if h < v else "holdout" if h < v + min(holdout_fraction * scale, 0.45) else "train"


SALT_FILE = "split.salt"


def split_salt(cache: Path) -> str:
    """The cache's secret salt for the split, made at the first `cockpit prepare` (never inside a
    dataset folder, never in the sandbox's view): without it, knowing the corpus and the rule does
    not tell which documents are validation or holdout."""
    p = cache / SALT_FILE
    try:
        salt = p.read_text().strip()
        if salt:
            return salt
    except FileNotFoundError:
        pass
    cache.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(salt + "\n")
    return salt


@dataclass
class PrepareReport:
    folder: Path
    noop: bool
    manifest: dict[str, Any]
    seconds: float
    relocked: bool

    def summary(self) -> str:
        c = self.manifest["counts"]
        s = self.manifest["source"]
        what = "already prepared" if self.noop else f"prepared in {self.seconds:.1f}s"
        skipped = f", {s['skipped_undecodable']} undecodable files skipped" if s["skipped_undecodable"] else ""
        return (
            f"{what}: {c['train_docs']} train docs / {c['train_tokens']:,} tokens, "
            f"{c['val_docs']} val docs / {c['val_tokens']:,} tokens, vocab {self.manifest['vocab_size']}{skipped} -> {self.folder}"
        )


def _fault(stage: str) -> None:
    """Fault injection for tests: COCKPIT_PREPARE_KILL_AT=<stage> kills this process with SIGKILL there."""
    if os.environ.get("COCKPIT_PREPARE_KILL_AT") == stage:
        os.kill(os.getpid(), signal.SIGKILL)


def dataset_key(source: Source, vocab_size: int, val_fraction: float, tokenizer_chars: int, salt: str = "") -> str:
    salt_id = hashlib.sha256(salt.encode()).hexdigest()[:16]  # another salt, another split: another folder
    h = hashlib.sha256(
        json.dumps([FORMAT_VERSION, source.kind, source.fingerprint(), vocab_size, val_fraction, tokenizer_chars,
                    salt_id]).encode()
    )
    return f"{source.kind}-{h.hexdigest()[:16]}"


def load_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete dataset folder, or None."""
    try:
        m: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not m.get("complete") or m.get("format") not in READABLE_FORMATS:
        return None
    return m


def prepare(
    source: Source,
    cache: Path,
    vocab_size: int = DEFAULT_VOCAB,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    tokenizer_chars: int = DEFAULT_TOKENIZER_CHARS,
    force: bool = False,
    show_progress: bool = True,
) -> PrepareReport:
    t0 = time.monotonic()
    if not 0 < val_fraction < 0.5:
        raise SourceError(f"--val-fraction must be between 0 and 0.5, got {val_fraction}")
    if not 257 <= vocab_size <= 65536:
        raise SourceError(f"--vocab-size must be between 257 and 65536 (uint16 shards), got {vocab_size}")
    if source.kind != "stdlib":
        from .sandbox import view_overlap

        inside = view_overlap(source.root or Path(source.spec), source.files)
        if inside is not None:
            raise SourceError(f"the source {source.spec} overlaps {inside}, which the sandbox shows to train.py: its "
                              "validation text would be readable there; copy the corpus to a folder outside it")
    root = datasets_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    salt = split_salt(cache)
    key = dataset_key(source, vocab_size, val_fraction, tokenizer_chars, salt)
    final = root / key
    _recover_interrupted_swap(root, final)
    _remove_stale_tmp(root)
    manifest = load_manifest(final)
    if manifest is not None and not force:
        atomic_write_text(current_pointer(cache), key + "\n")
        relocked = lock_harness(cache)
        return PrepareReport(final, True, manifest, time.monotonic() - t0, relocked)

    tmp = root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _build(source, tmp, vocab_size, val_fraction, tokenizer_chars, show_progress, salt)
        _fault("rename")
        if final.exists():  # --force: move the old one aside first, then swap
            trash = root / f".old-{key}-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(current_pointer(cache), key + "\n")
    relocked = lock_harness(cache)
    return PrepareReport(final, False, manifest, time.monotonic() - t0, relocked)


def _build(source: Source, out: Path, vocab_size: int, val_fraction: float, tokenizer_chars: int, show: bool,
           salt: str = "") -> dict[str, Any]:
    total_bytes = source.total_bytes()
    if total_bytes == 0:
        raise SourceError(f"the source {source.spec} is empty")
    scale = source.holdout_scale()

    def split_of(ident: str, val_fraction: float) -> str:
        return _split(ident, val_fraction, salt=salt, eligible=source.eligible(ident), scale=scale)

    # ---- pass 1: the tokenizer, trained on training documents only ----
    bar = Bar("tokenizer", min(total_bytes, tokenizer_chars), enabled=show)
    fed = 0

    def train_texts() -> Iterator[str]:
        nonlocal fed
        for ident, text in source.documents():
            bar.advance(len(text))
            if split_of(ident, val_fraction) != "train":
                continue
            if fed >= tokenizer_chars:
                return
            fed += len(text)
            yield text

    try:
        enc = tokmod.train(train_texts(), vocab_size)
    except tokmod.CorpusTooSmall:
        if fed == 0:
            raise SourceError(f"the source {source.spec} has no decodable text") from None
        raise
    bar.close()
    if fed == 0:
        raise SourceError(f"the source {source.spec} has no decodable text")
    _fault("tokenizer")
    tokmod.save(enc, out)
    bos = enc.encode_single_token(tokmod.BOS)

    # ---- pass 2: encode every document into its split's uint16 stream ----
    source.skipped_undecodable, source.skipped_names = 0, []
    splits = ("train", "val", "holdout")
    streams = {split: open(out / f"{split}.bin", "wb") for split in splits}
    offsets: dict[str, list[int]] = {k: [] for k in splits}
    ntok = {k: 0 for k in splits}
    nbytes = {k: 0 for k in splits}
    bar = Bar("encode", total_bytes, enabled=show)
    threads = max(1, os.cpu_count() or 1)
    batch: list[tuple[str, str]] = []
    batch_chars = 0

    def flush() -> None:
        nonlocal batch, batch_chars
        ids_list = enc.encode_ordinary_batch([t for _, t in batch], num_threads=threads)
        for (ident, text), ids in zip(batch, ids_list):
            split = split_of(ident, val_fraction)
            offsets[split].append(ntok[split])
            arr = np.empty(len(ids) + 1, dtype=np.uint16)
            arr[0] = bos
            arr[1:] = ids
            streams[split].write(arr.tobytes())
            ntok[split] += len(arr)
            nbytes[split] += len(text.encode("utf-8"))
        bar.advance(batch_chars)
        batch, batch_chars = [], 0

    try:
        for ident, text in source.documents():
            batch.append((ident, text))
            batch_chars += len(text)
            if batch_chars >= ENCODE_BATCH_CHARS:
                flush()
                _fault("encode")
        if batch:
            flush()
    finally:
        for f in streams.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
    bar.close()

    docs = {k: len(v) for k, v in offsets.items()}
    if docs["train"] == 0 or ntok["val"] < MIN_VAL_TOKENS or ntok["holdout"] < MIN_VAL_TOKENS:
        raise SourceError(
            f"corpus too small: {docs['train']} training, {docs['val']} validation and {docs['holdout']} holdout "
            f"documents ({ntok['val']} validation and {ntok['holdout']} holdout tokens, need {MIN_VAL_TOKENS} each); "
            "add text or raise --val-fraction"
        )
    for split, offs in offsets.items():
        np.save(out / f"{split}_docs.npy", np.asarray(offs, dtype=np.int64))

    files = {}
    for p in sorted(out.iterdir()):
        files[p.name] = {"size": p.stat().st_size, "hash": file_hash(p)}
    manifest = {
        "format": FORMAT_VERSION,
        "complete": True,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {
            "kind": source.kind,
            "spec": source.spec,
            "files": len(source.files),
            "skipped_undecodable": source.skipped_undecodable,
            "skipped_examples": source.skipped_names[:20],
        },
        "vocab_size": enc.n_vocab,
        "bos_id": bos,
        "val_fraction": val_fraction,
        "holdout_fraction": HOLDOUT_FRACTION,
        "split": "salted",  # by the cache's secret salt (never in the sandbox's view), not a public rule
        "counts": {f"{split}_{what}": n[split] for split in splits
                   for what, n in (("docs", docs), ("tokens", ntok), ("bytes", nbytes))},
        "files": files,
    }
    _fault("manifest")
    with open(out / "manifest.json", "w") as mf:
        json.dump(manifest, mf, indent=1)
        mf.flush()
        os.fsync(mf.fileno())
    return manifest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover_interrupted_swap(root: Path, final: Path) -> None:
    """A --force rebuild killed between its two renames leaves the old dataset as .old-*: restore it."""
    if final.exists():
        return
    for old in sorted(root.glob(f".old-{final.name}-*")):
        if load_manifest(old) is not None:
            os.replace(old, final)
            return


def _remove_stale_tmp(root: Path) -> None:
    """Remove leftovers of interrupted prepares whose process is gone."""
    for p in root.glob(".tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".old-*"):
        shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_split = split_of
