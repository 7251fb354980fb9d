"""One trial's measurement window: a short, real DDP training run at one setting.

Every trial starts from the same seed with a fresh model, DDP wrapper and optimizer. A setting's first build
counts one micro-step's FLOPs with FlopCounterMode before DDP wraps the model (flop_count.py; not for the built-in
GPT, whose FLOPs are a formula). A setting with train.compile then torch.compiles the DDP-wrapped model, which
compiles in the first warm-up step (workloads/compile.py). Warm-up optimizer steps run first and are not
measured. Each measured optimizer step is `grad_accum` micro-steps, with DDP's `no_sync` on all but the last, then
`optimizer.step()` (through a GradScaler with fp16).

The measured steps are one uninterrupted stretch: their number is fixed before the first (from the last warm-up
step's time, `window_length`), the device is synchronised once at each end, and in between the tuner neither
synchronises, nor makes a collective, nor reads a device tensor (platform/syncs.py counts what it does:
`syncs_in_window`). The window's time is the wall time between the two synchronisations, the slowest rank's;
step boundaries are marked on the host clock on a CPU and with CUDA events on a GPU, read after the closing
synchronisation, for the step-time distribution. Losses, token counts and NSA statistics stay on the device until
then. Tokens are the ones really fed to the model on every rank.

A setting's noise steps (the gradient noise scale) run right after its trainer is built, before the warm-up: every
setting reads them at the same training point, its initial weights (model.checkpoint's when given).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import psutil
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer_tune.config.schema import Mode, Precision, TuneConfig, WindowArgs
from trainer_tune.platform import syncs
from trainer_tune.platform.distributed import DistSession
from trainer_tune.platform.faults import NO_FAULT, FaultPlan
from trainer_tune.measure.figures import CompileFigures
from trainer_tune.measure.flop_count import StepFlops, count_step_flops
from trainer_tune.measure.flops import analytic_flops_apply
from trainer_tune.measure.host_memory import RssGrowth, RssWatch
from trainer_tune.measure.noise_estimate import NoiseReading
from trainer_tune.measure.noise_steps import GradientNormReader, run_noise_steps, why_not_measured
from trainer_tune.plan import TrialSpec
from trainer_tune.measure.replica import InferenceReplica
from trainer_tune.measure.telemetry import RankTelemetry, TelemetryProbe
from trainer_tune.platform.units import format_bytes
from trainer_tune.workloads.batch import Count, count_samples, token_counter
from trainer_tune.workloads.compile import (
    DynamoCounts, compile_failures_named, compile_module, dynamo_counts, fresh_compile_state)
from trainer_tune.workloads.data import build_batches
from trainer_tune.workloads.loss import build_loss
from trainer_tune.workloads.checkpointing import enable_activation_checkpointing
from trainer_tune.workloads.model import build_trial_model, count_parameters
from trainer_tune.workloads.precision import autocast_for
from trainer_tune.workloads.nsa_stats import AuxStatsCollector, over_ranks as aux_stats_over_ranks
from trainer_tune.workloads.step import StepFn, StepOutcome, StepRules, default_step, user_step
from trainer_tune.workloads.targets import instantiate_target


@dataclass(frozen=True)
class WindowMeasurement:
    step_times_s: tuple[float, ...]
    """Per measured optimizer step, the slowest rank's time (for the step-time distribution)."""
    measured_s: float
    """The measured steps' wall time on the slowest rank, from the synchronised start to the synchronised end
    (host gaps between steps included): the denominator of throughput. (Summing the per-step maxima instead would
    add cross-rank jitter, since the slowest rank changes from step to step.)"""
    tokens: Optional[int]
    """Tokens fed to the model in the measured steps, summed over ranks and micro-steps (workloads/batch.py
    says what counts as a token); None when the batches carry none (images)."""
    samples: int
    """Samples fed to the model in the measured steps, summed over ranks and micro-steps."""
    losses: tuple[float, ...]
    """Per measured step, the loss averaged over micro-steps and ranks."""
    warmup_s: float
    """Wall time of the warm-up steps on the slowest rank (includes first-step allocation)."""
    peak_memory_bytes: Optional[int]
    """Highest allocated peak over ranks during measured steps (WindowRecord.peak_memory_allocated_bytes); None
    where the device does not report it."""
    peak_memory_reserved_bytes: Optional[int]
    peak_memory_note: Optional[str]
    num_parameters: int
    ddp_applied: Optional[dict[str, object]]
    """DDP's own record of static_graph, find_unused_parameters and bucket size; None without DDP."""
    stop_reason: str = ""
    num_warmup_steps: int = 0
    """Warm-up steps before this window: window.warmup_steps after a build, one for a kept model."""
    no_sync_step_times_s: tuple[float, ...] = ()
    """Per extra step with gradient sync off (window.comm_split_steps), the slowest rank's time; empty when
    not measured. Kept apart from every throughput figure."""
    aux_stats: tuple[dict[str, float], ...] = ()
    """Per measured step, the NSA auxiliary statistics already averaged over ranks (every rank holds the same);
    empty when nsa.disable_aux_stats is true or the model has no NSA layer."""
    data_wait_s: tuple[float, ...] = ()
    """Per measured step, the slowest rank's time waiting for its batches (fetching the next one from the
    source and moving it to the device), summed over micro-steps."""
    flops_per_sample: Optional[float] = None
    """Training FLOPs (forward and backward) per sample as FlopCounterMode counted one micro-step when the
    setting's trainer was built: the max over ranks (the same on every rank for a fixed model and batch shape;
    the max keeps a rank's count when another's failed). None when not counted; flops_note says why."""
    flops_note: Optional[str] = None
    """This rank's word on the count: why there is none, or the ops it left out (then it is a lower bound)."""
    noise_readings: tuple[NoiseReading, ...] = ()
    """Per noise step (window.noise_steps, after the measured ones), the squared gradient norms by batch size,
    averaged over ranks; empty when not measured, with the reason in noise_note."""
    noise_note: Optional[str] = None
    compiled_build: bool = False
    """This window built a torch.compile'd trainer: its warm-up holds the compilation (metrics computes compile_s
    from it). False for an eager trainer and for a compiled one kept from an earlier window."""
    compiled: bool = False
    """The trainer is torch.compile'd (train.compile), built in this window or an earlier one."""
    compile: Optional[CompileFigures] = None
    """dynamo's counts for a compiled trainer (the most over ranks): recompiles in the measured steps, graph
    breaks and eager fallback since the build; None for an eager trainer."""
    syncs_in_window: int = 0
    """The tuner's own synchronising calls between the window's two synchronisations, the most over ranks
    (platform/syncs.py): 0 for a training window; one per batch in inference (a served batch is answered when
    its outputs exist)."""
    rss_growth_bytes: Optional[int] = None
    """CPU devices: the highest rank's peak resident memory growth over the window that built the trainer
    (host_memory.py); None elsewhere (peak_memory_note says why on a CPU)."""


