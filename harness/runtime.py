"""harness.runtime: the only module train.py imports besides torch.

    from harness import runtime as rt
    P = rt.profile()                      # device, SEQ_LEN, TIME_BUDGET, ... (locked per hardware)
    batches = rt.train_batches(B)         # (x, y) int64 tensors (B, T) on the device, forever
    while not rt.done():                  # the harness's clock, as a fraction of the budget
        ...one optimizer step...
        rt.progress(step, loss, tokens)   # cheap; syncs the device at most twice a second
    rt.submit(model)                      # ends the run: model(idx) -> logits (B, T, V) is exported

The clock: training time is the time since the harness handed control to train.py, minus an
allowance for compilation. In a session every run, baseline or not, gets the same allowance
(`credit` from the runner), measured before the session's first run on the harness's own
reference model (harness/calibrate.py), so nothing a run does before its first report buys it
time. Run on its own (`cockpit train`), a run measures its own warm-up instead (before the first
`progress` call or the second batch from `train_batches`, up to the profile's warm-up allowance). The runner measures the same thing
from its own side, from the arrival times of these messages, up to the model being exported,
and a run over budget is `invalid`. The verdict is not computed here: `submit` exports the model
and the runner scores it in a separate process (harness/evaluator.py).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import evaluate
from .profiling import print_compile_stats, profile_report, profile_step, sync
from .dataset import Dataset, current_dataset, open_dataset
from .paths import cache_root
from .profiles import Profile, detect

if TYPE_CHECKING:
    import tiktoken

REPORT_EVERY = 0.5  # seconds between progress reports (each one reads the loss: a device sync)
EVAL_MAX_ROWS = 64  # evaluation follows the training batch's rows up to this many (its log-probs are fp32 B x T x V)
DEVICE_RESIDENT_MAX_TOKENS = 512 * 1024 * 1024  # a train stream up to this size lives on the GPU


class _Session:
    """The state of one run inside the training subprocess."""

    def __init__(self, profile: Profile, dataset: Dataset, channel_fd: int | None = None, t_go: float | None = None,
                 credit: float | None = None):
        self.profile = profile
        self.credit = credit
        self.dataset = dataset
        self.fd = channel_fd
        self.t_ready = time.monotonic()
        self.t_go = self.t_ready if t_go is None else t_go  # when the runner asked for this run
        self.marks: dict[str, float] = {"ready": self.t_ready - self.t_go}  # seconds after go, for the log
        self.t_first: float | None = None
        self.steps = 0
        self.tokens = 0
        self.flops_per_token: float | None = None
        self.batch_shape: tuple[int, int] | None = None
        self.first_loss: float | None = None
        self._last_report = 0.0
        self._tokens_at_report = 0
        self._pending_loss = None
        self.submitted = False
        self.loader_tokens = 0  # tokens handed out by train_batches: the harness's own count
        self.batches = 0

    # ---- the channel to the runner (JSON lines on a pipe; never stdout) ----
    def send(self, kind: str, **fields: Any) -> None:
        if self.fd is None:
            return
        line = json.dumps({"type": kind, **fields}) + "\n"
        os.write(self.fd, line.encode())

    def mark(self, name: str) -> None:
        """Note when a phase of the run ended (first time only), for the timeline in the log."""
        self.marks.setdefault(name, time.monotonic() - self.t_go)

    def timeline(self) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in self.marks.items())

    # ---- the clock ----
    def training_seconds(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self.credit is not None:  # the session's fixed allowance for compilation (see the runner)
            return max(0.0, now - self.t_ready - self.credit)
        warm = (self.t_first if self.t_first is not None else now) - self.t_ready
        return (now - self.t_ready) - min(warm, self.profile.warmup_allowance)

    def fraction(self) -> float:
        if self.profile.time_budget <= 0:
            return math.inf
        return self.training_seconds() / self.profile.time_budget


_session: _Session | None = None


def _configure(profile: Profile, dataset_dir: Path, channel_fd: int | None, t_go: float | None = None,
               credit: float | None = None) -> _Session:
    """Called by the harness's child driver before train.py runs."""
    global _session
    _session = _Session(profile, open_dataset(dataset_dir), channel_fd, t_go, credit)
    return _session


def _get() -> _Session:
    """The run's session; when train.py runs on its own, one made from this machine's defaults."""
    global _session
    if _session is None:
        _session = _Session(detect(), current_dataset(cache_root()))
    return _session


