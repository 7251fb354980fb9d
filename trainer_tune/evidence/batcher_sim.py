"""Discrete-event simulation of a dynamic batcher under open-loop load, from service times measured per batch size.

It asks workloads/batcher.py's `next_dispatch` what to do at every step, as the real measurement loop does, so the
simulated and the measured server follow one rule."""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from trainer_tune.workloads.batcher import next_dispatch


@dataclass(frozen=True)
class SimRun:
    """One simulated run."""

    latency_s: tuple[float, ...]
    """Per request, in arrival order: its batch's completion minus its scheduled arrival."""
    completions_s: tuple[float, ...]
    """Per request, in arrival order: when its batch completed."""
    batch_sizes: tuple[int, ...]
    """Per batch, in the order served."""


def simulate(arrivals_s: Sequence[float], service_s: Callable[[int], float], *, max_batch_size: int,
             max_queue_delay_s: float) -> SimRun:
    """Serve requests arriving at `arrivals_s` (non-decreasing) with the dynamic batcher; `service_s(k)` is the
    time a batch of k takes (a draw per call, e.g. `sampled_service`). The server starts idle at the first
    arrival and runs until every request is served."""
    n = len(arrivals_s)
    if n == 0:
        raise ValueError("simulate needs at least one arrival")
    if any(b < a for a, b in zip(arrivals_s, arrivals_s[1:])):
        raise ValueError("arrivals_s must be in non-decreasing order")
    arrivals = list(arrivals_s)
    completions = [0.0] * n
    batch_sizes: list[int] = []
    head = 0  # oldest request not yet served
    arrived = 0  # requests that have arrived by now_s
    now_s = arrivals[0]
    while head < n:
        while arrived < n and arrivals[arrived] <= now_s:
            arrived += 1
        # The rule looks at no more than max_batch_size of the queue: pass no more (a long backlog stays cheap).
        dispatch = next_dispatch(arrivals[head:min(arrived, head + max_batch_size)], now_s,
                                 max_batch_size=max_batch_size, max_queue_delay_s=max_queue_delay_s,
                                 next_arrival_s=arrivals[arrived] if arrived < n else None)
        size = dispatch.size
        if size == 0:
            now_s = dispatch.at_s
            continue
        now_s = dispatch.at_s + service_s(size)
        for i in range(head, head + size):
            completions[i] = now_s
        batch_sizes.append(size)
        head += size
    return SimRun(latency_s=tuple(c - a for c, a in zip(completions, arrivals)), completions_s=tuple(completions),
                  batch_sizes=tuple(batch_sizes))


def sampled_service(samples_by_batch_size: Mapping[int, Sequence[float]], seed: int) -> Callable[[int], float]:
    """A service time for a batch of k requests, drawn from times measured at a few batch sizes.

    A measured size: a bootstrap draw (uniform over its samples). Each call draws one uniform rank u and takes the
    u-th ordered sample of every size it uses, so between two measured sizes a < k < b the draw is the linear
    interpolation of the two sizes' u-quantiles, and beyond the largest size b it extends the line through the two
    largest sizes' u-quantiles (never below b's own). Drawing the two sizes at the same rank interpolates their
    distributions; two independent draws averaged would shrink the spread, and with it the tail being measured.
    Below the smallest measured size: that size's draw (a smaller batch is taken to be no faster, so latency is
    not flattered). With one measured size, larger batches have no slope to follow and raise ValueError."""
    if not samples_by_batch_size:
        raise ValueError("sampled_service needs samples of at least one batch size")
    for size, samples in samples_by_batch_size.items():
        if size < 1 or not samples or any(not s > 0 for s in samples):
            raise ValueError(f"batch size {size}: needs a size of 1 or more and positive service times")
    sizes = sorted(samples_by_batch_size)
    ordered = {size: sorted(samples_by_batch_size[size]) for size in sizes}
    rng = random.Random(seed)

    def at_rank(size: int, u: float) -> float:
        values = ordered[size]
        return values[int(u * len(values))]

    def draw(batch_size: int) -> float:
        u = rng.random()
        if batch_size in ordered:
            return at_rank(batch_size, u)
        if batch_size < sizes[0]:
            return at_rank(sizes[0], u)
        if batch_size > sizes[-1]:
            if len(sizes) < 2:
                raise ValueError(f"batch size {batch_size} is beyond the one measured size {sizes[0]}: "
                                 "needs two sizes to extrapolate")
            low, high = sizes[-2], sizes[-1]
        else:
            i = bisect.bisect_left(sizes, batch_size)
            low, high = sizes[i - 1], sizes[i]
        low_s, high_s = at_rank(low, u), at_rank(high, u)
        line_s = low_s + (high_s - low_s) * (batch_size - low) / (high - low)
        return max(line_s, high_s) if batch_size > high else line_s

    return draw
