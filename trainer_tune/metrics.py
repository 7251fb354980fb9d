"""Turns a measurement window into a trial result: the one place that computes reported figures."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from trainer_tune.flags import flags_to_environ
from trainer_tune.plan import TrialSpec
from trainer_tune.results import Status, TrialResult
from trainer_tune.stats import StepTimeStats, throughput_per_s
from trainer_tune.window import WindowMeasurement


@dataclass(frozen=True)
class TrialContext:
    """Facts about the run that every result records."""

    model_name: str
    seq_len: int
    device: str
    backend: Optional[str]
    num_warmup_steps: int
    num_measured_steps: int
    label: str


def _finite_or_none(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def _base_fields(spec: TrialSpec, ctx: TrialContext, *, started_at: str, finished_at: str) -> dict:
    return dict(
        trial_key=spec.key, index=spec.index, label=ctx.label, is_baseline=spec.is_baseline,
        micro_batch_size=spec.micro_batch_size, grad_accum=spec.grad_accum, world_size=spec.world_size,
        global_batch_size=spec.global_batch_size, tokens_per_step=spec.global_batch_size * ctx.seq_len,
        flags=spec.flags.as_dict(), environment=flags_to_environ(spec.flags), model=ctx.model_name,
        device=ctx.device, backend=ctx.backend, torch_version=torch.__version__,
        num_warmup_steps=ctx.num_warmup_steps, num_measured_steps=ctx.num_measured_steps,
        started_at=started_at, finished_at=finished_at)


def result_from_window(spec: TrialSpec, m: WindowMeasurement, ctx: TrialContext, *,
                       started_at: str, finished_at: str) -> TrialResult:
    status, error = Status.ok, None
    bad_steps = [i for i, loss in enumerate(m.losses) if not math.isfinite(loss)]
    if bad_steps:
        # A diverged setting is never recommendable, however fast it ran.
        status, error = Status.nan, f"loss was not finite at measured step(s) {bad_steps}"
    expected_tokens = spec.global_batch_size * ctx.seq_len * len(m.step_times_s)
    if m.tokens != expected_tokens:
        raise AssertionError(f"counted {m.tokens} tokens, the plan implies {expected_tokens}")
    return TrialResult(
        **_base_fields(spec, ctx, started_at=started_at, finished_at=finished_at),
        status=status.name, error=error,
        tokens_per_s=throughput_per_s(m.tokens, m.measured_s),
        samples_per_s=throughput_per_s(m.samples, m.measured_s), measured_s=m.measured_s,
        step_time_s=StepTimeStats.of(m.step_times_s), warmup_s=m.warmup_s,
        loss_first=_finite_or_none(m.losses[0]), loss_last=_finite_or_none(m.losses[-1]),
        peak_memory_bytes=m.peak_memory_bytes, peak_memory_reserved_bytes=m.peak_memory_reserved_bytes,
        peak_memory_note=m.peak_memory_note, num_parameters=m.num_parameters,
        extra={"ddp_applied": m.ddp_applied, "losses": [_finite_or_none(x) for x in m.losses]})


def failed_result(spec: TrialSpec, ctx: TrialContext, *, status: Status, error: str,
                  started_at: str, finished_at: str, extra: Optional[dict] = None) -> TrialResult:
    """A trial that produced no trustworthy measurement: every figure is None, never zero."""
    return TrialResult(
        **_base_fields(spec, ctx, started_at=started_at, finished_at=finished_at),
        status=status.name, error=error, tokens_per_s=None, samples_per_s=None, measured_s=None, step_time_s=None,
        warmup_s=None, loss_first=None, loss_last=None, peak_memory_bytes=None,
        peak_memory_reserved_bytes=None, peak_memory_note="not measured: the trial did not finish",
        num_parameters=None, extra=extra or {})
