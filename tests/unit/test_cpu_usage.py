"""CPU utilization meter (real psutil counters on this machine)."""

import os
import time

import psutil
import pytest

from trainer_tune.measure.cpu_usage import CpuMeter


def _spin(duration_s: float) -> None:
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        pass


def test_busy_process_matches_its_own_cpu_clock() -> None:
    # On a loaded machine a spinning thread gets less than a core, so compare with the process's
    # own CPU clock over the same window rather than with 100%.
    meter = CpuMeter()
    cpu_before_s, wall_before_s = time.process_time(), time.monotonic()
    meter.start()
    _spin(0.3)
    usage = meter.stop()
    expected_pct = 100.0 * (time.process_time() - cpu_before_s) / (time.monotonic() - wall_before_s)
    assert usage.process_pct is not None and usage.process_pct > 0.0
    # psutil's counters tick at 10 ms (USER_HZ): allow a few ticks over 0.3 s.
    assert usage.process_pct == pytest.approx(expected_pct, abs=15.0)
    assert usage.system_pct is not None and 0.0 < usage.system_pct <= 100.0
    assert usage.num_logical_cpus == psutil.cpu_count(logical=True)
    assert usage.duration_s == pytest.approx(0.3, abs=0.1)
    assert usage.unavailable_reason is None


def test_sleeping_process_reads_near_zero_and_meter_is_reusable() -> None:
    meter = CpuMeter(pid=os.getpid())
    for _ in range(2):
        meter.start()
        time.sleep(0.2)
        usage = meter.stop()
        assert usage.process_pct is not None and usage.process_pct < 30.0


def test_missing_process_gives_reason() -> None:
    meter = CpuMeter(pid=2**22 + 12345)  # above Linux's pid_max ceiling, so never a live process
    meter.start()
    usage = meter.stop()
    assert usage.process_pct is None
    assert usage.unavailable_reason is not None and "cannot watch process" in usage.unavailable_reason


def test_stop_without_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        CpuMeter().stop()
