"""Rounds, the race and the between-window statistics behind them (issue: verdicts on a busy machine)."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics

import pytest

from trainer_tune.evidence.comparison import Outcome, compare
from trainer_tune.decide.race import race_drops, race_over, round_order
from trainer_tune.evidence.stats import geometric_mean, log_t_interval, ratio_estimate
from tests.unit.result_factory import make_result


def test_every_round_holds_every_setting_once_in_a_seeded_shuffle() -> None:
    keys = [f"k{i}" for i in range(8)]
    orders = [round_order(keys, round_index=r, seed=0) for r in range(6)]
    assert all(sorted(order) == sorted(keys) for order in orders)
    assert len({tuple(order) for order in orders}) > 1  # shuffled differently from round to round
    # Seeded: the same on every rank and after a resume, whatever order the caller lists them in.
    assert round_order(list(reversed(keys)), round_index=3, seed=0) == orders[3]
    assert round_order(keys, round_index=3, seed=1) != orders[3]


def test_shuffle_puts_each_setting_first_about_equally_often() -> None:
    keys = ["a", "b", "c", "d"]
    firsts = [round_order(keys, round_index=r, seed=7)[0] for r in range(400)]
    assert all(60 <= firsts.count(k) <= 140 for k in keys)


def _simulate_windows(rng: random.Random, *, n_windows: int, true_rate: float, between_cv: float,
                      within_cv: float, steps: int) -> list[float]:
    """Window rates from a known process: each window's speed is log-normal around true_rate (the level
    with most variance), and its steps add their own noise around that window's speed."""
    rates = []
    for _ in range(n_windows):
        window_rate = true_rate * math.exp(rng.gauss(0.0, between_cv))
        times = [max(1e-6, rng.gauss(1.0 / window_rate, within_cv / window_rate)) for _ in range(steps)]
        rates.append(steps / math.fsum(times))
    return rates


@pytest.mark.parametrize("n_windows", [3, 5])
def test_between_window_interval_covers_the_true_rate_95_percent_of_the_time(n_windows: int) -> None:
    rng = random.Random(11)
    draws, hits = 400, 0
    for _ in range(draws):
        rates = _simulate_windows(rng, n_windows=n_windows, true_rate=1000.0, between_cv=0.07, within_cv=0.05,
                                  steps=10)
        low, high = log_t_interval(rates)  # type: ignore[misc]
        hits += low <= 1000.0 <= high
    assert 0.91 <= hits / draws <= 0.99, hits / draws


def test_one_window_has_no_interval() -> None:
    assert log_t_interval([1000.0]) is None
    estimate = ratio_estimate({"r0": 1200.0}, {"r0": 1000.0})
    assert estimate.interval is None and estimate.ratio == pytest.approx(1.2)


def test_paired_ratios_cancel_a_drift_that_unpaired_ones_do_not() -> None:
    # The machine slows by 40% over the sweep; a is 10% faster than b in every round.
    rng = random.Random(3)
    a, b = {}, {}
    for r in range(6):
        speed = 1.0 - 0.08 * r
        b[f"r{r}"] = 1000.0 * speed * math.exp(rng.gauss(0, 0.01))
        a[f"r{r}"] = 1100.0 * speed * math.exp(rng.gauss(0, 0.01))
    paired = ratio_estimate(a, b)
    assert paired.paired and paired.num_pairs == 6
    assert paired.interval[0] > 1.05 and paired.interval[1] < 1.15  # type: ignore[index]
    # The same windows without their rounds (a measured in other rounds than b) are independent samples:
    # the drift is now noise, and the interval can no longer tell a from b.
    unpaired = ratio_estimate({f"a{r}": v for r, v in enumerate(a.values())},
                              {f"b{r}": v for r, v in enumerate(b.values())})
    assert not unpaired.paired
    low, high = unpaired.interval  # type: ignore[misc]
    assert low < 1.0 < high


