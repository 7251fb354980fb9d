"""Turns a measurement window into a trial result: the one place that computes reported figures."""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from trainer_tune.platform.fingerprint import Fingerprint
from trainer_tune.config.schema import Mode, ThroughputUnit
from trainer_tune.measure.cpu_usage import CpuUtilization
from trainer_tune.measure.figures import ANALYTIC, FLOP_COUNTER, CommSplit, CpuFigures, GpuFigures, MfuFigures, peak_memory
from trainer_tune.config.flags import flags_to_environ
from trainer_tune.measure.flops import mfu
from trainer_tune.measure.noise_estimate import estimate as estimate_noise_scale
from trainer_tune.measure.gpm import GPM_FIELDS
from trainer_tune.measure.gpu_sampler import GpuSummary
from trainer_tune.plan import TrialSpec
from trainer_tune.measure.rapl import CpuEnergy
from trainer_tune.measure.record import SAMPLES, TOKENS, Status, WindowRecord
from trainer_tune.measure.step_stats import StepTimeStats, count_outliers, latency_figures, quantile, throughput_per_s
from trainer_tune.measure.telemetry import RankTelemetry
from trainer_tune.measure.window import WindowMeasurement


@dataclass(frozen=True)
class TrialContext:
    """Facts about the run that every result records."""

    model_name: str
    device: str
    backend: Optional[str]
    num_warmup_steps: int
    num_measured_steps: int
    label: str
    flops_per_token: Optional[float] = None
    """Training FLOPs per token of the built-in GPT by its formula (flops.gpt_flops_per_token); None for every other
    step, whose FLOPs FlopCounterMode counts (WindowMeasurement.flops_per_sample)."""
    peak_tflops_per_device: Optional[float] = None
    peak_note: Optional[str] = None
    """Why there is no peak (so no MFU), e.g. an unknown device."""
    device_memory_bytes: Optional[int] = None
    """Total memory of one device (CUDA), for recommend.max_memory_fraction."""
    run_overrides: tuple[str, ...] = ()
    """Overrides that compose this run's configuration again, the sweep and the setting aside (rerun.py)."""
    throughput_unit: ThroughputUnit = ThroughputUnit.auto
    """throughput.unit: what the decision compares (auto: tokens when the batches carry them)."""
    count_unit: str = TOKENS
    """throughput.count.unit: the name of what tokens_per_s counts."""
    mode: Mode = Mode.train
    fingerprint: Optional[Fingerprint] = None
    """The machine and software the group measures on (platform/fingerprint.py), on every window it records."""
    lifetime: Optional[str] = None
    """The process group measuring (run/sweep.py): windows of two lifetimes are never paired in one round."""