StepCallback = Callable[[int, bool], None]
"""Called after each optimizer step with (step index, whether it was measured); outside the timed region."""
Heartbeat = Callable[[int, int], None]
"""Called at the start of every micro-step with (step index, micro-step index): the watchdog's pulse."""


class _StepClock:
    """Step boundaries: host clock readings on a CPU, CUDA events recorded on the stream on a GPU (no wait). Read
    them with `step_times_s` only after the device was synchronised."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._marks: list[Any] = []

    def mark(self) -> None:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def step_times_s(self) -> list[float]:
        """The time between each mark and the next."""
        if self._cuda:
            return [begin.elapsed_time(end) / 1000.0 for begin, end in zip(self._marks, self._marks[1:])]
        return [end - begin for begin, end in zip(self._marks, self._marks[1:])]


def _wrap(model: nn.Module, *, session: DistSession, spec: TrialSpec) -> nn.Module:
    if not session.distributed:
        return model
    return DistributedDataParallel(
        model,
        device_ids=[session.device.index] if session.device.type == "cuda" else None,
        static_graph=spec.flags.static_graph,
        find_unused_parameters=spec.flags.find_unused_parameters,
        bucket_cap_mb=spec.flags.bucket_cap_mb,
    )


def _ddp_settings(module: nn.Module) -> Optional[dict[str, object]]:
    """What DDP itself reports it was built with: evidence that the flags reached it."""
    if not isinstance(module, DistributedDataParallel):
        return None
    return {"static_graph": bool(module.static_graph), "find_unused_parameters": bool(module.find_unused_parameters),
            "bucket_cap_bytes": int(module.bucket_bytes_cap),
            "bucket_cap_is_default": bool(getattr(module, "bucket_bytes_cap_default", False))}


class _Trainer:
    """The optimizer step of one trial, kept free of measurement code so the window times it as a whole."""

    def __init__(self, *, cfg: TuneConfig, spec: TrialSpec, session: DistSession, fault: FaultPlan,
                 heartbeat: Heartbeat, flops: Optional[StepFlops] = None) -> None:
        device = session.device
        self.device = device
        self.fault = fault
        self.heartbeat = heartbeat
        torch.manual_seed(cfg.train.seed)
        model = build_trial_model(cfg.model, spec.flags).to(device)
        self.num_parameters = count_parameters(model)
        self.aux_stats = AuxStatsCollector(model)
        self.batches: Iterator[Any] = build_batches(
            data=cfg.data, model=cfg.model, micro_batch_size=spec.micro_batch_size,
            rank=session.rank_env.rank, world_size=session.rank_env.world_size, device=device,
            num_workers=spec.flags.num_workers)
        autocast = autocast_for(spec.flags.precision, device)
        self.loss_of: StepFn = step_fn(cfg, autocast)
        self.count_tokens = token_counter(cfg.throughput.count)
        self.flops = flops
        """FlopCounterMode's count of one micro-step (this setting's count from an earlier window when given);
        None where the FLOPs are known without counting (flops.analytic_flops_apply)."""
        if flops is None and not analytic_flops_apply(cfg):
            self.flops = self._count_flops(model, micro_batch_size=spec.micro_batch_size)
        if spec.flags.activation_checkpointing:
            # After the count: MFU counts the model's FLOPs, not the forward recomputed in the backward (as the
            # GPT's formula does); a model without the hook fails here, the setting's one-line error.
            enable_activation_checkpointing(model)
        # Wrapped after the count: DDP's hooks would all-reduce the counted gradients from this rank alone. DDP
        # then broadcasts rank 0's weights and buffers, so whatever the count moved agrees on every rank again.
        self.ddp = _wrap(model, session=session, spec=spec)
        self.compiled = spec.flags.compile
        self.compile_mode = cfg.train.compile_mode
        # Compiled after DDP wraps the model (workloads/compile.py says why); no_sync is still called on the DDP
        # module itself (self.ddp), which the compiled module calls into.
        self.module = compile_module(self.ddp, self.compile_mode, dynamic=cfg.train.compile_dynamic) \
            if self.compiled else self.ddp
        self.dynamo = DynamoCounts()
        """What dynamo did for this trainer since its build (warm-up and measured steps of every window)."""
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                           fused=device.type == "cuda")
        # fp16 only: float16 gradients underflow without loss scaling; bf16 has float32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type) if spec.flags.precision == Precision.fp16.value else None
        self.grad_accum = spec.grad_accum
        self.micro_batch_size = spec.micro_batch_size
        self.can_skip_sync = isinstance(self.ddp, DistributedDataParallel)
        self.ddp_applied = _ddp_settings(self.ddp)
        self.steps_done = 0
        """Optimizer steps this trainer has run, over all its windows: the next step's index."""

    def _count_flops(self, model: nn.Module, *, micro_batch_size: int) -> StepFlops:
        """Count one micro-step of one real batch through the trainer's own step, before any timing (warm-up
        included). What it perturbs, the same way for every setting: one batch more is taken from the stream,
        first-call costs (allocations, worker start) move out of the warm-up, BatchNorm running statistics move
        once. The gradients are dropped and the random generators restored (flop_count.count_step_flops); the NSA
        statistics of the counted forward are dropped too, so the first trained step starts as before."""
        batch, _wait_s = self.next_batch()
        flops = count_step_flops(model, batch, self.loss_of, micro_batch_size=micro_batch_size, device=self.device)
        for layer in self.aux_stats.layers:
            layer.last_aux_stats = None
        # The count was progress (a slow micro-step under the counter): the watchdog's wait for the first step
        # starts after it, as it would after the build. (0, 0) is the first micro-step's own beat: no interval.
        self.heartbeat(0, 0)
        return flops

    def next_batch(self) -> tuple[Any, float]:
        """The next micro-step's batch on the device, and the host time spent waiting for it."""
        start_s = time.perf_counter()
        batch = next(self.batches)
        return batch, time.perf_counter() - start_s

    def step(self, index: int, *, sync: bool = True,
             grad_reader: Optional[GradientNormReader] = None) -> StepOutcome:
        """Optimizer step `index` of the window.

        sync=False keeps DDP from all-reducing gradients on every micro-step, the last one included: the same
        compute without the gradient communication (ranks' weights then drift apart, which is harmless for a
        model thrown away at the end of the trial). A `grad_reader` (a noise step, noise_steps.py) reads the
        gradients after each micro-step and at the end, where it also all-reduces them by hand; a noise step runs
        the eager module (a compiled one compiles in the warm-up, which comes after) and makes no update, so every
        noise step of every setting reads gradients at the same weights.

        With fp16 the GradScaler scales each micro-step's loss before backward and unscales in its step (or before
        a grad_reader reads the gradients), skipping an update whose gradients overflowed."""
        loss_sum = torch.zeros((), device=self.device)
        samples = 0
        tokens: Optional[Count] = 0
        data_wait_s = 0.0
        self.steps_done += 1
        loss_scale = self.fault.loss_scale(step=index)
        for micro in range(self.grad_accum):
            self.heartbeat(index, micro)
            self.fault.before_micro_step(step=index, micro_step=micro, device=self.device)
            batch, wait_s = self.next_batch()
            data_wait_s += wait_s
            # DDP all-reduces in the backward of a micro-step outside no_sync: only the last one of a synced step.
            reduce_now = sync and micro == self.grad_accum - 1
            sync_context = contextlib.nullcontext() if reduce_now or not self.can_skip_sync else self.ddp.no_sync()
            module = self.module if grad_reader is None else self.ddp
            with sync_context, compile_failures_named(self.compiled, self.compile_mode,
                                                      first_call=self.steps_done == 1):
                loss = self.loss_of(module, batch)
                if loss_scale != 1.0:
                    loss = loss * loss_scale
                scaled = loss / self.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            self.aux_stats.add_micro_step()
            if grad_reader is not None:
                grad_reader.after_micro_step(micro, grad_scale=self.scaler.get_scale() if self.scaler else 1.0)
            loss_sum += loss.detach().float()
            samples += count_samples(batch) or 0
            micro_tokens = self.count_tokens(batch)
            tokens = None if tokens is None or micro_tokens is None else tokens + micro_tokens
        if grad_reader is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # the reader reads true gradients
            grad_reader.before_update()
            if self.scaler is not None:
                self.scaler.update()  # closes the unscale_ above, as a skipped step would
            self.optimizer.zero_grad(set_to_none=True)
            self.steps_done -= 1  # no update: the trainer is where it was
            return StepOutcome(loss=loss_sum / self.grad_accum, samples=samples, tokens=tokens,
                               data_wait_s=data_wait_s, aux_stats=self.aux_stats.end_step())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss=loss_sum / self.grad_accum, samples=samples, tokens=tokens, data_wait_s=data_wait_s,
                           aux_stats=self.aux_stats.end_step())