# ---- constants and tools ----

def profile() -> Profile:
    """The hardware profile: device, seq_len, time_budget, autocast, compile, peak_flops."""
    return _get().profile


def vocab_size() -> int:
    return _get().dataset.vocab_size


def bos_id() -> int:
    return _get().dataset.bos_id


def tokenizer() -> tiktoken.Encoding:
    """The tiktoken.Encoding the data was prepared with (BOS is the special token <|bos|>)."""
    return _get().dataset.tokenizer


def autocast() -> AbstractContextManager[Any]:
    """The profile's autocast context (bf16 on CUDA; a no-op on CPU)."""
    p = _get().profile
    return evaluate.autocast_ctx(p.device, p.autocast)


def model_info(flops_per_token: float | None = None) -> None:
    """Tell the harness the training FLOPs per token, so it can report MFU."""
    S = _get()
    S.flops_per_token = flops_per_token
    S.mark("model")


# ---- data ----

def _row_starts(doc_offsets: np.ndarray, n_tokens: int, T: int) -> np.ndarray:
    """Start of every training row: each document's BOS, and every T tokens inside long documents."""
    ends = np.append(doc_offsets[1:], n_tokens)
    lens = ends - doc_offsets
    chunks = np.maximum(1, -(-(lens - 1) // T))  # ceil((len-1)/T): rows needed to cover the document
    group_start = np.repeat(np.cumsum(chunks) - chunks, chunks)
    within = np.arange(int(chunks.sum())) - group_start
    starts = np.repeat(doc_offsets, chunks) + within * T
    fits: np.ndarray = starts[starts + T + 1 <= n_tokens]
    return fits


def train_batches(batch_size: int, seq_len: int | None = None, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) forever: int64 (B, T) on the device, y = x shifted by one.

    Rows start at a document's BOS (or at a T-token boundary inside a long document) and run on
    through the following documents, so nothing is padded. The order is a fresh permutation of
    all rows each epoch. Small corpora live on the GPU: no per-step host work at all.
    """
    S = _get()
    T = seq_len or S.profile.seq_len
    S.batch_shape = (batch_size, T)
    device = torch.device(S.profile.device)
    stream = S.dataset.stream("train")
    starts = _row_starts(S.dataset.doc_offsets("train"), len(stream), T)
    if len(starts) < batch_size:
        raise ValueError(f"the training split has {len(starts)} rows of {T} tokens; batch size {batch_size} is too large")
    g = torch.Generator().manual_seed(seed)
    for x, y in _batches(stream, starts, batch_size, T, device, g):
        S.batches += 1
        if S.batches == 1:
            S.mark("data")
        S.loader_tokens += batch_size * T
        if S.batches == 2 and S.t_first is None:
            # A second batch means training has begun: the warm-up ends here even if train.py
            # never reports progress.
            S.t_first = time.monotonic()
            S.send("warm")
        yield x, y


def _batches(stream: np.ndarray, starts: np.ndarray, batch_size: int, T: int, device: torch.device,
             g: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if device.type == "cuda" and len(stream) <= DEVICE_RESIDENT_MAX_TOKENS:
        data = evaluate.tokens_to_device(stream, device, torch.int32)
        starts_t = torch.from_numpy(starts).to(device)
        offs = torch.arange(T + 1, device=device)
        while True:
            perm = torch.randperm(len(starts), generator=g).to(device)
            for i in range(0, len(perm) - batch_size + 1, batch_size):
                rows = data[starts_t[perm[i : i + batch_size]][:, None] + offs].long()  # (B, T+1)
                yield rows[:, :-1], rows[:, 1:]
    else:
        host = np.asarray(stream) if len(stream) <= DEVICE_RESIDENT_MAX_TOKENS else stream
        offs_np = np.arange(T + 1)
        pin = device.type == "cuda"
        while True:
            perm_np = torch.randperm(len(starts), generator=g).numpy()
            for i in range(0, len(perm_np) - batch_size + 1, batch_size):
                rows = torch.from_numpy(host[starts[perm_np[i : i + batch_size]][:, None] + offs_np].astype(np.int64))
                if pin:
                    rows = rows.pin_memory()
                rows = rows.to(device, non_blocking=True)
                yield rows[:, :-1], rows[:, 1:]


# ---- the clock and progress ----

def fraction() -> float:
    """Training time used, as a fraction of the budget (the harness's clock)."""
    return _get().fraction()


def done() -> bool:
    return _get().fraction() >= 1.0


def progress(step: int, loss: torch.Tensor | float, tokens: int) -> None:
    """Report one finished optimizer step: its loss (tensor or float) and tokens processed.

    Cheap: the loss is read (a device sync) only every REPORT_EVERY seconds. A NaN or exploding
    loss ends the run as `crash`.
    """
    S = _get()
    S.steps = step + 1
    S.tokens += int(tokens)
    profile_step(step, S.profile.device)
    now = time.monotonic()
    first = S.t_first is None
    if not first and now - S._last_report < REPORT_EVERY:
        return
    value = float(loss)  # sync point
    now = time.monotonic()
    S.mark("first_step")
    if first:
        S.t_first = now
    if S.first_loss is None:
        S.first_loss = value
    limit = 1.5 * math.log(S.dataset.vocab_size) + 3.0
    if not math.isfinite(value) or value > max(limit, 2 * (S.first_loss or 0)):
        what = "NaN" if math.isnan(value) else f"exploding ({value:.3g})"
        S.send("crash", reason=f"loss is {what} at step {step}")
        print(f"harness: loss is {what} at step {step}; stopping the run", flush=True)
        os._exit(3)
    dt = now - S._last_report if S._last_report else None
    tok_s = (S.tokens - S._tokens_at_report) / dt if dt else None
    mfu = None
    if tok_s and S.flops_per_token and S.profile.peak_flops:
        mfu = tok_s * S.flops_per_token / S.profile.peak_flops
    S._last_report, S._tokens_at_report = now, S.tokens
    S.send("progress", step=step, loss=value, tokens=S.tokens, tok_s=tok_s, mfu=mfu,
           fraction=min(S.fraction(), 10.0), first=first)


# ---- the end: evaluation by the harness ----

def _peak_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def submit(model: object) -> None:
    """Hand the trained model to the harness; the run ends here (this call does not return).

    The model's forward is exported with torch.export (a graph of aten operators) and written
    to the run's folder; the harness then evaluates it in a separate process, where no code of
    train.py runs. Exporting counts as training time. A model that cannot be exported, or whose
    forward changes state, makes the run `invalid` with a reason saying how to fix it."""
    from . import modelfile

    S = _get()
    sync(S.profile.device)
    S.mark("trained")
    S.send("exporting")
    profile_report(S.profile.device, S.steps)  # measuring aids (COCKPIT_PROFILE, COCKPIT_COMPILE_STATS): before the runner ends the process
    print_compile_stats()
    P = S.profile
    B, T = S.batch_shape or (8, P.seq_len)
    if T != P.seq_len:
        B, T = 8, P.seq_len
    B = min(B, EVAL_MAX_ROWS)
    params = sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else 0
    t0 = time.monotonic()
    try:
        if not isinstance(model, torch.nn.Module):
            raise modelfile.ModelFileError(f"rt.submit takes the torch.nn.Module, got {type(model).__name__}")
        model.eval()
        example = torch.randint(0, S.dataset.vocab_size, (B, T), device=P.device)
        try:
            with torch.no_grad(), evaluate.autocast_ctx(P.device, P.autocast):
                ep = torch.export.export(model, (example,))
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise modelfile.ModelFileError(f"torch.export failed ({type(e).__name__}: {first}); {modelfile.HOW_TO_EXPORT}") from e
        modelfile.write(ep, Path(os.getcwd()) / "model")
    except modelfile.ModelFileError as e:
        if e.__cause__ is not None:
            import traceback

            traceback.print_exception(e.__cause__)
        S.send("invalid", reason=str(e))
        print(f"harness: {e}", flush=True)
        sys.stdout.flush()
        os._exit(4)
    export_s = time.monotonic() - t0
    S.mark("exported")
    S.send("trained", steps=S.steps, tokens=S.tokens, params=params, training_seconds=S.training_seconds(),
           flops_per_token=S.flops_per_token, loader_tokens=S.loader_tokens, batch=B, seq_len=T,
           export_seconds=export_s, peak_memory_bytes=_peak_memory_bytes(P.device))
    S.submitted = True
    print(f"harness: trained {S.steps} steps; model exported in {export_s:.1f}s; timeline, seconds after the run "
          f"was asked to start: {S.timeline()}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
