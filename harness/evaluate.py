"""The locked evaluation: val_bpb from the model's logits, and the causality probe.

The harness feeds the pinned validation tokens to the trained model, takes its logits and
computes the cross-entropy and the byte counts itself; nothing the model or train.py computes
about its own loss is used. val_bpb = sum(nats) / (ln 2 * sum(bytes)) over target tokens that
are text (BOS targets carry no bytes and are left out), which makes it independent of the
vocabulary.

This runs in the evaluation process (harness/evaluator.py), where no agent code has run: the
model is an exported graph of aten operators (harness/modelfile.py), so nothing the agent wrote
executes here as Python. The model gets copies of its inputs.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Bound now, before any agent code runs.
_cross_entropy = F.cross_entropy
_log_softmax = F.log_softmax
_no_grad = torch.no_grad
_isfinite = math.isfinite
Model = Callable[[torch.Tensor], Any]  # logits = model(idx): a Program, or any module in tests
_LN2 = math.log(2)

PROBE_BATCHES = 3  # scored batches that also get a hidden causality probe
EVAL_ROWS = 8  # the evaluator's batch has at least this many rows, whatever shape the model was exported with
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


def autocast_ctx(device: str, autocast: str | None) -> AbstractContextManager[Any]:
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, autocast))


def _forward(model: Model, x: torch.Tensor, vocab: int, device: str, autocast: str | None, rows: int | None = None) -> torch.Tensor:
    """The logits of the evaluator's batch `x`, called `rows` rows at a time (the batch the model
    was exported with; None: all at once). The evaluator's batch is its own, so a model exported
    from one row is still probed across many rows at random positions."""
    rows = rows or x.shape[0]
    outs = []
    for r in range(0, x.shape[0], rows):
        part = x[r : r + rows]
        with _no_grad(), autocast_ctx(device, autocast):
            out = model(part.clone())  # a copy: the model may not write into the harness's tensors
        if not isinstance(out, torch.Tensor):
            raise ModelContractError(f"model(idx) must return a logits tensor, got {type(out).__name__}")
        B, T = part.shape
        if out.dim() != 3 or out.shape[0] != B or out.shape[1] != T or out.shape[2] < vocab:
            raise ModelContractError(f"model(idx) returned shape {tuple(out.shape)}; expected ({B}, {T}, >= {vocab})")
        outs.append(out[..., :vocab])
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def eval_rows(model_rows: int) -> int:
    """The evaluator's batch: a whole number of the model's batches, at least EVAL_ROWS rows."""
    return model_rows * max(1, -(-EVAL_ROWS // model_rows))


def _logprobs(logits: torch.Tensor) -> torch.Tensor:
    lp = _log_softmax(logits.float(), dim=-1)
    if not bool(torch.isfinite(lp).all()):
        raise NonFiniteLogits("the model's logits are NaN or infinite (it diverged)")
    return lp.clamp_min(LOGPROB_FLOOR)


def tokens_to_device(stream: np.ndarray, device: str | torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A uint16 token stream as a `dtype` tensor on the device. The tokens travel as they are
    (2 bytes each, one host copy out of the memory map) and widen on the device: int16 has the
    same bits, and & 0xFFFF undoes its sign."""
    host = torch.from_numpy(np.array(stream, dtype=np.uint16).view(np.int16))
    return host.to(device).to(dtype).bitwise_and_(0xFFFF)