def step_fn(cfg: TuneConfig, autocast: Callable[[], Any]) -> StepFn:
    """step._target_, or the default rules of workloads/step.py with the configured loss."""
    if cfg.step._target_ is not None:
        fn = instantiate_target("step._target_", cfg.step._target_, cfg.step.kwargs, partial=True)
        return user_step(fn, target=cfg.step._target_, autocast=autocast)
    rules = StepRules(loss_fn=build_loss(cfg.loss), loss_target=cfg.loss._target_, model_target=cfg.model._target_,
                      vocab_size=cfg.model.vocab_size, autocast=autocast)
    return lambda module, batch: default_step(module, batch, rules)


@dataclass(frozen=True)
class LocalWindow:
    """What one rank measured, before the ranks agree that the trial succeeded everywhere."""

    step_times_s: list[float]
    measured_s: float
    """This rank's wall time from the window's synchronised start to its synchronised end."""
    tokens: Optional[int]
    """Tokens this rank fed in its measured steps; None when its batches carry none."""
    samples: int
    losses: list[float]
    warmup_s: float
    peak_memory_bytes: Optional[int]
    peak_memory_reserved_bytes: Optional[int]
    num_parameters: int
    ddp_applied: Optional[dict[str, object]]
    telemetry: Optional[RankTelemetry]
    """This rank's TelemetryProbe readings over the measured steps; None without a probe."""
    stop_reason: str
    """Why the window measured as many steps as it did (window_length)."""
    num_warmup_steps: int
    """Warm-up steps this window ran: window.warmup_steps for a fresh build, fewer for a kept model."""
    no_sync_step_times_s: list[float]
    """This rank's times of the extra steps without gradient sync (window.comm_split_steps); may be empty."""
    aux_stats: list[dict[str, float]]
    """Per measured step, the NSA auxiliary statistics averaged over ranks (once, after the window); may be
    empty."""
    data_wait_s: list[float]
    """Per measured step, this rank's host time waiting for its batches."""
    flops: Optional[StepFlops] = None
    """FlopCounterMode's count of one micro-step of this setting on this rank; None where not counted."""
    noise_readings: list[NoiseReading] = dataclasses.field(default_factory=list)
    """Per noise step, the squared gradient norms by batch size (already averaged over ranks); may be empty."""
    noise_note: Optional[str] = None
    """Why there are no noise readings."""
    compiled_build: bool = False
    """This window built a torch.compile'd trainer (WindowMeasurement.compiled_build)."""
    compiled: bool = False
    compile: Optional[CompileFigures] = None
    """dynamo's counts on this rank for a compiled trainer; None for an eager one."""
    syncs_in_window: int = 0
    """The tuner's synchronising calls on this rank between the window's two synchronisations."""
    rss: Optional[RssGrowth] = None
    """CPU devices: this process's peak resident memory growth from before the trainer was built to the end of
    the window; None on other devices."""


