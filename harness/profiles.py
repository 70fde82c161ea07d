"""Hardware profiles: the constants of a run, fixed per device kind. Locked: the agent cannot edit them.

CUDA matches the anchor (sequence 2048, a 300 s budget). CPU is sized so that a 2-core machine
learns something visible in about a minute. MPS uses the CPU sizes on Apple's GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Profile:
    name: str  # "cuda" | "mps" | "cpu"
    device: str  # torch device string
    seq_len: int  # tokens per training row and per evaluation window
    time_budget: float  # seconds of training (the harness's clock; see runtime.fraction)
    warmup_allowance: float  # seconds before the first step's report that do not count (compile)
    startup_allowance: float  # seconds from spawn to the harness being ready (imports), before a kill
    eval_allowance: float  # seconds for evaluation after training, before a kill
    eval_tokens: int  # at most this many validation tokens are scored (all of them if fewer)
    autocast: str | None  # dtype name for torch.autocast, or None for full fp32
    compile: bool  # whether train.py should torch.compile
    peak_flops: float | None = None  # dense bf16 peak of the device, for MFU; None when unknown

    def with_budget(self, seconds: float | None) -> "Profile":
        return self if seconds is None else replace(self, time_budget=float(seconds))


CUDA = Profile(
    name="cuda",
    device="cuda",
    seq_len=2048,
    time_budget=300.0,
    warmup_allowance=90.0,
    startup_allowance=120.0,
    eval_allowance=300.0,
    eval_tokens=8 * 1024 * 1024,
    autocast="bfloat16",
    compile=True,
)

CPU = Profile(
    name="cpu",
    device="cpu",
    seq_len=256,
    time_budget=60.0,
    warmup_allowance=10.0,
    startup_allowance=60.0,
    eval_allowance=120.0,
    eval_tokens=64 * 1024,
    autocast=None,
    compile=False,
)

MPS = replace(CPU, name="mps", device="mps")

PROFILES = {p.name: p for p in (CUDA, CPU, MPS)}

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, for MFU.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def detect() -> Profile:
    """The best profile for this machine: CUDA, else MPS, else CPU."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        return replace(CUDA, peak_flops=peak)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return MPS
    return CPU


def by_name(name: str) -> Profile:
    if name == "auto":
        return detect()
    if name == "cuda":
        return detect() if detect().name == "cuda" else CUDA
    return PROFILES[name]
