"""The header line: tag, best metric and its gain since the baseline, counts, experiments per
device-hour and the duty cycle, cost, uptime.
Every number comes from engine/numbers.py (the same rules as `cockpit status` and the report)."""

from __future__ import annotations

import time

from textual.widgets import Static

from engine.numbers import Baseline, DutyCycle, HoldoutCheck, Standing, versus
from engine.status import DISCARDED, Status

WIDE = 120  # columns from which the wide line is used (the app drops panes under the same width)


class HeaderBar(Static):
    DEFAULT_CSS = """
    HeaderBar { height: 1; background: $primary-background; color: $text; padding: 0 1; }
    """

    def __init__(self, metric: str = "val_bpb", **kw):
        super().__init__("", **kw)
        self.metric = metric
        self.tag = "-"
        self.standing = Standing(None, None, Baseline(), None)  # engine.numbers.standing of the session
        self.counts: dict[str, int] = {}  # experiments by status (engine.numbers.Ledger.counts)
        self.duty: DutyCycle | None = None  # of the runs so far (engine.numbers.Ledger.duty)
        self.unit = "GPU"  # what a device is: "GPU", or "slot" for CPU slots
        self.cost = 0.0
        self.started = time.monotonic()
        self.holdout: HoldoutCheck | None = None  # of the best code, or None

    def on_resize(self, event) -> None:
        self.refresh_text()  # the narrow and the wide line differ

    def _width(self) -> int:
        """The terminal's width, as the app's layout rule reads it (the header's own content width
        is two columns less, for its padding)."""
        return self.app.size.width if self.is_mounted else self.outer_size.width

    def refresh_text(self) -> None:
        st, c = self.standing, self.counts
        wide = self._width() >= WIDE
        places = 6 if wide else 4
        if st.best is None:
            best, gain = "-", (" (measuring a new baseline)" if st.measuring else "")
        elif st.is_baseline:
            best, gain = f"{st.best:.6f}", (f" (baseline mean of {st.base.runs})" if wide else " (baseline)")
        else:
            best = f"{st.best:.6f}" + (f" #{st.best_n}" if st.best_n is not None else "")
            gain = ""
            if st.gain is not None:
                gain = f", {versus(st.gain, places)} than the baseline" if wide else f" {versus(st.gain, places)}"
        hc = self.holdout
        if hc is not None and hc.holdout_gain is not None and hc.val_gain and not st.is_baseline and st.best is not None:
            colour = "yellow" if hc.carried is False else "green"
            gain += (f" · holdout [{colour}]{versus(hc.holdout_gain, places)}[/]"
                     + (" (not carried over)" if hc.carried is False else ""))
        crashes = c.get("crash", 0) + c.get("timeout", 0)
        up = time.monotonic() - self.started
        # a rate means something once experiments have finished over a stretch of time (a minute
        # of device time): experiments per device-hour, beside the duty cycle
        d = self.duty
        per = d.per_device_hour if d is not None and d.trials >= 2 else None
        h, m = divmod(int(up) // 60, 60)
        kept = c.get("keep", 0) + c.get("forced", 0)
        lost, pruned = sum(c.get(k, 0) for k in DISCARDED), c.get(Status.PRUNED, 0)  # a pruned run is a discard
        if not wide:  # narrow: the same facts, shorter
            rate = f" {per:.1f}/{self.unit}-h" if per is not None else ""
            self.update(
                f"[b]{self.tag}[/b] best [b]{best}[/b]{gain} "
                f"[green]{kept}k[/]/{lost}d/[red]{crashes}c[/]"
                f"{rate} ${self.cost:.2f} {h}:{m:02d}"
            )
            return
        rate = f"  {per:.1f}/{self.unit}-h duty {100 * d.ratio:.0f}%" if per is not None and d is not None else ""
        self.update(
            f"[b]{self.tag}[/b]  best {self.metric} [b]{best}[/b]{gain}  "
            f"[green]{kept} keep[/] / {lost} discard{f' ({pruned} pruned)' if pruned else ''} / "
            f"[red]{crashes} crash[/]{rate}  ${self.cost:.2f}  up {h}:{m:02d}"
        )
