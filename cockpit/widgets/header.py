"""The header line: tag, best metric and its gain since the baseline, counts, pace, cost, uptime."""

from __future__ import annotations

import time

from textual.widgets import Static


class HeaderBar(Static):
    DEFAULT_CSS = """
    HeaderBar { height: 1; background: $primary-background; color: $text; padding: 0 1; }
    """

    def __init__(self, metric: str = "val_bpb", **kw):
        super().__init__("", **kw)
        self.metric = metric
        self.tag = "-"
        self.best: float | None = None
        self.best_n: int | None = None  # the row the best is (a baseline row: the best is the baselines' mean)
        self.best_is_baseline = False
        self.n_baselines = 0
        self.baseline: float | None = None
        self.counts: dict[str, int] = {}
        self.finished_times: list[float] = []
        self.slots = 1  # device slots seen (the rate is across all of them)
        self.cost = 0.0
        self.started = time.monotonic()
        self.holdout = None  # engine.report.HoldoutCheck of the best code, or None

    def on_resize(self, event) -> None:
        self.refresh_text()  # the narrow and the wide line differ

    def refresh_text(self) -> None:
        best = f"{self.best:.6f}" if self.best is not None else "-"
        gain = ""
        if self.best is not None and self.best_is_baseline:
            best += f" (baseline mean of {self.n_baselines})"
        elif self.best is not None:
            if self.best_n is not None:
                best += f" #{self.best_n}"
            if self.baseline is not None:
                gain = f" ({self.best - self.baseline:+.6f} vs baseline)"
        c = self.counts
        crashes = c.get("crash", 0) + c.get("timeout", 0)
        up = time.monotonic() - self.started
        done = len(self.finished_times)
        # a rate means something once experiments have finished over a stretch of time
        span = (self.finished_times[-1] - self.started) if done else 0.0
        rate = f"  {done / (span / 3600):.1f}/h" if done >= 2 and span >= 600 else ""
        if rate and self.slots > 1:  # across the slots
            rate += f" on {self.slots}"
        h, m = divmod(int(up) // 60, 60)
        hc = self.holdout
        if hc is not None and hc.holdout_gain is not None and hc.val_gain:
            colour = "yellow" if hc.carried is False else "green"
            gain += f" holdout [{colour}]{-hc.holdout_gain:+.6f}[/]" + (" (not carried over)" if hc.carried is False else "")
        if self.size.width and self.size.width < 120:  # narrow: the same facts, shorter
            gain_short = f" ({self.best - self.baseline:+.4f})" if (self.best is not None and self.baseline is not None
                                                                  and not self.best_is_baseline) else ""
            row = f" #{self.best_n}" if self.best_n is not None and not self.best_is_baseline else ""
            shown = f"{self.best:.6f}" if self.best is not None else "-"
            self.update(
                f"[b]{self.tag}[/b] best [b]{shown}[/b]{row}{gain_short} "
                f"[green]{c.get('keep', 0) + c.get('forced', 0)}k[/]/{c.get('discard', 0)}d/[red]{crashes}c[/]"
                f"{rate} ${self.cost:.2f} {h}:{m:02d}"
            )
            return
        self.update(
            f"[b]{self.tag}[/b]  best {self.metric} [b]{best}[/b]{gain}  "
            f"[green]{c.get('keep', 0) + c.get('forced', 0)} keep[/] / {c.get('discard', 0)} discard / "
            f"[red]{crashes} crash[/]{rate}  ${self.cost:.2f}  up {h}:{m:02d}"
        )
