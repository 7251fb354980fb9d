"""Statistics of one open-loop serving run: fill-up truncation (MSER-5), the p99 interval by sectioning (its
coverage counted over seeds against the order-statistic interval, which assumes independent requests), the
verdict against a target, whether the server kept up, and the search for the highest rate within the target.
Data comes from the simulator: bursts and autocorrelation like a real server's, with log-normal service noise and
slow outliers where it matters."""

from __future__ import annotations

import math
import random
import statistics
from typing import Callable

import pytest

from trainer_tune.workloads.arrivals import poisson_arrivals_s
from trainer_tune.evidence.batcher_sim import SimRun, simulate
from trainer_tune.evidence.serving_load import (QuantileEstimate, RatePoint, RateSearch, TargetCheck,
                                                fill_up_requests, order_statistic_interval, quantile_interval,
                                                sustained, target_check)

MS = 1e-3


def _mm1(rho: float, num_requests: int, seed: int) -> tuple[float, ...]:
    """Sojourn times of an M/M/1 queue (service rate 1) at utilisation rho, started empty."""
    rng = random.Random(seed + 1_000_000)
    return simulate(poisson_arrivals_s(rho, num_requests, seed), lambda size: rng.expovariate(1.0),
                    max_batch_size=1, max_queue_delay_s=0.0).latency_s


def _noisy_service(seed: int) -> Callable[[int], float]:
    """A batch of k takes (2 + k) ms times log-normal noise (sd 15%), and 1 batch in 100 is 5 times slower (a
    page fault, a collector, a neighbour): capacity about 760 requests/s in batches of 8."""
    rng = random.Random(seed)

    def draw(size: int) -> float:
        time_s = (2.0 + size) * MS * rng.lognormvariate(0.0, 0.15)
        return 5 * time_s if rng.random() < 0.01 else time_s
    return draw


CAPACITY_PER_S = 8 / (10 * MS * math.exp(0.15 ** 2 / 2) * (0.99 + 0.05))
"""Batches of 8 at the mean of `_noisy_service`'s draws: the most the server can serve."""


def _batched(utilisation: float, num_requests: int, seed: int) -> tuple[tuple[float, ...], SimRun]:
    arrivals = poisson_arrivals_s(utilisation * CAPACITY_PER_S, num_requests, seed)
    return arrivals, simulate(arrivals, _noisy_service(seed + 500), max_batch_size=8, max_queue_delay_s=2 * MS)


# --- Fill-up ----------------------------------------------------------------------------------------------

def test_mser5_drops_a_plateau_of_high_latency_by_hand() -> None:
    # Ten batches of 5 at 10, then batches alternating around 0.5: dropping exactly the ten leaves the smallest
    # standard error; dropping more only leaves fewer batches.
    latencies = [10.0] * 50 + [1.0, 0.0] * 200
    assert fill_up_requests(latencies) == 50
    assert fill_up_requests([1.0, 2.0]) == 0


def test_mser5_drops_the_drain_of_a_backlog() -> None:
    # 500 requests at once, then Poisson at 70% load: the backlog takes about 500 / (1 - 0.7) = 1,700 time units,
    # some 1,700 requests, to drain. MSER-5 drops it, and what remains has the M/M/1 mean 1 / (1 - 0.7).
    arrivals = [0.0] * 500 + [1e-9 + t for t in poisson_arrivals_s(0.7, 30_000, 3)]
    rng = random.Random(4)
    latencies = simulate(arrivals, lambda size: rng.expovariate(1.0), max_batch_size=1,
                         max_queue_delay_s=0.0).latency_s
    dropped = fill_up_requests(latencies)
    assert 1000 < dropped < 4000
    assert statistics.fmean(latencies[dropped:]) == pytest.approx(1 / 0.3, rel=0.1)
    assert statistics.fmean(latencies) > 1.5 / 0.3  # without the drop, the mean is far off


