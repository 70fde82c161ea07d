"""The evaluation process: `python -m harness.evaluator --fd N`, harness code only.

Started by the runner (inside the sandbox, like the training process, but with no data files
and no writable folder; `python -I -S`: no site-packages' `.pth` files, no PYTHON* variables, an
import path the runner gives): it imports torch and the harness, says "ready" on its pipe, then
waits on stdin for its job. The job is one JSON
line (device, autocast, vocabulary, batch shape, the model folder, the splits' sizes) followed
by the raw data: the per-token byte counts (int32) and each split's tokens (uint16). The tokens
travel on this pipe, so the process never opens a data file, and neither can the model's graph.
It loads the exported model (harness/modelfile.py: JSON and plain tensors, no pickle), scores
every split with the hidden causality probe (harness/evaluate.py), and writes the result as one
JSON line on its own pipe, which the training process never had.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO


def _send(fd: int, kind: str, **fields: Any) -> None:
    os.write(fd, (json.dumps({"type": kind, **fields}) + "\n").encode())


def _read_exact(f: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise EOFError("the job's data ended early")
        buf += chunk
    return bytes(buf)


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(9)


def _warm_up(torch: ModuleType, evaluate: ModuleType) -> None:
    """Run once, on a tiny input, what the evaluation runs (the tensors' loader, the scoring, an
    operator call through torch.ops), so that what torch imports lazily is imported now."""
    import io

    buf = io.BytesIO()
    torch.save({"t": torch.zeros(2, 3)}, buf)
    buf.seek(0)
    torch.load(buf, map_location="cpu", weights_only=True)
    x = torch.ops.aten.add.Tensor(torch.zeros(1, 2, 4), 1.0)
    evaluate._logprobs(x).gather(-1, torch.zeros(1, 2, 1, dtype=torch.long))
    with evaluate.autocast_ctx("cpu", None):
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="harness.evaluator")
    ap.add_argument("--fd", type=int, required=True)
    a = ap.parse_args(argv)
    fd = a.fd
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    import numpy as np
    import torch

    from . import evaluate, modelfile

    evaluate_rows = evaluate.eval_rows
    _warm_up(torch, evaluate)
    # Everything this process runs is imported now: without the sandbox the runner starts it, and
    # waits for this line, before train.py runs, so nothing train.py plants on disk is loaded here.
    _send(fd, "ready")

    t_loaded = time.monotonic()
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return 0  # a spare no longer wanted
    job = json.loads(line)
    t0 = time.monotonic()
    cpu0 = time.process_time()
    vocab, B, T = int(job["vocab"]), int(job["batch"]), int(job["seq_len"])
    token_bytes = np.frombuffer(_read_exact(sys.stdin.buffer, 4 * vocab), dtype=np.int32)
    splits = {}
    for name, count in job["splits"]:
        splits[name] = np.frombuffer(_read_exact(sys.stdin.buffer, 2 * int(count)), dtype=np.uint16)
    device = job["device"]
    print(f"evaluator: job received {t0 - t_loaded:.2f}s after imports; data {time.monotonic() - t0:.2f}s; "
          f"batches of {evaluate_rows(B)} x {T}, called {B} rows at a time (the exported shape)", flush=True)
    try:
        t1 = time.monotonic()
        program = modelfile.read(Path(job["model"]), device)
        t_read = time.monotonic() - t1
        _send(fd, "loaded", seconds=t_read)
        t2 = time.monotonic()
        res = evaluate.score(program, splits, token_bytes, vocab, B, T, device, job.get("autocast"))
    except (modelfile.ModelFileError, evaluate.ModelContractError) as e:
        _send(fd, "invalid", reason=str(e))
        print(f"evaluator: {e}", flush=True)
        return 4
    except evaluate.NonFiniteLogits as e:
        _send(fd, "crash", reason=str(e))
        print(f"evaluator: {e}", flush=True)
        return 3
    except torch.OutOfMemoryError:
        _send(fd, "crash", reason="the evaluation ran out of GPU memory (the model or its batch is too large)")
        return 3
    except Exception as e:  # the model's graph failed to run: its own fault
        traceback.print_exc()
        line = traceback.format_exception_only(type(e), e)[-1].strip()[:400]
        _send(fd, "invalid", reason=f"the exported model failed to run: {line}")
        return 4
    fields = {"load_seconds": t_read, "score_seconds": time.monotonic() - t2, "probe_tokens": res["probe_tokens"]}
    for name in splits:
        r = res[name]
        fields[name] = {"bpb": r.val_bpb, "nats": r.nats, "bytes": r.bytes, "tokens": r.tokens, "seconds": r.seconds}
    if str(device).startswith("cuda"):
        fields["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    _send(fd, "result", **fields)
    # The log is the agent's to read: only the validation figure goes there, never the holdout's.
    print(f"evaluator: val_bpb {fields['val']['bpb']:.6f}; load {t_read:.2f}s, score {fields['score_seconds']:.2f}s; "
          f"CPU {time.process_time() - cpu0:.2f}s since the job", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