def _no_heartbeat(_step: int, _micro_step: int) -> None:
    pass


_STATE_BYTES_PER_PARAMETER = 20
"""Training state a kept model holds per fp32 parameter: the weight, its gradient, AdamW's two moments and
DDP's bucket copy of the gradient (activations are freed after every step)."""


def keep_models_decision(keep: Optional[bool], *, device: torch.device, num_parameters: int,
                         num_settings: int) -> tuple[bool, str]:
    """(keep trainers between windows?, why), for window.keep_models."""
    if keep is not None:
        return keep, f"window.keep_models={keep}"
    if device.type == "cuda":
        return False, ("on CUDA the memory kept models hold would change which micro-batches fit and the peak "
                       "memory measured (window.keep_models=true keeps them anyway)")
    need_bytes = _STATE_BYTES_PER_PARAMETER * num_parameters * num_settings
    free_bytes = psutil.virtual_memory().available
    fits = need_bytes <= free_bytes / 4
    return fits, (f"the {num_settings} settings' training state ({format_bytes(need_bytes)}) "
                  f"{'fits' if fits else 'does not fit'} in a quarter of the free memory ({format_bytes(free_bytes)})")


class TrainerPool:
    """Each setting's trainer (model, DDP wrapper, optimizer, data stream), kept between its windows.

    A kept trainer is warm: its next window needs one re-warming step instead of a build and
    window.warmup_steps. Every rank must keep or drop the same trainers (building one is a DDP collective),
    so the sweep decides `keep` once for all ranks; a trainer whose window failed is never given back."""

    def __init__(self) -> None:
        self.keep = True
        self._trainers: dict[str, _Trainer] = {}
        self.flops: dict[str, Optional[StepFlops]] = {}
        """Each setting's FLOP count, kept even when its trainer is not: a setting is counted once per process."""

    def take(self, key: str) -> Optional[_Trainer]:
        return self._trainers.pop(key, None)

    def give_back(self, key: str, trainer: _Trainer) -> None:
        if self.keep:
            self._trainers[key] = trainer

    def compiled_kept(self) -> int:
        """How many kept trainers are torch.compile'd (workloads/compile.fresh_compile_state)."""
        return sum(1 for trainer in self._trainers.values() if trainer.compiled)

    def release(self, key: str) -> None:
        self._trainers.pop(key, None)

    def clear(self) -> None:
        self._trainers.clear()
        gc.collect()  # DDP's reducer and the model refer to each other: only the collector frees them

    def __len__(self) -> int:
        return len(self._trainers)


