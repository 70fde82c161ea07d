"""Plots, drawn by plotext through textual-plotext (axes with values, markers, colours):

- MetricPlot: the metric of every finished experiment of the current harness version, the kept
  ones joined by the running best (engine/analysis.py: the engine's best over the session, from
  the baselines' mean; a force-keep sets it), the others faint, those far off the scale at the
  edge with their own mark and a count, failures marked at the bad edge;
- LossPlot: the running experiment's training loss against the fraction of the budget, beside
  the best run's curve at the same fractions, so a run doing worse shows early.
"""

from __future__ import annotations

from rich.text import Text

from textual_plotext import PlotextPlot

from engine.analysis import ProgressSeries, progress_series, y_limits

from .batch import Batched

HISTORY = 500  # experiments drawn (the newest); the running best is computed over all of them


def integer_ticks(lo: int, hi: int, most: int) -> list[int]:
    """At most `most` whole experiment numbers from lo to hi, on a round step (1, 2, 5, 10, 20...)."""
    span = max(0, hi - lo)
    most = max(2, most)
    step = 1
    for mult in (1, 2, 5) * 12:
        if span / step < most:
            break
        step = step * 2 if mult == 1 else (step * 5 // 2 if mult == 2 else step * 2)
    first = -(-lo // step) * step
    return list(range(first, hi + 1, step)) or [lo]


class MetricPlot(Batched, PlotextPlot):
    DEFAULT_CSS = """
    MetricPlot { border: round $accent; height: 100%; }
    """

    def __init__(self, direction: str = "min", metric: str = "val_bpb", **kw):
        super().__init__(**kw)
        self.border_title = "progress"
        self.direction = direction
        self.metric = metric
        self.series = ProgressSeries()
        self.best: float | None = None
        self._shown = None  # what show() was last given

    def show(self, rows, harness: str | None, best_n: int | None, best_metric: float | None) -> None:
        """The rows (engine.numbers.Ledger.rows.values()) and the session's best: drawn with the
        report chart's rules (engine/analysis.py: progress_series, y_limits, running_best)."""
        self._shown = (rows, harness, best_n, best_metric)
        self.changed()

    def _small(self) -> bool:
        return bool(self.size.height) and self.size.height < 8  # a short pane: every row for the plot itself

    def render(self):
        # the frame follows the pane's size as it is drawn, whenever the layout settled: a plot
        # built before the last layout would keep the frame of a pane it no longer is
        small = self._small()
        if small != getattr(self, "_drawn_small", None):
            self.replot()
        if not small:
            return super().render()
        # PlotextPlot.render sets the theme again, which brings the frame back: drawn here the same
        # way (textual-plotext's own steps), without the frame
        p = self.plt
        p.plotsize(self.size.width, self.size.height)
        p.theme(self._get_plotext_theme_name(self.app.theme))
        p.frame(False)
        return Text.from_ansi(p.build())

    def redraw(self) -> None:
        if self._shown is not None:  # once a frame, however many results it brought
            rows, harness, best_n, best_metric = self._shown
            self.series = progress_series(rows, self.direction, harness, (best_n, best_metric))
            self.best = self.series.best[-1][1] if self.series.best else None
        self.replot()

    def replot(self) -> None:
        p = self.plt
        p.clear_data()
        p.clear_figure()
        p.theme("textual-design-dark")
        s = self.series
        small = self._drawn_small = self._small()
        shown = s.kept + s.other + s.failed
        newest = sorted(e.n for e in shown)[-HISTORY:]
        first = newest[0] if newest else 0
        kept = [e for e in s.kept if e.n >= first]
        other = [e for e in s.other if e.n >= first]
        failed = [e for e in s.failed if e.n >= first]
        lims = y_limits(ProgressSeries(kept=kept, best=[b for b in s.best if b[0] >= first], other=other,
                                       baseline=s.baseline), self.direction)
        notes = [f"best {self.best:.6f}"] if self.best is not None else []
        if lims is None:
            self.border_subtitle = " · ".join(notes)
            if not small:
                p.title("no measured experiment yet")
            self.refresh()
            return
        lo, hi = lims
        bad_high = self.direction == "min"
        inside = [e for e in other if lo <= e.metric <= hi]
        off = [e for e in other if not lo <= e.metric <= hi]
        if inside:
            p.scatter([e.n for e in inside], [e.metric for e in inside], marker="dot", color="gray")
        if off:  # far off the scale (a diverged run): at the edge, with their own mark and a count
            p.scatter([e.n for e in off], [hi if e.metric > hi else lo for e in off],
                      marker="▲" if bad_high else "▼", color="gray")
            notes.append(f"{len(off)} off the scale {'▲' if bad_high else '▼'}")
        # the running best before the window holds at its left edge
        line = [(n, v) for n, v in s.best if n >= first]
        before = [v for n, v in s.best if n < first]
        if before:
            line = [(first, before[-1])] + line
        if line:
            last_n = newest[-1]
            xs = [n for n, _ in line] + [max(last_n, line[-1][0])]
            ys = [v for _, v in line] + [line[-1][1]]
            # a step line: each best holds until the next one
            sx, sy = [xs[0]], [ys[0]]
            for x, y in zip(xs[1:], ys[1:]):
                sx += [x, x]
                sy += [sy[-1], y]
            p.plot(sx, sy, color="green", marker="braille")
        base = [e for e in kept if e.kind == "baseline"]
        keeps = [e for e in kept if e.kind != "baseline" and e.status == "keep"]
        forced = [e for e in kept if e.kind != "baseline" and e.status == "forced"]
        for rows, marker, colour in ((base, "●", "gray"), (keeps, "●", "green"), (forced, "◆", "orange")):
            if rows:
                p.scatter([e.n for e in rows], [min(max(e.metric, lo), hi) for e in rows], marker=marker, color=colour)
        if failed:
            p.scatter([e.n for e in failed], [hi if bad_high else lo] * len(failed), marker="x", color="red")
        if s.hidden:
            notes.append(f"{s.hidden} under another budget not shown")
        p.ylim(lo, hi)
        x_lo, x_hi = newest[0], max(newest[-1], line[-1][0] if line else newest[-1])
        p.xlim(x_lo - 0.5, x_hi + 0.5)
        ticks = integer_ticks(x_lo, x_hi, max(2, (self.size.width or 40) // 8))
        p.xticks(ticks, [str(t) for t in ticks])
        if small:  # the frame's two lines go to the data (the axes' ticks stay)
            p.frame(False)
        else:
            p.xlabel("#")
        self.border_subtitle = " · ".join(notes)
        self.refresh()


MAX_SHOWN = 6  # running curves drawn at once (with many slots: the newest)
MAX_POINTS = 300  # points drawn per curve


class LossPlot(Batched, PlotextPlot):
    """The running experiments' training loss against the fraction of their budget, beside the
    best run's curve at the same fraction: a run doing worse shows early. For the newest run, the
    early-stop rule's line (the best's loss plus the band, engine/early_stop.py) and the point
    where the rule stopped it, or would have (the human let it finish)."""

    DEFAULT_CSS = """
    LossPlot { border: round $accent; height: 100%; }
    """
    COLORS = ("cyan", "magenta", "yellow", "blue", "orange", "white", "red", "gray")

    def __init__(self, **kw):
        super().__init__(**kw)
        self.border_title = "loss"
        self.running: dict[int, list[tuple[float, float]]] = {}  # running experiment -> (fraction, loss)
        self.best_curve: list[tuple[float, float]] = []  # the best run's, for comparison
        self.n: int | None = None  # the latest started
        self.best_n: int | None = None
        self.curves: dict[int, list[tuple[float, float]]] = {}  # finished runs' curves (bounded)
        self.bands: dict[int, list[tuple[float, float]]] = {}  # running experiment -> the rule's line
        self.stops: dict[int, tuple[float, float, bool]] = {}  # experiment -> where the rule stopped it (held: would have)

    @property
    def current(self) -> list[tuple[float, float]]:
        return self.running.get(self.n, [])

    def start(self, n: int) -> None:
        self.n = n
        self.running[n] = []
        self.replot()

    def tick(self, fraction: float, loss: float, n: int | None = None) -> None:
        curve = self.running.get(self.n if n is None else n)
        if curve is None or (curve and fraction < curve[-1][0]):
            return
        curve.append((min(max(fraction, 0.0), 1.0), loss))
        if len(curve) > 2000:
            curve[:] = curve[::2]
        self.changed()

    def redraw(self) -> None:
        self.replot()

    def band(self, n: int, line: list[tuple[float, float]]) -> None:
        """The early-stop rule's line for run n (empty: the rule does not apply to it)."""
        if line:
            self.bands[n] = line
        self.changed()

    def stop(self, n: int, fraction: float, loss: float, held: bool = False) -> None:
        """The rule stopped run n here (or, `held`, would have: the human let it finish)."""
        self.stops[n] = (min(max(fraction, 0.0), 1.0), loss, held)
        self.changed()

    def limit(self) -> float | None:
        """The newest run's limit at its current fraction: the rule's line at the last check
        fraction it reached (None: no line, or before the grace fraction)."""
        line, cur = self.bands.get(self.n) if self.n is not None else None, self.current
        if not line or not cur:
            return None
        passed = [y for f, y in line if f <= cur[-1][0] + 1e-9]
        return passed[-1] if passed else None

    def finish(self, n: int) -> None:
        self.bands.pop(n, None)
        self.stops.pop(n, None)
        curve = self.running.pop(n, None)
        if curve:
            self.curves[n] = curve
            while len(self.curves) > 64:
                self.curves.pop(next(iter(self.curves)))
        if self.n == n:
            self.n = max(self.running) if self.running else None

    def set_best(self, n: int | None, journaled=None) -> None:
        """The best run's curve: seen live, else `journaled()` (the journal's copy, after a resume)."""
        self.best_n = n
        self.best_curve = [] if n is None else self.curves.get(n) or (journaled() if journaled else [])
        self.replot()

    def behind(self) -> float | None:
        """How much higher the latest run's loss is than the best run's at the same fraction (None: no comparison)."""
        if not self.current or not self.best_curve:
            return None
        f, loss = self.current[-1]
        ref = min(self.best_curve, key=lambda p: abs(p[0] - f))
        return loss - ref[1]

    def replot(self) -> None:
        p = self.plt
        p.clear_data()
        p.clear_figure()
        p.theme("textual-design-dark")
        if self.best_curve:
            p.plot([f for f, _ in self.best_curve], [v for _, v in self.best_curve], color="green", marker="braille",
                   label=f"best #{self.best_n}")
        # the newest MAX_SHOWN running curves (more cannot be told apart), each at most MAX_POINTS points
        for i, (n, curve) in enumerate(sorted(self.running.items())[-MAX_SHOWN:]):
            if curve:
                step = max(1, len(curve) // MAX_POINTS)
                pts = curve[::step]
                p.plot([f for f, _ in pts], [v for _, v in pts], color=self.COLORS[i % len(self.COLORS)],
                       marker="braille", label=f"#{n}")
        line = self.bands.get(self.n) if self.n is not None else None
        if line:
            p.plot([f for f, _ in line], [v for _, v in line], color="red", marker="dot", label="stop above")
        stop = self.stops.get(self.n) if self.n is not None else None
        if stop:
            p.scatter([stop[0]], [stop[1]], color="red", marker="x")
        if not any(self.running.values()) and not self.best_curve:
            p.title("no run yet")
        p.xlim(0.0, 1.0)
        p.xlabel("fraction of the budget")
        d = self.behind()
        # in words, as every surface says a comparison (engine/numbers.py versus): no sign to decode
        self.border_subtitle = "" if d is None else (
            f"#{self.n} loss {abs(d):.3f} {'above' if d > 0 else 'below'} the best's" if round(d, 3) else f"#{self.n} loss level with the best's")
        if stop:
            self.border_subtitle = (f"#{self.n} would stop at {100 * stop[0]:.0f}% (let finish)" if stop[2]
                                    else f"#{self.n} stopped early at {100 * stop[0]:.0f}%")
        self.refresh()
