"""The locked evaluation: val_bpb from the model's logits, and the causality probe.

The harness feeds the pinned validation tokens to the trained model, takes its logits and
computes the cross-entropy and the byte counts itself; nothing the model or train.py computes
about its own loss is used. val_bpb = sum(nats) / (ln 2 * sum(bytes)) over target tokens that
are text (BOS targets carry no bytes and are left out), which makes it independent of the
vocabulary.

Threat model: train.py runs in the same process, so this is a guardrail against an agent that
games its metric by accident or by naive tricks, backed by the static guard (harness/guard.py);
it is not a sandbox. The functions used here are bound when this module is imported, before
train.py runs, so rebinding torch.nn.functional names later has no effect on the harness; the
model gets copies of its inputs, so writing to them cannot change the targets.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Bound now, before any agent code runs.
_cross_entropy = F.cross_entropy
_log_softmax = F.log_softmax
_no_grad = torch.no_grad
_isfinite = math.isfinite
_LN2 = math.log(2)

CE_CHUNK_ROWS = 8  # rows per cross-entropy chunk: bounds the fp32 copy of the logits
PROBE_TOL_NATS = 1e-2  # identical prefixes give bit-identical logits in practice; leaks move far more
LOGPROB_FLOOR = -20.0  # log-probabilities below this are treated as equal (scale-free comparison)


class ModelContractError(Exception):
    """The model broke the logits contract (type, shape) or behaves inconsistently: `invalid`."""


class NonFiniteLogits(Exception):
    """The model produced NaN or inf logits (it diverged): `crash`."""


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
    with _no_grad(), autocast_ctx(device, autocast):
        out = model(x.clone())  # a copy: the model may not write into the harness's tensors
    if not isinstance(out, torch.Tensor):
        raise ModelContractError(f"model(idx) must return a logits tensor, got {type(out).__name__}")
    B, T = x.shape
    if out.dim() != 3 or out.shape[0] != B or out.shape[1] != T or out.shape[2] < vocab:
        raise ModelContractError(f"model(idx) returned shape {tuple(out.shape)}; expected ({B}, {T}, >= {vocab})")
    return out[..., :vocab]


def _logprobs(logits: torch.Tensor) -> torch.Tensor:
    lp = _log_softmax(logits.float(), dim=-1)
    if not bool(torch.isfinite(lp).all()):
        raise NonFiniteLogits("the model's logits are NaN or infinite (it diverged)")
    return lp.clamp_min(LOGPROB_FLOOR)


def windows(stream: np.ndarray, seq_len: int, max_tokens: int) -> int:
    """Number of evaluation windows: contiguous, non-overlapping (T inputs + 1 target shift)."""
    return max(0, min((len(stream) - 1) // seq_len, max(1, max_tokens // seq_len)))


def tokens_to_device(stream: np.ndarray, device, dtype=torch.int64) -> torch.Tensor:
    """A uint16 token stream as a `dtype` tensor on the device. The tokens travel as they are
    (2 bytes each, one host copy out of the memory map) and widen on the device: int16 has the
    same bits, and & 0xFFFF undoes its sign."""
    host = torch.from_numpy(np.array(stream, dtype=np.uint16).view(np.int16))
    return host.to(device).to(dtype).bitwise_and_(0xFFFF)


def _windows_on_device(stream: np.ndarray, n: int, seq_len: int, device: str):
    """Inputs and targets (n, T) of the n evaluation windows, uploaded once: no host work and no
    device sync per batch. Window i is tokens [i*T, i*T + T], so the targets are the inputs
    shifted by one."""
    ids = tokens_to_device(stream[: n * seq_len + 1], device)
    return ids[:-1].view(n, seq_len), ids[1:].view(n, seq_len)


def _batch_nll(model, xs, ys, first, count, batch_size, seq_len, vocab, device, autocast):
    """Per-token nats (count, T) of one evaluation batch, and its targets."""
    x, y = xs[first : first + count], ys[first : first + count]
    if count < batch_size:  # keep the shape the model was compiled for; pad rows are not scored
        x = torch.cat([x, x[:1].expand(batch_size - count, -1)])
    logits = _forward(model, x, vocab, device, autocast)[:count]
    nll = torch.empty((count, seq_len), dtype=torch.float32, device=device)
    for r in range(0, count, CE_CHUNK_ROWS):
        lg = logits[r : r + CE_CHUNK_ROWS].float()
        nll[r : r + CE_CHUNK_ROWS] = _cross_entropy(
            lg.reshape(-1, vocab), y[r : r + CE_CHUNK_ROWS].reshape(-1), reduction="none"
        ).view(-1, seq_len)
    return nll, y


def val_bpb(model, stream, token_bytes, vocab, batch_size, seq_len, max_tokens, device, autocast) -> EvalResult:
    t0 = time.monotonic()
    n = windows(stream, seq_len, max_tokens)
    if n == 0:
        raise ModelContractError("the validation split is shorter than one evaluation window")
    tb = torch.from_numpy(token_bytes.astype(np.int64)).to(device)
    xs, ys = _windows_on_device(stream, n, seq_len, device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    first_nll = None
    for first in range(0, n, batch_size):
        count = min(batch_size, n - first)
        nll, y = _batch_nll(model, xs, ys, first, count, batch_size, seq_len, vocab, device, autocast)
        if first_nll is None:
            first_nll = nll
        nb = tb[y]
        total_nats += (nll * (nb > 0)).sum(dtype=torch.float64)
        total_bytes += nb.sum()
    nats, nbytes = float(total_nats), int(total_bytes)
    if not _isfinite(nats):
        raise NonFiniteLogits("the validation loss is not finite (the model diverged)")
    # The model must be a function: scoring the first batch again must give the same losses.
    again, _ = _batch_nll(model, xs, ys, 0, min(batch_size, n), batch_size, seq_len, vocab, device, autocast)
    drift = float((again - first_nll).abs().max())
    if not _isfinite(drift) or drift > PROBE_TOL_NATS:
        raise ModelContractError(
            f"the model's losses on the same validation batch changed by {drift:.3g} nats between two "
            "evaluations (it keeps state or learns during evaluation)"
        )
    return EvalResult(nats / (_LN2 * nbytes), nats, nbytes, n * seq_len, time.monotonic() - t0)


def causality_probe(model, stream, vocab, batch_size, seq_len, device, autocast, seed: int | None = None) -> tuple[str | None, int]:
    """Changing tokens after position t must not change the distribution at positions <= t, and
    a row's distribution must not depend on the other rows of its batch (checked by permuting
    the rows). Returns (the violation or None, tokens scored). Cut points are random per run."""
    n = max(1, windows(stream, seq_len, 1 << 62))
    g = np.random.default_rng(seed if seed is not None else int.from_bytes(os.urandom(8), "little"))
    B, T = batch_size, seq_len
    picks = g.permutation(max(n, B))[:B] % n
    x = torch.from_numpy(np.stack([np.asarray(stream[p * T : p * T + T], dtype=np.int64) for p in picks]))
    # Cut points: the first position, the last-but-one (a one-token lookahead), and random ones.
    cuts = g.integers(0, T - 1, size=B)
    cuts[0] = 0
    cuts[min(1, B - 1)] = T - 2
    x_future = x.clone()
    for r, t in enumerate(cuts):
        noise = torch.from_numpy(g.integers(0, vocab - 1, size=T - t - 1))
        x_future[r, t + 1 :] = (x[r, t + 1 :] + 1 + noise) % vocab  # every later token differs
    base = _logprobs(_forward(model, x.to(device), vocab, device, autocast))
    fut = _logprobs(_forward(model, x_future.to(device), vocab, device, autocast))
    # One device sync for all rows, not one per row.
    diffs = torch.stack([(base[r, : t + 1] - fut[r, : t + 1]).abs().max() for r, t in enumerate(cuts)]).tolist()
    for t, diff in zip(cuts, diffs):
        if diff > PROBE_TOL_NATS:
            return (
                f"causality probe failed: log-probabilities at positions <= {t} changed by {diff:.3g} nats "
                f"when only tokens after position {t} changed (the model sees the future)"
            ), 3 * B * T
    if B > 1:
        perm = torch.from_numpy(g.permutation(B))
        if bool((perm == torch.arange(B)).all()):
            perm = torch.roll(torch.arange(B), 1)
        shuffled = _logprobs(_forward(model, x[perm].to(device), vocab, device, autocast))
        diff = float((shuffled - base[perm.to(base.device)]).abs().max())
        if diff > PROBE_TOL_NATS:
            return (
                f"causality probe failed: a row's log-probabilities changed by {diff:.3g} nats when the other "
                "rows of the batch changed (rows must be independent)"
            ), 3 * B * T
    return None, 3 * B * T
