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
        self.baseline: float | None = None
        self.counts: dict[str, int] = {}
        self.finished_times: list[float] = []
        self.cost = 0.0
        self.started = time.monotonic()
        self.holdout = None  # engine.report.HoldoutCheck of the best code, or None

    def refresh_text(self) -> None:
        best = f"{self.best:.6f}" if self.best is not None else "-"
        gain = ""
        if self.best is not None and self.baseline is not None:
            gain = f" ({self.best - self.baseline:+.6f})"
        c = self.counts
        crashes = c.get("crash", 0) + c.get("timeout", 0)
        up = time.monotonic() - self.started
        rate = len(self.finished_times) / (up / 3600) if up > 60 else 0.0
        h, m = divmod(int(up) // 60, 60)
        hc = self.holdout
        if hc is not None and hc.holdout_gain is not None and hc.val_gain:
            colour = "yellow" if hc.carried is False else "green"
            gain += f" holdout [{colour}]{-hc.holdout_gain:+.6f}[/]" + (" (not carried over)" if hc.carried is False else "")
        self.update(
            f"[b]{self.tag}[/b]  best {self.metric} [b]{best}[/b]{gain}  "
            f"[green]{c.get('keep', 0) + c.get('forced', 0)} keep[/] / {c.get('discard', 0)} discard / "
            f"[red]{crashes} crash[/]  {rate:.1f}/h  ${self.cost:.2f}  up {h}:{m:02d}"
        )
