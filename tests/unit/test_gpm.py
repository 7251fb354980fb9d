"""NVML GPM figures (SM activity, occupancy, tensor activity, DRAM bandwidth) through GpuSampler, driven by a fake
NVML that mirrors pynvml's GPM API (tests/helpers/fake_nvml.py); their absence with a reason; the "busy but SMs
idle" fact in the recommendation, report and console."""

from __future__ import annotations

import dataclasses
import inspect
import io
import time
from pathlib import Path

import pynvml
import pytest
from rich.console import Console

from helpers.fake_nvml import GPM_FUNCTIONS, NVML_ERROR_NOT_SUPPORTED, FakeNvml
from result_factory import make_result, make_window
from trainer_tune.measure.record import WindowRecord
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.explain.report import build_report
from trainer_tune.measure.cpu_usage import CpuUtilization
from trainer_tune.explain.matrix import BUSY_UTIL_PCT, IDLE_SM_ACTIVE_PCT, explain, sms_mostly_idle
from trainer_tune.measure.figures import GpuFigures
from trainer_tune.measure.gpm import GPM_FIELDS, GPM_METRICS, GPM_MIN_INTERVAL_S, summarize_gpm
from trainer_tune.measure.gpu_sampler import GpuSampler, GpuSummary, summarize_gpu_samples
from trainer_tune.evidence.estimate import aggregate_windows
from trainer_tune.measure.summarize import combine_gpu
from trainer_tune.sinks.wandb_sink import summary_figures
from trainer_tune.evidence.comparison import compare
from trainer_tune.decide.verdict import decide
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.report import write_report
from trainer_tune.measure.telemetry import RankTelemetry

ACTIVITY = {"NVML_GPM_METRIC_SM_UTIL": 23.0, "NVML_GPM_METRIC_SM_OCCUPANCY": 12.0,
            "NVML_GPM_METRIC_ANY_TENSOR_UTIL": 4.0, "NVML_GPM_METRIC_DRAM_BW_UTIL": 31.0}
"""A GPU whose kernels keep it "busy" (utilization 97% in the fake) on a quarter of its SMs."""


def _window(nvml: FakeNvml, *, local_rank: int = 0, seconds: float = 0.45,
            interval_s: float = 0.05) -> tuple[GpuSummary, GpuSampler]:
    """One measured window of `seconds` on the fake, sampled every `interval_s` (faster than GPM may be read)."""
    sampler = GpuSampler(local_rank=local_rank, interval_s=interval_s, environ={}, nvml=nvml)
    sampler.start()
    time.sleep(seconds)
    samples = sampler.stop()
    intervals = [end - start for series in samples.gpm_pct.values() for start, end, _ in series]
    assert all(length >= GPM_MIN_INTERVAL_S for length in intervals), intervals
    return summarize_gpu_samples(samples, tokens=1000, data_samples=8), sampler


# --- the fake is pynvml's shape ----------------------------------------------------------------------------------
def test_fake_nvml_mirrors_pynvml_gpm_api() -> None:
    fake = FakeNvml()
    used = (*GPM_FUNCTIONS, "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetTotalEnergyConsumption")
    for name in used:
        assert list(inspect.signature(getattr(fake, name)).parameters) == \
            list(inspect.signature(getattr(pynvml, name)).parameters), name
    # Constants and structs are pynvml's own, and every metric the sampler reads exists in this nvidia-ml-py.
    assert fake.c_nvmlGpmMetricsGet_t is pynvml.c_nvmlGpmMetricsGet_t
    assert fake.NVML_GPM_METRICS_GET_VERSION == pynvml.NVML_GPM_METRICS_GET_VERSION
    for constant in GPM_METRICS.values():
        assert getattr(fake, constant) == getattr(pynvml, constant)
    assert str(fake.NVMLError(NVML_ERROR_NOT_SUPPORTED)) == str(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED))


# --- figures with GPM ----------------------------------------------------------------------------------------------
def test_sampler_reads_gpm_beside_utilization() -> None:
    nvml = FakeNvml(utilization_pct=97)
    nvml.set_activity(0, **ACTIVITY)
    summary, sampler = _window(nvml)
    assert summary.util_mean_pct == 97.0 and summary.unavailable_reason is None
    assert summary.sm_active_mean_pct == pytest.approx(23.0)
    assert summary.sm_occupancy_mean_pct == pytest.approx(12.0)
    assert summary.tensor_active_mean_pct == pytest.approx(4.0)
    assert summary.dram_bw_mean_pct == pytest.approx(31.0)
    assert summary.gpm_note is None
    assert set(nvml.metrics_get_versions) == {pynvml.NVML_GPM_METRICS_GET_VERSION}
    # A second window counts from its own first sample, not from the end of the last one.
    nvml.set_activity(0, NVML_GPM_METRIC_SM_UTIL=88.0)
    sampler.start()
    time.sleep(0.35)
    second = summarize_gpu_samples(sampler.stop(), tokens=1000)
    assert second.sm_active_mean_pct == pytest.approx(88.0)
    sampler.close()
    assert nvml.calls["nvmlGpmSampleAlloc"] == 2 and not nvml.live_buffers  # two buffers, both freed


