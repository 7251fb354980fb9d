"""Builds SettingEstimate records for unit tests of the journal and the decision."""

from __future__ import annotations

import dataclasses
from typing import Optional

from trainer_tune.measure.cpu_usage import CpuUtilization
from trainer_tune.measure.figures import ALLOCATOR_RESERVED, CommSplit, GpuFigures
from trainer_tune.config.flags import TrialFlags, flags_to_environ
from trainer_tune.measure.gpu_sampler import GpuSummary
from trainer_tune.measure.summarize import TrialContext, result_from_window
from trainer_tune.plan import TrialSpec
from trainer_tune.measure.record import SAMPLES, WindowRecord, shared_figures
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.evidence.stats import geometric_mean
from trainer_tune.measure.step_stats import StepTimeStats
from trainer_tune.measure.telemetry import AllocatorCounts, RankTelemetry
from trainer_tune.measure.window import WindowMeasurement

GIB = 1024 ** 3
SEQ_LEN = 128
DEVICE_BYTES = 10 * GIB


def make_result(*, index: int, key: str, tokens_per_s: Optional[float] = 1000.0, status: str = "ok",
                micro_batch_size: int = 2, grad_accum: int = 1, world_size: int = 2, is_baseline: bool = False,
                flags: TrialFlags = TrialFlags(), step_times: Optional[list[float]] = None,
                ci: Optional[list[float]] = None, memory_bytes: Optional[int] = None,
                device_memory_bytes: Optional[int] = None,
                windows: Optional[dict[str, float]] = None) -> SettingEstimate:
    """A setting's result as estimate.aggregate_windows makes it. With `step_times`, tokens/s is what those steps
    sustain. `windows` are its tokens/s by round; by default three rounds at exactly tokens/s, so comparisons of
    two such results are exact (a zero-width interval) and ties only happen at equal figures."""
    ok = status == "ok"
    tokens_per_step = micro_batch_size * grad_accum * world_size * 128
    if step_times is not None:
        tokens_per_s = tokens_per_step * len(step_times) / sum(step_times)
    if windows is not None and ok:
        tokens_per_s = geometric_mean(list(windows.values()))
    elif ok and tokens_per_s is not None:
        windows = {f"r{i}": tokens_per_s for i in range(3)}
    return SettingEstimate(
        trial_key=key, index=index, label=f"{micro_batch_size}x{grad_accum}", is_baseline=is_baseline, status=status,
        micro_batch_size=micro_batch_size, grad_accum=grad_accum, world_size=world_size,
        global_batch_size=micro_batch_size * grad_accum * world_size,
        tokens_per_step=tokens_per_step, flags=flags, throughput_ci95=ci,
        environment=flags_to_environ(flags), tokens_per_s=tokens_per_s if ok else None,
        samples_per_s=tokens_per_s / 128 if ok and tokens_per_s else None, measured_s=0.33 if ok else None,
        step_time_s=StepTimeStats.of([0.1, 0.12, 0.11]) if ok else None, num_warmup_steps=1, num_measured_steps=3,
        warmup_s=0.3 if ok else None, loss_first=5.5 if ok else None, loss_last=5.4 if ok else None,
        peak_memory_bytes=memory_bytes, peak_memory_source=ALLOCATOR_RESERVED if memory_bytes is not None else None,
        peak_memory_allocated_bytes=memory_bytes, peak_memory_reserved_bytes=memory_bytes,
        peak_memory_note=None if memory_bytes is not None else "cpu",
        num_parameters=1000,
        model="tiny", device="cpu", backend="gloo", torch_version="2.13.0", started_at="t0", finished_at="t1",
        error=None if ok else f"{status} on rank 1",
        step_times_s=tuple(step_times or ()), device_memory_bytes=device_memory_bytes,
        window_throughput_per_s=dict(windows or {}) if ok else {}, num_windows=len(windows or {}) if ok else 0)


def make_window(*, round_id: str, setting_key: Optional[str] = None, **kwargs) -> WindowRecord:
    """One window of a setting (measure/record.py) with make_result's figures: `setting_key` defaults to the key."""
    setting = make_result(**kwargs)
    return WindowRecord(**shared_figures(setting), round_id=round_id,
                        setting_key=setting_key if setting_key is not None else setting.trial_key)


def as_setting(window: WindowRecord, rates_by_round: Optional[dict[str, float]] = None) -> SettingEstimate:
    """A setting's estimate with `window`'s figures and these window rates (by default the window's own)."""
    rates = rates_by_round if rates_by_round is not None else window.rates_by_round()
    return SettingEstimate(**shared_figures(window), window_throughput_per_s=dict(rates), num_windows=len(rates))


