"""A trial's result: the record written as one journal line and read back on resume."""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from trainer_tune.finite import NON_FINITE_KEY, finite_only
from trainer_tune.stats import StepTimeStats


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


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class TrialResult:
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
    tokens_per_step: int
    flags: dict[str, Any]
    environment: dict[str, str]
    """The NSA_* variables exported to the training processes during the trial."""
    tokens_per_s: Optional[float]
    samples_per_s: Optional[float]
    measured_s: Optional[float]
    """Total time of the measured steps on the slowest rank; tokens_per_s = tokens_per_step * steps / this."""
    step_time_s: Optional[StepTimeStats]
    num_warmup_steps: int
    num_measured_steps: int
    warmup_s: Optional[float]
    loss_first: Optional[float]
    loss_last: Optional[float]
    peak_memory_bytes: Optional[int]
    peak_memory_reserved_bytes: Optional[int]
    peak_memory_note: Optional[str]
    num_parameters: Optional[int]
    model: str
    device: str
    backend: Optional[str]
    torch_version: str
    started_at: str
    finished_at: str
    error: Optional[str] = None
    """What went wrong, for a trial whose status is not ok (the first line of the exception, by rank)."""
    tokens_per_s_ci95: Optional[list[float]] = None
    """[low, high] 95% interval of tokens_per_s: block bootstrap over the measured steps."""
    window_stop: Optional[str] = None
    """Why the measured steps ended (interval reached, a cap, or a fixed window)."""
    window_cut_short: bool = False
    """strategy=adaptive ended this window early: its interval could not reach the best one before it."""
    num_outlier_steps: Optional[int] = None
    """Measured steps slower than median + 5 MAD: counted in every figure, shown here, never dropped."""
    gpu: Optional[dict[str, Any]] = None
    """GPU readings over the measured steps, combined over ranks (see metrics.combine_gpu); None without NVML,
    with the reason in gpu_note."""
    gpu_note: Optional[str] = None
    cpu: Optional[dict[str, Any]] = None
    """CPU utilization of the training processes (mean over ranks) and of the machine."""
    mfu: Optional[dict[str, Any]] = None
    """flops_per_token, achieved_tflops, peak_tflops_per_device, mfu (None when not trustworthy), warning."""
    comm: Optional[dict[str, Any]] = None
    """Compute vs communication split (see window.measure_comm_split): step_time_sync_s and
    step_time_no_sync_s (medians), exposed_comm_s (their difference) and exposed_comm_fraction (its share of
    the synced step), within_noise (the gap is inside the synced steps' spread). Exposed means not hidden behind
    backward compute. None when not measured (one rank, or window.comm_split_steps=0)."""
    recheck_of: Optional[int] = None
    """Set on the baseline's second window (sweep.recheck_baseline): the index of the trial it repeats. Not a
    setting of its own: it only tells whether the machine's speed held steady during the sweep."""
    extra: dict[str, Any] = field(default_factory=dict)
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

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json_dict(data: dict[str, Any]) -> "TrialResult":
        known = {f.name for f in dataclasses.fields(TrialResult)}
        required = {f.name for f in dataclasses.fields(TrialResult)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = required - set(data)
        if missing:
            raise ValueError(f"missing fields {sorted(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        if values.get("step_time_s") is not None:
            values["step_time_s"] = StepTimeStats(**values["step_time_s"])
        return TrialResult(**values)
