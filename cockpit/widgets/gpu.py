"""The device panel: per GPU utilisation, memory, temperature and power (NVML), with sparklines;
CPU and RAM from psutil when there is no GPU."""

from __future__ import annotations

from collections import deque

from textual.containers import Vertical
from textual.widgets import Sparkline, Static

HISTORY = 60
SPARK_MIN = 8


class GpuPanel(Vertical):
    DEFAULT_CSS = """
    GpuPanel { border: round $accent; height: 100%; }
    GpuPanel > Static { height: 1; }
    GpuPanel > Sparkline { height: 1; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.border_title = "device"
        self.lines: dict[str, tuple[Static, Sparkline, deque]] = {}

    def show(self, samples) -> None:
        for s in samples:
            if s.name not in self.lines:
                st, sp = Static(""), Sparkline([], summary_function=max)
                self.lines[s.name] = (st, sp, deque(maxlen=HISTORY))
                self.mount(st)
                self.mount(sp)
            st, sp, hist = self.lines[s.name]
            hist.append(s.util)
            sp.data = list(hist)
            sp.display = len(hist) >= SPARK_MIN  # one or two samples would draw a solid block
            extra = ""
            if s.temp_c is not None:
                extra = f" {s.temp_c:.0f}°C {s.power_w:.0f}W"
            st.update(f"{s.name} {s.util:3.0f}%  {s.mem_used_gb:.1f}/{s.mem_total_gb:.0f}G{extra}")
