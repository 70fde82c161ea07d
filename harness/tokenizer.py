"""The BPE tokenizer: trained with rustbpe, used as a tiktoken.Encoding with a BOS special token.

On disk: `tokenizer.tiktoken` (one "base64(bytes) rank" line per token, tiktoken's own format)
and `tokenizer.json` (split pattern and special tokens). `token_bytes.npy` holds each token's
length in UTF-8 bytes, which turns nats per token into bits per byte; BOS counts zero bytes.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Iterable

import numpy as np
import tiktoken

from .errors import SourceError

BOS = "<|bos|>"
# GPT-4 style split, with digits grouped by up to three (keeps numbers compact in source code).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)


class CorpusTooSmall(SourceError):
    """The corpus has too few distinct pairs to learn the requested vocabulary."""


def train(texts: Iterable[str], vocab_size: int) -> tiktoken.Encoding:
    """Train a BPE of `vocab_size` tokens in all, the last id being BOS."""
    import rustbpe

    if not 257 <= vocab_size <= 65536:
        raise SourceError(f"--vocab-size must be between 257 and 65536 (uint16 shards), got {vocab_size}")
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size - 1, pattern=SPLIT_PATTERN)
    ranks = {bytes(b): r for b, r in tok.get_mergeable_ranks()}
    if len(ranks) < vocab_size - 1:
        raise CorpusTooSmall(
            f"corpus too small for a vocabulary of {vocab_size}: it supports only {len(ranks) + 1} tokens; "
            "add text or lower --vocab-size"
        )
    return _encoding(ranks)


def _encoding(ranks: dict[bytes, int]) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="cockpit",
        pat_str=SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={BOS: len(ranks)},
    )


def save(enc: tiktoken.Encoding, folder: Path) -> None:
    ranks = enc._mergeable_ranks  # tiktoken keeps the ranks it was built from
    with open(folder / "tokenizer.tiktoken", "w", encoding="ascii") as f:
        for b, r in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(b).decode()} {r}\n")
    meta = {"pattern": enc._pat_str, "special_tokens": {BOS: len(ranks)}}
    (folder / "tokenizer.json").write_text(json.dumps(meta, indent=1))
    np.save(folder / "token_bytes.npy", token_byte_lengths(enc))


def load(folder: Path) -> tiktoken.Encoding:
    ranks = {}
    for line in (folder / "tokenizer.tiktoken").read_text(encoding="ascii").splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    meta = json.loads((folder / "tokenizer.json").read_text())
    if meta["pattern"] != SPLIT_PATTERN or meta["special_tokens"] != {BOS: len(ranks)}:
        raise SourceError(f"tokenizer in {folder} was built by another version of the harness; run `cockpit prepare --force`")
    return _encoding(ranks)


def token_byte_lengths(enc: tiktoken.Encoding) -> np.ndarray:
    """(n_vocab,) int32: UTF-8 byte length of each token; 0 for BOS (it is not text)."""
    ranks = enc._mergeable_ranks
    out = np.zeros(enc.n_vocab, dtype=np.int32)
    for b, r in ranks.items():
        out[r] = len(b)
    return out
