"""The one dynamic-batching rule, shared by the serving measurement loop and the simulation (batcher_sim.py).

It is the rule of Triton's dynamic batcher with two settings:
- `max_batch_size`: a batch never holds more requests than this; a full batch is served at once.
- `max_queue_delay_s`: the longest the oldest queued request waits for its batch to fill (Triton's
  max_queue_delay_microseconds); once it has waited that long, whatever is queued (up to the max) is served.
  0 serves whatever is queued the moment the server is free.
The server serves one batch at a time, oldest requests first. The rule sees only the present (what is queued, and
when the next request is due to arrive, so the caller knows when to ask again): it never uses the future to decide
a batch's size, as a real server cannot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What an idle server does next."""

    at_s: float
    """When: `now_s` to serve at once; later to wait (size 0)."""
    size: int
    """Requests to serve at `at_s`, oldest first; 0: wait until `at_s` (a deadline or the next arrival), enqueue
    what has arrived by then, and ask again."""


def next_dispatch(queued_arrivals_s: Sequence[float], now_s: float, *, max_batch_size: int,
                  max_queue_delay_s: float, next_arrival_s: Optional[float]) -> Dispatch:
    """What the server, idle at `now_s`, does next.

    `queued_arrivals_s`: the arrival times (<= now_s) of the waiting requests, oldest first (only the first
    `max_batch_size` are looked at, so a caller may pass no more). `next_arrival_s`: when the next request is due,
    after `now_s`; None when no more will come.
    - a full batch is queued: serve `max_batch_size` now;
    - the oldest request has waited `max_queue_delay_s`: serve what is queued now;
    - otherwise requests are queued: wait until the oldest's deadline or the next arrival, whichever comes first
      (size 0), as the batch may fill with the next arrival;
    - nothing is queued: wait for the next arrival (size 0).
    Nothing queued and nothing to come is the end of the run: asking then is a caller's mistake (ValueError)."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size={max_batch_size}: needs at least 1")
    if not max_queue_delay_s >= 0:
        raise ValueError(f"max_queue_delay_s={max_queue_delay_s}: needs 0 or more")
    if next_arrival_s is not None and not next_arrival_s > now_s:
        raise ValueError(f"next_arrival_s={next_arrival_s} is not after now_s={now_s}: enqueue every request that "
                         "has arrived before asking")
    queued = len(queued_arrivals_s)
    if queued >= max_batch_size:
        return Dispatch(now_s, max_batch_size)
    if queued:
        # The same expression as the wait below, so asking again at the deadline serves (no rounding gap).
        deadline_s = queued_arrivals_s[0] + max_queue_delay_s
        if now_s >= deadline_s:
            return Dispatch(now_s, queued)
        return Dispatch(deadline_s if next_arrival_s is None else min(deadline_s, next_arrival_s), 0)
    if next_arrival_s is None:
        raise ValueError(f"nothing queued at now_s={now_s} and no arrival to come: the run is over")
    return Dispatch(next_arrival_s, 0)
