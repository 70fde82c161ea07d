"""The locked evaluation: val_bpb from the model's logits, and the causality probe.

The harness feeds the pinned validation tokens to the trained model, takes its logits and
computes the cross-entropy and the byte counts itself; nothing the model or train.py computes
about its own loss is used. val_bpb = sum(nats) / (ln 2 * sum(bytes)) over target tokens that
are text (BOS targets carry no bytes and are left out), which makes it independent of the
vocabulary.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CE_CHUNK_ROWS = 8  # rows per cross-entropy chunk: bounds the fp32 copy of the logits


class ModelContractError(Exception):
    """The model broke the logits contract (shape, dtype, non-finite)."""


@dataclass(frozen=True)
class EvalResult:
    val_bpb: float
    nats: float
    bytes: int
    tokens: int
    seconds: float


def autocast_ctx(device: str, autocast: str | None):
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, autocast))


def _forward(model, x: torch.Tensor, vocab: int, device: str, autocast: str | None) -> torch.Tensor:
    with torch.no_grad(), autocast_ctx(device, autocast):
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise ModelContractError(f"model(idx) must return a logits tensor, got {type(out).__name__}")
    B, T = x.shape
    if out.dim() != 3 or out.shape[0] != B or out.shape[1] != T or out.shape[2] < vocab:
        raise ModelContractError(f"model(idx) returned shape {tuple(out.shape)}; expected ({B}, {T}, >= {vocab})")
    return out[..., :vocab]


def windows(stream: np.ndarray, seq_len: int, max_tokens: int) -> int:
    """Number of evaluation windows: contiguous, non-overlapping (T inputs + 1 target shift)."""
    return max(0, min((len(stream) - 1) // seq_len, max(1, max_tokens // seq_len)))


def _window_batch(stream: np.ndarray, first: int, count: int, seq_len: int, device: str):
    idx = (np.arange(first, first + count)[:, None] * seq_len) + np.arange(seq_len + 1)[None, :]
    rows = torch.from_numpy(np.asarray(stream[idx], dtype=np.int64))
    rows = rows.to(device, non_blocking=True)
    return rows[:, :-1], rows[:, 1:]


def val_bpb(model, stream, token_bytes, vocab, batch_size, seq_len, max_tokens, device, autocast) -> EvalResult:
    import time

    t0 = time.monotonic()
    n = windows(stream, seq_len, max_tokens)
    if n == 0:
        raise ValueError("the validation split is shorter than one evaluation window")
    tb = torch.from_numpy(token_bytes.astype(np.int64)).to(device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    scored = 0
    for first in range(0, n, batch_size):
        count = min(batch_size, n - first)
        x, y = _window_batch(stream, first, count, seq_len, device)
        if count < batch_size:  # keep the shape the model was compiled for; pad rows are not scored
            pad = batch_size - count
            x = torch.cat([x, x[:1].expand(pad, -1)])
        logits = _forward(model, x, vocab, device, autocast)[:count]
        for r in range(0, count, CE_CHUNK_ROWS):
            lg = logits[r : r + CE_CHUNK_ROWS].float()
            yy = y[r : r + CE_CHUNK_ROWS]
            nll = F.cross_entropy(lg.reshape(-1, vocab), yy.reshape(-1), reduction="none")
            nb = tb[yy.reshape(-1)]
            text = nb > 0
            total_nats += (nll * text).sum(dtype=torch.float64)
            total_bytes += nb.sum()
        scored += count * seq_len
    nats, nbytes = float(total_nats), int(total_bytes)
    if not math.isfinite(nats):
        raise ModelContractError("the validation loss is not finite (NaN or inf logits)")
    return EvalResult(nats / (math.log(2) * nbytes), nats, nbytes, scored, time.monotonic() - t0)


def causality_probe(model, stream, vocab, batch_size, seq_len, device, autocast, seed: int = 1234) -> str | None:
    """Changing tokens after position t must not change logits at positions <= t, and changing
    other rows of the batch must not change a row's logits at all. Returns the violation, or None."""
    n = max(1, windows(stream, seq_len, 1 << 62))
    g = np.random.default_rng(seed)
    B, T = batch_size, seq_len
    picks = np.arange(B) % n
    rows = np.stack([np.asarray(stream[p * T : p * T + T], dtype=np.int64) for p in picks])
    x = torch.from_numpy(rows)
    # Cut points: the first position, the last-but-one (a one-token lookahead), and random ones.
    cuts = g.integers(0, T - 1, size=B)
    cuts[0] = 0
    cuts[min(1, B - 1)] = T - 2
    x_future = x.clone()
    for r, t in enumerate(cuts):
        noise = torch.from_numpy(g.integers(0, vocab, size=T - t - 1))
        x_future[r, t + 1 :] = (x[r, t + 1 :] + 1 + noise % (vocab - 1)) % vocab  # every token differs
    base = _forward(model, x.to(device), vocab, device, autocast).float()
    fut = _forward(model, x_future.to(device), vocab, device, autocast).float()
    scale = max(1.0, float(base.abs().max()))
    tol = 1e-3 * scale
    for r, t in enumerate(cuts):
        diff = float((base[r, : t + 1] - fut[r, : t + 1]).abs().max())
        if not math.isfinite(diff) or diff > tol:
            return (
                f"causality probe failed: logits at positions <= {t} changed by {diff:.3g} "
                f"when only tokens after position {t} changed (the model sees the future)"
            )
    if B > 1:
        x_rows = x.clone()
        x_rows[1:] = torch.from_numpy(g.integers(0, vocab, size=(B - 1, T)))
        other = _forward(model, x_rows.to(device), vocab, device, autocast).float()
        diff = float((base[0] - other[0]).abs().max())
        if not math.isfinite(diff) or diff > tol:
            return f"causality probe failed: a row's logits changed by {diff:.3g} when other rows of the batch changed"
    return None
