"""One measured arrival rate of one batcher setting, over every replica: what the rate search and the verdict read.

Each replica serves its own Poisson stream (measure/open_loop.py); a request's latency is its batch's completion
minus its scheduled arrival. Per replica the queue's fill-up is dropped (MSER-5) and the replica is asked whether it
kept up; the latencies that remain are pooled in rank order, each replica's contiguous, and the tail quantiles come
with sectioning intervals (evidence/serving_load.py). A rate is sustainable only if every replica kept up: a
load balancer sends each its share, and the slowest queue is the one whose requests wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from trainer_tune.evidence.serving_load import (TREND_CONFIDENCE, QuantileEstimate, RatePoint, Sustainability, TargetCheck,
                                                fill_up_requests, quantile_interval, sustained, target_check)


class ReplicaLoad(Protocol):
    """What one replica's run at one rate recorded (measure/open_loop.OpenLoopRun has these)."""

    @property
    def arrivals_s(self) -> Sequence[float]: ...

    @property
    def completions_s(self) -> Sequence[float]: ...


@dataclass(frozen=True)
class LoadPoint:
    rate_per_s: float
    """The offered rate per replica."""
    num_requests: int
    """Requests behind the quantiles, over all replicas, the fill-up left out."""
    dropped_requests: int
    """Requests dropped as the queues' fill-up."""
    p50: QuantileEstimate
    p90: QuantileEstimate
    p99: QuantileEstimate
    check: TargetCheck
    """The p99 against the target."""
    sustainability: Sustainability
    """Every replica kept up, or the first that did not and why."""

    def rate_point(self) -> RatePoint:
        return RatePoint(self.rate_per_s, self.check, self.sustainability.sustainable)


def load_point(replicas: Sequence[ReplicaLoad], *, rate_per_s: float, target_p99_s: float,
               confidence: float = 0.95) -> LoadPoint:
    """The figures of one rate; `confidence` is the level of every interval (a sweep's corrected level). "The queue
    kept growing" is a one-sided test per replica, at TREND_CONFIDENCE or, at a stricter level, at the one-sided
    share of `confidence` left after the replicas (any of them can call a rate unsustainable)."""
    trend_confidence = max(TREND_CONFIDENCE, 1.0 - (1.0 - confidence) / 2.0 / len(replicas)) if replicas else 0.0
    if not replicas:
        raise ValueError("a load point needs at least one replica's run")
    kept: list[float] = []
    dropped = 0
    verdicts: list[Sustainability] = []
    for rank, replica in enumerate(replicas):
        latency_s = [done - arrived for arrived, done in zip(replica.arrivals_s, replica.completions_s)]
        verdict = sustained(replica.arrivals_s, replica.completions_s, latency_s, rate_per_s,
                            trend_confidence=trend_confidence)
        verdicts.append(verdict if len(replicas) == 1 else Sustainability(verdict.sustainable,
                                                                          f"replica {rank}: {verdict.reason}"))
        drop = fill_up_requests(latency_s)
        dropped += drop
        kept.extend(latency_s[drop:])
    quantiles = {q: quantile_interval(kept, q, confidence) for q in (0.5, 0.9, 0.99)}
    sustainability = next((v for v in verdicts if not v.sustainable), verdicts[0])
    return LoadPoint(rate_per_s=rate_per_s, num_requests=len(kept), dropped_requests=dropped, p50=quantiles[0.5],
                     p90=quantiles[0.9], p99=quantiles[0.99], check=target_check(quantiles[0.99], target_p99_s),
                     sustainability=sustainability)