def measure_local(*, cfg: TuneConfig, spec: TrialSpec, session: DistSession,
                  on_step: Optional[StepCallback] = None, heartbeat: Heartbeat = _no_heartbeat,
                  fault: FaultPlan = NO_FAULT, probe: Optional[TelemetryProbe] = None,
                  pool: Optional[TrainerPool] = None, comm_split: bool = True) -> LocalWindow:
    """Run one window on this rank. Raises what the model or the device raises; the caller records it.

    With a pool, the setting's trainer from its last window is reused (one re-warming step) and given back
    afterwards; otherwise a fresh one is built and warmed up. `comm_split=False` skips the steps without
    gradient sync (the sweep measures them in a setting's first window only).

    The noise steps of a setting's first window (`comm_split`) run right after its trainer is built, at the
    setting's initial weights. Besides DDP's own collectives, the ones here come before the first measured step
    (the agreed step count) and after the last (losses, NSA statistics); a rank that fails leaves its peers
    waiting there or in DDP, which the watchdog handles. The outcome agreement that follows goes through the
    store.

    Whatever the window starts is undone on every path, so a window that fails leaves this process as one
    that succeeds does: the probe stops sampling, and the model, its DDP wrapper (with the hooks DDP put on
    the parameters), the optimizer state and the activations are freed before the next window builds its own.
    """
    key = spec.setting_key or spec.key
    threads_before = torch.get_num_threads()
    if spec.flags.num_threads is not None:
        torch.set_num_threads(spec.flags.num_threads)  # train.num_threads, for this window only
    trainer = pool.take(key) if pool is not None else None
    # CPU peak memory is the resident set's growth, which only a window that builds its trainer can see whole.
    rss_watch = None
    if session.device.type == "cpu" and trainer is None:
        _import_first_use_modules()
        rss_watch = RssWatch().start()
    try:
        noise_readings: list[NoiseReading] = []
        noise_note: Optional[str] = "read in the setting's first window only"
        if trainer is None:
            if spec.flags.compile:
                fresh_compile_state(keeping_compiled=pool.compiled_kept() if pool is not None and pool.keep else 0)
            runner = InferenceReplica if cfg.mode == Mode.inference else _Trainer
            trainer = runner(cfg=cfg, spec=spec, session=session, fault=fault, heartbeat=heartbeat,
                             flops=pool.flops.get(key) if pool is not None else None)
            noise_readings, noise_note = _noise_steps(cfg=cfg, trainer=trainer, session=session,
                                                      first_window=comm_split)
            num_warmup_steps = cfg.window.warmup_steps
            if trainer.compiled:
                # torch.compile compiles on the first call: that call must be a warm-up step, never a measured one.
                num_warmup_steps = max(1, num_warmup_steps)
            built = True
            if pool is not None:
                pool.flops[key] = trainer.flops
        else:
            # Other settings ran since: one step brings caches and the allocator back before the clock starts.
            num_warmup_steps = min(1, cfg.window.warmup_steps)
            built = False
        local = _measure(cfg=cfg, trainer=trainer, session=session, on_step=on_step, probe=probe,
                         num_warmup_steps=num_warmup_steps, comm_split=comm_split)
        local = dataclasses.replace(local, compiled_build=built and trainer.compiled, compiled=trainer.compiled,
                                    noise_readings=noise_readings, noise_note=noise_note)
        if session.device.type == "cpu":
            local = dataclasses.replace(local, rss=rss_watch.read() if rss_watch is not None else RssGrowth(
                None, "not measured in this window: its trainer was kept from an earlier window "
                      "(window.keep_models), whose growth counts"))
        if pool is not None:
            pool.give_back(key, trainer)
        return local
    except BaseException as exc:
        _clear_frames(exc)
        raise
    finally:
        del trainer
        gc.collect()  # DDP's reducer and the model refer to each other: only the collector frees them
        if session.device.type == "cuda":
            torch.cuda.empty_cache()
        torch.set_num_threads(threads_before)


