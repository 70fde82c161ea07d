"""Plots, drawn by plotext through textual-plotext (axes with values, markers, colours):

- MetricPlot: the metric of every finished experiment, the kept ones joined by the running best
  (a step line that only improves), the others faint, failures marked at the bad edge;
- LossPlot: the running experiment's training loss against the fraction of the budget, beside
  the best run's curve at the same fractions, so a run doing worse shows early.
"""

from __future__ import annotations

from collections import deque

from textual_plotext import PlotextPlot

from .batch import Batched

HISTORY = 500
FAILED = ("crash", "timeout", "invalid")
KEPT = ("keep", "forced", "baseline")


class MetricPlot(Batched, PlotextPlot):
    DEFAULT_CSS = """
    MetricPlot { border: round $accent; height: 100%; }
    """

    def __init__(self, direction: str = "min", metric: str = "val_bpb", **kw):
        super().__init__(**kw)
        self.border_title = "progress"
        self.direction = direction
        self.metric = metric
        self.points: deque[tuple[int, float | None, str]] = deque(maxlen=HISTORY)  # (n, metric, status)
        self.best: float | None = None

    def add(self, value: float | None, best: float | None, n: int | None = None, status: str = "keep") -> None:
        self.points.append((n if n is not None else len(self.points) + 1, value, status))
        if best is not None:
            self.best = best
        self.changed()

    def redraw(self) -> None:
        self.replot()

    def running_best(self) -> list[tuple[int, float]]:
        better = min if self.direction == "min" else max
        out: list[tuple[int, float]] = []
        cur = None
        for n, v, st in self.points:
            if v is None or st not in KEPT:
                continue
            cur = v if cur is None else better(cur, v)
            out.append((n, cur))
        return out

    def replot(self) -> None:
        p = self.plt
        p.clear_data()
        p.clear_figure()
        p.theme("textual-design-dark")
        measured = [(n, v, st) for n, v, st in self.points if v is not None]
        best = self.running_best()
        self.border_subtitle = f"best {self.best:.6f}" if self.best is not None else ""
        if not measured:
            p.title("no measured experiment yet")
            self.refresh()
            return
        vals = [v for _, v, _ in measured]
        core = [v for _, v, st in measured if st in KEPT] or vals
        lo, hi = min(core), max(core)
        pad = (hi - lo) * 0.25 or abs(hi) * 0.01 or 0.01
        lo, hi = lo - pad, hi + pad
        other = [(n, min(max(v, lo), hi)) for n, v, st in measured if st not in KEPT]
        if other:
            p.scatter([n for n, _ in other], [v for _, v in other], marker="dot", color="gray")
        if best:
            xs = [n for n, _ in best] + [max(n for n, _, _ in self.points)]
            ys = [v for _, v in best] + [best[-1][1]]
            # a step line: each best holds until the next one
            sx, sy = [xs[0]], [ys[0]]
            for x, y in zip(xs[1:], ys[1:]):
                sx += [x, x]
                sy += [sy[-1], y]
            p.plot(sx, sy, color="green", marker="braille")
            kept = [(n, v) for n, v, st in measured if st in KEPT]
            p.scatter([n for n, _ in kept], [v for _, v in kept], marker="●", color="green")
        failed = [n for n, v, st in self.points if st in FAILED]
        if failed:
            edge = hi if self.direction == "min" else lo
            p.scatter(failed, [edge] * len(failed), marker="x", color="red")
        p.ylim(lo, hi)
        p.xlabel("#")
        self.refresh()


MAX_SHOWN = 6  # running curves drawn at once (with many slots: the newest)
MAX_POINTS = 300  # points drawn per curve


class LossPlot(Batched, PlotextPlot):
    """The running experiments' training loss against the fraction of their budget, beside the
    best run's curve at the same fraction: a run doing worse shows early."""

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

    def finish(self, n: int) -> None:
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
        if not any(self.running.values()) and not self.best_curve:
            p.title("no run yet")
        p.xlim(0.0, 1.0)
        p.xlabel("fraction of the budget")
        d = self.behind()
        self.border_subtitle = "" if d is None else f"#{self.n} {d:+.3f} vs best"
        self.refresh()