def _setting(label: str, rates: dict[str, float]):
    result = make_result(index=0, key=label, tokens_per_s=geometric_mean(list(rates.values())))
    return dataclasses.replace(result, label=label, window_throughput_per_s=rates)


def test_compare_outcomes() -> None:
    base = _setting("2x1", {"r0": 1000.0, "r1": 900.0, "r2": 1100.0})
    fast = _setting("8x2", {"r0": 1500.0, "r1": 1370.0, "r2": 1640.0})
    close = _setting("4x1", {"r0": 1010.0, "r1": 880.0, "r2": 1120.0})
    assert compare(fast, base).outcome == Outcome.better
    assert compare(base, fast).outcome == Outcome.worse
    assert compare(close, base).outcome == Outcome.tie
    one = _setting("1x1", {"r0": 2000.0})
    assert compare(one, base).outcome == Outcome.unknown
    assert "+50.4%" in compare(fast, base).describe() and "paired over 3 rounds" in compare(fast, base).describe()


def _behind(c, leader):
    comparison = compare(c, leader)
    return comparison.describe() if comparison.outcome == Outcome.worse else None


def test_race_drops_a_clearly_slower_setting_and_keeps_a_close_one() -> None:
    leader = _setting("8x2", {"r0": 1500.0, "r1": 1400.0, "r2": 1620.0})
    close = _setting("8x1", {"r0": 1460.0, "r1": 1420.0, "r2": 1560.0})
    slow = _setting("1x1", {"r0": 800.0, "r1": 760.0, "r2": 850.0})
    drops = race_drops([slow, leader, close], after_round=3, behind=_behind)
    assert [d.label for d in drops] == ["1x1"]
    assert drops[0].after_round == 3 and "%" in drops[0].reason


def test_race_keeps_settings_measured_in_one_window() -> None:
    leader = _setting("8x2", {"r0": 1500.0})
    slow = _setting("1x1", {"r0": 500.0})
    assert race_drops([leader, slow], after_round=1, behind=_behind) == []


def test_race_over_rules() -> None:
    common = dict(min_rounds=3, max_rounds=8, budget_s=30.0)
    # The budget bounds every round, the first ones included; otherwise nothing stops before min_rounds.
    assert "budget_s" in race_over(alive=["a", "b"], round_index=2, elapsed_s=25.0, next_round_s=10.0, **common)
    assert race_over(alive=["a"], round_index=2, elapsed_s=10.0, next_round_s=10.0, **common) is None
    # With throughput or goodput the evidence decides when to stop, not one setting being left.
    assert race_over(alive=["a"], round_index=3, elapsed_s=5.0, next_round_s=1.0, stop_when_one_left=False,
                     **common) is None
    assert "decided" in race_over(alive=["a"], round_index=3, elapsed_s=5.0, next_round_s=1.0, **common)
    assert "max_rounds" in race_over(alive=["a", "b"], round_index=8, elapsed_s=5.0, next_round_s=1.0, **common)
    assert "budget_s" in race_over(alive=["a", "b"], round_index=4, elapsed_s=25.0, next_round_s=6.0, **common)
    assert race_over(alive=["a", "b"], round_index=4, elapsed_s=20.0, next_round_s=6.0, **common) is None


def _bursty_sweep(rng: random.Random, *, settings: int = 12, rounds: int = 4) -> dict[str, dict[str, float]]:
    """Identical settings on a shared machine: a slow drift over rounds, window noise of 3%, and now and then a
    burst of other load that slows one window by 45% (what a 2-core machine with one busy neighbour shows)."""
    sweep: dict[str, dict[str, float]] = {}
    for s in range(settings):
        sweep[f"s{s}"] = {}
        for r in range(rounds):
            rate = 28_000 * (1 - 0.02 * r) * math.exp(rng.gauss(0, 0.03))
            if rng.random() < 0.12:
                rate *= 0.55
            sweep[f"s{s}"][f"r{r}"] = rate
    return sweep