def test_gpm_mean_weights_each_interval_by_its_length() -> None:
    series = {name: ((0.0, 0.1, 80.0), (0.1, 0.3, 20.0)) for name in GPM_METRICS}
    means, note = summarize_gpm(series, disabled={}, unavailable_reason=None, duration_s=0.3)
    assert note is None
    assert means["sm_active_mean_pct"] == pytest.approx((0.1 * 80 + 0.2 * 20) / 0.3)  # 40, not the plain mean 50


def test_gpm_figures_combine_over_ranks_and_windows() -> None:
    nvml = FakeNvml()
    nvml.set_activity(0, **ACTIVITY)
    nvml.set_activity(1, **(ACTIVITY | {"NVML_GPM_METRIC_SM_UTIL": 41.0}))
    ranks = [_window(nvml, local_rank=rank)[0] for rank in (0, 1)]
    # Across the store as the ranks send them.
    cpu = CpuUtilization(process_pct=None, system_pct=None, num_logical_cpus=None, duration_s=0.45,
                         unavailable_reason="not read")
    ranks = [RankTelemetry.from_json_dict(RankTelemetry(cpu=cpu, gpu=r).to_json_dict()).gpu for r in ranks]
    combined, note = combine_gpu(ranks, tokens=2000, samples=16)
    assert note is None and combined is not None
    assert combined.sm_active_mean_pct == pytest.approx(32.0)  # per-GPU mean
    assert combined.tensor_active_mean_pct == pytest.approx(4.0) and combined.gpm_note is None
    # A rank without a figure: the trial has none, never a partial mean.
    lacking = dataclasses.replace(ranks[1], sm_active_mean_pct=None, gpm_note="sm_active: Not Supported")
    partial, _ = combine_gpu([ranks[0], lacking], tokens=2000, samples=16)
    assert partial is not None and partial.sm_active_mean_pct is None and partial.gpm_note == "sm_active: Not Supported"
    assert partial.dram_bw_mean_pct == pytest.approx(31.0)
    # Over a setting's windows: the mean of the windows', and into the flat figures a wandb trial run logs.
    windows = [dataclasses.replace(make_window(index=0, key="k", round_id=f"r{i}"),
                                   gpu=dataclasses.replace(combined, sm_active_mean_pct=value))
               for i, value in enumerate((30.0, 34.0))]
    setting = aggregate_windows(windows)
    assert setting.gpu is not None and setting.gpu.sm_active_mean_pct == pytest.approx(32.0)
    figures = summary_figures(setting)
    assert figures["gpu_sm_active_mean_pct"] == pytest.approx(32.0)
    assert {f"gpu_{name}" for name in GPM_FIELDS} <= set(figures)
    # And back from the journal.
    again = WindowRecord.from_json_dict(windows[0].to_json_dict())
    assert again.gpu == windows[0].gpu


# --- no GPM: None with the reason, never 0, never a crash ----------------------------------------------------------
@pytest.mark.parametrize(("fake", "reason"), [
    (FakeNvml(gpm_api=False), "has no GPM API"),
    (FakeNvml(gpm_driver=False), "nvmlGpmQueryDeviceSupport failed: Function Not Found"),
    (FakeNvml(gpm_supported=False), "GPM is not supported on this GPU"),
], ids=["old nvidia-ml-py", "old driver", "before Hopper"])
def test_without_gpm_the_figures_are_none_with_the_reason(fake: FakeNvml, reason: str) -> None:
    summary, sampler = _window(fake, seconds=0.25)
    assert summary.util_mean_pct == 97.0 and summary.unavailable_reason is None  # the rest is measured as before
    for name in GPM_FIELDS:
        assert getattr(summary, name) is None, name
    assert summary.gpm_note is not None and reason in summary.gpm_note
    combined, note = combine_gpu([summary], tokens=1000, samples=8)
    assert combined is not None and note is None and combined.sm_active_mean_pct is None
    assert combined.gpm_note is not None and reason in combined.gpm_note
    sampler.close()
    assert not fake.live_buffers


def test_a_metric_nvml_refuses_is_none_and_the_others_are_measured() -> None:
    nvml = FakeNvml(metric_errors={pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: NVML_ERROR_NOT_SUPPORTED})
    nvml.set_activity(0, **ACTIVITY)
    summary, _ = _window(nvml, seconds=0.3)
    assert summary.sm_occupancy_mean_pct is None
    assert summary.gpm_note == "sm_occupancy: nvmlGpmMetricsGet NVML_GPM_METRIC_SM_OCCUPANCY: Not Supported"
    assert summary.sm_active_mean_pct == pytest.approx(23.0)


def test_gpm_failing_mid_run_turns_gpm_off_not_the_sampler() -> None:
    nvml = FakeNvml(sample_fails_after=2)
    nvml.set_activity(0, **ACTIVITY)
    summary, sampler = _window(nvml, seconds=0.45)
    assert summary.sm_active_mean_pct is None and summary.gpm_note == "GPM sampling failed: GPU is lost"
    assert summary.util_mean_pct == 97.0
    sampler.start()  # off for the sampler's lifetime: the next window says so too
    time.sleep(0.15)
    later = summarize_gpu_samples(sampler.stop(), tokens=1)
    assert later.gpm_note == "GPM sampling failed: GPU is lost" and later.util_mean_pct == 97.0


