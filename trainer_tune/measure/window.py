"""One trial's measurement window: a short, real DDP training run at one setting.

Every trial starts from the same seed with a fresh model, DDP wrapper and optimizer. A setting's first build
counts one micro-step's FLOPs with FlopCounterMode before DDP wraps the model (flop_count.py; not for the built-in
GPT, whose FLOPs are a formula). A setting with train.compile then torch.compiles the DDP-wrapped model, which
compiles in the first warm-up step (workloads/compile.py). Warm-up optimizer steps run first and are not
measured. Each measured optimizer step is `grad_accum` micro-steps, with DDP's `no_sync` on all but the last, then
`optimizer.step()` (through a GradScaler with fp16). Step
boundaries are timed on the host clock on CPU and with CUDA events on GPU (which time the device's own stream
without stalling the host each step); the device is synchronized before any time is read. Per step, the time
that counts is the slowest rank's, and tokens are the ones really fed to the model on every rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import psutil
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer_tune.config.schema import Mode, Precision, TuneConfig, WindowArgs
from trainer_tune.platform.distributed import DistSession
from trainer_tune.platform.faults import NO_FAULT, FaultPlan
from trainer_tune.measure.flop_count import StepFlops, count_step_flops
from trainer_tune.measure.flops import analytic_flops_apply
from trainer_tune.measure.host_memory import RssGrowth, RssWatch
from trainer_tune.measure.noise_estimate import NoiseReading
from trainer_tune.measure.noise_steps import GradientNormReader, run_noise_steps, why_not_measured
from trainer_tune.plan import TrialSpec
from trainer_tune.measure.replica import InferenceReplica
from trainer_tune.measure.step_stats import relative_half_width, throughput_ci
from trainer_tune.measure.telemetry import RankTelemetry, TelemetryProbe
from trainer_tune.platform.units import format_bytes
from trainer_tune.workloads.batch import Count, count_samples, read_count, token_counter
from trainer_tune.workloads.compile import compile_failures_named, compile_module, graphs_compiled
from trainer_tune.workloads.data import build_batches
from trainer_tune.workloads.loss import build_loss
from trainer_tune.workloads.checkpointing import enable_activation_checkpointing
from trainer_tune.workloads.model import build_trial_model, count_parameters
from trainer_tune.workloads.precision import autocast_for
from trainer_tune.workloads.nsa_stats import AuxStatsCollector
from trainer_tune.workloads.step import StepFn, StepOutcome, StepRules, default_step, user_step
from trainer_tune.workloads.targets import instantiate_target


@dataclass(frozen=True)
class WindowMeasurement:
    step_times_s: tuple[float, ...]
    """Per measured optimizer step, the slowest rank's time (for the step-time distribution)."""
    measured_s: float
    """The measured steps' total time on the slowest rank: the denominator of throughput. (Summing the
    per-step maxima instead would add cross-rank jitter, since the slowest rank changes from step to step.)"""
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
    num_graphs_compiled_measured: Optional[int] = None
    """Graphs dynamo compiled during the measured steps, most over ranks (recompilation: its time is then in the
    throughput); None for an eager trainer."""
    rss_growth_bytes: Optional[int] = None
    """CPU devices: the highest rank's peak resident memory growth over the window that built the trainer
    (host_memory.py); None elsewhere (peak_memory_note says why on a CPU)."""


StepCallback = Callable[[int, bool], None]
"""Called after each optimizer step with (step index, whether it was measured); outside the timed region."""
Heartbeat = Callable[[int, int], None]
"""Called at the start of every micro-step with (step index, micro-step index): the watchdog's pulse."""


class _HostClock:
    def __init__(self) -> None:
        self._start_s = 0.0
        self.times_s: list[float] = []

    def start(self) -> None:
        self._start_s = time.perf_counter()

    def stop(self) -> None:
        self.times_s.append(time.perf_counter() - self._start_s)

    def read_s(self) -> list[float]:
        return self.times_s


class _CudaEventClock:
    def __init__(self) -> None:
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def start(self) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self._events.append((event, event))

    def stop(self) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self._events[-1] = (self._events[-1][0], event)

    def read_s(self) -> list[float]:
        torch.cuda.synchronize()
        return [begin.elapsed_time(end) / 1000.0 for begin, end in self._events]


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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        self.loss_of: StepFn = _step_fn(cfg, autocast)
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
        self.module = compile_module(self.ddp, self.compile_mode) if self.compiled else self.ddp
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
        model thrown away at the end of the trial). The statistics are still all-reduced: they are part of the
        step's work with nsa.disable_aux_stats=false. A `grad_reader` (a noise step, noise_steps.py) reads the
        gradients after each micro-step and before the update, where it also all-reduces them by hand.

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
            with sync_context, compile_failures_named(self.compiled, self.compile_mode,
                                                      first_call=self.steps_done == 1):
                loss = self.loss_of(self.module, batch)
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
                self.scaler.unscale_(self.optimizer)  # the reader reads true gradients; step() will not unscale again
            grad_reader.before_update()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss=loss_sum / self.grad_accum, samples=samples, tokens=tokens, data_wait_s=data_wait_s,
                           aux_stats=self.aux_stats.reduce_step())