def _finite_or_none(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def _base_fields(spec: TrialSpec, ctx: TrialContext, *, started_at: str, finished_at: str) -> dict:
    return dict(
        trial_key=spec.key, index=spec.index, label=ctx.label, is_baseline=spec.is_baseline,
        round_id=spec.round_id, setting_key=spec.setting_key,
        micro_batch_size=spec.micro_batch_size, grad_accum=spec.grad_accum, world_size=spec.world_size,
        global_batch_size=spec.global_batch_size,
        flags=spec.flags, environment=flags_to_environ(spec.flags), model=ctx.model_name,
        device=ctx.device, backend=ctx.backend, torch_version=torch.__version__,
        num_warmup_steps=ctx.num_warmup_steps, num_measured_steps=ctx.num_measured_steps,
        started_at=started_at, finished_at=finished_at, run_overrides=ctx.run_overrides, count_unit=ctx.count_unit,
        mode=ctx.mode.value, fingerprint=ctx.fingerprint, lifetime=ctx.lifetime)


def mean_of_known(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if len(present) == len(values) and present else None


def total_of_known(values: Sequence[Optional[float]]) -> Optional[float]:
    return math.fsum(values) if values and all(v is not None for v in values) else None  # type: ignore[arg-type]


def combine_gpu(per_rank: Sequence[Optional[GpuSummary]], *, tokens: Optional[int],
                samples: int) -> tuple[Optional[GpuFigures], Optional[str]]:
    """One GPU figure set for the trial from each rank's own GPU summary.

    Utilization and power are per-GPU means over ranks (the ranks' p10/p90 averaged: a rank that idles shows
    in `per_rank`); memory is the highest rank's; energy is summed over GPUs, so energy per token (None without
    tokens) and per sample are the whole job's. A figure any rank could not measure is None for the trial, never
    a partial sum.
    """
    if not per_rank or any(r is None for r in per_rank):
        return None, "GPU sampling was off (telemetry.gpu_sampling=false)"
    ranks = [r for r in per_rank if r is not None]
    reasons = {r.unavailable_reason for r in ranks if r.unavailable_reason}
    if all(r.num_samples is None for r in ranks):
        return None, "; ".join(sorted(reasons)) or "no GPU samples"
    energy_j = total_of_known([r.energy_j for r in ranks])
    peaks = [r.memory_used_peak_bytes for r in ranks]
    combined = GpuFigures(
        util_mean_pct=mean_of_known([r.util_mean_pct for r in ranks]),
        util_p10_pct=mean_of_known([r.util_p10_pct for r in ranks]),
        util_p90_pct=mean_of_known([r.util_p90_pct for r in ranks]),
        memory_used_peak_bytes=max(p for p in peaks if p is not None) if all(p is not None for p in peaks) else None,
        power_mean_w=mean_of_known([r.power_mean_w for r in ranks]),
        energy_j=energy_j,
        energy_j_per_token=energy_j / tokens if energy_j is not None and tokens else None,
        energy_j_per_sample=energy_j / samples if energy_j is not None and samples else None,
        energy_source=ranks[0].energy_source,
        per_rank=tuple(ranks),
        **{name: mean_of_known([getattr(r, name) for r in ranks]) for name in GPM_FIELDS},
        gpm_note="; ".join(sorted({r.gpm_note for r in ranks if r.gpm_note})) or None,
    )
    return combined, ("; ".join(sorted(reasons)) or None)


def combine_cpu(per_rank: Sequence[CpuUtilization]) -> CpuFigures:
    return CpuFigures(process_pct_mean=mean_of_known([r.process_pct for r in per_rank]),
                      system_pct_mean=mean_of_known([r.system_pct for r in per_rank]), per_rank=tuple(per_rank))


def mfu_figures(ctx: TrialContext, m: WindowMeasurement, *, samples_per_s: float,
                world_size: int) -> tuple[Optional[MfuFigures], Optional[str]]:
    """(MFU figures, why there are none) of a window: from the built-in GPT's formula, else from FlopCounterMode's
    count of one micro-step. A partial count (ops without a formula) gives its lower-bound FLOP/s and no MFU."""
    if ctx.flops_per_token is not None and m.tokens:
        flops_per_token: Optional[float] = ctx.flops_per_token
        flops_per_sample, source = ctx.flops_per_token * m.tokens / m.samples, ANALYTIC
    elif m.flops_per_sample:
        # Per token: the FLOPs of every sample fed over the tokens really fed (padding costs FLOPs but is no token).
        flops_per_token = m.flops_per_sample * m.samples / m.tokens if m.tokens else None
        flops_per_sample, source = m.flops_per_sample, FLOP_COUNTER
    elif m.flops_per_sample == 0:
        return None, "FlopCounterMode counted 0 FLOPs: the step runs no matrix product it knows"
    else:
        return None, m.flops_note or "no FLOP count for this step"
    result = mfu(flops_per_sample=flops_per_sample, samples_per_s=samples_per_s, num_devices=world_size,
                 peak_tflops_per_device=ctx.peak_tflops_per_device)
    value, warning = result.mfu, result.warning if ctx.peak_note is None else ctx.peak_note
    count_note = m.flops_note if source == FLOP_COUNTER else None
    if count_note is not None:
        value, warning = None, f"{count_note}; MFU not reported"
    return MfuFigures(flops_per_token=flops_per_token, flops_per_sample=flops_per_sample, flops_source=source,
                      count_note=count_note, achieved_tflops=result.achieved_tflops,
                      achieved_tflops_per_device=result.achieved_tflops_per_device,
                      peak_tflops_per_device=result.peak_tflops_per_device, mfu=value, mfu_raw=result.mfu_raw,
                      warning=warning), None


def combine_cpu_energy(telemetry: Sequence[RankTelemetry]) -> CpuEnergy:
    """The job's CPU package energy: the sum of the nodes' readings (each node's local rank 0 reads its own);
    None when any node could not read it."""
    readings = [t.cpu_energy for t in telemetry if t.cpu_energy is not None]
    if not readings:
        return CpuEnergy(energy_j=None, note="CPU energy not measured: no rank read RAPL")
    missing = [r.note for r in readings if r.energy_j is None]
    if missing:
        return CpuEnergy(energy_j=None, note=missing[0])
    return CpuEnergy(energy_j=math.fsum(r.energy_j for r in readings), note=readings[0].note)  # type: ignore


def _combine_telemetry(telemetry: Sequence[Optional[RankTelemetry]], *, tokens: Optional[int],
                       samples: int) -> tuple[Optional[GpuFigures], Optional[str], Optional[CpuFigures]]:
    """(GPU figures, why there are none, CPU figures) from every rank's readings; all or nothing."""
    if not telemetry or any(t is None for t in telemetry):
        return None, "not sampled", None
    ranks = [t for t in telemetry if t is not None]
    gpu, gpu_note = combine_gpu([t.gpu for t in ranks], tokens=tokens, samples=samples)
    allocator = [t.cuda_allocator for t in ranks]
    if gpu is not None and all(a is not None for a in allocator):
        gpu = dataclasses.replace(gpu, num_alloc_retries=sum(a.num_alloc_retries for a in allocator if a),
                                  num_ooms=sum(a.num_ooms for a in allocator if a))
    return gpu, gpu_note, combine_cpu([t.cpu for t in ranks])


def result_from_window(spec: TrialSpec, m: WindowMeasurement, ctx: TrialContext, *,
                       started_at: str, finished_at: str,
                       telemetry: Sequence[Optional[RankTelemetry]] = ()) -> WindowRecord:
    status, error = Status.ok, None
    bad_steps = [i for i, loss in enumerate(m.losses) if not math.isfinite(loss)]
    if bad_steps:
        # A diverged setting is never recommendable, however fast it ran.
        status, error = Status.nan, f"loss was not finite at measured step(s) {bad_steps}"
    expected_samples = spec.global_batch_size * len(m.step_times_s)
    if m.samples != expected_samples:
        raise AssertionError(f"counted {m.samples} samples, the plan implies {expected_samples}")
    unit, unit_error = decision_unit(ctx.throughput_unit, has_tokens=m.tokens is not None, count_unit=ctx.count_unit)
    if unit_error is not None and status == Status.ok:
        status, error = Status.error, unit_error
    samples_per_s = throughput_per_s(m.samples, m.measured_s)
    tokens_per_s = throughput_per_s(m.tokens, m.measured_s) if m.tokens is not None else None
    gpu, gpu_note, cpu = _combine_telemetry(telemetry, tokens=m.tokens, samples=m.samples)
    mfu_info, mfu_note = mfu_figures(ctx, m, samples_per_s=samples_per_s, world_size=spec.world_size) \
        if samples_per_s else (None, "no samples measured")
    cpu_energy = combine_cpu_energy([t for t in telemetry if t is not None]) if telemetry and all(telemetry) \
        else CpuEnergy(energy_j=None, note="CPU energy not measured: not sampled")
    energy_per_sample, energy_source, energy_note = energy_per_sample_of(
        gpu, gpu_note, cpu_energy, samples=m.samples, on_gpu=ctx.device.startswith("cuda"))
    memory_bytes, memory_source = peak_memory(reserved_bytes=m.peak_memory_reserved_bytes,
                                              nvml_used_bytes=gpu.memory_used_peak_bytes if gpu else None,
                                              rss_growth_bytes=m.rss_growth_bytes)
    rank0 = telemetry[0] if telemetry else None
    return WindowRecord(
        **(_base_fields(spec, ctx, started_at=started_at, finished_at=finished_at)
           | {"num_measured_steps": len(m.step_times_s), "num_warmup_steps": m.num_warmup_steps}),
        status=status.name, error=error, gpu=gpu, gpu_note=gpu_note, cpu=cpu,
        throughput_unit=unit,
        tokens_per_step=m.tokens / len(m.step_times_s) if m.tokens is not None else None,
        data_wait_fraction=math.fsum(m.data_wait_s) / m.measured_s if m.data_wait_s and m.measured_s else None,
        data_wait_s_median=statistics.median(m.data_wait_s) if m.data_wait_s else None,
        window_stop=m.stop_reason, num_outlier_steps=count_outliers(m.step_times_s),
        comm=comm_split(sync_step_times_s=m.step_times_s, no_sync_step_times_s=m.no_sync_step_times_s),
        mfu=mfu_info, mfu_note=mfu_note,
        tokens_per_s=tokens_per_s, samples_per_s=samples_per_s, measured_s=m.measured_s,
        step_time_s=StepTimeStats.of(m.step_times_s), warmup_s=m.warmup_s,
        loss_first=_finite_or_none(m.losses[0]) if m.losses else None,
        loss_last=_finite_or_none(m.losses[-1]) if m.losses else None,
        energy_j_per_sample=energy_per_sample, energy_source=energy_source, energy_note=energy_note,
        latency=latency_figures(m.step_times_s) if ctx.mode == Mode.inference else None,
        peak_memory_bytes=memory_bytes, peak_memory_source=memory_source,
        peak_memory_allocated_bytes=m.peak_memory_bytes, peak_memory_reserved_bytes=m.peak_memory_reserved_bytes,
        peak_memory_note=None if memory_bytes is not None else m.peak_memory_note,
        num_parameters=m.num_parameters,
        step_times_s=tuple(m.step_times_s), losses=tuple(_finite_or_none(x) for x in m.losses),
        nsa_aux_stats=tuple(dict(s) for s in m.aux_stats), device_memory_bytes=ctx.device_memory_bytes,
        gpu_utilization_series=rank0.gpu_utilization_series if rank0 is not None else (),
        noise_scale=estimate_noise_scale(m.noise_readings) if m.noise_readings else None,
        noise_scale_note=m.noise_note, noise_read_at_start=True if m.noise_readings else None, **compile_figures(m), syncs_in_window=m.syncs_in_window,
        extra={"ddp_applied": m.ddp_applied})


def compile_seconds(*, warmup_s: float, num_warmup_steps: int, step_times_s: Sequence[float]) -> Optional[float]:
    """compile_s of a window that built a compiled trainer (see the module docstring); never below 0. None without
    measured steps to compare the warm-up with."""
    if not step_times_s:
        return None
    return max(0.0, warmup_s - num_warmup_steps * statistics.median(step_times_s))


def compile_figures(m: WindowMeasurement) -> dict[str, Any]:
    """A window's compile_s, compile_note and compile counts (WindowRecord); nothing when eager."""
    if not m.compiled:
        return {}
    compile_s = compile_seconds(warmup_s=m.warmup_s, num_warmup_steps=m.num_warmup_steps,
                                step_times_s=m.step_times_s) if m.compiled_build else None
    note = None if m.compiled_build else "compiled when its trainer was built, in an earlier window"
    return {"compile_s": compile_s, "compile_note": note,
            "compile": m.compile}


def energy_per_sample_of(gpu: Optional[GpuFigures], gpu_note: Optional[str], cpu_energy: CpuEnergy, *,
                         samples: int, on_gpu: bool) -> tuple[Optional[float], Optional[str], Optional[str]]:
    """(joules per sample, source, why not measured) over the measured steps: on GPUs their energy (NVML,
    summed over GPUs; the host CPUs are not added), on CPUs the nodes' package energy (RAPL, rapl.py)."""
    if not samples:
        return None, None, "no samples"
    if on_gpu:
        if gpu is not None and gpu.energy_j is not None:
            return gpu.energy_j / samples, f"NVML ({gpu.energy_source})", None
        return None, None, f"GPU energy not measured: {gpu_note or 'no energy reading'}"
    if cpu_energy.energy_j is not None:
        return cpu_energy.energy_j / samples, cpu_energy.note, None
    return None, None, cpu_energy.note


def decision_unit(setting: ThroughputUnit, *, has_tokens: bool, count_unit: str) -> tuple[str, Optional[str]]:
    """(the unit the decision compares, why the trial cannot be decided on it): throughput.unit resolved
    against what the batches carry. `count_unit` names what tokens_per_s counts (throughput.count.unit)."""
    if setting == ThroughputUnit.samples or (setting == ThroughputUnit.auto and not has_tokens):
        return SAMPLES, None
    if not has_tokens:
        return count_unit, (f"throughput.unit=tokens is not allowed for these batches: they carry no tokens (no "
                            f"attention_mask, input_ids or integer token ids); use throughput.unit=samples or "
                            f"count them with throughput.count._target_")
    return count_unit, None


def comm_split(*, sync_step_times_s: Sequence[float], no_sync_step_times_s: Sequence[float]) -> Optional[CommSplit]:
    """Compute vs communication from two kinds of steps of one trial: the measured ones (gradients
    all-reduced) and extra ones with sync off. The difference of their medians is the communication the
    backward pass did not hide (exposed), the part that costs step time; overlapped traffic is invisible here
    by design. A negative difference is noise around zero: exposed time is then reported as 0."""
    if len(no_sync_step_times_s) == 0 or len(sync_step_times_s) == 0:
        return None
    sync_s = statistics.median(sync_step_times_s)
    no_sync_s = statistics.median(no_sync_step_times_s)
    exposed_s = max(0.0, sync_s - no_sync_s)
    # Within noise: removing the sync moved the median by less than the synced steps' own p10..median spread.
    within_noise = no_sync_s >= quantile(sync_step_times_s, 0.1)
    return CommSplit(step_time_sync_s=sync_s, step_time_no_sync_s=no_sync_s, exposed_comm_s=exposed_s,
                     exposed_comm_fraction=exposed_s / sync_s, num_no_sync_steps=len(no_sync_step_times_s),
                     within_noise=within_noise)


def failed_result(spec: TrialSpec, ctx: TrialContext, *, status: Status, error: str,
                  started_at: str, finished_at: str, extra: Optional[dict] = None) -> WindowRecord:
    """A trial that produced no trustworthy measurement: every figure is None, never zero."""
    return WindowRecord(
        **_base_fields(spec, ctx, started_at=started_at, finished_at=finished_at),
        status=status.name, error=error, tokens_per_s=None, samples_per_s=None, measured_s=None, step_time_s=None,
        tokens_per_step=None,
        throughput_unit=SAMPLES if ctx.throughput_unit == ThroughputUnit.samples else ctx.count_unit,
        warmup_s=None, loss_first=None, loss_last=None, peak_memory_bytes=None, peak_memory_source=None,
        peak_memory_allocated_bytes=None, peak_memory_reserved_bytes=None,
        peak_memory_note="not measured: the trial did not finish", device_memory_bytes=ctx.device_memory_bytes,
        num_parameters=None, extra=extra or {})
