"""The analysis of a session, one pure module (engine/analysis.py; issue 23, point 3): table tests
of the running best, the baseline mean, the holdout check and the duty cycle, and the TUI's
progress plot drawing the same running best as the report (from the baselines' MEAN)."""

from __future__ import annotations

import pytest
from textual.app import App

from cockpit.widgets.plot import MetricPlot
from engine import analysis
from engine.store.journal import Experiment

T0 = 1_700_000_000.0


def row(n, kind="experiment", status="discard", metric=None, harness="h1", commit=None, holdout=None,
        run_started=0.0, **kw) -> Experiment:
    """A journal row as the engine writes it (run_started None: it never ran)."""
    fields = dict(id=n, session_id=1, n=n, kind=kind, parent_commit="base",
                  commit_sha=commit or ("base" if kind == "baseline" else f"c{n}"), diff_stat=None,
                  description=f"#{n}", status=status, reason=None, metric=metric, delta=None, confidence=None,
                  training_seconds=None if run_started is None else 10.0, total_seconds=None, memory_gb=None,
                  tokens_in=0, tokens_out=0, cache_write=0, cache_read=0, cost_usd=0.0, started=T0 + 60 * n,
                  finished=T0 + 60 * n + 50, log_path=None if run_started is None else f"runs/{n}",
                  run_started=None if run_started is None else T0 + 60 * n + run_started,
                  harness=None if run_started is None else harness, holdout=holdout)
    fields.update(kw)
    return Experiment(**fields)


# the best single baseline run is 1.000; the baselines' mean, the engine's starting best, is 1.010
B1, B2 = row(1, "baseline", "keep", 1.000, holdout=2.00), row(2, "baseline", "keep", 1.020, holdout=2.02)


# ---- the baseline mean ----

@pytest.mark.parametrize("rows,harness,want", [
    ([], "h1", None),
    ([B1, B2], "h1", 1.010),
    ([B1, row(2, "baseline", "timeout")], "h1", 1.000),  # a failed baseline run is not in the mean
    # the latest group of this version only: a new baseline after a budget change replaces the old
    ([B1, B2, row(3, "baseline", "keep", 1.100, harness="h2"), row(4, "baseline", "keep", 1.120, harness="h2")],
     "h2", 1.110),
    ([B1, B2, row(3, "baseline", "keep", 1.100, harness="h2")], "h1", 1.010),
    # a later baseline of other code (the best moved, then a new version) starts a new group
    ([B1, B2, row(3, "baseline", "keep", 0.900, commit="c9")], "h1", 0.900),
])
def test_the_baseline_mean_is_the_latest_groups_mean(rows, harness, want):
    got = analysis.baseline_mean(rows, harness)
    assert got == (None if want is None else pytest.approx(want))


# ---- the running best ----

@pytest.mark.parametrize("rows,best,want", [
    # from the baselines' MEAN, never the best single baseline run; a keep moves it
    ([B1, B2, row(3, status="keep", metric=0.990)], (3, 0.990), [(1, 1.010), (2, 1.010), (3, 0.990)]),
    # a discard moves nothing, even one better than a single baseline run
    ([B1, B2, row(3, metric=0.995)], (2, 1.010), [(1, 1.010), (2, 1.010)]),
    # a force-keep sets it, also when worse
    ([B1, B2, row(3, status="forced", metric=1.050)], (3, 1.050), [(1, 1.010), (2, 1.010), (3, 1.050)]),
    # nothing measured: no line
    ([row(1, status="crash")], (None, None), []),
])
def test_the_running_best_starts_from_the_baselines_mean(rows, best, want):
    got = analysis.running_best(rows, "min", "h1", best)
    assert [n for n, _ in got] == [n for n, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want])


# ---- the holdout check ----

@pytest.mark.parametrize("rows,best_n,val_gain,holdout_gain,carried", [
    ([B1, B2, row(3, status="keep", metric=0.990, holdout=1.990)], 3, 0.020, 0.020, True),
    # the holdout gains nothing while validation gains 0.02: far beyond the holdout's noise (0.014)
    ([B1, B2, row(3, status="keep", metric=0.990, holdout=2.060)], 3, 0.020, -0.050, False),
    ([B1, B2], 2, 0.0, 0.0, None),  # the best is the baseline: nothing to judge
    ([B1, B2, row(3, status="keep", metric=0.990)], 3, None, None, None),  # no holdout figure
])
def test_the_holdout_check(rows, best_n, val_gain, holdout_gain, carried):
    hc = analysis.holdout_check(rows, best_n, "min", "h1")
    for got, want in ((hc.val_gain, val_gain), (hc.holdout_gain, holdout_gain)):
        assert got == (None if want is None else pytest.approx(want))
    assert hc.carried is carried


# ---- the duty cycle ----

@pytest.mark.parametrize("rows,wall,training,experiments,slots", [
    ([], 0.0, 0.0, 0, 1),
    ([row(1, status="keep", metric=1.0, run_started=5.0)], 45.0, 10.0, 1, 1),  # from the run's start to its end
    # two rows on two slots: the wall is device-seconds (first start to last finish, x2)
    ([row(1, status="keep", metric=1.0, slot=0), row(2, metric=1.0, slot=1)], 2 * 110.0, 20.0, 2, 2),
    ([row(1, status="interrupted", run_started=None)], 0.0, 0.0, 0, 1),  # never ran: no time
])
def test_the_duty_cycle(rows, wall, training, experiments, slots):
    d = analysis.duty_cycle(rows)
    assert (d.wall, d.training, d.experiments, d.slots) == (pytest.approx(wall), pytest.approx(training), experiments, slots)


def test_the_journal_and_numbers_reexport_the_one_duty_cycle_and_rules():
    from engine import numbers
    from engine.store import journal

    assert journal.duty_cycle is analysis.duty_cycle and numbers.running_best is analysis.running_best
    assert numbers.holdout_check is analysis.holdout_check


# ---- the plot draws the report's running best ----

class PlotApp(App):
    def __init__(self, plot: MetricPlot):
        super().__init__()
        self.plot = plot

    def compose(self):
        yield self.plot


async def test_the_progress_plot_starts_its_running_best_at_the_baselines_mean_as_the_report_does():
    rows = [B1, B2, row(3, metric=1.005), row(4, status="keep", metric=0.995)]
    plot = MetricPlot("min")
    async with PlotApp(plot).run_test(size=(80, 24)) as pilot:
        plot.show(rows, "h1", 4, 0.995)
        await pilot.pause()
        report = analysis.progress_series(rows, "min", "h1", (4, 0.995))
        assert plot.series.best == report.best, "the plot and the report draw one running best"
        assert plot.series.best[0] == (1, pytest.approx(1.010)), "from the baselines' mean, not the best single run"
        assert plot.series.best[-1] == (4, pytest.approx(0.995))
