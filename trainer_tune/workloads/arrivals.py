"""Open-loop request schedules: when each request of a serving load test is due, fixed before the run starts.

The schedule is made up front, not paced by the server, so a slow batch cannot hold back the requests behind it:
a request's latency counts from its scheduled arrival (no coordinated omission)."""

from __future__ import annotations

import math
import random


def poisson_arrivals_s(rate_per_s: float, num_requests: int, seed: int) -> tuple[float, ...]:
    """Arrival times (seconds from the start) of `num_requests` requests on a Poisson process at `rate_per_s`:
    the first at 0, then exponential gaps of mean 1/rate.

    `random.Random(seed)` (Mersenne Twister, Python's own algorithm) rather than numpy's generator, so a seed gives
    the same schedule on every machine and Python version that a measurement is compared across."""
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise ValueError(f"rate_per_s={rate_per_s}: needs a positive, finite rate")
    if num_requests < 1:
        raise ValueError(f"num_requests={num_requests}: needs at least one request")
    rng = random.Random(seed)
    arrivals_s = [0.0] * num_requests
    now_s = 0.0
    for i in range(1, num_requests):
        now_s += rng.expovariate(rate_per_s)
        arrivals_s[i] = now_s
    return tuple(arrivals_s)
