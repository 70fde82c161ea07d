"""The `cockpit` command line. Each subcommand prints one clear line on bad input and exits non-zero."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from harness.errors import HarnessError


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="DIR", help="a folder of text files (default: the Python standard library)")
    src.add_argument("--parquet", metavar="GLOB", help="parquet shards with a 'text' column")
    p.add_argument("--include", action="append", metavar="PATTERN",
                   help="with --text: only files whose name matches (e.g. '*.py'); repeatable")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size, BOS included (default 8192)")
    p.add_argument("--val-fraction", type=float, default=None, help="share of documents pinned to validation (default 0.05)")
    p.add_argument("--force", action="store_true", help="rebuild even when an identical dataset exists")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cockpit", description="A terminal research cockpit for autonomous ML experiments.")
    ap.add_argument("--cache-dir", help="prepared data and tokenizer (default: $COCKPIT_CACHE or the user cache dir)")
    sub = ap.add_subparsers(dest="command")

    p = sub.add_parser("prepare", help="build the data and tokenizer (default: the embedded corpus; offline)")
    _add_prepare_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="run trainer/train.py once through the harness and print the result")
    t.add_argument("--workspace", default=".", help="the folder holding trainer/train.py (default: here)")
    t.add_argument("--script", help="train this file instead of <workspace>/trainer/train.py")
    t.add_argument("--budget", type=float, help="training seconds (default: the profile's: 300 on CUDA, 60 on CPU)")
    t.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto")
    t.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare":
            return cmd_prepare(args)
        if args.command == "train":
            return cmd_train(args)
        return cmd_default(args)
    except HarnessError as e:
        print(f"cockpit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cockpit: interrupted", file=sys.stderr)
        return 130


# ---- prepare ----

def _source(args):
    from harness import sources

    if getattr(args, "include", None) and not getattr(args, "text", None):
        raise HarnessError("--include needs --text DIR")
    if getattr(args, "text", None):
        return sources.text_source(args.text, args.include)
    if getattr(args, "parquet", None):
        return sources.parquet_source(args.parquet)
    return sources.stdlib_source()


def cmd_prepare(args) -> int:
    from harness.paths import cache_root
    from harness.prepare import DEFAULT_VAL_FRACTION, DEFAULT_VOCAB, prepare

    cache = cache_root(args.cache_dir)
    src = _source(args)
    if src.kind == "stdlib":
        print(f"source: the Python standard library at {src.spec} (built-in corpus)", file=sys.stderr)
    report = prepare(
        src, cache,
        vocab_size=DEFAULT_VOCAB if args.vocab_size is None else args.vocab_size,
        val_fraction=DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction,
        force=args.force,
        show_progress=not args.quiet,
    )
    print(report.summary())
    if report.relocked:
        print(f"harness locked: {len(_locked_files())} files hashed into {cache}")
    return 0


def _locked_files():
    from harness.integrity import harness_files

    return harness_files()


def ensure_prepared(cache: Path):
    """The current dataset; with none, prepare the built-in corpus first (saying so)."""
    from harness.dataset import current_dataset
    from harness.errors import NotPreparedError
    from harness.integrity import lock_harness
    from harness.prepare import prepare
    from harness.sources import stdlib_source

    try:
        ds = current_dataset(cache)
        lock_harness(cache) if not _lock_exists(cache) else None
        return ds
    except NotPreparedError:
        print("no prepared data: preparing the built-in corpus (the Python standard library) first", file=sys.stderr)
        report = prepare(stdlib_source(), cache)
        print(report.summary(), file=sys.stderr)
        return current_dataset(cache)


def _lock_exists(cache: Path) -> bool:
    from harness.integrity import lock_path

    return lock_path(cache).exists()


# ---- train ----

def _profile(device: str, budget: float | None):
    from harness.profiles import CPU, MPS, by_name, detect

    if device == "auto":
        prof = detect()
        if prof.name == "cpu":
            print("no GPU: CPU profile", file=sys.stderr)
    elif device == "cuda":
        prof = detect()
        if prof.name != "cuda":
            raise HarnessError("--device cuda: no CUDA GPU is visible to PyTorch")
    else:
        prof = {"cpu": CPU, "mps": MPS}[device]
    return prof.with_budget(budget)


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

    ws = Path(args.workspace).expanduser().resolve()
    script = Path(args.script).expanduser().resolve() if args.script else ws / "trainer" / "train.py"
    if not script.is_file():
        raise HarnessError(f"no training script at {script}")
    if args.budget is not None and args.budget < 0:
        raise HarnessError(f"--budget must be >= 0, got {args.budget:g}")
    cache = cache_root(args.cache_dir)
    dataset = ensure_prepared(cache)
    prof = _profile(args.device, args.budget)
    _warn_small_corpus(dataset, prof)
    log = ws / ".cockpit" / "runs" / f"train-{time.strftime('%Y%m%d-%H%M%S')}" / "run.log"
    if not args.json:
        print(f"training {script} on {prof.name} for {prof.time_budget:g}s; log: {log}", file=sys.stderr)

    def show(p: runner.Progress) -> None:
        if args.json:
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


# ---- default: what `cockpit` does with no subcommand ----

def cmd_default(args) -> int:
    """Until the research loop and the TUI land, `cockpit` prepares what is missing and runs the
    training script once through the harness: the sanity check before going autonomous."""
    ns = build_parser().parse_args(["train"] if args.cache_dir is None else ["--cache-dir", args.cache_dir, "train"])
    return cmd_train(ns)
