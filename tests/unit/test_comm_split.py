"""The compute vs communication split: exposed all-reduce time from synced and unsynced steps."""

import pytest

from trainer_tune.measure.summarize import comm_split


def test_exposed_communication_is_the_gap_between_medians() -> None:
    split = comm_split(sync_step_times_s=[0.10, 0.11, 0.10, 0.12, 0.10], no_sync_step_times_s=[0.04, 0.05, 0.04])
    assert split is not None
    assert split.step_time_sync_s == pytest.approx(0.10)
    assert split.step_time_no_sync_s == pytest.approx(0.04)
    assert split.exposed_comm_s == pytest.approx(0.06)
    assert split.exposed_comm_fraction == pytest.approx(0.6)
    assert split.num_no_sync_steps == 3
    assert split.within_noise is False


def test_unsynced_steps_no_faster_than_synced_ones_mean_no_exposed_time_within_noise() -> None:
    split = comm_split(sync_step_times_s=[0.10, 0.12, 0.11, 0.10], no_sync_step_times_s=[0.115, 0.11])
    assert split is not None
    assert split.exposed_comm_s == 0.0
    assert split.exposed_comm_fraction == 0.0
    assert split.within_noise is True


def test_nothing_measured_is_none_not_zero() -> None:
    assert comm_split(sync_step_times_s=[0.1, 0.1], no_sync_step_times_s=[]) is None
