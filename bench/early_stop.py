"""Early stop, measured before it is trusted: replay the journaled loss curves of real sessions
under the rule (engine/early_stop.py) at several thresholds.

    python bench/early_stop.py WORKSPACE_OR_JOURNAL... [--k 2,3,4,6] [--grace 0.3] [--floor 0.03]
                               [--schedule-grace 0.8,0.9,1.1]

Each argument is a workspace (or its .cockpit/journal.sqlite); every session in it is replayed.
The sessions should have run with early stop off, so that every discard ran to its end.

For each experiment (not a baseline, not a confirmation) that ran to its end, in the order it
started: the reference is built from the rows that had finished when it started, and its best
from them (a baseline group, a keep, a force-keep moves it), as the engine builds it
(early_stop.gather); its curve is fed to the rule point by point, as the harness reports it. A
discard stopped at fraction f of its budget saves what it spent after that: its run's seconds
(startup, training, evaluation) less startup and f of its training. A keep that would have been
stopped is a false kill.

Prints, per threshold: the share of the discards' device-seconds saved, the discards pruned, and
the keeps pruned; then one line for the default settings:
`saved X% of discard GPU-seconds, pruned K of M keeps`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import early_stop  # noqa: E402
from engine.status import KEPT, Status  # noqa: E402
from engine.store.view import SessionView  # noqa: E402


@dataclass
class Case:
    """One experiment to replay, with what the rule would have known when it started."""

    row: Any
    curve: list[tuple[float, float]]
    known: list[Any]  # the rows finished when it started
    best_n: int | None  # the best then
    schedule: bool  # its diff touches the schedule
    session: str
    curves: dict[int, list[tuple[float, float]]]  # its session's curves, by experiment


def best_after(rows: list[Any]) -> int | None:
    """The best's row after these finished rows, in the order they finished: a baseline group's
    last run, a keep, a force-keep."""
    best = None
    for e in sorted(rows, key=lambda e: e.finished or 0):
        if e.kind == "baseline" and e.status == Status.KEEP or e.kind != "baseline" and e.status in KEPT:
            best = e.n
    return best


def cases(path: Path) -> list[Case]:
    root = path.parent.parent if path.is_file() else path
    out: list[Case] = []
    view = SessionView.open(root)
    try:
        for tag in view.tags():
            s = view.session_by_tag(tag)
            assert s is not None
            view.bind(s.id)
            rows = [e for e in view.history() if e.finished and e.status not in (Status.PROPOSING, Status.QUEUED, Status.RUNNING)]
            curves = {e.n: view.curve(e.n) for e in rows}
            for e in rows:
                if e.kind == "baseline" or (e.description or "").startswith("confirm #") or not curves.get(e.n):
                    continue
                if e.status not in (Status.KEEP, Status.DISCARD, Status.FORCED) or e.run_started is None:
                    continue
                if "but the best moved" in (e.reason or ""):  # it beat its base: its confirmation decided
                    continue
                known = [k for k in rows if k.finished is not None and k.finished <= e.run_started and k.harness == e.harness]
                out.append(Case(e, curves[e.n], known, best_after(known), early_stop.touches_schedule(view.diff(e)),
                                f"{root.name}/{tag}", curves))
    finally:
        view.close()
    return out


def first_prune(c: Case, s: early_stop.Settings) -> early_stop.Prune | None:
    ref = early_stop.gather(c.known, c.best_n, lambda n: c.curves.get(n, []), s, c.row.harness)
    r = ref if isinstance(ref, early_stop.Reference) else None
    for i in range(1, len(c.curve) + 1):
        p = early_stop.judge(c.curve[:i], r, s, schedule=c.schedule)
        if p is not None:
            return p
    return None


def cost(e: Any) -> float:
    """A run's device-seconds: from its process's start to its result."""
    return max(0.0, (e.finished or 0) - (e.run_started or e.started or 0))


def replay(all_cases: list[Case], s: early_stop.Settings) -> dict[str, Any]:
    spent = saved = 0.0
    pruned_d = discards = keeps = 0
    false_kills: list[str] = []
    for c in all_cases:
        e = c.row
        p = first_prune(c, s)
        if e.status == Status.DISCARD:
            discards += 1
            spent += cost(e)
            if p is not None:
                pruned_d += 1
                used = (e.startup_seconds or 0.0) + min(1.0, p.fraction) * (e.training_seconds or 0.0)
                saved += max(0.0, cost(e) - used)
        elif e.status in KEPT:
            keeps += 1
            if p is not None:
                false_kills.append(f"{c.session} #{e.n} ({e.description}): {p.reason}")
    return {"saved": saved / spent if spent else 0.0, "pruned": pruned_d, "discards": discards, "keeps": keeps,
            "false": false_kills, "seconds": spent}


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", type=Path, help="workspaces (or their .cockpit/journal.sqlite)")
    ap.add_argument("--k", default="2,3,4,6")
    ap.add_argument("--grace", default="0.3")
    ap.add_argument("--floor", default="0.03")
    ap.add_argument("--window", default="0.05,0.1", help="the fraction of the budget losses are averaged over")
    ap.add_argument("--schedule-grace", default="0.8,0.9,1.1",
                    help="from which fraction a schedule change is judged (>= 1: never)")
    ap.add_argument("--verbose", action="store_true", help="list each false kill")
    a = ap.parse_args(argv)
    all_cases: list[Case] = []
    for p in a.paths:
        if not p.exists():
            print(f"bench/early_stop.py: {p} does not exist", file=sys.stderr)
            return 2
        all_cases += cases(p)
    d = sum(1 for c in all_cases if c.row.status == Status.DISCARD)
    k = sum(1 for c in all_cases if c.row.status in KEPT)
    sched = sum(1 for c in all_cases if c.schedule)
    print(f"{len(all_cases)} experiments replayed from {len(a.paths)} workspace(s): {d} discards, {k} keeps, "
          f"{sched} schedule changes")
    base = early_stop.Settings()
    print(f"{'k':>4} {'grace':>5} {'floor':>5} {'window':>6} {'sched':>5} | {'saved':>6} {'discards pruned':>16} | keeps pruned")
    grid = itertools.product(floats(a.schedule_grace), floats(a.window), floats(a.k), floats(a.grace), floats(a.floor))
    for late, win, kk, g, fl in grid:
        r = replay(all_cases, replace(base, k=kk, grace=g, floor=fl, schedule_grace=late, window=win))
        print(f"{kk:>4g} {g:>5g} {fl:>5g} {win:>6g} {late:>5g} | {100 * r['saved']:>5.1f}% "
              f"{r['pruned']:>7} of {r['discards']:<6} | {len(r['false'])} of {r['keeps']}")
        if a.verbose:
            for f in r["false"]:
                print(f"      false kill: {f}")
    r = replay(all_cases, base)
    for f in r["false"]:
        print(f"default false kill: {f}")
    print(f"default (k {base.k:g}, grace {base.grace:g}, floor {base.floor:g}, schedule changes from {base.schedule_grace:g}): "
          f"saved {100 * r['saved']:.0f}% of discard GPU-seconds, pruned {len(r['false'])} of {r['keeps']} keeps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
