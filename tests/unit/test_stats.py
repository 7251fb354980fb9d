from __future__ import annotations

import pytest


from trainer_tune.config.schema import WindowArgs
from trainer_tune.measure.step_stats import StepTimeStats, count_outliers, quantile, throughput_per_s
from trainer_tune.measure.window import window_length


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


def test_outliers_are_counted() -> None:
    assert count_outliers([0.1, 0.11, 0.1, 0.12, 0.1, 0.11, 0.9]) == 1
    assert count_outliers([0.1] * 5) == 0


def test_a_window_fills_measure_s_at_the_warm_up_pace_within_its_step_bounds() -> None:
    window = WindowArgs(measure_steps=4, measure_s=1.0, max_measure_steps=200)
    steps, why = window_length(0.03, window)
    assert steps == 34 and why == "34 steps to fill window.measure_s=1 s at 30 ms per step (the last warm-up step)"
    assert window_length(0.5, window)[0] == 4  # slow steps: the fewest
    assert window_length(0.001, window) == (200, "200 steps (window.max_measure_steps) of the 1,000 that would fill "
                                                 "1 s at 1 ms per step (the last warm-up step)")
    assert window_length(None, window) == (4, "4 steps (window.measure_steps): no warm-up step to pace the window")

