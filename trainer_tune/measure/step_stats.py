"""A window's own statistics: step-time percentiles, latency figures and the block bootstrap over its steps.

Between-window intervals, the noise floor and paired ratios are evidence's (evidence/stats.py)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from trainer_tune.measure.figures import LatencyFigures


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


def latency_figures(times_s: Sequence[float]) -> LatencyFigures:
    """Latency percentiles (ms) of per-batch times: the interpolated quantiles of `quantile`."""
    return LatencyFigures(p50_ms=1e3 * quantile(times_s, 0.5), p90_ms=1e3 * quantile(times_s, 0.9),
                          p99_ms=1e3 * quantile(times_s, 0.99), max_ms=1e3 * max(times_s),
                          mean_ms=1e3 * statistics.fmean(times_s), num_batches=len(times_s))


def throughput_per_s(amount: int, elapsed_s: float) -> float:
    """Amount processed over the time it took: the rate a long run of these steps would sustain."""
    if not elapsed_s > 0:
        raise ValueError(f"throughput over a window of {elapsed_s} s")
    return amount / elapsed_s


def _block_indices(n: int, *, resamples: int, block_len: int, rng: np.random.Generator) -> np.ndarray:
    """Moving-block bootstrap indices: consecutive runs of `block_len` steps, drawn with replacement and
    cut to n. Blocks keep the correlation between neighbouring steps (allocator and cache effects, a
    periodic slow step), which an i.i.d. bootstrap would ignore and so report too narrow an interval."""
    block_len = min(block_len, n)
    num_blocks = math.ceil(n / block_len)
    starts = rng.integers(0, n - block_len + 1, size=(resamples, num_blocks))
    return (starts[:, :, None] + np.arange(block_len)).reshape(resamples, -1)[:, :n]


def default_block_len(n: int) -> int:
    return max(1, round(n ** (1 / 3)))


def block_bootstrap_indices(n: int, *, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """(resamples, n) moving-block bootstrap indices into n consecutive observations, default block length."""
    return _block_indices(n, resamples=resamples, block_len=default_block_len(n), rng=np.random.default_rng(seed))


def count_outliers(times_s: Sequence[float]) -> int:
    """Steps slower than median + 5 x MAD (scaled to a normal sigma): counted and shown, never dropped."""
    median = statistics.median(times_s)
    mad = statistics.median(abs(t - median) for t in times_s) * 1.4826
    if mad == 0:
        return 0
    return sum(t > median + 5 * mad for t in times_s)
