"""The typed figures a trial records beside its throughput: peak memory (one definition), GPU and CPU readings
combined over ranks, the compute vs communication split, MFU.

Data only: measure/summarize.py computes them when it builds a WindowRecord (measure/record.py), the decision and the sinks read their fields.
They become plain dicts only where they cross the journal (JSON), and `from_json_dict` builds them back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from trainer_tune.measure.cpu_usage import CpuUtilization
from trainer_tune.measure.gpu_sampler import GpuSummary

T = TypeVar("T")


def from_fields(cls: type[T], data: dict[str, Any]) -> T:
    """`cls` from a JSON dict, keeping the keys it knows (a record written by a later version may have more)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


# --- peak memory ------------------------------------------------------------------------------------------
ALLOCATOR_RESERVED = "allocator_reserved"
NVML_USED = "nvml_used"
RSS_GROWTH = "rss_growth"
MEMORY_SOURCES = {
    ALLOCATOR_RESERVED: "reserved by the CUDA caching allocator (torch.cuda.max_memory_reserved), highest rank",
    NVML_USED: "GPU memory used as NVML reports it (board-wide: the CUDA context and other processes too), "
               "highest GPU",
    RSS_GROWTH: "growth of the training process's resident memory (peak RSS over the window that built the "
                "trainer minus RSS before it; host_memory.py), highest rank",
}
"""Each source of WindowRecord.peak_memory_bytes, as every sink names it."""


def peak_memory(*, reserved_bytes: Optional[int], nvml_used_bytes: Optional[int],
                rss_growth_bytes: Optional[int] = None) -> tuple[Optional[int], Optional[str]]:
    """THE peak memory of a trial, and its source: the one definition the decision and every sink use.

    The caching allocator's reserved peak first: it is what the process really held on the device (allocated
    tensors plus the cached blocks around them), so it is what runs out when a setting OOMs and what
    recommend.max_memory_fraction must be compared with. The allocated peak is smaller by the allocator's
    fragmentation and cache, so it would let a setting pass that is in fact close to OOM: it is recorded
    (WindowRecord.peak_memory_allocated_bytes) but never the figure. Without allocator statistics, NVML's used
    memory is the only reading left; it is larger (the CUDA context, other processes on the board), so it errs
    on the safe side. Neither (a CPU): the training processes' peak resident memory growth (host_memory.py),
    measured on CPU devices only; without it None, and WindowRecord.peak_memory_note says why.
    """
    if reserved_bytes is not None:
        return reserved_bytes, ALLOCATOR_RESERVED
    if nvml_used_bytes is not None:
        return nvml_used_bytes, NVML_USED
    if rss_growth_bytes is not None:
        return rss_growth_bytes, RSS_GROWTH
    return None, None


def describe_memory_source(source: Optional[str]) -> str:
    return MEMORY_SOURCES.get(source or "", "not measured")


