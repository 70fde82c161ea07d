"""`cockpit prepare`: build the data and the tokenizer."""

from __future__ import annotations

import sys

from harness.errors import HarnessError


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
