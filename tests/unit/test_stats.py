from __future__ import annotations

import pytest

from trainer_tune.stats import StepTimeStats, quantile, throughput_per_s


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
