"""The trial plan: which settings a sweep measures, in which order, and how a trial is identified.

The baseline (the user's production setting) is always trial 0, so the reference is measured first and a
sweep cut short still has it. Each trial carries a key that hashes everything that affects its
measurement; the journal uses it to skip trials already measured under the same conditions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Optional, Sequence

import torch

from trainer_tune.config.schema import CompileMode, ConfigError, FaultKind, Mode, StepArgs, Strategy, ThroughputArgs, TuneConfig
from trainer_tune.platform.distributed import choose_backend
from trainer_tune.config.flags import KEYED_WHEN_SET, TrialFlags, format_flag, swept_flag_values, with_flag
from trainer_tune.workloads.checkpoint import checkpoint_fingerprint


@dataclass(frozen=True)
class TrialSpec:
    index: int
    micro_batch_size: int
    grad_accum: int
    world_size: int
    flags: TrialFlags
    is_baseline: bool
    key: str
    """Hash of this setting plus the measurement context; equal keys measure the same thing."""
    round_id: Optional[str] = None
    """Set on one window of the setting (see window_of): the round it is measured in."""
    setting_key: Optional[str] = None
    """Set on one window of the setting: the setting's own key (`key` is then the window's)."""

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world_size

    def label(self, *, swept_flags: tuple[str, ...] = ()) -> str:
        text = f"{self.micro_batch_size}x{self.grad_accum}"
        for name in swept_flags:
            text += f" {name}={format_flag(getattr(self.flags, name))}"
        return text


def measurement_context(cfg: TuneConfig, *, world_size: int, device_type: str) -> dict[str, Any]:
    """Everything besides the setting that changes what a trial measures or records.

    Left out on purpose: what only decides, presents or guards (recommend, baseline, sweep axes, wandb,
    watchdog thresholds, dist.timeout_s, output paths). A new config key that changes a measurement belongs here.
    """
    train = asdict(cfg.train)
    train.pop("micro_batch_size")
    train.pop("grad_accum")
    # Flags of the setting (TrialFlags), keyed with the flags. train.precision stays too, as in journals from
    # before it was a flag; compile_mode joins only when set, for the same reason.
    train.pop("compile")
    train.pop("activation_checkpointing")
    train.pop("num_threads")
    if cfg.train.compile_mode == CompileMode.default:
        del train["compile_mode"]
    data = asdict(cfg.data)
    data.pop("num_workers")  # a flag of the setting (TrialFlags.num_workers), keyed with the flags
    telemetry = cfg.telemetry
    window = asdict(cfg.window)
    if cfg.window.noise_steps == 0:
        del window["noise_steps"]  # off, as in journals written before it existed: their keys stay the same
    model = asdict(cfg.model)
    if cfg.model.checkpoint is None:
        del model["checkpoint"]  # so sweeps without one keep the keys they had before the key existed
    else:
        # The path alone would let a checkpoint rewritten in place (trained further) stand for the old one.
        model["checkpoint_fingerprint"] = checkpoint_fingerprint(cfg.model)
    context: dict[str, Any] = {
        "model": model,
        "data": data,
        "loss": asdict(cfg.loss),
        "train": train,
        # comm_split_steps and noise_steps included: they decide whether exposed comm and B_noise are measured.
        "window": window,
        "world_size": world_size,
        "device_type": device_type,
        # The backend the group really uses (auto resolves to it), so auto and its value share results.
        "backend": choose_backend(cfg.dist, torch.device(device_type)) if world_size > 1 else None,
        # A rehearsed failure (fault=oom, ...) must never stand in for a clean measurement, nor the reverse.
        "fault": None if cfg.fault.kind == FaultKind.none else asdict(cfg.fault),
        # The GPU sampler's thread runs during the measured steps (overhead), and peak_tflops is the MFU a
        # result records.
        "telemetry": {"gpu_sampling": telemetry.gpu_sampling,
                      "sample_hz": telemetry.sample_hz if telemetry.gpu_sampling else None,
                      "peak_tflops": telemetry.peak_tflops},
    }
    # The step and what throughput counts change what is measured; they join the key only when set, so the keys
    # of journals written before they existed stay the same (their runs had the defaults).
    for name, args, default in (("step", cfg.step, StepArgs()), ("throughput", cfg.throughput, ThroughputArgs())):
        if asdict(args) != asdict(default):
            context[name] = asdict(args)
    if cfg.mode == Mode.inference:
        # A served batch is not a training step. Only inference adds the key: training keys stay those of
        # journals written before inference existed, so those sweeps still resume.
        context["mode"] = cfg.mode.value
    return context


def sweep_definition(cfg: TuneConfig, plan: Sequence[TrialSpec], *, swept: tuple[str, ...]) -> dict[str, Any]:
    """What a sweep's journal is of (run/journal.JournalHeader): the model, the workload (data, loss, step, what
    throughput counts), the mode and the grid (the planned settings' labels). A resume of another definition in the
    same directory is refused (run/journal.resume_refusal); the budget, the rounds and recommend.* are not part of
    it, so more of them continue the sweep."""
    data = asdict(cfg.data)
    data.pop("num_workers")  # a flag of the setting: in the grid's labels when swept
    definition = {"model": asdict(cfg.model), "workload": {"data": data, "loss": asdict(cfg.loss),
                                                           "step": asdict(cfg.step), "throughput": asdict(cfg.throughput)},
                  "mode": cfg.mode.value, "grid": sorted(spec.label(swept_flags=swept) for spec in plan)}
    return json.loads(json.dumps(definition, default=lambda value: getattr(value, "value", str(value))))


def _trial_key(*, micro_batch_size: int, grad_accum: int, flags: TrialFlags, context: dict[str, Any]) -> str:
    keyed = {name: value for name, value in flags.as_dict().items()
             if name not in KEYED_WHEN_SET or value != KEYED_WHEN_SET[name]}
    blob = json.dumps({"micro_batch_size": micro_batch_size, "grad_accum": grad_accum,
                       "flags": keyed, "context": context}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def batch_pairs(cfg: TuneConfig, *, world_size: int) -> list[tuple[int, int]]:
    """(micro_batch_size, grad_accum) pairs of the sweep, after the fixed-global-batch filter."""
    sizes = cfg.sweep.micro_batch_sizes or [cfg.train.micro_batch_size]
    if cfg.sweep.strategy == Strategy.power:
        sizes = power_ladder(start=min(sizes), maximum=cfg.sweep.max_micro_batch_size)
    accums = cfg.sweep.grad_accums or [cfg.train.grad_accum]
    pairs = [(m, a) for m in sorted(sizes) for a in sorted(accums)]
    target = cfg.sweep.global_batch_size
    key = f"sweep.global_batch_size={target}"
    if target is None and cfg.sweep.hold_global_batch:
        target = cfg.baseline.micro_batch_size * cfg.baseline.grad_accum * world_size
        key = (f"sweep.hold_global_batch=true (the baseline's global batch {cfg.baseline.micro_batch_size} x "
               f"{cfg.baseline.grad_accum} x {world_size} ranks = {target})")
    if target is None:
        return pairs
    kept = [(m, a) for m, a in pairs if m * a * world_size == target]
    if not kept:
        reachable = sorted({m * a * world_size for m, a in pairs})
        raise ConfigError(
            f"{key} is not allowed: no micro_batch_size x grad_accum pair of the sweep reaches it at world size "
            f"{world_size}; reachable global batch sizes are {reachable}")
    return kept


def power_ladder(*, start: int, maximum: int) -> list[int]:
    """start, 2 x start, 4 x start, ... up to maximum: the micro-batch sizes strategy=power may try."""
    if maximum < start:
        raise ConfigError(f"sweep.max_micro_batch_size={maximum} is not allowed: strategy=power starts at "
                          f"micro-batch {start} (the smallest of sweep.micro_batch_sizes), so it must be >= {start}")
    sizes = [start]
    while sizes[-1] * 2 <= maximum:
        sizes.append(sizes[-1] * 2)
    return sizes


def _specs(settings: Iterable[tuple[int, tuple[int, int, TrialFlags]]], *, world_size: int,
           context: dict[str, Any]) -> list[TrialSpec]:
    """TrialSpecs from (index, (micro_batch_size, grad_accum, flags)); index 0 is the baseline. Every plan
    keys its trials here, so a sweep and the jobs of a multirun name the same setting with the same key."""
    return [
        TrialSpec(index=i, micro_batch_size=mbs, grad_accum=accum, world_size=world_size, flags=flags,
                  is_baseline=(i == 0),
                  key=_trial_key(micro_batch_size=mbs, grad_accum=accum, flags=flags, context=context))
        for i, (mbs, accum, flags) in settings
    ]


def build_plan(cfg: TuneConfig, *, world_size: int, base_flags: TrialFlags, device_type: str) -> list[TrialSpec]:
    context = measurement_context(cfg, world_size=world_size, device_type=device_type)
    flag_axes = swept_flag_values(cfg.sweep)
    flag_settings = [base_flags]
    for name, values in flag_axes.items():
        flag_settings = [with_flag(f, name, v) for f in flag_settings for v in values]

    settings: list[tuple[int, int, TrialFlags]] = [
        (cfg.baseline.micro_batch_size, cfg.baseline.grad_accum, base_flags)]
    for (mbs, accum), flags in itertools.product(batch_pairs(cfg, world_size=world_size), flag_settings):
        if (mbs, accum, flags) not in settings:
            settings.append((mbs, accum, flags))

    return _specs(enumerate(settings), world_size=world_size, context=context)


def window_of(spec: TrialSpec, round_id: str) -> TrialSpec:
    """One window of a setting: the same setting, keyed by setting and round, so the journal keeps every
    window and a resumed sweep knows which windows of which round are done."""
    return replace(spec, key=f"{spec.key}@{round_id}", round_id=round_id, setting_key=spec.key)


def swept_flag_names(cfg: TuneConfig) -> tuple[str, ...]:
    return tuple(swept_flag_values(cfg.sweep))


def job_plan(cfg: TuneConfig, *, world_size: int, flags: TrialFlags, baseline: tuple[int, int, TrialFlags],
             index: int, device_type: str) -> list[TrialSpec]:
    """One job of a Hydra multirun: the multirun's pinned baseline as trial 0, then the job's own setting
    (train.* with its nsa/ddp flags) as trial `index`, unless the job's setting is the baseline itself.

    Keys are computed exactly as in build_plan, so every job names the baseline with the same key and the
    shared journal measures it once.
    """
    context = measurement_context(cfg, world_size=world_size, device_type=device_type)
    settings = [(0, baseline)]
    own = (cfg.train.micro_batch_size, cfg.train.grad_accum, flags)
    if own != baseline:
        settings.append((index, own))
    return _specs(settings, world_size=world_size, context=context)


def differing_flag_names(flags: TrialFlags, baseline: TrialFlags) -> tuple[str, ...]:
    """Flags a multirun job sets differently from the baseline: shown in its label, as swept flags are."""
    return tuple(name for name, value in flags.as_dict().items() if baseline.as_dict()[name] != value)


# --- Serving under load: the batcher settings --------------------------------------------------------------

@dataclass(frozen=True)
class BatcherSetting:
    """One dynamic-batcher setting of a serving-under-load sweep (workloads/batcher.py's rule)."""

    max_batch_size: int
    max_queue_delay_ms: float

    @property
    def label(self) -> str:
        """`8/2ms`: the largest batch, then the longest queue delay."""
        return f"{self.max_batch_size}/{self.max_queue_delay_ms:g}ms"

    @property
    def max_queue_delay_s(self) -> float:
        return self.max_queue_delay_ms / 1e3


def batcher_plan(cfg: TuneConfig) -> tuple[BatcherSetting, list[BatcherSetting]]:
    """(the baseline, every setting in plan order, the baseline first): the baseline serves
    baseline.micro_batch_size with no queue delay (the batch served today); the grid is serving.max_batch_sizes x
    serving.max_queue_delays_ms, smaller and shorter first (the order ties go by)."""
    baseline = BatcherSetting(cfg.baseline.micro_batch_size, 0.0)
    grid = [BatcherSetting(b, float(d)) for b in sorted(cfg.serving.max_batch_sizes)
            for d in sorted(cfg.serving.max_queue_delays_ms)]
    return baseline, [baseline, *(s for s in grid if s != baseline)]


def serving_definition(cfg: TuneConfig, settings: Sequence[BatcherSetting]) -> dict[str, Any]:
    """sweep_definition's counterpart for a serving-under-load sweep: the model, the workload, the mode, the batcher
    grid and the rates asked for (the search's own rates follow from the measurements)."""
    data = asdict(cfg.data)
    data.pop("num_workers")
    rates = cfg.serving.rate_per_s
    definition = {"model": asdict(cfg.model), "workload": {"data": data, "step": asdict(cfg.step)},
                  "mode": "serving_load", "grid": sorted(s.label for s in settings),
                  "rates": rates if rates == "auto" else list(rates),
                  "requests": {"per_rate": cfg.serving.requests_per_rate, "max_s": cfg.serving.max_s_per_rate,
                               "seed": cfg.serving.seed},
                  # What steers the searches: another target or search would visit other rates, and a journal of
                  # both would be decided as if one search had measured them all.
                  "search": {"max_p99_ms": cfg.recommend.max_p99_ms, "max_rates": cfg.serving.max_rates,
                             "confirm_settings": cfg.serving.confirm_settings}}
    return json.loads(json.dumps(definition, default=lambda value: getattr(value, "value", str(value))))