def test_mser5_mostly_drops_nothing_from_a_run_started_empty() -> None:
    # An empty queue at 80% load settles within about a hundred requests, too few to matter: most seeds drop
    # nothing. The rest drop a burst that came early in the run (the rule cannot tell a burst from a transient):
    # usually a few hundred to a few thousand requests, once in 40 seeds almost the half it may drop.
    drops = [fill_up_requests(_mm1(0.8, 20_000, seed)) for seed in range(40)]
    assert sum(d == 0 for d in drops) >= 26
    assert statistics.median(drops) == 0
    assert sum(d > 4000 for d in drops) <= 2 and max(drops) <= 10_000


# --- The p99 interval -------------------------------------------------------------------------------------

def test_too_few_requests_give_no_interval() -> None:
    latencies = _mm1(0.5, 4999, seed=1)  # p99 needs 5 sections of 1,000
    estimate = quantile_interval(latencies, 0.99)
    assert (estimate.method, estimate.low_s, estimate.high_s, estimate.sections) == ("too few requests", 0.0,
                                                                                      math.inf, 0)
    assert estimate.point_s > 0
    check = target_check(estimate, target_s=estimate.point_s * 2)
    assert (check.status, check.more_requests) == ("unknown", 1)


def test_sections_grow_with_the_run_up_to_twenty() -> None:
    rng = random.Random(1)
    latencies = [rng.expovariate(1.0) for _ in range(50_000)]
    assert quantile_interval(latencies[:7500], 0.99).sections == 7  # 1,000 a section for p99
    assert quantile_interval(latencies, 0.99).sections == 20
    assert quantile_interval(latencies[:200], 0.5).sections == 10  # 20 a section for a median
    assert quantile_interval(latencies[:200], 0.5, sections=4).sections == 4


def test_order_statistic_interval_of_a_median_by_table() -> None:
    # n = 100: the 95% interval of the median runs from the 40th to the 61st value (binomial tables).
    values = [float(v) for v in range(1, 101)]
    random.Random(0).shuffle(values)
    estimate = order_statistic_interval(values, 0.5)
    assert (estimate.low_s, estimate.high_s, estimate.point_s) == (40.0, 61.0, 50.5)
    # p99 of 100 values: the largest one is below the true p99 with probability 0.99^100 = 37%, so a 95%
    # interval has no upper end within the data.
    assert order_statistic_interval(values, 0.99).high_s == math.inf


@pytest.mark.slow  # about 8 s: 100 runs of 30,000 requests
def test_sectioning_covers_the_true_p99_under_queueing_dependence_and_order_statistics_do_not() -> None:
    # M/M/1 at 80% load: the true p99 sojourn is -ln(0.01) / (mu - lambda). Fill-up dropped by MSER-5.
    true_p99 = -math.log(0.01) / (1 - 0.8)
    runs, sectioning, binomial = 100, 0, 0
    for seed in range(runs):
        latencies = _mm1(0.8, 30_000, seed)
        latencies = latencies[fill_up_requests(latencies):]
        sectioned = quantile_interval(latencies, 0.99)
        assert sectioned.method == "sectioning" and sectioned.sections >= 16
        sectioning += sectioned.low_s <= true_p99 <= sectioned.high_s
        ranks = order_statistic_interval(latencies, 0.99)
        binomial += ranks.low_s <= true_p99 <= ranks.high_s
    # Measured 2026-12: 94% and 20%. The order-statistic interval takes 30,000 dependent requests for 30,000
    # independent ones: about ten times too narrow.
    assert 0.85 <= sectioning / runs <= 0.99
    assert binomial / runs < 0.5


# --- Against the target -----------------------------------------------------------------------------------

def _estimate(point_ms: float, low_ms: float, high_ms: float, num: int = 10_000) -> QuantileEstimate:
    return QuantileEstimate(q=0.99, point_s=point_ms * MS, low_s=low_ms * MS, high_s=high_ms * MS,
                            num_requests=num, sections=10, method="sectioning")


def test_target_check_met_missed_unknown() -> None:
    met = target_check(_estimate(10, 8, 12), 15 * MS)
    assert (met.status, met.more_requests) == ("met", None)
    assert met.reason == "met: p99 10 ms [8, 12] over 10,000 requests vs target 15 ms"
    assert target_check(_estimate(10, 8, 12), 12 * MS).status == "met"  # at the target is within it
    assert target_check(_estimate(10, 8, 12), 7 * MS) == TargetCheck(
        "missed", None, "missed: p99 10 ms [8, 12] over 10,000 requests vs target 7 ms")


