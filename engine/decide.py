"""The noise-aware decision: keep a change only if it beats the best by more than
max(min_delta, k * noise), where noise is the spread of repeated baseline runs."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    keep: bool
    delta: float  # metric - best (negative is better when direction is "min")
    improvement: float  # positive = better, in the metric's units
    threshold: float
    confidence: float | None  # improvement in units of noise


def noise_of(values: list[float]) -> float:
    """Sample standard deviation of repeated runs of the same code (0 with fewer than 2)."""
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def decide(metric: float, best: float, noise: float, min_delta: float, k: float, direction: str = "min") -> Decision:
    improvement = (best - metric) if direction == "min" else (metric - best)
    threshold = max(min_delta, k * noise)
    confidence = improvement / noise if noise > 0 else None
    return Decision(improvement > threshold, metric - best, improvement, threshold, confidence)