# --- GPU and CPU readings, combined over ranks --------------------------------------------------------------
@dataclass(frozen=True)
class GpuFigures:
    """The GPU figures of a trial, combined over ranks (summarize.combine_gpu says how); None where any rank
    could not read one."""

    util_mean_pct: Optional[float]
    util_p10_pct: Optional[float]
    """The ranks' own p10 utilization, averaged over ranks (not a percentile over ranks and time)."""
    util_p90_pct: Optional[float]
    memory_used_peak_bytes: Optional[int]
    """NVML's used memory, the highest GPU's (board-wide); WindowRecord.peak_memory_bytes is the figure to use."""
    power_mean_w: Optional[float]
    energy_j: Optional[float]
    """Summed over GPUs: the whole job's energy over the measured steps."""
    energy_j_per_token: Optional[float]
    """energy_j over every rank's tokens; None for batches without tokens."""
    energy_source: Optional[str]
    per_rank: tuple[GpuSummary, ...]
    num_alloc_retries: Optional[int] = None
    """cudaMalloc retries of the caching allocator summed over ranks (CUDA only): memory pressure short of OOM."""
    num_ooms: Optional[int] = None
    energy_j_per_sample: Optional[float] = None
    """energy_j over every rank's samples: the energy figure of every workload (images have no tokens)."""
    sm_active_mean_pct: Optional[float] = None
    """NVML GPM (Hopper and newer, gpm.py): share of SMs busy, mean over GPUs; what utilization overstates."""
    sm_occupancy_mean_pct: Optional[float] = None
    """NVML GPM: resident warps vs the SMs' maximum, mean over GPUs."""
    tensor_active_mean_pct: Optional[float] = None
    """NVML GPM: time the SMs ran any tensor-core instruction, mean over GPUs."""
    dram_bw_mean_pct: Optional[float] = None
    """NVML GPM: DRAM bandwidth used vs its maximum, mean over GPUs."""
    gpm_note: Optional[str] = None
    """Why a GPM figure is None (no GPM before Hopper, a metric failed on a rank); None when all were measured."""

    @staticmethod
    def from_json_dict(data: dict[str, Any]) -> "GpuFigures":
        per_rank = tuple(from_fields(GpuSummary, r) for r in data.get("per_rank") or ())
        return from_fields(GpuFigures, data | {"per_rank": per_rank})


@dataclass(frozen=True)
class CpuFigures:
    """CPU utilization of the training processes (mean over ranks) and of the machine."""

    process_pct_mean: Optional[float]
    system_pct_mean: Optional[float]
    per_rank: tuple[CpuUtilization, ...]

    @staticmethod
    def from_json_dict(data: dict[str, Any]) -> "CpuFigures":
        per_rank = tuple(from_fields(CpuUtilization, r) for r in data.get("per_rank") or ())
        return from_fields(CpuFigures, data | {"per_rank": per_rank})


# --- compute vs communication, MFU ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CommSplit:
    """Compute vs communication from synced and no-sync steps of one trial (summarize.comm_split)."""

    step_time_sync_s: float
    """Median of the measured steps (gradients all-reduced)."""
    step_time_no_sync_s: float
    """Median of the extra steps with gradient sync off."""
    exposed_comm_s: float
    """Their difference, 0 when negative: the communication the backward pass did not hide."""
    exposed_comm_fraction: float
    """exposed_comm_s / step_time_sync_s."""
    num_no_sync_steps: int
    within_noise: bool
    """The gap is inside the synced steps' own spread: not distinguishable from 0."""


ANALYTIC = "analytic"
"""MfuFigures.flops_source: flops.gpt_flops_per_token, the built-in GPT's formula."""
FLOP_COUNTER = "FlopCounterMode"
"""MfuFigures.flops_source: torch's FlopCounterMode over one micro-step (flop_count.py)."""


@dataclass(frozen=True)
class MfuFigures:
    """Achieved model FLOP/s and MFU (docs/measurement.md, "FLOPs of any model")."""

    flops_per_token: Optional[float]
    """Training FLOPs per token; None for batches without tokens."""
    achieved_tflops: float
    """flops_per_sample x samples/s: model TFLOP/s summed over all devices."""
    achieved_tflops_per_device: float
    peak_tflops_per_device: Optional[float]
    mfu: Optional[float]
    """None when not trustworthy (no peak, a ratio above 1, a partial FLOP count), with the reason in `warning`."""
    mfu_raw: Optional[float]
    warning: Optional[str]
    flops_per_sample: Optional[float] = None
    """Training FLOPs (forward and backward) per sample: the figure behind achieved_tflops. None in records from
    before it (their flops_per_token was the figure)."""
    flops_source: str = ANALYTIC
    """Where flops_per_sample comes from: ANALYTIC (the built-in GPT) or FLOP_COUNTER (every other step)."""
    count_note: Optional[str] = None
    """With FLOP_COUNTER: the ops the count left out (no formula, counted as 0), so flops_per_sample is a lower
    bound and mfu is None; None when nothing was left out."""


