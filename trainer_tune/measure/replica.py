"""mode=inference: one rank's serving replica, timed batch by batch.

Every rank serves on its own, as replicas behind a load balancer do: no DDP, no gradients, the model in eval
mode under `torch.inference_mode()`, autocast as train.precision says. One "step" of the measurement window is
one batch, from taking it off the source to its outputs being ready (the device is synchronized after every
batch: a served request is answered when its outputs exist, so queued kernels must not hide in the next
batch's time). The window's machinery is the training one: warm-up batches, measured batches until the
interval is tight or a cap, the slowest replica's time per batch, rounds and intervals; only the per-batch
times are latencies here (step_stats.latency_figures), and throughput sums the replicas' samples.

What the replica calls per batch (workloads/step.py's rules, without the loss):
- `step._target_`, when set, is called as `step(model, batch)` and its return value ignored;
- a mapping batch: `model(**batch)` without its `labels` (a served request has none);
- a pair `(inputs, targets)`: `model(inputs)`;
- integer token ids `[batch, seq_len + 1]`: `model(ids[:, :-1])`, the same positions training reads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from torch import nn

from trainer_tune.config.schema import TuneConfig
from trainer_tune.platform import syncs
from trainer_tune.platform.distributed import DistSession
from trainer_tune.platform.faults import FaultPlan
from trainer_tune.measure.flop_count import StepFlops, count_step_flops
from trainer_tune.measure.flops import analytic_flops_apply
from trainer_tune.plan import TrialSpec
from trainer_tune.workloads.batch import _is_token_ids, count_samples, describe, token_counter
from trainer_tune.workloads.compile import compile_failures_named, compile_module
from trainer_tune.workloads.data import build_batches
from trainer_tune.workloads.model import build_trial_model, count_parameters
from trainer_tune.workloads.precision import autocast_for
from trainer_tune.workloads.step import StepOutcome, call_model
from trainer_tune.workloads.targets import TargetError, instantiate_target

ServeFn = Callable[[nn.Module, Any], Any]


def default_serve(model: nn.Module, batch: Any) -> Any:
    """The forward pass a served batch gets, by the rules in this module's docstring."""
    if isinstance(batch, Mapping):
        return model(**{key: value for key, value in batch.items() if key != "labels"})
    if isinstance(batch, (tuple, list)) and not isinstance(batch, torch.Tensor):
        if len(batch) != 2:
            raise TargetError(f"mode=inference takes a pair (inputs, targets), got {describe(batch)}: set "
                              f"step._target_ to a function step(model, batch) for this batch")
        return call_model(model, batch[0])
    if _is_token_ids(batch) and batch.dim() == 2:
        return model(batch[:, :-1])
    raise TargetError(f"mode=inference cannot serve a batch {describe(batch)}: it takes integer token ids "
                      f"[batch, seq_len + 1], a dict of model inputs, or a pair (inputs, targets); set "
                      f"step._target_ to a function step(model, batch) for other batches")


class InferenceReplica:
    """The inference counterpart of window._Trainer, with the same interface for the measurement window."""

    can_skip_sync = False
    """No gradient sync to remove: the window measures no comm split."""
    ddp_applied: Optional[dict[str, object]] = None

    def __init__(self, *, cfg: TuneConfig, spec: TrialSpec, session: DistSession, fault: FaultPlan,
                 heartbeat: Callable[[int, int], None], flops: Optional[StepFlops] = None) -> None:
        device = session.device
        self.device = device
        self.fault = fault
        self.heartbeat = heartbeat
        self.count_tokens = token_counter(cfg.throughput.count)
        torch.manual_seed(cfg.train.seed)
        model = build_trial_model(cfg.model, spec.flags).to(device)
        model.eval()  # dropout off, BatchNorm on its running statistics: as served
        self.model = model
        self.num_parameters = count_parameters(model)
        self.batches = build_batches(data=cfg.data, model=cfg.model, micro_batch_size=spec.micro_batch_size,
                                     rank=session.rank_env.rank, world_size=session.rank_env.world_size,
                                     device=device, num_workers=getattr(spec.flags, "num_workers", None))
        self.autocast = autocast_for(spec.flags.precision, device)
        self.serve: ServeFn = default_serve
        if cfg.step._target_ is not None:
            self.serve = instantiate_target("step._target_", cfg.step._target_, cfg.step.kwargs, partial=True)
        self.steps_done = 0
        self.flops = flops
        """FlopCounterMode's count of one served batch (the forward only); None for the built-in GPT, whose
        forward FLOPs are known (a third of its training formula, sweep._flops_context)."""
        if flops is None and not analytic_flops_apply(cfg):
            batch = next(self.batches)  # one batch more from the stream, before any timing, for every setting
            self.flops = count_step_flops(self.model, batch, self.serve, micro_batch_size=spec.micro_batch_size,
                                          device=device, backward=False)
            self.heartbeat(0, 0)
        # Compiled after the count (FlopCounterMode counts the eager ops); compilation happens in the first warm-up
        # batch, as in training.
        self.compiled = spec.flags.compile
        self.compile_mode = cfg.train.compile_mode
        if self.compiled:
            self.model = compile_module(model, self.compile_mode)

    def step(self, index: int, *, sync: bool = True) -> StepOutcome:
        """Serve one batch: the measurement window's step. `sync` (gradient sync) has no meaning here."""
        del sync
        self.steps_done += 1
        self.heartbeat(index, 0)
        self.fault.before_micro_step(step=index, micro_step=0, device=self.device)
        start_s = time.perf_counter()
        batch = next(self.batches)
        data_wait_s = time.perf_counter() - start_s
        with compile_failures_named(self.compiled, self.compile_mode, first_call=self.steps_done == 1), \
                torch.inference_mode(), self.autocast():
            self.serve(self.model, batch)
        syncs.synchronize(self.device)  # the batch is served when its outputs exist (counted: syncs_in_window)
        return StepOutcome(loss=None, samples=count_samples(batch) or 0, tokens=self.count_tokens(batch),
                                 data_wait_s=data_wait_s, aux_stats=None)