def _import_first_use_modules() -> None:
    """Import what torch.optim's first step imports (torch._dynamo, sympy: about 70 MB of Python objects that
    stay resident): a one-time cost of the process that would otherwise land in the resident memory growth of
    whichever setting happens to be built first."""
    import torch._dynamo  # noqa: F401


def _clear_frames(exc: BaseException) -> None:
    """Drop the local variables of the frames an exception's traceback holds (the lines it names stay).

    The caller keeps the exception to record it, and the frames of the failed step hold the trainer, and
    through it the model, the optimizer state and the activations: on a GPU that is the memory the next trial
    needs, held until the exception is dropped."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) not in seen:
            seen.add(id(current))
            traceback.clear_frames(current.__traceback__)  # skips frames still running (measure_local's own)
            pending += [e for e in (current.__cause__, current.__context__) if e is not None]


def _noise_steps(*, cfg: TuneConfig, trainer: Any, session: DistSession,
                 first_window: bool) -> tuple[list[NoiseReading], Optional[str]]:
    """A freshly built trainer's noise steps (noise_steps.py), or why there are none: at its initial weights,
    before any other step, so every setting reads them at the same training point. In a setting's first window
    only (as the comm split): extra steps in every window would cost the race rounds (sweep.budget_s counts them),
    and the sweep's figure pools every setting's readings anyway."""
    training = isinstance(trainer, _Trainer)
    world_size = session.rank_env.world_size if training and trainer.can_skip_sync else 1
    note = why_not_measured(num_steps=cfg.window.noise_steps, world_size=world_size,
                            grad_accum=getattr(trainer, "grad_accum", 1), training=training, first_window=first_window)
    if note is not None:
        return [], note
    return run_noise_steps(trainer, num_steps=cfg.window.noise_steps, world_size=world_size), None


def _measure(*, cfg: TuneConfig, trainer: Any, session: DistSession, on_step: Optional[StepCallback],
             probe: Optional[TelemetryProbe], num_warmup_steps: int, comm_split: bool) -> LocalWindow:
    device = session.device
    window = cfg.window
    compiled = trainer.compiled
    dynamo_start = dynamo_counts() if compiled else DynamoCounts()
    syncs.synchronize(device)
    warmup_start_s = last_start_s = time.perf_counter()
    for index in range(num_warmup_steps):
        if index == num_warmup_steps - 1 and index > 0:
            syncs.synchronize(device)  # the last warm-up step alone is timed: it sizes the window
            last_start_s = time.perf_counter()
        step = trainer.steps_done
        trainer.step(step)
        if on_step:
            on_step(step, False)
    syncs.synchronize(device)
    warmup_end_s = time.perf_counter()
    warmup_s = warmup_end_s - warmup_start_s
    # Every rank must run the same number of steps (a DDP step is a collective): the slowest rank's pace decides.
    last_step_s = session.max_over_ranks([warmup_end_s - last_start_s if num_warmup_steps else -1.0])[0]
    num_steps, stop_reason = window_length(last_step_s if last_step_s > 0 else None, window)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    clock = _StepClock(device)
    dynamo_measured = dynamo_counts() if compiled else DynamoCounts()
    losses: list[torch.Tensor] = []
    aux_steps: list[dict[str, torch.Tensor]] = []
    data_wait_s: list[float] = []
    tokens: Optional[Count] = 0
    samples = 0
    try:
        if probe is not None:
            probe.start()
        syncs.synchronize(device)  # the window's start: nothing queued before it is timed
        start_s = time.perf_counter()
        with syncs.measured_steps() as tally:
            clock.mark()
            for _ in range(num_steps):
                step = trainer.steps_done
                outcome = trainer.step(step)
                clock.mark()
                if outcome.loss is not None:
                    losses.append(outcome.loss)
                if outcome.aux_stats is not None:
                    aux_steps.append(outcome.aux_stats)
                data_wait_s.append(outcome.data_wait_s)
                samples += outcome.samples
                tokens = None if tokens is None or outcome.tokens is None else tokens + outcome.tokens
                if on_step:
                    on_step(step, True)
        syncs.synchronize(device)  # the window's end: every step's work is done
        measured_s = time.perf_counter() - start_s
        step_times_s = clock.step_times_s()
        dynamo_end = dynamo_counts() if compiled else DynamoCounts()
        num_tokens = syncs.host_int(tokens) if tokens is not None else None
        telemetry = probe.stop(tokens=num_tokens, samples=samples) if probe is not None else None
    finally:
        if probe is not None:
            probe.abandon()  # a window that failed while sampling (after stop() there is nothing to do)
    local_losses = syncs.to_host(torch.stack(losses).float()) if losses else []
    aux_stats = aux_stats_over_ranks(aux_steps, session.mean_tensor_over_ranks)
    compile_figures = None
    if compiled:
        trainer.dynamo = trainer.dynamo + (dynamo_end - dynamo_start)
        compile_figures = CompileFigures(recompiles_measured=(dynamo_end - dynamo_measured).graphs,
                                         graph_breaks=trainer.dynamo.graph_breaks,
                                         fell_back_to_eager=trainer.dynamo.gave_up > 0)
    no_sync_step_times_s = _no_sync_steps(trainer, num_steps=window.comm_split_steps if comm_split else 0,
                                          device=device)
    peak = reserved = None
    if device.type == "cuda":
        peak, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    return LocalWindow(step_times_s=step_times_s, measured_s=measured_s, tokens=num_tokens, samples=samples,
                       losses=local_losses, warmup_s=warmup_s, data_wait_s=data_wait_s,
                       peak_memory_bytes=peak, peak_memory_reserved_bytes=reserved,
                       num_parameters=trainer.num_parameters, ddp_applied=trainer.ddp_applied, telemetry=telemetry,
                       stop_reason=stop_reason, num_warmup_steps=num_warmup_steps,
                       no_sync_step_times_s=no_sync_step_times_s, aux_stats=aux_stats, flops=trainer.flops,
                       compile=compile_figures, syncs_in_window=tally.total)


def _no_sync_steps(trainer: Any, *, num_steps: int, device: torch.device) -> list[float]:
    """Time `num_steps` steps without gradient sync, after the measured ones (so they cannot disturb them).

    The same count on every rank (it comes from config), so the ranks' lists line up step by step. With one
    rank there is no sync to remove, and nothing is measured. Timed like the measured steps: marks between the
    steps, read after one synchronisation at the end."""
    if not trainer.can_skip_sync or num_steps == 0:
        return []
    clock = _StepClock(device)
    syncs.synchronize(device)
    clock.mark()
    for _ in range(num_steps):
        trainer.step(trainer.steps_done, sync=False)
        clock.mark()
    syncs.synchronize(device)
    return clock.step_times_s()


def window_length(step_s: Optional[float], window: WindowArgs) -> tuple[int, str]:
    """(measured steps, why that many) from the last warm-up step's time (the slowest rank's; None when the
    window had no warm-up step): enough to fill window.measure_s, within [measure_steps, max_measure_steps].
    A pure function of values every rank holds, so every rank runs the same count."""
    low, high = window.measure_steps, window.max_measure_steps
    if step_s is None:
        return low, f"{low} steps (window.measure_steps): no warm-up step to pace the window"
    wanted = math.ceil(window.measure_s / step_s) if step_s > 0 else high
    steps = min(high, max(low, wanted))
    pace = f"{window.measure_s:g} s at {step_s * 1e3:,.3g} ms per step (the last warm-up step)"
    if steps == wanted:
        return steps, f"{steps} steps to fill window.measure_s={pace}"
    if steps == high:
        return steps, f"{steps} steps (window.max_measure_steps) of the {wanted:,} that would fill {pace}"
    return steps, f"{steps} steps (window.measure_steps), more than the {wanted:,} that fill {pace}"


def combine_ranks(local: LocalWindow, *, session: DistSession) -> WindowMeasurement:
    """Per step the slowest rank's time (and data wait), samples and tokens summed over ranks (tokens are None
    when any rank's batches carry none), memory peaks and counted FLOPs per sample maxed over ranks."""
    step_times_s = session.max_over_ranks(local.step_times_s)
    measured_s, = session.max_over_ranks([local.measured_s])
    # The last entry counts the ranks without tokens: one such rank makes the trial's tokens None.
    total_samples, total_tokens, no_tokens = session.sum_over_ranks(
        [local.samples, local.tokens or 0, 1 if local.tokens is None else 0])
    # A rank without a count sends -1: the max is a count whenever any rank has one.
    flops_per_sample = local.flops.flops_per_sample if local.flops is not None else None
    compiled = local.compile or CompileFigures(recompiles_measured=0, graph_breaks=0, fell_back_to_eager=False)
    warmup_s, most_flops_per_sample, most_recompiles, most_breaks, fell_back, most_syncs = session.max_over_ranks(
        [local.warmup_s, flops_per_sample if flops_per_sample is not None else -1.0,
         float(compiled.recompiles_measured), float(compiled.graph_breaks or 0), float(bool(compiled.fell_back_to_eager)),
         float(local.syncs_in_window)])
    peak = reserved = None
    note: Optional[str] = f"the {session.device.type} device does not report allocator peaks"
    rss_growth_bytes: Optional[int] = None
    if local.rss is not None:
        # A rank without a reading sends -1 and a flag: the growth is the max only when every rank has one.
        rss_max, rss_missing = session.max_over_ranks(
            [float(local.rss.growth_bytes if local.rss.growth_bytes is not None else -1),
             float(local.rss.growth_bytes is None)])
        if rss_missing:
            note = local.rss.note or "peak resident memory not read on some rank"
        else:
            rss_growth_bytes = int(rss_max)
    if local.peak_memory_bytes is not None and local.peak_memory_reserved_bytes is not None:
        peak_f, reserved_f = session.max_over_ranks([float(local.peak_memory_bytes),
                                                     float(local.peak_memory_reserved_bytes)])
        peak, reserved, note = int(peak_f), int(reserved_f), None
    return WindowMeasurement(
        step_times_s=tuple(step_times_s), measured_s=measured_s,
        tokens=int(total_tokens) if no_tokens == 0 else None, samples=int(total_samples),
        data_wait_s=tuple(session.max_over_ranks(local.data_wait_s)),
        losses=tuple(session.mean_over_ranks(local.losses)) if local.losses else (), warmup_s=warmup_s,
        peak_memory_bytes=peak, peak_memory_reserved_bytes=reserved, peak_memory_note=note,
        num_parameters=local.num_parameters, ddp_applied=local.ddp_applied, stop_reason=local.stop_reason,
        num_warmup_steps=local.num_warmup_steps,
        no_sync_step_times_s=tuple(session.max_over_ranks(local.no_sync_step_times_s))
        if local.no_sync_step_times_s else (),
        aux_stats=tuple(local.aux_stats),
        flops_per_sample=most_flops_per_sample if most_flops_per_sample >= 0 else None,
        flops_note=local.flops.note if local.flops is not None else None,
        # Every rank holds the same readings (averaged over ranks in each noise step).
        noise_readings=tuple(local.noise_readings), noise_note=local.noise_note,
        compiled_build=local.compiled_build, compiled=local.compiled,
        compile=CompileFigures(recompiles_measured=int(most_recompiles), graph_breaks=int(most_breaks),
                               fell_back_to_eager=bool(fell_back)) if local.compile is not None else None,
        syncs_in_window=int(most_syncs), rss_growth_bytes=rss_growth_bytes)
