"""GPU sampler: real absence of NVML on this machine, and a fake NVML with known values."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from trainer_tune.measure.gpu_sampler import GpuSampler, GpuSamples, open_nvml_device, summarize_gpu_samples


class FakeNvmlError(Exception):
    """Stands in for pynvml.NVMLError; str() is NVML's message, as in pynvml."""


class FakeNotSupported(FakeNvmlError):
    def __init__(self) -> None:
        super().__init__("Not Supported")


@dataclass
class FakeNvml:
    """The few pynvml names the sampler uses, answering from fixed numbers.

    Devices are numbered by index; their UUIDs are ``uuids``. ``power_mw`` is constant; the energy
    counter returns ``energy_mj`` values in turn (the last one repeats).
    """

    uuids: tuple[str, ...] = ("GPU-aaaa-0000", "GPU-bbbb-1111", "GPU-cccc-2222")
    utilization_pct: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
    memory_used_bytes: int = 3 * 2**30
    power_mw: int = 250_000
    energy_mj: tuple[int, ...] = (5_000_000, 5_500_000)
    init_error: str | None = None
    energy_supported: bool = True
    power_fails_after_calls: int | None = None
    NVMLError: type[Exception] = FakeNvmlError
    calls: dict[str, int] = field(default_factory=dict)

    def _count(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name] - 1

    def nvmlInit(self) -> None:
        self._count("init")
        if self.init_error is not None:
            raise FakeNvmlError(self.init_error)

    def nvmlShutdown(self) -> None:
        self._count("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[str, int]:
        if not 0 <= index < len(self.uuids):
            raise FakeNvmlError("Invalid Argument")
        return ("handle", index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> tuple[str, int]:
        if uuid not in self.uuids:
            raise FakeNvmlError("Not Found")
        return ("handle", self.uuids.index(uuid))

    def nvmlDeviceGetUUID(self, handle: tuple[str, int]) -> str:
        return self.uuids[handle[1]]

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> SimpleNamespace:
        n = self._count("utilization")
        return SimpleNamespace(gpu=self.utilization_pct[n % len(self.utilization_pct)], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> SimpleNamespace:
        self._count("memory")
        return SimpleNamespace(used=self.memory_used_bytes, total=80 * 2**30, free=0)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        n = self._count("power")
        if self.power_fails_after_calls is not None and n >= self.power_fails_after_calls:
            raise FakeNvmlError("GPU is lost")
        return self.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        n = self._count("energy")
        if not self.energy_supported:
            raise FakeNotSupported()
        return self.energy_mj[min(n, len(self.energy_mj) - 1)]


def _real_nvml_works() -> bool:
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


# --- no NVML (real: this machine has no driver) -------------------------------------------------


@pytest.mark.skipif(_real_nvml_works(), reason="NVML works here; this test is about its absence")
def test_real_nvml_absent_gives_reason() -> None:
    handle, reason = open_nvml_device(local_rank=0, environ={})
    assert handle is None
    assert reason is not None
    assert reason.startswith(("nvidia-ml-py could not initialise NVML: ", "nvidia-ml-py is not installed"))


@pytest.mark.skipif(_real_nvml_works(), reason="NVML works here; this test is about its absence")
def test_real_sampler_without_nvml_logs_once_and_reports_none(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trainer_tune.measure.gpu_sampler"):
        sampler = GpuSampler(local_rank=0, environ={}, interval_s=0.01)
        for _ in range(2):
            sampler.start()
            time.sleep(0.03)
            samples = sampler.stop()
    assert len(caplog.records) == 1
    assert "NVML" in caplog.records[0].getMessage() or "nvidia-ml-py" in caplog.records[0].getMessage()
    assert not sampler.available
    assert samples.utilization_pct == () and samples.power_w == () and samples.memory_used_bytes == ()
    assert samples.unavailable_reason == sampler.unavailable_reason

    summary = summarize_gpu_samples(samples, tokens=1000)
    assert summary.unavailable_reason == sampler.unavailable_reason
    for name in (
        "util_mean_pct", "util_p10_pct", "util_p90_pct", "memory_used_peak_bytes", "power_mean_w",
        "energy_j", "energy_source", "energy_j_per_token", "num_samples",
    ):  # fmt: skip
        assert getattr(summary, name) is None, name


def test_fake_nvml_init_failure_reason() -> None:
    nvml = FakeNvml(init_error="Driver Not Loaded")
    assert open_nvml_device(local_rank=0, environ={}, nvml=nvml) == (
        None,
        "nvidia-ml-py could not initialise NVML: Driver Not Loaded",
    )


# --- CUDA_VISIBLE_DEVICES mapping --------------------------------------------------------------


@pytest.mark.parametrize(
    ("visible", "local_rank", "expected_index"),
    [
        (None, 0, 0),
        (None, 2, 2),
        ("2,0", 0, 2),
        ("2,0", 1, 0),
        (" 1 , 2 ", 1, 2),
        ("GPU-cccc-2222,GPU-aaaa-0000", 0, 2),
        ("GPU-cccc-2222,GPU-aaaa-0000", 1, 0),
        # CUDA accepts a unique UUID prefix; NVML needs the full UUID, so it is looked up.
        ("GPU-bbbb", 0, 1),
    ],
)
def test_visible_devices_mapping(visible: str | None, local_rank: int, expected_index: int) -> None:
    nvml = FakeNvml()
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    handle, reason = open_nvml_device(local_rank=local_rank, environ=environ, nvml=nvml)
    assert reason is None
    assert handle == ("handle", expected_index)
    assert nvml.calls.get("shutdown", 0) == 0


@pytest.mark.parametrize(
    ("visible", "local_rank", "fragment"),
    [
        ("", 0, "has no GPU"),
        ("0", 1, "has no GPU"),
        ("7", 0, "NVML has no device"),
        ("GPU-ffff", 0, "NVML has no device"),
        ("GPU-", 0, "NVML has no device"),  # a prefix of every UUID: ambiguous
        ("nvidia0", 0, "cannot map"),
    ],
)
def test_visible_devices_mapping_failures(visible: str, local_rank: int, fragment: str) -> None:
    nvml = FakeNvml()
    handle, reason = open_nvml_device(local_rank=local_rank, environ={"CUDA_VISIBLE_DEVICES": visible}, nvml=nvml)
    assert handle is None
    assert reason is not None and fragment in reason
    # nvmlInit is reference-counted: a failed mapping must give its reference back.
    assert nvml.calls["init"] == nvml.calls["shutdown"] == 1


# --- sampling with a fake NVML -----------------------------------------------------------------


def test_sampler_rate_and_counter_energy() -> None:
    nvml = FakeNvml()
    sampler = GpuSampler(local_rank=0, environ={}, interval_s=0.02, nvml=nvml)
    sampler.start()
    time.sleep(0.4)
    samples = sampler.stop()
    sampler.close()

    # 0.4 s at 50 Hz: about 20 ticks plus the closing sample; allow for a busy machine.
    assert 12 <= len(samples.utilization_pct) <= 24
    times = [t for t, _ in samples.utilization_pct]
    assert times == sorted(times) and times[0] < 0.02
    assert statistics.median(b - a for a, b in zip(times, times[1:])) == pytest.approx(0.02, abs=0.01)
    assert times[-1] == pytest.approx(samples.duration_s)
    assert samples.disabled == {}
    assert nvml.calls["shutdown"] == 1

    summary = summarize_gpu_samples(samples, tokens=1000)
    # Counter went 5,000,000 mJ -> 5,500,000 mJ: 500 J over 1000 tokens.
    assert summary.energy_j == pytest.approx(500.0)
    assert summary.energy_source == "counter"
    assert summary.energy_j_per_token == pytest.approx(0.5)
    assert summary.power_mean_w == pytest.approx(250.0)
    assert summary.memory_used_peak_bytes == 3 * 2**30
    assert summary.num_samples == len(samples.utilization_pct)
    assert summary.unavailable_reason is None


def test_energy_falls_back_to_power_integral_when_counter_unsupported() -> None:
    nvml = FakeNvml(energy_supported=False)
    sampler = GpuSampler(local_rank=0, environ={}, interval_s=0.01, nvml=nvml)
    sampler.start()
    time.sleep(0.2)
    samples = sampler.stop()

    assert samples.energy_counter_start_j is None and samples.energy_counter_stop_j is None
    assert samples.disabled == {"energy": "nvmlDeviceGetTotalEnergyConsumption failed: Not Supported"}
    # Disabled at the first failure: never asked again, in this window or the next.
    sampler.start()
    sampler.stop()
    assert nvml.calls["energy"] == 1

    summary = summarize_gpu_samples(samples, tokens=100)
    assert summary.energy_source == "power_integral"
    # Constant 250 W from the first tick (t ~ 0) to the closing sample (t = duration).
    first_t = samples.power_w[0][0]
    assert summary.energy_j == pytest.approx(250.0 * (samples.duration_s - first_t))
    assert summary.energy_j_per_token == pytest.approx(summary.energy_j / 100)
    assert summary.unavailable_reason is None


def test_metric_failing_mid_run_is_disabled_with_reason() -> None:
    nvml = FakeNvml(power_fails_after_calls=3)
    sampler = GpuSampler(local_rank=0, environ={}, interval_s=0.01, nvml=nvml)
    sampler.start()
    time.sleep(0.15)
    samples = sampler.stop()

    assert samples.disabled == {"power": "nvmlDeviceGetPowerUsage failed: GPU is lost"}
    assert len(samples.power_w) == 3  # the readings before the failure are kept raw
    assert nvml.calls["power"] == 4  # one failing call, then never again
    assert len(samples.utilization_pct) > 3  # other metrics carry on

    summary = summarize_gpu_samples(samples, tokens=10)
    assert summary.power_mean_w is None  # never a zero, never a partial-window mean
    assert summary.util_mean_pct is not None
    assert summary.energy_source == "counter"
    assert summary.unavailable_reason == "power: nvmlDeviceGetPowerUsage failed: GPU is lost"

    sampler.start()
    samples = sampler.stop()
    assert samples.power_w == () and "power" in samples.disabled


def test_start_twice_and_stop_without_start_are_errors() -> None:
    sampler = GpuSampler(local_rank=0, environ={}, interval_s=0.01, nvml=FakeNvml())
    with pytest.raises(RuntimeError):
        sampler.stop()
    sampler.start()
    with pytest.raises(RuntimeError):
        sampler.start()
    sampler.close()


def test_stop_is_prompt_with_a_slow_rate() -> None:
    sampler = GpuSampler(local_rank=0, environ={}, interval_s=10.0, nvml=FakeNvml())
    sampler.start()
    time.sleep(0.05)
    began = time.monotonic()
    sampler.stop()
    assert time.monotonic() - began < 1.0


# --- summary arithmetic on hand-made samples ---------------------------------------------------


def _series(values: list[float], step_s: float = 0.1) -> tuple[tuple[float, float], ...]:
    return tuple((i * step_s, v) for i, v in enumerate(values))


def test_percentiles_and_mean() -> None:
    # 0, 10, ..., 100: p10 sits exactly on rank 1 (10), p90 on rank 9 (90).
    samples = GpuSamples(utilization_pct=_series([float(v) for v in range(100, -1, -10)]), duration_s=1.0)
    summary = summarize_gpu_samples(samples, tokens=1)
    assert (summary.util_mean_pct, summary.util_p10_pct, summary.util_p90_pct) == (50.0, 10.0, 90.0)

    # 0, 10, 20, 30: p10 at position 0.3 -> 3.0; p90 at position 2.7 -> 27.0 (linear interpolation).
    samples = GpuSamples(utilization_pct=_series([30.0, 0.0, 20.0, 10.0]), duration_s=0.4)
    summary = summarize_gpu_samples(samples, tokens=1)
    assert summary.util_p10_pct == pytest.approx(3.0)
    assert summary.util_p90_pct == pytest.approx(27.0)
    assert summary.util_mean_pct == pytest.approx(15.0)


def test_power_integral_by_hand() -> None:
    # Trapezoids: 0-1 s at (100+200)/2 = 150 J, 1-2 s at 200 J: 350 J.
    samples = GpuSamples(
        utilization_pct=_series([50.0, 50.0, 50.0], step_s=1.0),
        memory_used_bytes=((0.0, 5), (1.0, 9), (2.0, 7)),
        power_w=((0.0, 100.0), (1.0, 200.0), (2.0, 200.0)),
        duration_s=2.0,
        disabled={"energy": "nvmlDeviceGetTotalEnergyConsumption failed: Not Supported"},
    )
    summary = summarize_gpu_samples(samples, tokens=700)
    assert summary.energy_j == pytest.approx(350.0)
    assert summary.energy_source == "power_integral"
    assert summary.energy_j_per_token == pytest.approx(0.5)
    assert summary.memory_used_peak_bytes == 9
    assert summary.power_mean_w == pytest.approx(500.0 / 3)


def test_no_energy_at_all_says_why() -> None:
    samples = GpuSamples(
        utilization_pct=_series([1.0]),
        memory_used_bytes=((0.0, 1),),
        disabled={
            "energy": "nvmlDeviceGetTotalEnergyConsumption failed: Not Supported",
            "power": "nvmlDeviceGetPowerUsage failed: Not Supported",
        },
    )
    summary = summarize_gpu_samples(samples, tokens=5)
    assert summary.energy_j is None and summary.energy_source is None and summary.energy_j_per_token is None
    assert summary.power_mean_w is None
    assert summary.unavailable_reason is not None
    assert "power: nvmlDeviceGetPowerUsage failed: Not Supported" in summary.unavailable_reason
    assert "energy: nvmlDeviceGetTotalEnergyConsumption failed: Not Supported" in summary.unavailable_reason


def test_zero_tokens_leaves_energy_per_token_unmeasured() -> None:
    samples = GpuSamples(power_w=((0.0, 1.0), (1.0, 1.0)), energy_counter_start_j=1.0, energy_counter_stop_j=3.0)
    summary = summarize_gpu_samples(samples, tokens=0)
    assert summary.energy_j == 2.0 and summary.energy_j_per_token is None
    with pytest.raises(ValueError):
        summarize_gpu_samples(samples, tokens=-1)


def test_batches_without_tokens_get_energy_per_sample_only() -> None:
    samples = GpuSamples(power_w=((0.0, 1.0), (1.0, 1.0)), energy_counter_start_j=1.0, energy_counter_stop_j=3.0)
    images = summarize_gpu_samples(samples, tokens=None, data_samples=8)
    assert images.energy_j == 2.0 and images.energy_j_per_token is None and images.energy_j_per_sample == 0.25
    # No tokens is what the batches are, not a failed reading: the reason names only the series left empty here.
    assert "energy" not in (images.unavailable_reason or "")
    text = summarize_gpu_samples(samples, tokens=40, data_samples=8)
    assert text.energy_j_per_token == 0.05 and text.energy_j_per_sample == 0.25