def make_gpu(*, util_mean_pct: Optional[float] = None, energy_j_per_token: Optional[float] = None,
             energy_source: Optional[str] = "counter", memory_used_peak_bytes: Optional[int] = None) -> GpuFigures:
    """GPU figures combined over ranks, None where not given."""
    return GpuFigures(util_mean_pct=util_mean_pct, util_p10_pct=None, util_p90_pct=None,
                      memory_used_peak_bytes=memory_used_peak_bytes, power_mean_w=None, energy_j=None,
                      energy_j_per_token=energy_j_per_token, energy_source=energy_source, per_rank=())


def make_comm(*, sync_s: float, no_sync_s: float, within_noise: bool = False) -> CommSplit:
    exposed_s = max(0.0, sync_s - no_sync_s)
    return CommSplit(step_time_sync_s=sync_s, step_time_no_sync_s=no_sync_s, exposed_comm_s=exposed_s,
                     exposed_comm_fraction=exposed_s / sync_s, num_no_sync_steps=5, within_noise=within_noise)


def make_rank_telemetry(*, nvml_used_bytes: int) -> RankTelemetry:
    gpu = GpuSummary(util_mean_pct=90.0, util_p10_pct=80.0, util_p90_pct=95.0, memory_used_peak_bytes=nvml_used_bytes,
                     power_mean_w=400.0, energy_j=100.0, energy_source="counter", energy_j_per_token=0.01,
                     num_samples=10, duration_s=1.0, unavailable_reason=None)
    cpu = CpuUtilization(process_pct=100.0, system_pct=30.0, num_logical_cpus=16, duration_s=1.0,
                         unavailable_reason=None)
    return RankTelemetry(cpu=cpu, gpu=gpu, gpu_utilization_series=((0.0, 90.0), (0.1, 91.0)),
                         cuda_allocator=AllocatorCounts(num_alloc_retries=0, num_ooms=0))


def make_measured(*, index: int, micro_batch_size: int, step_s: float, allocated_gib: float, reserved_gib: float,
                  nvml_gib: float, flags: TrialFlags = TrialFlags()) -> SettingEstimate:
    """A 2-rank CUDA trial built by summarize.result_from_window from its window and the ranks' readings, as a sweep
    builds it: every typed field set (comm split, NSA statistics, GPU and CPU figures)."""
    spec = TrialSpec(index=index, micro_batch_size=micro_batch_size, grad_accum=1, world_size=2, flags=flags,
                     is_baseline=index == 0, key=f"k{index}")
    times = tuple(step_s * (1 + 0.01 * (i % 3)) for i in range(8))
    tokens = spec.global_batch_size * SEQ_LEN * len(times)
    window = WindowMeasurement(
        step_times_s=times, measured_s=sum(times), tokens=tokens, samples=tokens // SEQ_LEN,
        losses=(5.0,) * len(times), warmup_s=0.5, peak_memory_bytes=int(allocated_gib * GIB),
        peak_memory_reserved_bytes=int(reserved_gib * GIB), peak_memory_note=None, num_parameters=1000,
        ddp_applied=None, stop_reason="fixed window of 8 steps", no_sync_step_times_s=(0.8 * step_s,) * 3,
        aux_stats=tuple({"selection_entropy": 1.5 + 0.1 * i} for i in range(len(times))))
    ctx = TrialContext(model_name="tiny", device="cuda:0", backend="nccl", num_warmup_steps=1,
                       num_measured_steps=len(times), label=spec.label(), device_memory_bytes=DEVICE_BYTES)
    # NVML's reading differs per rank: the trial's is the higher one.
    telemetry = [make_rank_telemetry(nvml_used_bytes=int(nvml_gib * GIB)),
                 make_rank_telemetry(nvml_used_bytes=int((nvml_gib - 0.25) * GIB))]
    return result_from_window(spec, window, ctx, started_at="t0", finished_at="t1", telemetry=telemetry)


def in_samples(result: SettingEstimate) -> SettingEstimate:
    """The same setting on batches that carry no tokens (images), decided in samples/s as summarize.decision_unit
    decides it: tokens_per_s is None, and every rate the decision reads (windows, interval) is samples per
    second (make_result's samples carry SEQ_LEN tokens each)."""
    per_sample = 1.0 / SEQ_LEN
    return dataclasses.replace(
        result, throughput_unit=SAMPLES, tokens_per_s=None, tokens_per_step=None,
        window_throughput_per_s={r: v * per_sample for r, v in result.window_throughput_per_s.items()},
        throughput_ci95=[v * per_sample for v in result.throughput_ci95] if result.throughput_ci95 else None)