def test_unknown_says_how_many_more_requests_should_decide() -> None:
    # Target 11 ms, 1 ms above the point, upper half-width 2 ms: it must halve, so 4 times the requests.
    above = target_check(_estimate(10, 8, 12), 11 * MS)
    assert (above.status, above.more_requests) == ("unknown", 30_000)
    assert "about 30,000 more requests" in above.reason
    # Target 9.5 ms, 0.5 ms below, lower half-width 3 ms (intervals of a tail are lopsided): 36 times.
    below = target_check(_estimate(10, 7, 11), 9.5 * MS)
    assert (below.status, below.more_requests) == ("unknown", 350_000)
    on = target_check(_estimate(10, 8, 12), 10 * MS)
    assert (on.status, on.more_requests) == ("unknown", None)
    short = target_check(QuantileEstimate(q=0.99, point_s=0.01, low_s=0.0, high_s=math.inf, num_requests=3000,
                                          sections=0, method="too few requests"), 0.02)
    assert (short.status, short.more_requests) == ("unknown", 2000)


# --- Did the server keep up? ------------------------------------------------------------------------------

@pytest.mark.parametrize("utilisation", [0.8, 0.9])
def test_a_busy_noisy_server_that_keeps_up_is_sustainable(utilisation: float) -> None:
    # Near saturation, with slow outliers, latency has long bursts that come and go: no seed reads as growing.
    for seed in range(10):
        arrivals, run = _batched(utilisation, 20_000, seed)
        verdict = sustained(arrivals, run.completions_s, run.latency_s, utilisation * CAPACITY_PER_S)
        assert verdict.sustainable, (seed, verdict.reason)


def test_mm1_near_saturation_is_sustainable() -> None:
    for seed in range(10):
        arrivals = poisson_arrivals_s(0.9, 20_000, seed)
        rng = random.Random(seed + 7)
        run = simulate(arrivals, lambda size: rng.expovariate(1.0), max_batch_size=1, max_queue_delay_s=0.0)
        verdict = sustained(arrivals, run.completions_s, run.latency_s, 0.9)
        assert verdict.sustainable, (seed, verdict.reason)


@pytest.mark.parametrize("utilisation", [1.05, 1.1])
def test_a_server_over_capacity_is_unsustainable(utilisation: float) -> None:
    for seed in range(10):
        arrivals, run = _batched(utilisation, 20_000, seed)
        verdict = sustained(arrivals, run.completions_s, run.latency_s, utilisation * CAPACITY_PER_S)
        assert not verdict.sustainable, (seed, verdict.reason)
        assert verdict.reason.startswith("queue kept growing: latency rose")


def test_sustained_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        sustained([0.0, 1.0], [1.0], [1.0, 1.0], 1.0)


# --- The highest rate within the target -------------------------------------------------------------------

TARGET_S = 20 * MS


def _measure(rate_per_s: float, *, half_share: float = 0.0) -> RatePoint:
    """A server of capacity 1,000/s whose p99 is 5 ms / (1 - rate / 1,000), measured with an interval of
    +-`half_share` of it: the target of 20 ms is crossed at 750/s."""
    if rate_per_s >= 1000:
        return RatePoint(rate_per_s, TargetCheck("missed", None, "over capacity"), sustainable=False)
    p99_s = 5 * MS / (1 - rate_per_s / 1000)
    estimate = QuantileEstimate(q=0.99, point_s=p99_s, low_s=p99_s * (1 - half_share),
                                high_s=p99_s * (1 + half_share), num_requests=20_000, sections=20,
                                method="sectioning")
    return RatePoint(rate_per_s, target_check(estimate, TARGET_S), sustainable=True)


def _search(search: RateSearch, **measure_args: float) -> list[RatePoint]:
    points: list[RatePoint] = []
    while (rate := search.next_rate(points)) is not None:
        points.append(_measure(rate, **measure_args))
        assert len(points) <= 20, "the search does not end"
    return points


