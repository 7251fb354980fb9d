"""Summary statistics of measured step times: the maths behind every reported figure."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), for 0 <= q <= 1."""
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q={q} is outside [0, 1]")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class StepTimeStats:
    median: float
    p10: float
    p90: float
    mean: float
    min: float
    max: float
    stdev: float

    @staticmethod
    def of(times_s: Sequence[float]) -> "StepTimeStats":
        return StepTimeStats(
            median=quantile(times_s, 0.5), p10=quantile(times_s, 0.1), p90=quantile(times_s, 0.9),
            mean=statistics.fmean(times_s), min=min(times_s), max=max(times_s),
            stdev=statistics.stdev(times_s) if len(times_s) > 1 else 0.0)


def throughput_per_s(amount: int, elapsed_s: float) -> float:
    """Amount processed over the time it took: the rate a long run of these steps would sustain."""
    if not elapsed_s > 0:
        raise ValueError(f"throughput over a window of {elapsed_s} s")
    return amount / elapsed_s
