"""`cockpit train`: run trainer/train.py once through the harness and print the result."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from pathlib import Path

from harness.errors import HarnessError


def _warn_small_corpus(dataset, prof) -> None:
    """On a GPU a small corpus is memorised within one run; say so (once per run), in one line."""
    tokens = dataset.manifest["counts"]["train_tokens"]
    if prof.name == "cuda" and prof.time_budget > 0:
        epochs = 1.5e6 * prof.time_budget / max(tokens, 1)  # at ~1.5M tokens/s on an H100
        if epochs > 4:
            print(
                f"note: {tokens / 1e6:.1f}M training tokens will be seen ~{epochs:.0f} times in {prof.time_budget:g}s; "
                "for meaningful results prepare a larger corpus (cockpit prepare --parquet GLOB or --text DIR)",
                file=sys.stderr,
            )


def cmd_train(args) -> int:
    from harness import runner
    from harness.paths import cache_root

    from cockpit.cli import _profile, ensure_prepared

    ws = Path(args.workspace).expanduser().resolve()
    script = Path(args.script).expanduser().resolve() if args.script else ws / "trainer" / "train.py"
    if not script.is_file():
        raise HarnessError(f"no training script at {script}")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget >= 0):
        raise HarnessError(f"--budget must be a finite number of seconds >= 0, got {args.budget:g}")
    cache = cache_root(args.cache_dir)
    dataset = ensure_prepared(cache)
    prof = _profile(args.device, args.budget)
    _warn_small_corpus(dataset, prof)
    log = ws / ".cockpit" / "runs" / f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}" / "run.log"
    if not args.json:
        print(f"training {script} on {prof.name} for {prof.time_budget:g}s; log: {log}", file=sys.stderr)
        boxed, why = runner.sandbox_state("auto")
        if not boxed:
            from harness.sandbox import OFF_NOTICE

            print(f"{OFF_NOTICE} ({why})", file=sys.stderr)
        else:
            from harness.resources import notice

            if notice():
                print(notice(), file=sys.stderr)

    def show(p: runner.Progress) -> None:
        if args.json:
            return
        if p.phase != "train":
            word = "exporting the model" if p.phase == "export" else "evaluating in a separate process"
            sys.stderr.write(f"\r{word}{' ' * 60}")
            sys.stderr.flush()
            return
        rate = f"{p.tokens_per_second / 1e3:8.1f}k tok/s" if p.tokens_per_second else " " * 15
        mfu = f"  mfu {100 * p.mfu:4.1f}%" if p.mfu else ""
        sys.stderr.write(f"\rstep {p.step:6d}  loss {p.loss:7.4f}  {rate}{mfu}  {100 * min(p.fraction, 1):5.1f}% of budget ")
        sys.stderr.flush()

    cancel = threading.Event()
    try:
        result = runner.run(script, dataset, prof, log, cache, on_progress=show, cancel=cancel)
    except KeyboardInterrupt:
        cancel.set()
        raise
    if not args.json:
        sys.stderr.write("\n")
    if args.json:
        print(result.to_json())
    else:
        print(format_result(result))
    return 0 if result.status == "ok" else 1


def format_result(r) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [
        f"status:            {r.status}" + (f" ({r.reason})" if r.reason else ""),
        f"val_bpb:           {f(r.val_bpb, '.6f')}",
        f"training_seconds:  {f(r.training_seconds, '.1f')}",
        f"total_seconds:     {r.total_seconds:.1f}",
        f"outside_training:  {f(r.outside_training_seconds, '.1f')}  (startup+first step {f(r.startup_seconds, '.1f')} of which imports {f(r.ready_seconds, '.1f')}, eval {f(r.eval_seconds, '.1f')})",
        f"steps:             {r.steps}",
        f"tokens:            {r.tokens:,}",
        f"tokens_per_second: {f(r.tokens_per_second, ',.0f')}",
        f"mfu:               {'-' if r.mfu is None else f'{100 * r.mfu:.1f}%'}",
        f"peak_memory_gb:    {f(r.peak_memory_gb, '.2f')}",
        f"params:            {r.params:,}",
        f"log:               {r.log_path}",
    ]
    if r.log_tail:
        lines += ["--- log tail ---", r.log_tail]
    return "\n".join(lines)
