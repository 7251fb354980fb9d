"""The dynamic batcher's rule on schedules worked out by hand, the simulation against queueing theory (M/M/1,
M/D/1), and service times drawn from measured samples."""

from __future__ import annotations

import math
import random
import statistics
import time

import pytest

from trainer_tune.workloads.arrivals import poisson_arrivals_s
from trainer_tune.workloads.batcher import Dispatch, next_dispatch
from trainer_tune.evidence.batcher_sim import sampled_service, simulate
from trainer_tune.evidence.serving_load import sustained
from trainer_tune.measure.step_stats import quantile

MS = 1e-3


# --- Arrivals ---------------------------------------------------------------------------------------------

def test_arrivals_are_a_seeded_poisson_schedule_from_zero() -> None:
    # Fixed once from random.Random(0): a change here changes every recorded schedule.
    assert poisson_arrivals_s(2.0, 4, 0) == pytest.approx((0.0, 0.9303035555326117, 1.6396181320184926,
                                                           1.912474704789289), rel=1e-12)
    assert poisson_arrivals_s(50.0, 1000, 7) == poisson_arrivals_s(50.0, 1000, 7)
    arrivals = poisson_arrivals_s(50.0, 20001, 1)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert statistics.fmean(gaps) == pytest.approx(1 / 50.0, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(1 / 50.0, rel=0.03)  # exponential: sd = mean


@pytest.mark.parametrize("rate, num", [(0.0, 10), (-1.0, 10), (math.inf, 10), (1.0, 0)])
def test_arrivals_refuse_nonsense(rate: float, num: int) -> None:
    with pytest.raises(ValueError):
        poisson_arrivals_s(rate, num, 0)


# --- The rule, by hand ------------------------------------------------------------------------------------

def _rule(queued: list[float], now_s: float, next_s: float | None, *, max_batch: int = 2,
          delay_s: float = 5 * MS) -> Dispatch:
    return next_dispatch(queued, now_s, max_batch_size=max_batch, max_queue_delay_s=delay_s, next_arrival_s=next_s)


def test_rule_cases() -> None:
    assert _rule([0.0, 1 * MS, 2 * MS], 2 * MS, 10 * MS) == Dispatch(2 * MS, 2)  # full: serve the max now
    assert _rule([0.0], 6 * MS, 10 * MS) == Dispatch(6 * MS, 1)  # oldest waited past its delay
    assert _rule([0.0], 1 * MS, 3 * MS) == Dispatch(3 * MS, 0)  # wait for the next arrival...
    assert _rule([0.0], 1 * MS, 9 * MS) == Dispatch(5 * MS, 0)  # ...or the deadline, the sooner
    assert _rule([0.0], 1 * MS, None) == Dispatch(5 * MS, 0)  # no more coming: the deadline still holds
    assert _rule([], 1 * MS, 4 * MS) == Dispatch(4 * MS, 0)  # nothing queued: wait for the next
    assert _rule([0.0], 1 * MS, 3 * MS, delay_s=0.0) == Dispatch(1 * MS, 1)  # delay 0: serve at once
    assert _rule([0.0], 0.0, 3 * MS, max_batch=1) == Dispatch(0.0, 1)


def test_asking_again_at_the_deadline_serves() -> None:
    # 0.1 + 0.2 is 0.30000000000000004: the wait it returns must be a time at which asking again serves.
    wait = _rule([0.1], 0.15, None, delay_s=0.2)
    assert wait.size == 0
    assert _rule([0.1], wait.at_s, None, delay_s=0.2) == Dispatch(wait.at_s, 1)


def test_rule_refuses_a_finished_run_and_a_stale_arrival() -> None:
    with pytest.raises(ValueError, match="run is over"):
        _rule([], 1.0, None)
    with pytest.raises(ValueError, match="enqueue"):
        _rule([0.5], 1.0, 1.0)
    with pytest.raises(ValueError):
        _rule([0.0], 1.0, 2.0, max_batch=0)


def _fixed(service_s: float):
    return lambda size: service_s


ARRIVALS_S = (0.0, 1 * MS, 2 * MS, 10 * MS)


def test_schedule_by_hand() -> None:
    # Max batch 2, delay 5 ms, every batch 3 ms. At 0 one request waits for a second; at 1 ms the batch is full and
    # runs to 4 ms. At 4 ms the 2 ms request waits until its deadline at 7 ms (the next is due at 10), runs alone
    # to 10 ms. The 10 ms request has just arrived: with nothing more to come it waits out its delay to 15 ms and
    # runs to 18 ms.
    run = simulate(ARRIVALS_S, _fixed(3 * MS), max_batch_size=2, max_queue_delay_s=5 * MS)
    assert run.batch_sizes == (2, 1, 1)
    assert run.completions_s == pytest.approx((4 * MS, 4 * MS, 10 * MS, 18 * MS))
    assert run.latency_s == pytest.approx((4 * MS, 3 * MS, 8 * MS, 8 * MS))


def test_schedule_by_hand_with_no_delay() -> None:
    # Delay 0: the first request runs alone 0-3 ms; the two that came meanwhile fill a batch, 3-6 ms; the last
    # runs alone 10-13 ms.
    run = simulate(ARRIVALS_S, _fixed(3 * MS), max_batch_size=2, max_queue_delay_s=0.0)
    assert run.batch_sizes == (1, 2, 1)
    assert run.latency_s == pytest.approx((3 * MS, 5 * MS, 4 * MS, 3 * MS))


def test_schedule_by_hand_with_batches_of_one() -> None:
    # Max batch 1: the delay never matters; requests run back to back 0-3, 3-6, 6-9 and 10-13 ms.
    run = simulate(ARRIVALS_S, _fixed(3 * MS), max_batch_size=1, max_queue_delay_s=5 * MS)
    assert run.batch_sizes == (1, 1, 1, 1)
    assert run.completions_s == pytest.approx((3 * MS, 6 * MS, 9 * MS, 13 * MS))
    assert run.latency_s == pytest.approx((3 * MS, 5 * MS, 7 * MS, 3 * MS))


def test_simulate_refuses_unordered_arrivals() -> None:
    with pytest.raises(ValueError):
        simulate((0.0, 2.0, 1.0), _fixed(1.0), max_batch_size=2, max_queue_delay_s=0.0)


# --- Against queueing theory ------------------------------------------------------------------------------

def _mm1(rho: float, num_requests: int, seed: int) -> tuple[float, ...]:
    """Sojourn times of an M/M/1 queue with service rate 1 at utilisation rho: batches of one, no delay."""
    rng = random.Random(seed + 1_000_000)
    return simulate(poisson_arrivals_s(rho, num_requests, seed), lambda size: rng.expovariate(1.0),
                    max_batch_size=1, max_queue_delay_s=0.0).latency_s


@pytest.mark.parametrize("rho, mean_tol, p99_tol", [(0.5, 0.02, 0.05), (0.8, 0.05, 0.10)])
def test_mm1_sojourn_is_exponential_with_rate_mu_minus_lambda(rho: float, mean_tol: float, p99_tol: float) -> None:
    # M/M/1 sojourn time ~ Exponential(mu - lambda): mean 1/(mu - lambda), p99 -ln(0.01)/(mu - lambda).
    latencies = _mm1(rho, 200_000, seed=3)
    assert statistics.fmean(latencies) == pytest.approx(1 / (1 - rho), rel=mean_tol)
    assert quantile(latencies, 0.99) == pytest.approx(-math.log(0.01) / (1 - rho), rel=p99_tol)


def test_md1_mean_sojourn_is_pollaczek_khinchine() -> None:
    # M/D/1, service 1: mean wait rho / (2 mu (1 - rho)) = 2 at rho 0.8, plus the service itself.
    run = simulate(poisson_arrivals_s(0.8, 200_000, 5), _fixed(1.0), max_batch_size=1, max_queue_delay_s=0.0)
    assert statistics.fmean(run.latency_s) == pytest.approx(0.8 / (2 * 0.2) + 1.0, rel=0.03)


def test_over_capacity_latency_grows_and_is_unsustainable() -> None:
    arrivals = poisson_arrivals_s(1.1, 20_000, 11)
    rng = random.Random(12)
    run = simulate(arrivals, lambda size: rng.expovariate(1.0), max_batch_size=1, max_queue_delay_s=0.0)
    tenth = len(arrivals) // 10
    # The queue grows by about 0.1 request per arrival: about 100 on average over the first tenth (0 to 200),
    # about 1,900 over the last (1,800 to 2,000), in units of the mean service time.
    first, last = statistics.fmean(run.latency_s[:tenth]), statistics.fmean(run.latency_s[-tenth:])
    assert 50 < first < 200 and 1500 < last < 2500
    verdict = sustained(arrivals, run.completions_s, run.latency_s, 1.1)
    assert not verdict.sustainable, verdict.reason


def test_batches_fill_with_load() -> None:
    # Batch of k takes 1 + 0.25 k ms: at most 8 requests take 3 ms, 2,667/s. Light load runs batches of about
    # one (the delay is short). At 2,400/s the server is nearly always busy, so by flow balance its batches carry
    # what arrives while they run: b = 2.4/ms * (1 + 0.25 b) ms, b = 6.
    service = lambda size: (1.0 + 0.25 * size) * MS  # noqa: E731
    light = simulate(poisson_arrivals_s(100.0, 5000, 1), service, max_batch_size=8, max_queue_delay_s=0.1 * MS)
    heavy = simulate(poisson_arrivals_s(2400.0, 5000, 1), service, max_batch_size=8, max_queue_delay_s=0.1 * MS)
    assert statistics.fmean(light.batch_sizes) < 1.2
    assert statistics.fmean(heavy.batch_sizes) == pytest.approx(6.0, rel=0.05)
    assert sum(heavy.batch_sizes) == sum(light.batch_sizes) == 5000


def test_hundred_thousand_requests_take_well_under_two_seconds() -> None:
    arrivals = poisson_arrivals_s(0.9, 100_000, 2)
    rng = random.Random(3)
    started = time.perf_counter()
    simulate(arrivals, lambda size: rng.expovariate(1.0), max_batch_size=1, max_queue_delay_s=0.0)
    assert time.perf_counter() - started < 2.0


# --- Service times from measured samples -------------------------------------------------------------------

SAMPLES = {1: [1.0, 2.0], 3: [3.0, 6.0]}


def _draws(batch_size: int, samples=SAMPLES, num: int = 400) -> list[float]:
    draw = sampled_service(samples, seed=4)
    return [draw(batch_size) for _ in range(num)]


def test_measured_sizes_are_bootstrapped() -> None:
    draws = _draws(3)
    assert set(draws) == {3.0, 6.0}
    assert 0.4 < draws.count(3.0) / len(draws) < 0.6


def test_between_sizes_the_same_ranks_are_interpolated() -> None:
    # Size 2 is half-way: the lower ranks (1, 3) give 2, the upper (2, 6) give 4; never a mix such as (1+6)/2.
    assert set(_draws(2)) == {2.0, 4.0}


def test_beyond_the_largest_size_the_line_through_the_two_largest_goes_on() -> None:
    # Size 5: 3 + (3 - 1) = 5 at the lower rank, 6 + (6 - 2) = 10 at the upper.
    assert set(_draws(5)) == {5.0, 10.0}
    # A line that falls (noise) is held at the largest size's draw: a bigger batch is not faster.
    assert set(_draws(9, {1: [4.0], 2: [3.0]})) == {3.0}


def test_below_the_smallest_size_takes_its_draw() -> None:
    assert set(_draws(1, {2: [5.0, 7.0], 4: [9.0]})) == {5.0, 7.0}


def test_sampled_service_is_seeded_and_refuses_what_it_cannot_draw() -> None:
    assert _draws(2) == _draws(2)
    with pytest.raises(ValueError, match="two sizes"):
        sampled_service({4: [1.0]}, seed=0)(8)
    with pytest.raises(ValueError):
        sampled_service({}, seed=0)
    with pytest.raises(ValueError):
        sampled_service({2: [0.0]}, seed=0)