def test_an_unexpected_gpm_error_turns_off_gpm_only(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml()

    def broken(metricsGet: object) -> None:
        raise TypeError("expected c_nvmlGpmMetricsGet_t")

    monkeypatch.setattr(nvml, "nvmlGpmMetricsGet", broken)
    summary, _ = _window(nvml, seconds=0.3)
    assert summary.gpm_note == "GPM sampling failed: expected c_nvmlGpmMetricsGet_t"
    assert summary.unavailable_reason is None and summary.util_mean_pct == 97.0 and summary.power_mean_w == 300.0


def test_a_window_shorter_than_two_gpm_samples_says_so() -> None:
    nvml = FakeNvml()
    nvml.set_activity(0, **ACTIVITY)
    sampler = GpuSampler(local_rank=0, interval_s=0.05, environ={}, nvml=nvml)
    sampler.start()
    summary = summarize_gpu_samples(sampler.stop(), tokens=10)
    assert summary.sm_active_mean_pct is None
    assert summary.gpm_note is not None and "no two GPM samples 100 ms apart" in summary.gpm_note


# --- busy but SMs idle ------------------------------------------------------------------------------------------------
def _gpu(util: float | None, sm_active: float | None) -> GpuFigures:
    return GpuFigures(util_mean_pct=util, util_p10_pct=None, util_p90_pct=None, memory_used_peak_bytes=None,
                      power_mean_w=None, energy_j=None, energy_j_per_token=None, energy_source=None, per_rank=(),
                      sm_active_mean_pct=sm_active, tensor_active_mean_pct=4.0 if sm_active is not None else None)


@pytest.mark.parametrize(("util", "sm_active", "flagged"), [
    (BUSY_UTIL_PCT, IDLE_SM_ACTIVE_PCT - 0.1, True),
    (BUSY_UTIL_PCT - 0.1, 5.0, False),       # not busy: low SM activity is just an idle GPU
    (99.0, IDLE_SM_ACTIVE_PCT, False),       # SMs busy enough
    (99.0, None, False),                     # no GPM (before Hopper): no verdict, not a guess
    (None, 10.0, False),
])
def test_busy_but_idle_rule(util: float | None, sm_active: float | None, flagged: bool) -> None:
    assert sms_mostly_idle(_gpu(util, sm_active)) is flagged
    assert sms_mostly_idle(None) is False


def test_busy_gpu_with_idle_sms_is_a_fact_in_the_report_and_a_console_note(tmp_path: Path) -> None:
    # Figures from the fake, through the sampler and the combination, as a sweep gets them.
    nvml = FakeNvml(utilization_pct=97)
    nvml.set_activity(0, **ACTIVITY)
    nvml.set_activity(1, **(ACTIVITY | {"NVML_GPM_METRIC_SM_UTIL": 85.0}))
    idle, _ = combine_gpu([_window(nvml, local_rank=0)[0]], tokens=1000, samples=8)
    busy, _ = combine_gpu([_window(nvml, local_rank=1)[0]], tokens=1000, samples=8)
    results = [dataclasses.replace(make_result(index=0, key="2x1", micro_batch_size=2, is_baseline=True), gpu=idle),
               dataclasses.replace(make_result(index=1, key="4x1", micro_batch_size=4, tokens_per_s=1500.0),
                                   gpu=busy)]
    facts = explain(results, compare=compare).facts
    assert [f for f in facts if f.startswith("GPU busy")] == [
        "GPU busy 97% but SMs active 23%, tensor cores active 4% at 2x1: utilization counts any kernel running, "
        "so kernels ran on few SMs or waited (communication, launches)"]
    rec = decide(results, args=RecommendArgs())
    assert build_report(rec).explanations is not None and build_report(rec).explanations.sms_mostly_idle == ("2x1",)
    report = write_report(tmp_path, results, build_report(rec)).report.read_text()
    assert "- GPU busy 97% but SMs active 23%" in report
    details = report[report.index("### Details"):]
    header = next(line for line in details.splitlines() if line.startswith("| #"))
    assert "| SM active % | tensor active % |" in header
    out = io.StringIO()
    ConsoleSink(enabled=True, console=Console(file=out, width=120)).show(results, build_report(rec))
    assert "note: GPU busy but most SMs idle (NVML GPM) at 2x1: see report.md" in out.getvalue()


def test_without_gpm_no_fact_and_no_column(tmp_path: Path) -> None:
    results = [dataclasses.replace(make_result(index=0, key="2x1", is_baseline=True), gpu=_gpu(97.0, None))]
    rec = decide(results, args=RecommendArgs())
    assert build_report(rec).explanations is not None and build_report(rec).explanations.sms_mostly_idle == ()
    report = write_report(tmp_path, results, build_report(rec)).report.read_text()
    assert "GPU busy" not in report and "| SM active % |" not in report
