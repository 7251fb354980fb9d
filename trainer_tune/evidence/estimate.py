"""A setting's evidence: its windows aggregated into one estimate (rate, interval over windows, peaks, latency,
energy), and the sweep's noise floor that every interval and comparison respects."""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from trainer_tune.evidence.stats import geometric_mean, log_t_interval, noise_floor
from trainer_tune.measure.figures import FLOP_COUNTER, CompileFigures, CpuFigures, GpuFigures, MfuFigures, NoiseFloor
from trainer_tune.measure.noise_estimate import pool as pool_noise_scale
from trainer_tune.measure.record import SAMPLES, MeasuredFigures, Status, WindowRecord, shared_figures
from trainer_tune.measure.step_stats import StepTimeStats, latency_figures
from trainer_tune.measure.gpm import GPM_FIELDS
from trainer_tune.measure.summarize import mean_of_known as _mean, total_of_known as _total


@dataclass(frozen=True, kw_only=True)
class SettingEstimate(MeasuredFigures):
    """One setting over its windows: the evidence stage's record, what the decision, the explanations and every
    sink read. trial_key is the setting's key; rates are geometric means over the windows, throughput_ci95 is
    Student's t over them (never narrower than the sweep's noise floor), peaks are the highest window's, step
    times pool every window's steps. Built by aggregate_windows and, for goodput, noise_scale.with_goodput (which
    makes a new estimate); nothing writes into one."""

    window_throughput_per_s: dict[str, float] = field(default_factory=dict)
    """throughput_per_s of each clean window of this setting, keyed by round id: what comparison.compare pairs."""
    window_p99_ms: dict[str, float] = field(default_factory=dict)
    """Each clean window's p99 latency per batch (mode=inference), by round id: what comparison.compare_lower pairs
    for recommend.objective=latency."""
    window_energy_j_per_sample: dict[str, float] = field(default_factory=dict)
    """Each clean window's energy per sample where it was measured, by round id (recommend.objective=energy)."""
    num_windows: int = 1
    """The clean windows behind this estimate."""
    noise: Optional[NoiseFloor] = None
    """The sweep's noise floor its interval and its comparisons respect (evidence/stats.py)."""
    statistical_efficiency: Optional[float] = None
    """What one of its samples is worth against one at the
    baseline's global batch, (B_noise + B0) / (B_noise + B) with the sweep's B_noise (noise_scale.py); None
    where B_noise was not measured."""
    statistical_efficiency_ci95: Optional[list[float]] = None
    """statistical_efficiency at the ends of the sweep's B_noise 95% interval."""
    goodput_samples_per_s: Optional[float] = None
    """samples_per_s x statistical_efficiency (Pollux's goodput); None without an efficiency."""
    goodput_tokens_per_s: Optional[float] = None
    """tokens_per_s x statistical_efficiency; None without tokens or without an efficiency."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ok and self.throughput_per_s is not None and not self.window_throughput_per_s:
            raise ValueError(f"a setting that finished ({self.label}) needs its windows' rates by round")

    @property
    def goodput_per_s(self) -> Optional[float]:
        """throughput_per_s times statistical_efficiency, in throughput_unit per second."""
        return self.goodput_samples_per_s if self.throughput_unit == SAMPLES else self.goodput_tokens_per_s

    def rates_by_round(self) -> dict[str, float]:
        """throughput_per_s of each clean window by round id: what evidence/comparison.py pairs."""
        return self.window_throughput_per_s

    def goodput_rates_by_round(self) -> dict[str, float]:
        """rates_by_round times statistical_efficiency (a constant of the setting); empty without one."""
        if self.statistical_efficiency is None:
            return {}
        return {r: v * self.statistical_efficiency for r, v in self.rates_by_round().items()}


def _estimate(base: MeasuredFigures, **fields: Any) -> SettingEstimate:
    return SettingEstimate(**{**shared_figures(base), **fields})


def estimate_of_window(window: WindowRecord) -> SettingEstimate:
    """A record from before rounds stands for its setting: one window, its own rate."""
    p99, energy = _lower_figures_by_round([window] if window.ok else [])
    return _estimate(window, window_throughput_per_s=window.rates_by_round(), num_windows=1 if window.ok else 0,
                     window_p99_ms=p99, window_energy_j_per_sample=energy)


def _lower_figures_by_round(clean: Sequence[WindowRecord]) -> tuple[dict[str, float], dict[str, float]]:
    """(p99 ms, energy J per sample) of each clean window that has one, by round id."""
    p99 = {w.round_id or w.trial_key: w.latency.p99_ms for w in clean if w.latency is not None}
    energy = {w.round_id or w.trial_key: w.energy_j_per_sample for w in clean
              if w.energy_j_per_sample is not None and w.energy_j_per_sample > 0}
    return p99, energy


def aggregate_windows(windows: Sequence[WindowRecord], *, noise: Optional[NoiseFloor] = None) -> SettingEstimate:
    """One setting's result from its windows (one per round): the record the decision and the sinks read.

    tokens/s is the geometric mean of the windows' rates and its interval Student's t over them (stats.py says
    why the window, not the step, is the unit); every window's rate stays in `window_throughput_per_s` by round,
    which is what comparison.compare pairs; `noise` is the sweep's noise floor (evidence/stats.noise_floor), below which
    neither the interval nor a comparison may shrink. Step-time figures pool the windows' steps; memory is the highest
    window's; energy is summed. A setting with any window that did not finish cleanly takes that window's
    status: a setting that fails in one round of five is not one to train with."""
    if not windows:
        raise ValueError("a setting's result needs at least one window")
    ordered = sorted(windows, key=lambda w: w.started_at)
    first = ordered[0]
    clean = [w for w in ordered if w.ok and w.throughput_per_s is not None]
    rates = {r: v for w in clean for r, v in w.rates_by_round().items()}
    p99, energy = _lower_figures_by_round(clean)
    common: dict[str, Any] = dict(window_p99_ms=p99, window_energy_j_per_sample=energy,
        trial_key=first.setting_key or first.trial_key,
        started_at=first.started_at, finished_at=ordered[-1].finished_at,
        wall_s=math.fsum(w.wall_s or 0.0 for w in ordered), num_windows=len(clean), window_throughput_per_s=rates,
        noise=noise)
    failed = [w for w in ordered if not w.ok]
    if failed:
        worst = max(failed, key=lambda w: Status[w.status].value)
        where = f"round {worst.round_id}: " if worst.round_id else ""
        return _estimate(worst, **common, error=f"{where}{worst.error}" if worst.error else worst.error)
    interval = log_t_interval(list(rates.values()), floor=noise)  # type: ignore[arg-type]
    step_times_s = tuple(t for w in ordered for t in w.step_times_s)
    # Every rate is the geometric mean of the windows' own (the decision's is the mean of `rates`, the same).
    samples_per_s = _geometric_mean_or_none([w.samples_per_s for w in ordered])
    tokens_per_s = _geometric_mean_or_none([w.tokens_per_s for w in ordered])
    measured_s = math.fsum(w.measured_s or 0.0 for w in ordered)
    waits = [w.data_wait_fraction * w.measured_s for w in ordered
             if w.data_wait_fraction is not None and w.measured_s is not None]
    peaks = [w.peak_memory_bytes for w in ordered]
    peak_index = max(range(len(ordered)), key=lambda i: peaks[i] or -1)
    return _estimate(
        first, **common,
        tokens_per_s=tokens_per_s, samples_per_s=samples_per_s,
        throughput_ci95=list(interval) if interval is not None else None,
        tokens_per_step=_mean([w.tokens_per_step for w in ordered]), measured_s=measured_s,
        data_wait_fraction=math.fsum(waits) / measured_s if len(waits) == len(ordered) and measured_s else None,
        data_wait_s_median=_median_or_none([w.data_wait_s_median for w in ordered]),
        step_time_s=StepTimeStats.of(step_times_s) if step_times_s else first.step_time_s,
        latency=latency_figures(step_times_s) if first.latency is not None and step_times_s else first.latency,
        energy_j_per_sample=_energy_over_windows(ordered),
        num_measured_steps=sum(w.num_measured_steps for w in ordered),
        num_warmup_steps=sum(w.num_warmup_steps for w in ordered),
        warmup_s=math.fsum(w.warmup_s or 0.0 for w in ordered),
        loss_first=first.loss_first, loss_last=ordered[-1].loss_last,
        peak_memory_bytes=ordered[peak_index].peak_memory_bytes,
        peak_memory_source=ordered[peak_index].peak_memory_source,
        peak_memory_allocated_bytes=_max_or_none([w.peak_memory_allocated_bytes for w in ordered]),
        peak_memory_reserved_bytes=_max_or_none([w.peak_memory_reserved_bytes for w in ordered]),
        num_outlier_steps=sum(w.num_outlier_steps or 0 for w in ordered),
        window_stop="; ".join(f"{w.round_id}: {w.window_stop}" for w in ordered),
        comm=next((w.comm for w in ordered if w.comm is not None), None),
        mfu=_rescaled_mfu(first.mfu, samples_per_s=samples_per_s, first_samples_per_s=first.samples_per_s,
                          tokens_per_s=tokens_per_s),
        gpu=_gpu_over_windows(ordered), cpu=_cpu_over_windows(ordered),
        noise_scale=pool_noise_scale([w.noise_scale for w in ordered]),
        noise_read_at_start=True if any(w.noise_read_at_start for w in ordered) else None,
        compile_s=max((w.compile_s for w in ordered if w.compile_s is not None), default=None),
        compile_note=None if any(w.compile_s is not None for w in ordered) else first.compile_note,
        compile=_compile_over_windows(ordered),
        step_times_s=step_times_s, losses=tuple(x for w in ordered for x in w.losses),
        nsa_aux_stats=tuple(s for w in ordered for s in w.nsa_aux_stats))


def _compile_over_windows(ordered: Sequence[WindowRecord]) -> Optional[CompileFigures]:
    """A setting's compile counts: its windows' recompiles summed, the most graph breaks, fallen back to eager if
    any window was (unknown only when every window's is)."""
    counts = [w.compile for w in ordered if w.compile is not None]
    if not counts:
        return None
    breaks = [c.graph_breaks for c in counts if c.graph_breaks is not None]
    fallbacks = [c.fell_back_to_eager for c in counts if c.fell_back_to_eager is not None]
    return CompileFigures(recompiles_measured=sum(c.recompiles_measured for c in counts),
                          graph_breaks=max(breaks) if breaks else None,
                          fell_back_to_eager=any(fallbacks) if fallbacks else None)


def aggregate_by_setting(windows: Sequence[WindowRecord]) -> list[SettingEstimate]:
    """Each setting's result from a journal's windows (several jobs' windows of one setting together), in plan
    order. A record without a setting key (written before rounds) stands for itself."""
    groups: dict[str, list[WindowRecord]] = {}
    settings = [estimate_of_window(w) for w in windows if w.setting_key is None]
    for window in windows:
        if window.setting_key is not None:
            groups.setdefault(window.setting_key, []).append(window)
    noise = sweep_noise(groups)
    return sorted(settings + [aggregate_windows(group, noise=noise) for group in groups.values()],
                  key=lambda r: r.index)


def sweep_noise(windows_by_setting: Mapping[str, Sequence[WindowRecord]]) -> Optional[NoiseFloor]:
    """The noise floor of a sweep from every setting's clean windows (evidence/stats.noise_floor)."""
    baseline = next((key for key, group in windows_by_setting.items() if any(w.is_baseline for w in group)), "")
    rates = {key: {r: v for w in group for r, v in w.rates_by_round().items()}
             for key, group in windows_by_setting.items()}
    return noise_floor(rates, baseline=baseline)


def _energy_over_windows(windows: Sequence[WindowRecord]) -> Optional[float]:
    """Energy summed over windows per sample summed over windows; None unless every window measured it."""
    energies = [w.energy_j_per_sample for w in windows]
    samples = [(w.samples_per_s or 0.0) * (w.measured_s or 0.0) for w in windows]
    if not energies or any(e is None for e in energies) or not all(samples):
        return None
    return math.fsum(e * n for e, n in zip(energies, samples)) / math.fsum(samples)  # type: ignore[operator]


def _geometric_mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    return geometric_mean(values) if values and all(v for v in values) else None  # type: ignore[arg-type]


def _median_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    return statistics.median(values) if values and all(v is not None for v in values) else None  # type: ignore


def _max_or_none(values: Sequence[Optional[int]]) -> Optional[int]:
    return max(v for v in values if v is not None) if values and all(v is not None for v in values) else None


def _rescaled_mfu(figures: Optional[MfuFigures], *, samples_per_s: Optional[float],
                  first_samples_per_s: Optional[float], tokens_per_s: Optional[float]) -> Optional[MfuFigures]:
    """MFU figures scale with samples/s: the first window's, moved to the setting's samples/s. A counted step's
    FLOPs per token follow the setting's tokens per sample (padding varies it); the formula's are fixed."""
    if figures is None or not samples_per_s or not first_samples_per_s:
        return figures
    scale = samples_per_s / first_samples_per_s
    flops_per_token = figures.flops_per_token
    if figures.flops_source == FLOP_COUNTER and figures.flops_per_sample is not None:
        flops_per_token = figures.flops_per_sample * samples_per_s / tokens_per_s if tokens_per_s else None
    return dataclasses.replace(
        figures, flops_per_token=flops_per_token, achieved_tflops=figures.achieved_tflops * scale,
        achieved_tflops_per_device=figures.achieved_tflops_per_device * scale,
        mfu=figures.mfu * scale if figures.mfu is not None else None,
        mfu_raw=figures.mfu_raw * scale if figures.mfu_raw is not None else None)


def _gpu_over_windows(windows: Sequence[WindowRecord]) -> Optional[GpuFigures]:
    """Utilization and power averaged over windows, memory the highest window's, energy summed over windows
    and divided by all their tokens and samples; None unless every window has GPU figures."""
    figures = [w.gpu for w in windows]
    if not figures or any(g is None for g in figures):
        return None
    gpus = [g for g in figures if g is not None]
    energy_j = _total([g.energy_j for g in gpus])
    tokens = math.fsum((w.tokens_per_step or 0.0) * w.num_measured_steps for w in windows)
    samples = sum(w.global_batch_size * w.num_measured_steps for w in windows)
    peaks = [g.memory_used_peak_bytes for g in gpus]
    return dataclasses.replace(
        gpus[0], util_mean_pct=_mean([g.util_mean_pct for g in gpus]),
        util_p10_pct=_mean([g.util_p10_pct for g in gpus]), util_p90_pct=_mean([g.util_p90_pct for g in gpus]),
        memory_used_peak_bytes=_max_or_none(peaks), power_mean_w=_mean([g.power_mean_w for g in gpus]),
        energy_j=energy_j, energy_j_per_token=energy_j / tokens if energy_j is not None and tokens else None,
        energy_j_per_sample=energy_j / samples if energy_j is not None and samples else None,
        num_alloc_retries=_int_total([g.num_alloc_retries for g in gpus]),
        num_ooms=_int_total([g.num_ooms for g in gpus]),
        **{name: _mean([getattr(g, name) for g in gpus]) for name in GPM_FIELDS},
        gpm_note="; ".join(sorted({g.gpm_note for g in gpus if g.gpm_note})) or None)


def _int_total(values: Sequence[Optional[int]]) -> Optional[int]:
    return sum(v for v in values if v is not None) if values and all(v is not None for v in values) else None


def _cpu_over_windows(windows: Sequence[WindowRecord]) -> Optional[CpuFigures]:
    figures = [w.cpu for w in windows]
    if not figures or any(c is None for c in figures):
        return None
    cpus = [c for c in figures if c is not None]
    return dataclasses.replace(cpus[0], process_pct_mean=_mean([c.process_pct_mean for c in cpus]),
                               system_pct_mean=_mean([c.system_pct_mean for c in cpus]))
