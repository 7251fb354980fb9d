"""Serving under open-loop load: requests arrive on their own schedule, a dynamic batcher groups them, one replica
serves one batch at a time, and each request's latency runs from its scheduled arrival to its batch's outputs.

Open loop: the arrival schedule (workloads/arrivals.py, a seeded Poisson process) is fixed before the run and does
not wait for the server, as real traffic does not. The load generator is this same loop: a request "arrives" when
the clock passes its scheduled time, and its latency is timed from that scheduled time, never from when the loop
got round to noticing it. A loop that fell behind (the server was busy, or the 2 cores were shared) therefore
charges the delay to the requests that waited, instead of quietly sending fewer of them (coordinated omission,
Gil Tene's term; wrk2 and LoadGen time requests the same way).

The batcher is evidence/batcher.next_dispatch, the one rule the simulation (evidence/batcher_sim.py) also follows.
A batch is served when its outputs exist: `serve` synchronises the device before it returns, as
measure/replica.py does for every served batch.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from trainer_tune.workloads.batcher import next_dispatch

Clock = Callable[[], float]

_SPIN_S = 0.0005
"""The last stretch of a wait is spun, not slept: a sleep can overshoot by a scheduler tick, which at a few
milliseconds of queue delay would be a large share of what is measured."""


@dataclass(frozen=True)
class OpenLoopRun:
    """One replica's run at one arrival rate and one batcher setting. Times are seconds from the run's start."""

    rate_per_s: float
    max_batch_size: int
    max_queue_delay_s: float
    arrivals_s: tuple[float, ...]
    """Each request's scheduled arrival, in arrival order."""
    completions_s: tuple[float, ...]
    """When each request's batch had its outputs, in arrival order."""
    batch_sizes: tuple[int, ...]
    service_s: tuple[float, ...]
    """Each batch's time from the start of its serving to its outputs, in serving order."""
    behind_s: float
    """The most the loop woke after the time it waited for (an arrival, a queue deadline): its own lateness on a
    busy host; a figure to read beside the latencies, which already include it."""

    @property
    def latency_s(self) -> tuple[float, ...]:
        """Each request's latency (arrival order): its batch's completion minus its scheduled arrival."""
        return tuple(done - arrived for arrived, done in zip(self.arrivals_s, self.completions_s))

    def service_by_batch_size(self) -> dict[int, list[float]]:
        """The measured service times of each batch size served (what drives the simulation)."""
        by_size: dict[int, list[float]] = collections.defaultdict(list)
        for size, seconds in zip(self.batch_sizes, self.service_s):
            by_size[size].append(seconds)
        return dict(by_size)


def wait_until(target_s: float, clock: Clock) -> None:
    """Sleep most of the way to `target_s` on `clock`, then spin the rest."""
    remaining_s = target_s - clock()
    if remaining_s > _SPIN_S:
        time.sleep(remaining_s - _SPIN_S)
    while clock() < target_s:
        pass


def run_open_loop(serve: Callable[[int], None], arrivals_s: Sequence[float], *, rate_per_s: float,
                  max_batch_size: int, max_queue_delay_s: float, clock: Clock = time.perf_counter,
                  wait: Callable[[float, Clock], None] = wait_until) -> OpenLoopRun:
    """Serve every request of `arrivals_s` (seconds from the start, increasing) through the batcher.

    `serve(k)` serves a batch of k requests and returns once its outputs exist."""
    num_requests = len(arrivals_s)
    if num_requests == 0:
        raise ValueError("an open-loop run needs at least one request")
    completions_s = [0.0] * num_requests
    batch_sizes: list[int] = []
    service_s: list[float] = []
    queue: collections.deque[int] = collections.deque()
    arrived = 0  # requests whose scheduled arrival has passed (queued or served)
    served = 0
    behind_s = 0.0
    start_s = clock()
    waited_until_s = 0.0

    def now() -> float:
        return clock() - start_s

    while served < num_requests:
        # After a wait the loop is at or past what it waited for, whatever the rounding of start_s + at_s - start_s
        # says (the rule would otherwise answer "wait until at_s" again, forever on a clock that did not move).
        now_s = max(now(), waited_until_s)
        while arrived < num_requests and arrivals_s[arrived] <= now_s:
            queue.append(arrived)
            arrived += 1
        head = [arrivals_s[queue[i]] for i in range(min(len(queue), max_batch_size))]
        dispatch = next_dispatch(head, now_s, max_batch_size=max_batch_size, max_queue_delay_s=max_queue_delay_s,
                                 next_arrival_s=arrivals_s[arrived] if arrived < num_requests else None)
        if dispatch.size == 0:
            wait(start_s + dispatch.at_s, clock)
            waited_until_s = dispatch.at_s
            behind_s = max(behind_s, now() - dispatch.at_s)
            continue
        batch = [queue.popleft() for _ in range(dispatch.size)]
        began_s = now()
        serve(dispatch.size)
        done_s = now()
        service_s.append(done_s - began_s)
        batch_sizes.append(dispatch.size)
        for index in batch:
            completions_s[index] = done_s
        served += dispatch.size
    return OpenLoopRun(rate_per_s=rate_per_s, max_batch_size=max_batch_size, max_queue_delay_s=max_queue_delay_s,
                       arrivals_s=tuple(arrivals_s), completions_s=tuple(completions_s),
                       batch_sizes=tuple(batch_sizes), service_s=tuple(service_s), behind_s=behind_s)


def first_samples(batch: Any, size: int) -> Any:
    """The first `size` samples of a batch (a tensor, a mapping of tensors or a pair), to serve a batch of that
    many requests from one batch of the largest size."""
    if isinstance(batch, torch.Tensor):
        return batch[:size]
    if isinstance(batch, Mapping):
        return {key: first_samples(value, size) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(first_samples(value, size) for value in batch)
    return batch
