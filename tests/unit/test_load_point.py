"""One rate over several replicas (evidence/load_point.py), on simulated queues with known answers (M/M/1: the
sojourn time is exponential with rate mu - lambda, so p99 = ln(100) / (mu - lambda))."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from trainer_tune.evidence.batcher_sim import simulate
from trainer_tune.evidence.load_point import load_point
from trainer_tune.workloads.arrivals import poisson_arrivals_s

MU_PER_S = 1000.0


@dataclass(frozen=True)
class Replica:
    arrivals_s: tuple[float, ...]
    completions_s: tuple[float, ...]


def _replica(rate_per_s: float, seed: int, num: int = 20_000) -> Replica:
    draw = random.Random(seed + 10_000)
    arrivals_s = poisson_arrivals_s(rate_per_s, num, seed)
    run = simulate(arrivals_s, lambda _size: draw.expovariate(MU_PER_S), max_batch_size=1, max_queue_delay_s=0.0)
    return Replica(arrivals_s, run.completions_s)


def test_two_replicas_at_half_load_pool_their_requests_and_meet_a_target_above_the_true_p99() -> None:
    true_p99_s = math.log(100) / (MU_PER_S - 500.0)  # 9.2 ms
    point = load_point([_replica(500.0, 1), _replica(500.0, 2)], rate_per_s=500.0, target_p99_s=1.3 * true_p99_s)
    assert point.num_requests + point.dropped_requests == 40_000
    assert point.p99.low_s < true_p99_s * 1.1 and point.p99.high_s > true_p99_s * 0.9
    assert point.p50.point_s == pytest.approx(math.log(2) / 500.0, rel=0.1)
    assert point.check.status == "met" and point.sustainability.sustainable
    assert point.rate_point().met


def test_a_target_below_the_true_p99_is_missed() -> None:
    true_p99_s = math.log(100) / (MU_PER_S - 500.0)
    point = load_point([_replica(500.0, 3), _replica(500.0, 4)], rate_per_s=500.0, target_p99_s=0.7 * true_p99_s)
    assert point.check.status == "missed" and point.rate_point().missed


def test_one_replica_that_falls_behind_makes_the_rate_unsustainable_and_says_which() -> None:
    point = load_point([_replica(500.0, 5), _replica(1100.0, 6)], rate_per_s=500.0, target_p99_s=1.0)
    assert not point.sustainability.sustainable
    assert point.sustainability.reason.startswith("replica 1: queue kept growing")
    assert point.rate_point().missed  # whatever its p99 says against a lax target


def test_refuses_no_replicas() -> None:
    with pytest.raises(ValueError):
        load_point([], rate_per_s=1.0, target_p99_s=1.0)
