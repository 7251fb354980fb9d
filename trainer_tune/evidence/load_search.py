"""The highest sustainable rate of each batcher setting, predicted by simulation before anything is served under load.

The real search (evidence/serving_load.RateSearch on open-loop runs) costs seconds of serving per rate and replica;
the same search on the batcher simulation (evidence/batcher_sim.py, driven by service times measured per batch
size) costs a fraction of a second per rate. It runs the same rule end to end: the simulated requests go through
load_point (fill-up, tail quantiles, sustainability) and RateSearch, so a prediction and a measurement differ in
where the latencies came from, and in that the prediction reads the simulated p99 itself where the measurement asks
for confidence. What it predicts is used to choose the
rates the real search starts from (`real_bounds`) and which settings are worth measuring; the measurement decides
(benchmarks/README.md, "serving_load.py": near capacity the prediction can be tens of percent off on a machine whose
speed moves between minutes).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

from trainer_tune.evidence.batcher_sim import sampled_service, simulate
from trainer_tune.evidence.load_point import load_point
from trainer_tune.evidence.serving_load import RatePoint, RateSearch, SustainableRate, TargetCheck
from trainer_tune.workloads.arrivals import poisson_arrivals_s


@dataclass(frozen=True)
class _SimReplica:
    arrivals_s: tuple[float, ...]
    completions_s: tuple[float, ...]


@dataclass(frozen=True)
class PredictedRate:
    max_batch_size: int
    max_queue_delay_s: float
    capacity_per_s: float
    """Full batches back to back at the mean service time of the largest batch: no rate above is sustainable."""
    rate: SustainableRate
    """The simulated search's answer: where the simulated p99 crosses the target, to the search's resolution (the
    point estimate, not a confident bound: with as many simulated requests as it likes, the prediction's own
    sampling noise is small next to how far the service times may have moved since they were measured)."""
    points: tuple[tuple[float, float], ...]
    """(rate per second, simulated p99 in seconds) of every simulated rate, in the order searched."""


def capacity_per_s(samples_by_batch_size: Mapping[int, Sequence[float]], max_batch_size: int) -> float:
    """Requests per second served by full batches back to back: the mean service time of a full batch (a size
    without samples takes the line between the nearest sizes' means, as sampled_service interpolates)."""
    means = {size: [statistics.fmean(times)] for size, times in samples_by_batch_size.items()}
    # One sample a size: every draw is that mean, or the line between two sizes' means.
    return max_batch_size / sampled_service(means, seed=0)(max_batch_size)


def predict_sustainable_rate(samples_by_batch_size: Mapping[int, Sequence[float]], *, max_batch_size: int,
                             max_queue_delay_s: float, target_p99_s: float, num_requests: int = 50_000,
                             resolution: float = 0.02, seed: int = 0) -> PredictedRate:
    """The simulated highest rate whose p99 meets the target, between 2% of capacity and capacity."""
    capacity = capacity_per_s(samples_by_batch_size, max_batch_size)
    search = RateSearch(target_s=target_p99_s, lo_rate_per_s=0.02 * capacity, hi_rate_per_s=capacity,
                        resolution=resolution)
    points: list[RatePoint] = []
    figures: list[tuple[float, float]] = []
    while (rate := search.next_rate(points)) is not None:
        # The same arrivals stream and service draws at every rate (common random numbers): p99 then rises with
        # the rate without the noise of a new stream at each step, so bisection does not chase noise.
        arrivals_s = poisson_arrivals_s(rate, num_requests, seed)
        run = simulate(arrivals_s, sampled_service(samples_by_batch_size, seed + 1), max_batch_size=max_batch_size,
                       max_queue_delay_s=max_queue_delay_s)
        point = load_point([_SimReplica(arrivals_s, run.completions_s)], rate_per_s=rate,
                           target_p99_s=target_p99_s)
        met = point.p99.point_s <= target_p99_s and point.sustainability.sustainable
        check = TargetCheck("met" if met else "missed", None, f"simulated p99 {point.p99.point_s * 1e3:.3f} ms")
        points.append(RatePoint(rate, check, point.sustainability.sustainable))
        figures.append((rate, point.p99.point_s))
    return PredictedRate(max_batch_size=max_batch_size, max_queue_delay_s=max_queue_delay_s,
                         capacity_per_s=capacity, rate=search.result(points), points=tuple(figures))


def real_bounds(predicted: PredictedRate, *, margin: float = 0.3) -> tuple[float, float]:
    """Where the real search starts: `margin` below and above the predicted rate (the prediction can be tens of
    percent off), never above capacity times (1 + margin); a setting predicted to meet the target at no rate starts
    from 2% and 30% of its capacity."""
    if predicted.rate.rate_per_s <= 0:
        return 0.02 * predicted.capacity_per_s, 0.3 * predicted.capacity_per_s
    return ((1 - margin) * predicted.rate.rate_per_s,
            min((1 + margin) * predicted.rate.rate_per_s, (1 + margin) * predicted.capacity_per_s))
