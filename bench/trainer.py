"""Trainer benchmark: prepare (timed), then train.py through the harness N times.

    python bench/trainer.py [--budget S] [--runs N] [--device auto|cuda|cpu] [--cache-dir DIR] [--out FILE]
                            [--script FILE ...]

Prints one row per run: status, val_bpb, steps, tokens/s, MFU, training seconds and the seconds
outside training (startup + first compiled step, evaluation). Run 1 is cold (empty compile
cache when the cache dir is new); later runs are warm, and each one after the first is handed to
the spare child that the run before it started (--no-spare: a fresh child every time, as
before). Several --script files are run one after the other (N runs each) through the same
chain of spares, so variants of train.py compare on one machine. --out writes the results as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cockpit.cli import _profile  # noqa: E402
from harness import runner  # noqa: E402
from harness.dataset import current_dataset  # noqa: E402
from harness.paths import cache_root  # noqa: E402
from harness.prepare import prepare  # noqa: E402
from harness.sources import stdlib_source  # noqa: E402


HEADER = (
    f"{'run':>3} {'status':>7} {'val_bpb':>8} {'steps':>6} {'tok/s':>10} {'MFU':>6} {'train_s':>7} {'outside':>7} "
    f"{'startup':>7} {'ready':>6} {'export':>6} {'eval':>6} {'verify':>6} {'spare':>6} {'mem_GB':>6} {'box':>3}"
)


def _row(i: int, r, call: float) -> str:
    mfu = f"{100 * r.mfu:.1f}%" if r.mfu else "-"
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    return (
        f"{i + 1:>3} {r.status:>7} {fmt(r.val_bpb, '.4f'):>8} {r.steps:>6} {fmt(r.tokens_per_second, ',.0f'):>10} {mfu:>6} "
        f"{fmt(r.training_seconds, '.1f'):>7} {fmt(r.outside_training_seconds, '.1f'):>7} {fmt(r.startup_seconds, '.1f'):>7} "
        f"{fmt(r.ready_seconds, '.1f'):>6} {fmt(getattr(r, 'export_seconds', None), '.1f'):>6} {fmt(r.eval_seconds, '.1f'):>6} "
        f"{call - r.total_seconds:>6.2f} {fmt(r.spare_seconds, '.1f'):>6} {fmt(r.peak_memory_gb, '.1f'):>6} "
        f"{'on' if getattr(r, 'sandbox', False) else 'off':>3}"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--script", nargs="+", default=[str(ROOT / "trainer" / "train.py")])
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-prepare", action="store_true", help="use the cache's current dataset as it is")
    ap.add_argument("--no-spare", action="store_true", help="start every run's child fresh (no spare)")
    ap.add_argument("--sandbox", default="auto", choices=("auto", "required", "off"))
    a = ap.parse_args()

    cache = cache_root(a.cache_dir)
    if not a.no_prepare:
        t0 = time.monotonic()
        rep = prepare(stdlib_source(), cache, show_progress=False)
        print(f"prepare: {time.monotonic() - t0:.1f}s ({'no-op' if rep.noop else 'built'}) {rep.summary()}", flush=True)
    ds = current_dataset(cache)
    c = ds.manifest["counts"]
    print(f"data: {ds.manifest['source']['spec']}: {c['train_tokens']:,} train / {c['val_tokens']:,} val tokens", flush=True)
    prof = _profile(a.device, a.budget)
    rows, calls, names = [], [], []
    short = [Path(p).name for p in a.script]  # the file name, or the path where two names clash
    label = {p: n if short.count(n) == 1 else p for p, n in zip(a.script, short)}
    for script in a.script:
        for _ in range(a.runs):
            i = len(rows)
            log = ROOT / ".cockpit" / "bench" / f"run{i + 1}-{int(time.time())}.log"
            t0 = time.monotonic()
            # As in a session: the first run measures the allowance for compilation and export (a
            # baseline); every later run gets it fixed.
            limits = runner.Limits.for_profile(prof)
            first = next((x for x in rows if x.status == "ok" and x.credit_seconds is not None), None)
            if first is not None:
                limits.credit, limits.export_estimate = first.credit_seconds, first.export_seconds or 0.0
            r = runner.run(Path(script).resolve(), ds, prof, log, cache, spare=not a.no_spare, limits=limits,
                           sandbox=a.sandbox)
            calls.append(time.monotonic() - t0)
            rows.append(r)
            names.append(label[script])
            print(f"run {i + 1} ({names[-1]}): {r.status} {r.reason or ''}", flush=True)
            if r.log_tail and r.status != "ok":
                print(r.log_tail, flush=True)
            print(HEADER + "\n" + _row(i, r, calls[-1]), flush=True)  # each run's row as soon as it ends
            if a.out:  # rewritten after every run, so a cut-off session keeps what finished
                Path(a.out).write_text(json.dumps([dict(asdict(r), call_seconds=c, script=n) for r, c, n in zip(rows, calls, names)], indent=1))
    print()
    if len(a.script) > 1:
        for i, n in enumerate(names):
            print(f"run {i + 1}: {n}")
    print(HEADER)
    for i, (r, call) in enumerate(zip(rows, calls)):
        print(_row(i, r, call))
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
