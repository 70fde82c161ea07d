"""The session's allowance for compilation and export, measured on harness code only.

`python -m harness.calibrate --fd N --profile NAME` is a process the runner starts like a
training process (sandboxed, harness loaded from its sources, its own folder), but no code of the
agent ever runs in it: it builds the harness's reference model (a small GPT shaped like the
bundled trainer's at the profile's sizes), takes one optimizer step (compiled where the profile
compiles) and exports the model exactly as `runtime.submit` does, then sends the two times on
its pipe. `measure()` is the parent's side; `allowance()` turns the times into the run's fixed
allowance. Every run of a session, baseline or experiment, gets the same allowance, fixed before
its first run: nothing a run does (idling before its first step, a slow export, a forged
message) can change it, and no run can tell a baseline from an experiment by it.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading

    import torch

    from .profiles import Profile

FACTOR = 2.0  # the warm-up part is this many times the reference's first step (a loaded machine, a larger model)
FLOOR = 1.0  # seconds: the warm-up part is never less (the messages' own latency)
EXPORT_FACTOR = 3.0  # the export part is this many times the reference's export ...
EXPORT_FLOOR = 5.0  # ... and never less: the in-process clock stops this long before the runner's, and an
# export slower than that is on the clock (a busy machine's exports vary by seconds)


class CalibrationError(RuntimeError):
    """The reference measurement did not finish."""


def allowance(first: float, export: float, warmup_cap: float, export_cap: float) -> tuple[float, float]:
    """(the allowance, the export's part of it) from the reference's first step and export:
    FACTOR times the first step (at least FLOOR) plus EXPORT_FACTOR times the export (at least
    EXPORT_FLOOR), each at most the profile's cap (the warm-up allowance, the export allowance)."""
    warm = min(max(FACTOR * max(first, 0.0), FLOOR), warmup_cap)
    exp = min(max(EXPORT_FACTOR * max(export, 0.0), EXPORT_FLOOR), export_cap)
    return warm + exp, exp


def measure(profile: Profile, cache: Path, vocab: int, sandbox: str = "auto", base: Path | None = None,
            env_extra: dict[str, str] | None = None, timeout: float | None = None,
            cancel: threading.Event | None = None) -> tuple[float, float]:
    """Run the reference once (this machine, the profile's device) and return (first step,
    export) in seconds. Raises CalibrationError when it fails, takes too long or `cancel` (an
    Event) is set."""
    from . import runner
    from .launch import python_command
    from .paths import HARNESS_DIR

    boxed, _ = runner.sandbox_state(sandbox)
    env = dict(runner.child_env(cache, HARNESS_DIR, boxed, False), **(env_extra or {}))
    base = base or cache / "runs"
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".calibrate-", dir=base))
    if boxed:
        env = dict(env, HOME=str(workdir), XDG_CACHE_HOME=str(workdir / ".cache"), TMPDIR="/tmp")
        runner.private_compile_cache(env, workdir)  # a cold compile, as a run's
    limit = timeout or (profile.startup_allowance + profile.warmup_allowance + runner.EXPORT_ALLOWANCE)
    proc, pump, rfd = runner.piped(
        lambda fd: python_command("harness.calibrate", HARNESS_DIR, "--fd", str(fd), "--profile", profile.name,
                                  "--vocab", str(vocab)),
        env, workdir, boxed, [HARNESS_DIR], profile.device != "cpu", cwd=str(workdir), owned=workdir)
    pump.attach(workdir / "calibrate.log")
    deadline = time.monotonic() + limit
    buf, msg = b"", None
    sel = selectors.DefaultSelector()
    sel.register(rfd, selectors.EVENT_READ)
    try:
        while msg is None and time.monotonic() < deadline and not (cancel is not None and cancel.is_set()):
            if not sel.select(timeout=max(0.0, min(0.2, deadline - time.monotonic()))):
                continue
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            buf += chunk
            if b"\n" in buf:
                msg = json.loads(buf.split(b"\n", 1)[0])
    finally:
        sel.close()
        os.close(rfd)
        runner.kill_group(proc)
        pump.stop()
        log = (workdir / "calibrate.log").read_text(errors="replace") if (workdir / "calibrate.log").exists() else ""
        shutil.rmtree(workdir, ignore_errors=True)
    if not isinstance(msg, dict) or msg.get("type") != "calibrated":
        tail = " | ".join(log.strip().splitlines()[-3:])
        raise CalibrationError(f"the harness's reference run did not finish within {limit:g}s" + (f": {tail}" if tail else ""))
    return float(msg["first"]), float(msg["export"])


# ---- the calibration process: harness code only ----

def _reference(V: int, T: int, gpu: bool) -> torch.nn.Module:
    """A small GPT shaped like the bundled trainer's at the profile's sizes."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    depth, dim, head = (8, 512, 128) if gpu else (4, 128, 32)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.proj = nn.Linear(dim, dim, bias=False)
            self.up = nn.Linear(dim, 4 * dim, bias=False)
            self.down = nn.Linear(4 * dim, dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            B, T_, _ = x.shape
            q, k, v = self.qkv(F.rms_norm(x, (dim,))).view(B, T_, 3, dim // head, head).unbind(2)
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T_, dim))
            out: torch.Tensor = x + self.down(F.relu(self.up(F.rms_norm(x, (dim,)))).square())
            return out

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(V, dim)
            self.blocks = nn.ModuleList(Block() for _ in range(depth))
            self.head = nn.Linear(dim, V, bias=False)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            x = self.emb(idx)
            for b in self.blocks:
                x = b(x)
            logits = self.head(F.rms_norm(x, (dim,))).float()
            return 15.0 * torch.tanh(logits / 15.0)

    return GPT()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="harness.calibrate")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--vocab", type=int, required=True)
    a = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from . import evaluate, modelfile
    from .profiles import by_name

    P = by_name(a.profile)
    V, T, B = a.vocab, P.seq_len, (32 if P.device == "cuda" else 16)
    torch.manual_seed(0)
    model = _reference(V, T, P.device == "cuda").to(P.device)
    step_model = torch.compile(model) if P.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, V, (B, T), device=P.device)
    t0 = time.monotonic()
    with evaluate.autocast_ctx(P.device, P.autocast):
        loss = F.cross_entropy(step_model(x).view(-1, V), x.roll(-1, 1).reshape(-1))
    loss.backward()  # type: ignore[no-untyped-call]  # (torch's is unannotated)
    opt.step()
    float(loss.detach())  # sync point: the first step is done
    first = time.monotonic() - t0
    t0 = time.monotonic()
    model.eval()
    with torch.no_grad(), evaluate.autocast_ctx(P.device, P.autocast):
        ep = torch.export.export(model, (x,))
    modelfile.write(ep, Path(os.getcwd()) / "model")
    export = time.monotonic() - t0
    os.write(a.fd, (json.dumps({"type": "calibrated", "first": first, "export": export}) + "\n").encode())
    print(f"harness: reference first step {first:.2f}s, export {export:.2f}s", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
