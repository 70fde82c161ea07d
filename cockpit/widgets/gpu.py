"""The device panel: every GPU on one line each (utilisation, memory, temperature, power, from
NVML) with its recent utilisation as a sparkline (the border says so), and the slot's experiment running on it; CPU
and RAM from psutil when there is no GPU."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

HISTORY = 60
SPARK_MIN = 8  # fewer samples would draw one solid block
BLOCKS = " ▁▂▃▄▅▆▇█"
SPARK_LABEL = "▁▄█ = utilisation"


def spark(values, width: int) -> str:
    """Utilisation (0-100) as block characters, the latest at the right; absolute, not rescaled."""
    vals = list(values)[-width:]
    return "".join(BLOCKS[min(8, max(0, round(v / 100 * 8)))] for v in vals)


class GpuPanel(VerticalScroll):
    DEFAULT_CSS = """
    GpuPanel { border: round $accent; height: 100%; scrollbar-size-vertical: 0; }
    GpuPanel > Static { height: 1; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.border_title = "device"
        self.lines: dict[str, tuple[Static, deque]] = {}
        self.on_device: dict[str, int] = {}  # device name ("GPU3") -> the experiment running on it

    def show(self, samples) -> None:
        width = max(10, (self.size.width or 40) - 2)
        for s in samples:
            if s.name not in self.lines:
                st = Static("")
                self.lines[s.name] = (st, deque(maxlen=HISTORY))
                self.mount(st)
            st, hist = self.lines[s.name]
            hist.append(s.util)
            text = Text(f"{s.name:<5}{s.util:3.0f}% {s.mem_used_gb:5.1f}/{s.mem_total_gb:.0f}G")
            if s.temp_c is not None and width >= 34:
                text.append(f" {s.temp_c:.0f}°C {s.power_w:.0f}W")
            n = self.on_device.get(s.name)
            if n is not None:
                text.append(f" #{n}", style="bold")
            room = width - len(text.plain) - 1
            if len(hist) >= SPARK_MIN and room >= 4:
                text.append(" " + spark(hist, room), style="green")
                self.border_subtitle = SPARK_LABEL  # what the sparklines draw, said once for every line
            st.update(text)