def score(model: Model, splits: dict[str, np.ndarray], token_bytes: np.ndarray, vocab: int, batch_size: int, seq_len: int,
          device: str, autocast: str | None, probes: int = PROBE_BATCHES, seed: int | None = None) -> dict[str, Any]:
    """Score a model (a pure function: logits = model(idx)) on each split's windows.

    `splits`: {name: uint16 stream}; each is cut into consecutive windows of T inputs and the next
    token as the last target, and the windows are scored in a random order, so the rows of one
    batch are unrelated text. Every call has the batch shape the model was exported with (a short
    last batch is padded; pad rows are not scored). The causality probe is hidden among the scored
    batches of the first split: for `probes` random batches, a copy whose rows each continue, after
    a random cut, with another window's text (real text, so it looks like any batch) is scored too,
    before or after the real one at random; positions up to the cut must get the same
    log-probabilities. One probe also permutes the rows (a row must not depend on the others).
    Finally the first batch is scored again and must match (the model keeps no state).
    Returns {name: EvalResult} plus "probe_tokens"; raises ModelContractError on a violation."""
    g = np.random.default_rng(seed if seed is not None else int.from_bytes(os.urandom(8), "little"))
    tb = torch.from_numpy(token_bytes.astype(np.int64)).to(device)
    per_call, T = batch_size, seq_len
    B = eval_rows(per_call)
    out: dict[str, Any] = {"probe_tokens": 0}
    first_call: tuple[torch.Tensor, torch.Tensor] | None = None
    for si, (name, stream) in enumerate(splits.items()):
        t0 = time.monotonic()
        n = max(0, (len(stream) - 1) // T)
        if n == 0:
            raise ModelContractError(f"the {name} split is shorter than one evaluation window")
        ids = tokens_to_device(stream[: n * T + 1], device)
        xs, ys = ids[:-1].view(n, T), ids[1:].view(n, T)
        order = torch.from_numpy(g.permutation(n)).to(device)
        nb = -(-n // B)
        probe_at = set(g.choice(nb, size=min(probes, nb), replace=False).tolist()) if si == 0 else set()
        total_nats = torch.zeros((), dtype=torch.float64, device=device)
        total_bytes = torch.zeros((), dtype=torch.int64, device=device)
        for b in range(nb):
            rows = order[b * B : (b + 1) * B]
            count = len(rows)
            if count < B:  # a whole number of the model's batches; pad rows are not scored
                rows = torch.cat([rows, rows[:1].expand(B - count)])
            x, y = xs[rows], ys[rows]
            if b in probe_at:
                _probe(model, x, xs, n, g, vocab, device, autocast, permute=b == min(probe_at), rows=per_call)
                out["probe_tokens"] += (3 if b == min(probe_at) else 2) * B * T
            logits = _forward(model, x, vocab, device, autocast, per_call)
            if first_call is None:
                first_call = (x, logits[: min(B, CE_CHUNK_ROWS)].float())
            for r in range(0, count, CE_CHUNK_ROWS):
                k = min(CE_CHUNK_ROWS, count - r)
                lp = _log_softmax(logits[r : r + k].float(), dim=-1)
                yy = y[r : r + k]
                nll = -lp.gather(-1, yy.unsqueeze(-1)).squeeze(-1)
                tok_bytes = tb[yy]
                total_nats += (nll * (tok_bytes > 0)).sum(dtype=torch.float64)
                total_bytes += tok_bytes.sum()
        nats, nbytes = float(total_nats), int(total_bytes)
        if not _isfinite(nats):
            raise NonFiniteLogits(f"the {name} loss is not finite (the model diverged)")
        if nbytes == 0:
            raise ModelContractError(f"the {name} split has no text to score")
        out[name] = EvalResult(nats / (_LN2 * nbytes), nats, nbytes, n * T, time.monotonic() - t0)
    assert first_call is not None  # every split holds a window (else refused above)
    x, before = first_call
    again = _forward(model, x, vocab, device, autocast, per_call)[: before.shape[0]].float()
    drift = float((_log_softmax(again, -1) - _log_softmax(before, -1)).abs().max())
    if not _isfinite(drift) or drift > PROBE_TOL_NATS:
        raise ModelContractError(
            f"the model's log-probabilities on the same batch changed by {drift:.3g} nats between two calls "
            "(it keeps state, or is random at evaluation)"
        )
    return out


def _probe(model: Model, x: torch.Tensor, xs: torch.Tensor, n: int, g: np.random.Generator, vocab: int, device: str,
           autocast: str | None, permute: bool, rows: int | None = None) -> None:
    B, T = x.shape  # B >= EVAL_ROWS: besides the two fixed cuts, every probe has random ones
    cuts = torch.from_numpy(g.integers(0, T - 1, size=B))
    fixed = torch.from_numpy(g.permutation(B)[:2])
    cuts[fixed[0]] = 0  # every later token changed
    cuts[fixed[-1]] = T - 2  # a one-token lookahead
    donors = xs[torch.from_numpy(g.integers(0, n, size=B)).to(device)]
    pos = torch.arange(T)
    after = (pos[None, :] > cuts[:, None]).to(device)
    other = torch.where(after, donors, x)
    same = after & (other == x)  # a donor token equal to the real one: shift it, so every later token differs
    other = torch.where(same, (other + 1 + torch.from_numpy(g.integers(0, vocab - 1, size=(B, T))).to(device)) % vocab, other)
    calls = [("real", x), ("other", other)]
    if permute:
        perm = torch.from_numpy(g.permutation(B))
        if bool((perm == torch.arange(B)).all()):
            perm = torch.roll(torch.arange(B), 1)
        calls.append(("perm", x[perm.to(device)]))
    g.shuffle(calls)
    lp = {k: _logprobs(_forward(model, v, vocab, device, autocast, rows)) for k, v in calls}
    keep = ~after  # positions <= cut
    diff = ((lp["real"] - lp["other"]).abs().amax(-1) * keep).amax(-1)  # per row
    worst = int(diff.argmax())
    if float(diff[worst]) > PROBE_TOL_NATS:
        t = int(cuts[worst])
        raise ModelContractError(
            f"causality probe failed: log-probabilities at positions <= {t} changed by {float(diff[worst]):.3g} nats "
            f"when only tokens after position {t} (or other rows) changed (the model sees the future)"
        )
    if permute:
        d = float((lp["perm"] - lp["real"][perm.to(device)]).abs().max())
        if d > PROBE_TOL_NATS:
            raise ModelContractError(
                f"causality probe failed: a row's log-probabilities changed by {d:.3g} nats when the other rows of "
                "the batch changed (rows must be independent)"
            )
