"""Device telemetry: per-GPU utilisation, memory, temperature and power from NVML, or CPU and
RAM from psutil where there is no GPU. No Textual here; the UI samples it on a timer."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Sample:
    name: str
    util: float  # percent
    mem_used_gb: float
    mem_total_gb: float
    temp_c: float | None = None
    power_w: float | None = None


class Telemetry:
    def __init__(self):
        self.nvml = None
        self.handles = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no driver, no library, no GPU: fall back to CPU and RAM
            self.nvml = None
            self.handles = []
        psutil.cpu_percent(None)  # prime the non-blocking counter

    @property
    def kind(self) -> str:
        return "gpu" if self.handles else "cpu"

    def sample(self) -> list[Sample]:
        if self.handles:
            n = self.nvml
            out = []
            for i, h in enumerate(self.handles):
                try:
                    util = n.nvmlDeviceGetUtilizationRates(h).gpu
                    mem = n.nvmlDeviceGetMemoryInfo(h)
                    temp = n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)
                    power = n.nvmlDeviceGetPowerUsage(h) / 1000.0
                except n.NVMLError:
                    continue
                out.append(Sample(f"GPU{i}", float(util), mem.used / 1e9, mem.total / 1e9, float(temp), power))
            return out
        vm = psutil.virtual_memory()
        return [Sample("CPU", psutil.cpu_percent(None), (vm.total - vm.available) / 1e9, vm.total / 1e9)]
