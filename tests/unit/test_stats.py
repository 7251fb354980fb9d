from __future__ import annotations

import pytest

import random

from trainer_tune.config.schema import WindowArgs
from trainer_tune.measure.step_stats import StepTimeStats, count_outliers, quantile, relative_half_width, throughput_ci, throughput_per_s
from trainer_tune.measure.window import window_stop_reason


def test_quantile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert quantile(values, 0.0) == 1.0
    assert quantile(values, 1.0) == 4.0
    assert quantile(values, 0.5) == 2.5
    # numpy.percentile([1, 2, 3, 4], 90) == 3.7
    assert quantile(values, 0.9) == pytest.approx(3.7)
    assert quantile([7.0], 0.9) == 7.0


def test_quantile_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        quantile([], 0.5)
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)


def test_step_time_stats() -> None:
    stats = StepTimeStats.of([0.1, 0.2, 0.3, 0.4, 1.0])
    assert stats.median == pytest.approx(0.3)
    assert stats.min == 0.1 and stats.max == 1.0
    assert stats.mean == pytest.approx(0.4)
    assert stats.p90 == pytest.approx(0.76)


def test_throughput_is_amount_over_summed_time() -> None:
    assert throughput_per_s(1000, 2.0) == pytest.approx(500.0)
    with pytest.raises(ValueError):
        throughput_per_s(10, 0.0)


def test_constant_steps_give_a_point_interval() -> None:
    low, high = throughput_ci([0.1] * 20, amount_per_step=1000)
    assert low == pytest.approx(10_000) and high == pytest.approx(10_000)


def test_interval_covers_the_true_rate_about_95_percent_of_the_time() -> None:
    # Known answer: i.i.d. step times with mean 0.1 s, so the true rate is 1000 / 0.1 = 10,000 per second.
    rng = random.Random(1234)
    covered = 0
    for trial in range(200):
        times = [max(0.01, rng.gauss(0.1, 0.01)) for _ in range(40)]
        low, high = throughput_ci(times, amount_per_step=1000, seed=trial)
        covered += low <= 10_000 <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_interval_narrows_with_more_steps() -> None:
    rng = random.Random(7)
    short = [rng.gauss(0.1, 0.01) for _ in range(10)]
    long = short + [rng.gauss(0.1, 0.01) for _ in range(190)]
    width = [relative_half_width(*throughput_ci(t, amount_per_step=1), len(t) / sum(t)) for t in (short, long)]
    assert width[1] < width[0] / 2


def test_outliers_are_counted() -> None:
    assert count_outliers([0.1, 0.11, 0.1, 0.12, 0.1, 0.11, 0.9]) == 1
    assert count_outliers([0.1] * 5) == 0


def test_window_stops_on_the_interval_or_a_cap() -> None:
    adaptive = WindowArgs(measure_steps=10, target_rel_ci=0.02, max_measure_steps=50, max_measure_s=100.0)
    assert window_stop_reason([0.1] * 9, adaptive) is None
    assert window_stop_reason([0.1] * 10, adaptive).startswith("95% interval within +-0.0% after 10 steps")
    rng = random.Random(5)
    noisy = [rng.uniform(0.05, 0.3) for _ in range(20)]
    assert window_stop_reason(noisy, adaptive) is None
    assert window_stop_reason(noisy * 3, adaptive).startswith("step cap: 60 steps")
    capped = WindowArgs(measure_steps=10, target_rel_ci=0.02, max_measure_steps=500, max_measure_s=2.0)
    assert window_stop_reason(noisy, capped).startswith("time cap:")
    fixed = WindowArgs(measure_steps=4, target_rel_ci=None)
    assert window_stop_reason([0.1, 0.5, 0.1, 0.9], fixed) == "fixed window of 4 steps"