def _step_fn(cfg: TuneConfig, autocast: Callable[[], Any]) -> StepFn:
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
    """Why the measured steps ended: the interval was tight enough, a cap, or a fixed window."""
    num_warmup_steps: int
    """Warm-up steps this window ran: window.warmup_steps for a fresh build, fewer for a kept model."""
    no_sync_step_times_s: list[float]
    """This rank's times of the extra steps without gradient sync (window.comm_split_steps); may be empty."""
    aux_stats: list[dict[str, float]]
    """Per measured step, the NSA auxiliary statistics, already averaged over ranks in the step; may be empty."""
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
    num_graphs_compiled_measured: Optional[int] = None
    """Graphs dynamo compiled on this rank during the measured steps; None for an eager trainer."""
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

    Besides DDP's own collectives, the only one here is the small all-reduce of step times at each interval
    check; a rank that fails leaves its peers waiting there or in DDP, which the watchdog handles. The
    outcome agreement that follows goes through the store.

    Whatever the window starts is undone on every path, so a window that fails leaves this process as one
    that succeeds does: the probe stops sampling, and the model, its DDP wrapper (with the hooks DDP put on
    the parameters), the optimizer state and the activations are freed before the next window builds its own.
    """
    key = spec.setting_key or spec.key
    trainer = pool.take(key) if pool is not None else None
    # CPU peak memory is the resident set's growth, which only a window that builds its trainer can see whole.
    rss_watch = None
    if session.device.type == "cpu" and trainer is None:
        _import_first_use_modules()
        rss_watch = RssWatch().start()
    try:
        if trainer is None:
            runner = InferenceReplica if cfg.mode == Mode.inference else _Trainer
            trainer = runner(cfg=cfg, spec=spec, session=session, fault=fault, heartbeat=heartbeat,
                             flops=pool.flops.get(key) if pool is not None else None)
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
        local = dataclasses.replace(local, compiled_build=built and trainer.compiled, compiled=trainer.compiled)
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


def _measure(*, cfg: TuneConfig, trainer: _Trainer, session: DistSession, on_step: Optional[StepCallback],
             probe: Optional[TelemetryProbe], num_warmup_steps: int, comm_split: bool) -> LocalWindow:
    device = session.device
    _synchronize(device)
    warmup_start_s = time.perf_counter()
    for _ in range(num_warmup_steps):
        step = trainer.steps_done
        trainer.step(step)  # aux statistics are computed and reduced here too, only not kept
        if on_step:
            on_step(step, False)
    _synchronize(device)
    warmup_s = time.perf_counter() - warmup_start_s
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    clock = _CudaEventClock() if device.type == "cuda" else _HostClock()
    graphs_before = graphs_compiled() if trainer.compiled else None
    losses: list[torch.Tensor] = []
    aux_stats: list[dict[str, float]] = []
    data_wait_s: list[float] = []
    num_steps = 0
    tokens: Optional[Count] = 0
    samples = 0
    window = cfg.window
    stop_reason: Optional[str] = None
    try:
        if probe is not None:
            probe.start()
        while stop_reason is None:
            step = trainer.steps_done
            clock.start()
            outcome = trainer.step(step)
            clock.stop()
            num_steps += 1
            if outcome.loss is not None:
                losses.append(outcome.loss)
            if outcome.aux_stats is not None:
                aux_stats.append(outcome.aux_stats)
            data_wait_s.append(outcome.data_wait_s)
            samples += outcome.samples
            tokens = None if tokens is None or outcome.tokens is None else tokens + outcome.tokens
            if on_step:
                on_step(step, True)
            done = num_steps
            if done >= window.measure_steps and (window.target_rel_ci is None or done >= window.max_measure_steps
                                                 or (done - window.measure_steps) % window.check_every_steps == 0):
                # Every rank decides from the same all-reduced step times, so all stop at the same step.
                stop_reason = window_stop_reason(session.max_over_ranks(clock.read_s()), window)
        step_times_s = clock.read_s()  # synchronizes the device: the probe stops when the work has ended
        recompiled = graphs_compiled() - graphs_before if graphs_before is not None else None
        num_tokens = read_count(tokens) if tokens is not None else None
        telemetry = probe.stop(tokens=num_tokens, samples=samples) if probe is not None else None
    finally:
        if probe is not None:
            probe.abandon()  # a window that failed while sampling (after stop() there is nothing to do)
    local_losses = torch.stack(losses).tolist() if losses else []
    # Before the comm split: its steps without sync leave the ranks' weights apart, and the noise steps read
    # every rank's gradient as one of the same model's.
    world_size = session.rank_env.world_size if isinstance(trainer, _Trainer) and trainer.can_skip_sync else 1
    # In a setting's first window only (as the comm split): four extra steps in every window would cost the race
    # rounds (sweep.budget_s counts them), and the sweep's figure pools every setting's steps anyway.
    noise_note = why_not_measured(num_steps=window.noise_steps, world_size=world_size,
                                  grad_accum=getattr(trainer, "grad_accum", 1), training=isinstance(trainer, _Trainer),
                                  first_window=comm_split)
    noise_readings = run_noise_steps(trainer, num_steps=window.noise_steps, world_size=world_size) \
        if noise_note is None else []
    no_sync_step_times_s = _no_sync_steps(trainer, num_steps=window.comm_split_steps if comm_split else 0,
                                          device=device)
    peak = reserved = None
    if device.type == "cuda":
        peak, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    return LocalWindow(step_times_s=step_times_s, tokens=num_tokens, samples=samples, losses=local_losses,
                       warmup_s=warmup_s, data_wait_s=data_wait_s,
                       peak_memory_bytes=peak, peak_memory_reserved_bytes=reserved,
                       num_parameters=trainer.num_parameters, ddp_applied=trainer.ddp_applied, telemetry=telemetry,
                       stop_reason=stop_reason, num_warmup_steps=num_warmup_steps,
                       no_sync_step_times_s=no_sync_step_times_s, aux_stats=aux_stats, flops=trainer.flops,
                       noise_readings=noise_readings, noise_note=noise_note, num_graphs_compiled_measured=recompiled)


def _no_sync_steps(trainer: _Trainer, *, num_steps: int, device: torch.device) -> list[float]:
    """Time `num_steps` steps without gradient sync, after the measured ones (so they cannot disturb them).

    The same count on every rank (it comes from config), so the ranks' lists line up step by step. With one
    rank there is no sync to remove, and nothing is measured."""
    if not trainer.can_skip_sync or num_steps == 0:
        return []
    clock = _CudaEventClock() if device.type == "cuda" else _HostClock()
    for _ in range(num_steps):
        clock.start()
        trainer.step(trainer.steps_done, sync=False)
        clock.stop()
    return clock.read_s()


def window_stop_reason(times_s: Sequence[float], window: WindowArgs) -> Optional[str]:
    """None to keep measuring, else why to stop. A pure function of the (all-reduced) step times, so every
    rank reaches the same answer."""
    steps = len(times_s)
    if window.target_rel_ci is None:
        return f"fixed window of {steps} steps" if steps >= window.measure_steps else None
    if steps < window.measure_steps:
        return None
    low, high = throughput_ci(times_s, amount_per_step=1.0)
    width = relative_half_width(low, high, steps / math.fsum(times_s))
    if width <= window.target_rel_ci:
        return f"95% interval within +-{width:.1%} after {steps} steps (target +-{window.target_rel_ci:.1%})"
    if steps >= window.max_measure_steps:
        return f"step cap: {steps} steps, interval +-{width:.1%} (target +-{window.target_rel_ci:.1%})"
    if math.fsum(times_s) >= window.max_measure_s:
        return (f"time cap: {math.fsum(times_s):.1f} s, {steps} steps, interval +-{width:.1%} "
                f"(target +-{window.target_rel_ci:.1%})")
    return None


def combine_ranks(local: LocalWindow, *, session: DistSession) -> WindowMeasurement:
    """Per step the slowest rank's time (and data wait), samples and tokens summed over ranks (tokens are None
    when any rank's batches carry none), memory peaks and counted FLOPs per sample maxed over ranks."""
    step_times_s = session.max_over_ranks(local.step_times_s)
    measured_s, = session.max_over_ranks([math.fsum(local.step_times_s)])
    # The last entry counts the ranks without tokens: one such rank makes the trial's tokens None.
    total_samples, total_tokens, no_tokens = session.sum_over_ranks(
        [local.samples, local.tokens or 0, 1 if local.tokens is None else 0])
    # A rank without a count sends -1: the max is a count whenever any rank has one.
    flops_per_sample = local.flops.flops_per_sample if local.flops is not None else None
    warmup_s, most_flops_per_sample, most_graphs = session.max_over_ranks(
        [local.warmup_s, flops_per_sample if flops_per_sample is not None else -1.0,
         float(local.num_graphs_compiled_measured) if local.num_graphs_compiled_measured is not None else -1.0])
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
        num_graphs_compiled_measured=int(most_graphs) if most_graphs >= 0 else None,
        rss_growth_bytes=rss_growth_bytes)
