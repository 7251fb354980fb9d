"""WindowRecord: one window of one setting, the record written as one journal line and read back on resume.

Everything the decision or a sink reads is a typed field; `extra` holds only diagnostics for people (DDP's
applied settings, each failed rank's traceback). Journal lines written before the typed fields (no
`record_version`) are read back into them by `_upgrade_v1`.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from trainer_tune.measure.figures import (
    CommSplit, CompileFigures, CpuFigures, GpuFigures, LatencyFigures, MfuFigures, NoiseScaleFigures, from_fields, peak_memory)
from trainer_tune.config.flags import KEYED_WHEN_SET, TrialFlags
from trainer_tune.platform.fingerprint import Fingerprint
from trainer_tune.platform.finite import NON_FINITE_KEY, finite_only
from trainer_tune.measure.step_stats import StepTimeStats

RECORD_VERSION = 6
"""6: a window's steps run uninterrupted (no within-window interval: throughput_ci95 is None on a window), and it
records `syncs_in_window`, `lifetime` (the process group that measured it) and dynamo's counts in `compile`
(which replaced num_graphs_compiled_measured).
5: each window carries the fingerprint of the machine and software that measured it (older lines have none).
4: one record per stage: a window's line holds the window alone (round, setting key and figures); the
setting-level fields (window_throughput_per_s, num_windows, noise, statistical efficiency, goodput) are
SettingEstimate's (evidence/estimate.py) and are dropped from older lines on read.
3: the decision's rate has a unit (throughput_unit; throughput_ci95 and window_throughput_per_s were
tokens_per_s_ci95 and window_tokens_per_s), tokens may be absent, the input pipeline's wait is recorded.
2: step times, losses, telemetry and the one peak memory figure are typed fields (1: some were in `extra`)."""


class Status(Enum):
    """Trial outcomes, ordered by severity: ranks agree on the worst one any of them saw."""

    ok = 0
    nan = 1
    oom = 2
    error = 3
    stalled = 4
    """No progress for watchdog.abort_after_s; the process was ended and restarted."""
    crashed = 5
    """The group died during the trial (a rank was killed or exited) and was restarted."""


SAMPLES = "samples"
TOKENS = "tokens"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True, kw_only=True)
class MeasuredFigures:
    """The figures a window measures and a setting's estimate aggregates over its windows: the fields that
    WindowRecord (one window, this module) and SettingEstimate (one setting, evidence/estimate.py) share. Never
    built on its own."""

    trial_key: str
    index: int
    label: str
    is_baseline: bool
    status: str
    """A `Status` name: ok, nan, oom, error, stalled or crashed."""
    micro_batch_size: int
    grad_accum: int
    world_size: int
    global_batch_size: int
    """Samples per optimizer step over all ranks: micro_batch_size * grad_accum * world_size."""
    tokens_per_step: Optional[float]
    """Tokens per optimizer step over all ranks (the mean over measured steps: padding makes it vary); None when
    the batches carry no tokens or the trial did not finish."""
    flags: TrialFlags
    """The knobs of the setting, typed (config/flags.py); labels are rendered from them and never parsed back."""
    environment: dict[str, str]
    """The NSA_* variables exported to the training processes during the trial."""
    tokens_per_s: Optional[float]
    """Tokens per second over all ranks (workloads/batch.py says what counts); None for batches without tokens."""
    samples_per_s: Optional[float]
    measured_s: Optional[float]
    """Total time of the measured steps on the slowest rank: the denominator of every rate."""
    step_time_s: Optional[StepTimeStats]
    num_warmup_steps: int
    num_measured_steps: int
    warmup_s: Optional[float]
    loss_first: Optional[float]
    loss_last: Optional[float]
    peak_memory_bytes: Optional[int]
    """THE peak memory of one device (figures.peak_memory: allocator reserved, else NVML used; on a CPU the
    training process's peak resident memory growth), highest rank; what the decision and every sink use."""
    peak_memory_source: Optional[str]
    """Where peak_memory_bytes comes from: figures.ALLOCATOR_RESERVED, NVML_USED or RSS_GROWTH; None with it."""
    peak_memory_allocated_bytes: Optional[int]
    """The allocator's allocated peak (CUDA), highest rank: recorded, never the figure."""
    peak_memory_reserved_bytes: Optional[int]
    peak_memory_note: Optional[str]
    """Why there is no peak memory (e.g. a CPU device); None when measured."""
    num_parameters: Optional[int]
    model: str
    device: str
    backend: Optional[str]
    torch_version: str
    started_at: str
    finished_at: str
    error: Optional[str] = None
    """What went wrong, for a trial whose status is not ok (the first line of the exception, by rank)."""
    throughput_unit: str = "tokens"
    """What the decision compares: `samples`, `tokens`, or throughput.count.unit; throughput_per_s reads it."""
    count_unit: str = "tokens"
    """What tokens_per_s counts: tokens, or throughput.count.unit (frames, patches) when a count of your own
    replaces the token rule; the sinks name the tokens_per_s figure by it."""
    throughput_ci95: Optional[list[float]] = None
    """[low, high] 95% interval of throughput_per_s: a window's from the block bootstrap over its steps, a
    setting's from Student's t over its windows."""
    window_stop: Optional[str] = None
    """Why the measured steps ended (interval reached, a cap, or a fixed window)."""
    num_outlier_steps: Optional[int] = None
    """Measured steps slower than median + 5 MAD: counted in every figure, shown here, never dropped."""
    gpu: Optional[GpuFigures] = None
    """GPU readings over the measured steps, combined over ranks (see summarize.combine_gpu); None without NVML,
    with the reason in gpu_note."""
    gpu_note: Optional[str] = None
    cpu: Optional[CpuFigures] = None
    mfu: Optional[MfuFigures] = None
    """Achieved FLOP/s and MFU (summarize.mfu_figures); None when there is no FLOP count, with the reason in
    mfu_note."""
    comm: Optional[CommSplit] = None
    """Compute vs communication split (summarize.comm_split); exposed means not hidden behind backward compute.
    None when not measured (one rank, or window.comm_split_steps=0)."""
    step_times_s: tuple[float, ...] = ()
    """Per measured step, the slowest rank's time: the step-time distribution and the bootstrap intervals."""
    losses: tuple[Optional[float], ...] = ()
    """Per measured step, the loss averaged over micro-steps and ranks; None where it was not finite."""
    nsa_aux_stats: tuple[dict[str, float], ...] = ()
    """Per measured step, the NSA auxiliary statistics by name (averaged over ranks); empty when off."""
    gpu_utilization_series: tuple[tuple[float, float], ...] = ()
    """(seconds since the measured steps began, GPU utilization %) samples of rank 0; empty without NVML."""
    device_memory_bytes: Optional[int] = None
    """Total memory of one device (CUDA), for recommend.max_memory_fraction; None elsewhere."""
    data_wait_fraction: Optional[float] = None
    """Share of the measured time the slowest rank spent waiting for its batches (fetching from the source and
    moving to the device); high means the setting is input-bound."""
    data_wait_s_median: Optional[float] = None
    """Median per measured step of the slowest rank's wait for batches."""
    mode: str = "train"
    """train, or inference (every rank a serving replica; step times are per-batch latencies)."""
    latency: Optional[LatencyFigures] = None
    """mode=inference: per-batch latency percentiles of the slowest replica (step_stats.latency_figures)."""
    energy_j_per_sample: Optional[float] = None
    """Energy of the whole job over the measured steps per sample (NVML on GPUs, RAPL on CPUs: energy_source);
    None where not measured, with the reason in energy_note, never zero."""
    energy_source: Optional[str] = None
    energy_note: Optional[str] = None
    wall_s: Optional[float] = None
    """Wall time the window took on rank 0: model build, warm-up, measured and comm-split steps. What
    sweep.budget_s counts; summed over windows for a setting."""
    run_overrides: tuple[str, ...] = ()
    """Hydra overrides that compose this result's run again (model, data, loss, train, window, dist,
    telemetry), without the setting and the sweep (rerun.py); empty in journals from before them."""
    mfu_note: Optional[str] = None
    """Why mfu is None: e.g. FlopCounterMode could not count the step (absent in journals from before it)."""
    noise_scale: Optional[NoiseScaleFigures] = None
    """The gradient noise scale B_noise from this window's noise steps (window.noise_steps), or the setting's
    windows pooled; None where not measured, with the reason in noise_scale_note."""
    noise_scale_note: Optional[str] = None
    noise_read_at_start: Optional[bool] = None
    """True where the noise steps ran at the setting's initial weights, before any other step (record version 6);
    None for lines from before, whose noise steps ran after the window's measured steps."""
    compile_s: Optional[float] = None
    """torch.compile's compile time (compile_payback.compile_seconds: the build window's warm-up beyond as many
    measured steps), never in any rate; None for an eager setting, a kept trainer's later window (compile_note),
    or journals from before it. A setting's is its costliest build's."""
    compile_note: Optional[str] = None
    """For a compiled setting: why compile_s is None."""
    compile: Optional[CompileFigures] = None
    """dynamo's counts for a torch.compile'd setting (recompiles during measured steps, graph breaks, eager
    fallback), the most over ranks; a setting's sums its windows' recompiles. None for an eager setting."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Diagnostics for people, read by no decision and no sink: `ddp_applied`, `tracebacks`."""
    non_finite: list[str] = field(default_factory=list)
    """Paths of figures that were not finite numbers (NaN, inf) and are None instead, e.g.
    extra.nsa_aux_stats[3].gate_entropy after a diverged loss (the trial's status then says nan)."""

    def __post_init__(self) -> None:
        # A record never holds a NaN: every sink and the journal (strict JSON) see the same None, fresh or resumed.
        for f in dataclasses.fields(self):
            if f.name == NON_FINITE_KEY:
                continue
            cleaned, bad = finite_only(getattr(self, f.name), path=f.name)
            if bad:
                object.__setattr__(self, f.name, cleaned)
                object.__setattr__(self, NON_FINITE_KEY, [*self.non_finite, *bad])

    @property
    def ok(self) -> bool:
        return self.status == Status.ok.name

    @property
    def throughput_per_s(self) -> Optional[float]:
        """The rate the decision compares, in throughput_unit per second."""
        return self.samples_per_s if self.throughput_unit == SAMPLES else self.tokens_per_s

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def shared_figures(record: MeasuredFigures) -> dict[str, Any]:
    """The MeasuredFigures fields of `record`, by name: what a SettingEstimate starts from."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(MeasuredFigures)}


@dataclass(frozen=True, kw_only=True)
class WindowRecord(MeasuredFigures):
    """One window of one setting, agreed by all ranks: the measure stage's record and one line of the journal.
    Intervals over windows, goodput and comparisons are evidence's (evidence/estimate.py); no field here is
    filled by a later stage."""

    round_id: Optional[str] = None
    """The round this window was measured in (`r0`, `r1`, ...; `job2/r0` in a multirun job); None in journals
    from before rounds."""
    setting_key: Optional[str] = None
    """The key of the setting this window measures (trial_key is the window's own key); None in journals from
    before rounds, where a record stands for its setting."""
    fingerprint: Optional[Fingerprint] = None
    """The machine and software the window was measured on (platform/fingerprint.py); None in lines from before
    record version 5."""
    lifetime: Optional[str] = None
    """The process group that measured the window (run/sweep.py): windows of different lifetimes are never
    paired in one round. None in lines from before record version 6."""
    syncs_in_window: Optional[int] = None
    """The tuner's own synchronising calls between the window's two synchronisations (platform/syncs.py): 0 for a
    training window. None in lines from before record version 6."""
    record_version: int = RECORD_VERSION

    def rates_by_round(self) -> dict[str, float]:
        """This window's rate by its round id (its own key in journals from before rounds); empty unless it
        finished cleanly with a rate."""
        if self.ok and self.throughput_per_s:
            return {self.round_id or self.trial_key: self.throughput_per_s}
        return {}

    @staticmethod
    def from_json_dict(data: dict[str, Any]) -> "WindowRecord":
        if data.get("record_version", 1) < 2:
            data = _upgrade_v1(data)
        if data.get("record_version", 1) < 3:
            data = _upgrade_v2(data)
        if data.get("record_version", 1) < 4:
            data = _upgrade_v3(data)
        if data.get("record_version", 1) < 6:
            data = _upgrade_v5(data)
        required = {f.name for f in dataclasses.fields(WindowRecord)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = required - set(data)
        if missing:
            raise ValueError(f"missing fields {sorted(missing)}")
        typed = {"step_time_s": lambda v: from_fields(StepTimeStats, v), "gpu": GpuFigures.from_json_dict,
                 "cpu": CpuFigures.from_json_dict, "comm": lambda v: from_fields(CommSplit, v),
                 "mfu": lambda v: from_fields(MfuFigures, v), "step_times_s": tuple, "losses": tuple,
                 "nsa_aux_stats": tuple, "run_overrides": tuple, "gpu_utilization_series": lambda v: tuple(tuple(p) for p in v),
                 "latency": lambda v: from_fields(LatencyFigures, v),
                 "noise_scale": NoiseScaleFigures.from_json_dict, "fingerprint": Fingerprint.from_json_dict,
                 "compile": lambda v: from_fields(CompileFigures, v)}
        values = dict(data)
        # Lines from before data.num_workers was one of the flags: their batches were made in the training
        # process unless data.num_workers said otherwise, which they did not record with the setting.
        # Likewise the train.* knobs (compile, activation checkpointing, precision) before they were flags: those
        # lines measured the defaults unless train.precision said otherwise (kept in their run's config).
        values["flags"] = TrialFlags(**{"num_workers": 0, **KEYED_WHEN_SET, **(values.get("flags") or {})})
        for name, build in typed.items():
            if values.get(name) is not None:
                values[name] = build(values[name])
        return from_fields(WindowRecord, values)


SETTING_ONLY_FIELDS = ("window_throughput_per_s", "num_windows", "noise", "statistical_efficiency",
                       "statistical_efficiency_ci95", "goodput_samples_per_s", "goodput_tokens_per_s")
"""Fields version 3 lines carried on every record and version 4 keeps only on a setting's estimate."""


def _upgrade_v5(data: dict[str, Any]) -> dict[str, Any]:
    """A line from before version 6 (5 only added the optional fingerprint): its count of graphs compiled during
    measured steps moves into `compile`, with graph breaks and fallback unknown."""
    data = dict(data)
    graphs = data.pop("num_graphs_compiled_measured", None)
    if graphs is not None:
        data["compile"] = {"recompiles_measured": graphs, "graph_breaks": None, "fell_back_to_eager": None}
    data["record_version"] = RECORD_VERSION
    return data


def _upgrade_v3(data: dict[str, Any]) -> dict[str, Any]:
    """A journal line from before one record per stage: the setting-level fields it carried (empty or defaults on
    a window) belong to SettingEstimate now."""
    data = {k: v for k, v in data.items() if k not in SETTING_ONLY_FIELDS}
    data["record_version"] = 4
    return data


def _upgrade_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A journal line from before units: its rates were tokens/s, under the old names."""
    data = dict(data)
    data["throughput_unit"] = TOKENS
    data["throughput_ci95"] = data.pop("tokens_per_s_ci95", None)
    data.pop("window_tokens_per_s", None)
    data["record_version"] = 3
    return data


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A journal line from before the typed fields: the same figures, moved where version 2 keeps them.

    Its `peak_memory_bytes` was the allocated peak; the figure is now chosen by figures.peak_memory from the
    readings the line holds (reserved, NVML), as if the trial had been measured today.
    """
    data = dict(data)
    extra = dict(data.get("extra") or {})
    for name in ("step_times_s", "losses", "nsa_aux_stats", "gpu_utilization_series", "device_memory_bytes"):
        if name in extra:
            value = extra.pop(name)
            if value is not None:
                data[name] = value
    data["extra"] = extra
    data["peak_memory_allocated_bytes"] = data.get("peak_memory_bytes")
    nvml_used_bytes = (data.get("gpu") or {}).get("memory_used_peak_bytes")
    data["peak_memory_bytes"], data["peak_memory_source"] = peak_memory(
        reserved_bytes=data.get("peak_memory_reserved_bytes"), nvml_used_bytes=nvml_used_bytes)
    data["record_version"] = 2
    return data