def test_the_noise_floor_keeps_lucky_calm_settings_honest() -> None:
    """Three calm windows give a narrow t-interval by luck; on a machine where other windows burst, the sweep's
    pooled noise is the floor. Measured over many simulated sweeps: share of intervals holding the median."""
    from trainer_tune.evidence.stats import noise_floor

    rng = random.Random(21)
    held_floor = held_own = total = 0
    for _ in range(150):
        sweep = _bursty_sweep(rng)
        floor = noise_floor(sweep, baseline="s0")
        assert floor is not None and floor.window_df == 12 * 3 and floor.ratio_df == 11 * 3
        estimates = {k: geometric_mean(list(v.values())) for k, v in sweep.items()}
        median = statistics.median(estimates.values())
        for rates in sweep.values():
            low, high = log_t_interval(list(rates.values()), floor=floor)  # type: ignore[misc]
            own_low, own_high = log_t_interval(list(rates.values()))  # type: ignore[misc]
            held_floor += low <= median <= high
            held_own += own_low <= median <= own_high
            total += 1
    assert held_floor / total >= 0.9, held_floor / total
    assert held_own / total < held_floor / total - 0.05, (held_own / total, held_floor / total)


def test_the_floor_widens_a_paired_comparison_but_keeps_its_pairing() -> None:
    from trainer_tune.measure.figures import NoiseFloor

    a = {"r0": 1100.0, "r1": 990.0, "r2": 880.0}  # exactly +10% over b in every round, through a 20% drift
    b = {"r0": 1000.0, "r1": 900.0, "r2": 800.0}
    exact = ratio_estimate(a, b)
    assert exact.interval == pytest.approx((1.1, 1.1))
    floored = ratio_estimate(a, b, floor=NoiseFloor(window_log_sd=0.2, window_df=30, ratio_log_sd=0.03, ratio_df=30))
    low, high = floored.interval  # type: ignore[misc]
    # The ratio floor (3% per round), not the window floor (20%, drift included), sets the width: pairing holds.
    assert 1.05 < low < 1.1 < high < 1.15 and floored.paired


def test_counts_agree_with_their_nouns() -> None:
    """"after 1 rounds", "1 trials": a count of one reads in the singular, everywhere the output counts."""
    from result_factory import make_result
    from trainer_tune.config.schema import RecommendArgs
    from trainer_tune.decide.verdict import decide
    from trainer_tune.decide.race import RaceSummary, race_over

    ended = race_over(round_index=1, min_rounds=1, max_rounds=5, alive=["a"], elapsed_s=1.0, next_round_s=1.0,
                      budget_s=None)
    assert ended == "one setting left after 1 round: the race is decided"
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True, status="oom")]
    race = RaceSummary(num_rounds=1, end_reason=ended, drops=(), contenders=("2x1",),
                       contender_keys=("base",))
    rec = decide(results, args=RecommendArgs(), race=race)
    text = " ".join(rec.reasons)
    assert "1 of 1 setting did not finish" in text and "1 round measured" in text
    assert "1 settings" not in text and "1 rounds" not in text


def test_the_point_ratio_is_the_estimates_centre_paired_or_not() -> None:
    from trainer_tune.evidence.stats import point_ratio

    a = {"r0": 1200.0, "r1": 900.0, "r2": 1100.0}
    b = {"r0": 1000.0, "r1": 800.0, "r2": 1000.0}
    # Paired: the geometric mean of 1.2, 1.125 and 1.1 (known answer: (1.2 x 1.125 x 1.1) ** (1/3)).
    assert point_ratio(a, b) == pytest.approx((1.2 * 1.125 * 1.1) ** (1 / 3))
    assert point_ratio(a, b) == pytest.approx(ratio_estimate(a, b).ratio)
    # One round in common: the sides' geometric means.
    lone = {"r3": 500.0}
    assert point_ratio(lone, {"r3": 250.0, "r4": 1000.0}) == pytest.approx(500.0 / 500.0)
    with pytest.raises(ValueError):
        point_ratio({}, b)
