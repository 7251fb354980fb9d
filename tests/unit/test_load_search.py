"""The simulated search for each batcher setting's sustainable rate (evidence/load_search.py), against queueing
theory: M/M/1 has p99 sojourn ln(100) / (mu - lambda), so the highest rate with p99 <= T is mu - ln(100) / T."""

from __future__ import annotations

import math
import random

import pytest

from trainer_tune.evidence.load_search import capacity_per_s, predict_sustainable_rate, real_bounds


def test_mm1_the_search_finds_mu_minus_ln100_over_the_target() -> None:
    mu_per_s, target_s = 1000.0, 0.020
    draw = random.Random(3)
    samples = {1: [draw.expovariate(mu_per_s) for _ in range(20_000)]}
    predicted = predict_sustainable_rate(samples, max_batch_size=1, max_queue_delay_s=0.0, target_p99_s=target_s,
                                         num_requests=60_000, resolution=0.02)
    true_per_s = mu_per_s - math.log(100) / target_s  # 769.7/s
    assert 0.93 * true_per_s <= predicted.rate.rate_per_s <= 1.03 * true_per_s, predicted.rate
    assert predicted.rate.high_per_s <= 1.021 * predicted.rate.rate_per_s  # the resolution
    assert len(predicted.points) <= 12
    assert predicted.capacity_per_s == pytest.approx(20_000 / sum(samples[1]))  # 1 / the mean service time


def test_larger_batches_sustain_more_when_each_request_costs_less_in_a_batch() -> None:
    # Deterministic service: 1 ms a batch plus 0.2 ms a request. One at a time: at most 833/s; batches of 8:
    # at most 8 / 2.6 ms = 3,077/s. With a 10 ms target the batched setting sustains well above what single
    # requests can at all.
    samples = {k: [0.001 + 0.0002 * k] * 50 for k in (1, 2, 4, 8)}
    single = predict_sustainable_rate(samples, max_batch_size=1, max_queue_delay_s=0.0, target_p99_s=0.010,
                                      num_requests=30_000)
    batched = predict_sustainable_rate(samples, max_batch_size=8, max_queue_delay_s=0.001, target_p99_s=0.010,
                                       num_requests=30_000)
    assert single.capacity_per_s == pytest.approx(1 / 0.0012) and batched.capacity_per_s == pytest.approx(8 / 0.0026)
    assert single.rate.rate_per_s < single.capacity_per_s
    assert single.capacity_per_s < batched.rate.rate_per_s < batched.capacity_per_s


def test_a_target_below_one_requests_service_time_is_met_at_no_rate_and_the_real_search_starts_low() -> None:
    samples = {1: [0.005] * 20, 2: [0.006] * 20}
    predicted = predict_sustainable_rate(samples, max_batch_size=2, max_queue_delay_s=0.0, target_p99_s=0.004,
                                         num_requests=10_000)
    assert predicted.rate.rate_per_s == 0 and "no measured rate met" in predicted.rate.reason
    assert real_bounds(predicted) == pytest.approx((0.02 * 2 / 0.006, 0.3 * 2 / 0.006))


def test_real_bounds_bracket_the_prediction_and_stay_near_capacity() -> None:
    samples = {1: [0.001] * 10}
    predicted = predict_sustainable_rate(samples, max_batch_size=1, max_queue_delay_s=0.0, target_p99_s=0.1,
                                         num_requests=10_000)
    low, high = real_bounds(predicted)
    assert low == pytest.approx(0.7 * predicted.rate.rate_per_s)
    assert high <= 1.3 * capacity_per_s(samples, 1) + 1e-9
