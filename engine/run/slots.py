"""Device slots: one experiment per device at once.

`[run] devices` / `--devices` names them: `auto` (every CUDA device visible to cockpit; one CPU
slot where there is none), a list of CUDA ordinals such as `0,1,3` (as cockpit sees them, the
same as torch's cuda:N; an ordinal may repeat only to exercise the mapping), or `cpu:N` (N CPU
slots, the cores split between them). Each slot's training process sees only its own device
(CUDA_VISIBLE_DEVICES; a CPU slot its own cores through COCKPIT_CPUS and the thread counts) and
keeps its own spare child warm.

Devices of different models are never mixed silently: only the devices of one model are used
(the most common; the first device's on a tie), with a notice naming the others. One model means
one noise floor and one best: a result measured on one GPU is comparable with the best measured
on another.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    from .runs import Run
    from .targets import Target


class DeviceError(HarnessError):
    """A devices setting that cannot be used here (one line)."""


@dataclass(frozen=True)
class Device:
    label: str  # what the journal and the TUI show: "cuda:0", "cpu:1", "cpu"
    model: str  # the GPU's name, or "cpu"
    env: dict[str, str] = field(default_factory=dict)  # given to the slot's training process
    node: str = ""  # the Ray node it is on (engine/run/cluster.py); "" on this machine


def check_spec(spec: str) -> None:
    """The form of a devices setting, without looking at the machine."""
    s = spec.strip()
    if s == "auto":
        return
    if s.startswith("cpu:"):
        n = s[4:]
        if not n.isdigit() or int(n) < 1:
            raise DeviceError(f"{spec!r}: cpu:N needs a whole number of slots N >= 1")
        return
    parts = [p.strip() for p in s.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise DeviceError(f"{spec!r} is not auto, a list of CUDA device numbers such as 0,1,3, or cpu:N")


def cuda_devices() -> list[tuple[str, str]]:
    """(the CUDA_VISIBLE_DEVICES entry, the model name) of each CUDA device cockpit sees, from
    NVML (no CUDA context is made in this process); [] without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        names = []
        for i in range(count):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
    except Exception:  # no driver, no library, no GPU
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [(str(i), n) for i, n in enumerate(names)]
    out = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry.isdigit() or int(entry) >= count:
            break  # CUDA stops at the first entry it cannot use
        out.append((entry, names[int(entry)]))
    return out


def gpu_ids() -> dict[str, tuple[int, str]]:
    """NVML index -> (the device's minor number: its /dev/nvidiaN, its UUID); {} without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            out[str(i)] = (int(pynvml.nvmlDeviceGetMinorNumber(h)), uuid.decode() if isinstance(uuid, bytes) else str(uuid))
        return out
    except Exception:  # no driver, no library, no GPU
        return {}


def gpu_env(entry: str, ids: dict[str, tuple[int, str]]) -> dict[str, str]:
    """A GPU slot's environment: its device for CUDA, and (where NVML knows it) its UUID and its
    /dev/nvidiaN minor, so that the sandbox binds that node only (harness/sandbox.gpu_nodes) and
    CUDA finds the device by UUID whatever else it can enumerate."""
    if entry not in ids:
        return {"CUDA_VISIBLE_DEVICES": entry}
    minor, uuid = ids[entry]
    return {"CUDA_VISIBLE_DEVICES": uuid, "COCKPIT_GPU_MINORS": str(minor)}


def resolve(spec: str, accelerator: bool, gpus: list[tuple[str, str]] | None = None,
            cores: list[int] | None = None, ids: dict[str, tuple[int, str]] | None = None) -> tuple[list[Device], list[str]]:
    """The slots a devices setting gives on this machine, and the notices to show. `accelerator`:
    the profile trains on a GPU. Raises DeviceError (one line) for what cannot be used."""
    check_spec(spec)
    s = spec.strip()
    if s.startswith("cpu:"):
        n = int(s[4:])
        cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
        if n > len(cores):
            raise DeviceError(f"cpu:{n} asks for more slots than this machine has cores ({len(cores)})")
        k = len(cores) // n
        out = []
        for i in range(n):
            mine = cores[i * k:(i + 1) * k]
            threads = str(len(mine))
            out.append(Device(f"cpu:{i}", "cpu", {"COCKPIT_CPUS": ",".join(map(str, mine)), "OMP_NUM_THREADS": threads,
                                                  "MKL_NUM_THREADS": threads, "CUDA_VISIBLE_DEVICES": ""}))
        return out, []
    if not accelerator:
        if s == "auto":
            return [Device("cpu", "cpu")], []
        raise DeviceError(f"--devices {s}: no CUDA GPU is visible (use auto, or cpu:N for CPU slots)")
    if gpus is None:
        gpus = cuda_devices()
        ids = gpu_ids() if ids is None else ids
    ids = ids or {}
    if not gpus:
        if s == "auto":  # a GPU profile without NVML: the one device the profile found
            return [Device("cuda:0", "gpu")], []
        raise DeviceError(f"--devices {s}: NVML sees no CUDA device here")
    wanted = list(range(len(gpus))) if s == "auto" else [int(p) for p in s.split(",")]
    bad = [i for i in wanted if i >= len(gpus)]
    if bad:
        raise DeviceError(f"--devices {s}: there is no CUDA device {bad[0]} (cockpit sees {len(gpus)}: "
                          f"0-{len(gpus) - 1})")
    models = Counter(gpus[i][1] for i in wanted)
    top = max(models.values())
    model = next(gpus[i][1] for i in wanted if models[gpus[i][1]] == top)  # the first device's on a tie
    notices = []
    others = [i for i in wanted if gpus[i][1] != model]
    if others:
        notices.append(f"devices of another model are not used: {', '.join(f'cuda:{i} ({gpus[i][1]})' for i in others)}; "
                       f"results are compared on one model only ({model}); name them with --devices to choose")
    out = [Device(f"cuda:{i}", model, gpu_env(gpus[i][0], ids)) for i in wanted if gpus[i][1] == model]
    return out, notices


class Slot:
    """One device and what runs on it: at most one experiment at a time, in its own checkout of
    the experiment's commit (`tree`), with its own copy of the target (its own spare child).

    Its runs go in one thread that lives as long as the slot: the next run's spare child is
    started from that thread, and the sandbox ties a child's life to the *thread* that started it
    (bubblewrap's --die-with-parent is the kernel's parent-death signal, sent when that thread
    ends), so a thread per run would kill every spare as its run ended and each run would start
    cold."""

    def __init__(self, index: int, device: Device, target: Target, tree: Path):
        self.index, self.device, self.target, self.tree = index, device, target, tree
        self.run: Run | None = None  # the experiment it runs now, or None
        self.thread: threading.Thread | None = None
        self._work: queue.SimpleQueue[tuple[Callable[[Slot, Run], None], Run] | None] = queue.SimpleQueue()

    @property
    def busy(self) -> bool:
        return self.run is not None

    def start(self, run: Run, work: Callable[[Slot, Run], None]) -> None:
        """Run `work(self, run)` in the slot's thread."""
        self.run = run
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._loop, name=f"cockpit-slot-{self.index}", daemon=True)
            self.thread.start()
        self._work.put((work, run))

    def _loop(self) -> None:
        while (item := self._work.get()) is not None:
            work, run = item
            work(self, run)

    def release(self) -> None:
        self.run = None

    def close(self) -> None:
        """The slot's thread ends (after the run it has, if any)."""
        self._work.put(None)