# --- latency (mode=inference) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyFigures:
    """Per-batch serving latency, from taking the batch to its outputs being ready, of the slowest replica at each
    batch (the max over ranks), in milliseconds; pooled over a setting's windows."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    """The budget figure (recommend.max_batch_latency_ms). With fewer than 100 batches it interpolates towards the
    slowest one: `num_batches` says how much evidence stands behind it."""
    max_ms: float
    mean_ms: float
    num_batches: int


# --- gradient noise scale (noise_scale.py) -------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseScaleFigures:
    """The gradient noise scale B_noise = tr(Sigma) / |G|^2 (McCandlish et al. 2018), in samples, from the extra
    noise steps of a window, a setting's windows pooled, or a sweep's settings pooled (noise_scale.py)."""

    value: Optional[float]
    """trace_sigma_mean / g2_mean; None when either mean is not positive (then `note` says what that means)."""
    ci95: Optional[list[Optional[float]]]
    """[low, high] 95% interval of `value` (bootstrap over steps); high is None when the interval is unbounded
    above (|G|^2 not distinguishable from 0). None with fewer than two steps."""
    num_steps: int
    batch_sizes: tuple[int, ...]
    """The batch sizes (samples) whose squared gradient norms were read, over all steps pooled."""
    g2_mean: float
    """Mean over steps of the unbiased estimate of |G|^2, the true gradient's squared norm."""
    trace_sigma_mean: float
    """Mean over steps of the unbiased estimate of tr(Sigma), the per-sample gradient covariance's trace."""
    step_g2: tuple[float, ...] = ()
    """Per step, its |G|^2 estimate (may be negative): what pooling over windows and settings starts from."""
    step_trace_sigma: tuple[float, ...] = ()
    note: Optional[str] = None

    @staticmethod
    def from_json_dict(data: dict[str, Any]) -> "NoiseScaleFigures":
        return from_fields(NoiseScaleFigures, data | {
            "batch_sizes": tuple(data.get("batch_sizes") or ()), "step_g2": tuple(data.get("step_g2") or ()),
            "step_trace_sigma": tuple(data.get("step_trace_sigma") or ())})


@dataclass(frozen=True)
class CompileFigures:
    """What dynamo did for a torch.compile'd trainer (workloads/compile.DynamoCounts), as each window records it."""

    recompiles_measured: int
    """Graphs dynamo compiled during the measured steps (their time is then in the throughput); summed over a
    setting's windows."""
    graph_breaks: Optional[int]
    """Graph breaks dynamo reported since the trainer was built (None in lines from before they were recorded)."""
    fell_back_to_eager: Optional[bool]
    """dynamo gave up on a frame since the build (its recompile limit, say), which then runs eager: the setting
    is not the compiled model it claims to be."""

    def why_not_compiled(self) -> Optional[str]:
        """Why a setting with these counts is not eligible as compiled (decide/eligible.py), or None."""
        if self.fell_back_to_eager:
            return ("torch.compile fell back to eager (dynamo gave up on a frame, e.g. at its recompile limit): "
                    "not the compiled model it claims to be")
        if self.recompiles_measured:
            return (f"dynamo recompiled {self.recompiles_measured} graph(s) during measured steps: its rate holds "
                    f"compile time")
        return None


@dataclass(frozen=True)
class NoiseFloor:
    """The machine's noise on log throughput, estimated from every setting's windows in one sweep.

    A setting measured in 3 windows that happen to agree gets a narrow t-interval by luck, and a shared machine's
    noise is heavy-tailed (a burst of other load slows one window by half): three calm windows say little about
    the fourth. Every setting of a sweep runs on the same machine in the same rounds, so the sweep estimates its
    noise once, from all of them, with many degrees of freedom, and no interval is narrower than that floor.
    """

    window_log_sd: float
    """Pooled standard deviation of a setting's log window rates around its own mean (drift between rounds
    included): the floor of a setting's throughput interval."""
    window_df: int
    ratio_log_sd: float
    """Pooled standard deviation of a setting's per-round log ratio to the baseline (drift shared by a round
    cancels): the floor of a paired comparison's interval."""
    ratio_df: int
