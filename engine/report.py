"""The analysis behind `cockpit report`: a session's summary (counts, the baseline and the best,
the rate, cost and tokens) from its journal rows, pure. Rendering (progress.png through
matplotlib, report.md) is the UI's: cockpit/report_render.py. The chart's series and every rule
are engine/analysis.py's (re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass

from . import analysis
from .analysis import (  # noqa: F401  (re-exported: the chart's data is the TUI plot's, one definition)
    HoldoutCheck, ProgressSeries, baseline_mean, holdout_check, measured, never_ran, progress_series,
    running_best, versus, y_limits,
)
from .store.journal import Experiment, Session
from .status import FAILED, FINAL, KEPT  # noqa: F401  (re-exported)


# ---- the numbers ----

@dataclass
class Summary:
    session: Session
    metric_name: str
    direction: str
    experiments: list[Experiment]
    counts: dict[str, int]  # kind='experiment' rows that ran (or were judged), by status
    n_baselines: int  # baseline runs of the current harness
    baseline: float | None  # the baselines' mean (engine/analysis.py: baseline)
    best: float | None  # the session's best under the current harness
    improvement: float | None  # positive = better than the baseline, in metric units
    improvement_pct: float | None
    first: float | None
    last: float | None
    cost: float
    tokens: dict[str, int]
    never_ran: int = 0  # proposals the session stopped (or the human vetoed) before they ran
    standing: analysis.Standing | None = None
    hidden: int = 0  # experiments measured by another harness version (budget, data): not compared

    @property
    def hours(self) -> float | None:
        if self.first is None or self.last is None or self.last <= self.first:
            return None
        return (self.last - self.first) / 3600

    @property
    def finished_experiments(self) -> int:
        return sum(v for k, v in self.counts.items() if k in FINAL)

    @property
    def per_hour(self) -> float | None:
        h = self.hours
        return self.finished_experiments / h if h else None


def summarize(session: Session, experiments: list[Experiment], metric_name: str, direction: str) -> Summary:
    counts: dict[str, int] = {}
    for e in experiments:
        if e.kind == "experiment" and not never_ran(e):
            counts[e.status] = counts.get(e.status, 0) + 1
    harness = session.harness
    st = analysis.standing(experiments, session.best_n, session.best_metric, harness, direction)
    base, best = st.base.mean, st.best
    imp = pct = None
    if base is not None and best is not None:
        imp = analysis.gain(best, base, direction)
        pct = 100 * imp / abs(base) if base else None
    ran = [e for e in experiments if not never_ran(e)]
    starts = [e.started for e in ran if e.started]
    ends = [e.finished for e in ran if e.finished]
    first = min(starts) if starts else session.created
    last = max(ends + starts) if (ends or starts) else session.updated
    tokens = {"tokens_in": sum(e.tokens_in or 0 for e in experiments), "tokens_out": sum(e.tokens_out or 0 for e in experiments),
              "cache_read": sum(e.cache_read or 0 for e in experiments), "cache_write": sum(e.cache_write or 0 for e in experiments)}
    shown = {e.n for e in analysis.comparable(experiments, harness)}
    return Summary(session, metric_name, direction, experiments, counts,
                   sum(1 for e in experiments if e.kind == "baseline" and e.n in shown), base, best, imp, pct, first, last,
                   sum(e.cost_usd or 0.0 for e in experiments), tokens,
                   never_ran=sum(1 for e in experiments if e.kind == "experiment" and never_ran(e)), standing=st,
                   hidden=sum(1 for e in experiments if e.n not in shown and measured(e)))