def test_bisection_brackets_the_crossing_within_the_resolution() -> None:
    search = RateSearch(TARGET_S, lo_rate_per_s=100.0, hi_rate_per_s=2000.0, resolution=0.05)
    points = _search(search)
    found = search.result(points)
    # The bounds, then halving a 20x ratio down to 5% in ratio: log2(ln 20 / ln 1.05) = 6 steps.
    assert len(points) == 8
    assert found.low_per_s <= 750 <= found.high_per_s <= found.low_per_s * 1.05
    assert found.rate_per_s == found.low_per_s
    assert found.reason.startswith(f"met the latency target of 20 ms at {found.rate_per_s:,.4g}/s, missed at")


def test_unknown_rates_bound_neither_side_and_the_search_still_ends() -> None:
    # With +-5% intervals, 737.5/s to 762.5/s straddle the target: unknown. The met and missed rates still
    # bracket 750/s, with the unknown ones between them, each gap within the resolution.
    search = RateSearch(TARGET_S, lo_rate_per_s=100.0, hi_rate_per_s=2000.0, resolution=0.05)
    points = _search(search, half_share=0.05)
    found = search.result(points)
    assert found.low_per_s <= 737.5 and 762.5 <= found.high_per_s <= found.low_per_s * 1.05 ** 2
    unknown = [p for p in points if p.check.status == "unknown"]
    assert unknown and all(found.low_per_s < p.rate_per_s < found.high_per_s for p in unknown)
    assert "too close to tell at" in found.reason


def test_no_met_rate_gives_zero_and_says_so() -> None:
    search = RateSearch(TARGET_S, lo_rate_per_s=900.0, hi_rate_per_s=2000.0)
    points = _search(search)
    assert [p.rate_per_s for p in points] == [900.0]  # the lower bound misses: nothing to search
    found = search.result(points)
    assert (found.rate_per_s, found.low_per_s, found.high_per_s) == (0.0, 0.0, 900.0)
    assert found.reason == "no measured rate met the latency target of 20 ms: missed at 900/s"


def test_a_lower_bound_that_misses_steps_down_before_giving_up() -> None:
    """The prediction was too high: 1,600/s misses; halving finds 800/s (missed) and 400/s (met), then bisection."""
    search = RateSearch(TARGET_S, lo_rate_per_s=1600.0, hi_rate_per_s=3000.0, step_down=2)
    points = _search(search)
    assert [p.rate_per_s for p in points][:3] == [1600.0, 800.0, 400.0]
    found = search.result(points)
    assert found.low_per_s <= 750 <= found.high_per_s <= found.low_per_s * 1.05
    # Without a met rate after the steps down, it ends: nothing met, missed at the lowest.
    search = RateSearch(TARGET_S, lo_rate_per_s=8000.0, hi_rate_per_s=9000.0, step_down=2)
    assert [p.rate_per_s for p in _search(search)] == [8000.0, 4000.0, 2000.0]


def test_a_met_upper_bound_ends_the_search_with_no_upper_end() -> None:
    search = RateSearch(TARGET_S, lo_rate_per_s=100.0, hi_rate_per_s=500.0)
    points = _search(search)
    assert [p.rate_per_s for p in points] == [100.0, 500.0]
    found = search.result(points)
    assert (found.rate_per_s, found.high_per_s) == (500.0, math.inf)
    assert "may be higher" in found.reason


def test_an_unsustainable_rate_is_missed_and_a_met_rate_above_a_missed_one_is_ignored() -> None:
    search = RateSearch(TARGET_S, lo_rate_per_s=100.0, hi_rate_per_s=2000.0)
    met = TargetCheck("met", None, "")
    points = [RatePoint(100.0, met, True), RatePoint(600.0, met, False), RatePoint(800.0, met, True)]
    found = search.result(points)
    assert (found.rate_per_s, found.high_per_s) == (100.0, 600.0)
    assert "missed at 600/s (the queue kept growing)" in found.reason
    assert search.next_rate(points) == pytest.approx(math.sqrt(100.0 * 600.0))


def test_rate_search_refuses_bad_bounds() -> None:
    with pytest.raises(ValueError):
        RateSearch(TARGET_S, lo_rate_per_s=500.0, hi_rate_per_s=100.0)
