"""One rank's serving replica under open-loop load: a batch of k requests served, and its service times measured.

The model is served as measure/replica.py serves it (eval mode, `torch.inference_mode()`, the setting's autocast,
`step._target_` or the default forward, the device synchronised after every batch: a request is answered when its
outputs exist). A request is one sample: a batch of k requests is the first k samples of a batch of the largest
size the sweep serves, taken from a few batches drawn once, so a run measures serving, not the data source.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from trainer_tune.config.flags import TrialFlags
from trainer_tune.config.schema import TuneConfig
from trainer_tune.measure.open_loop import first_samples
from trainer_tune.measure.replica import ServeFn, default_serve
from trainer_tune.platform import syncs
from trainer_tune.platform.distributed import DistSession
from trainer_tune.workloads.compile import compile_module
from trainer_tune.workloads.data import build_batches
from trainer_tune.workloads.model import build_trial_model
from trainer_tune.workloads.precision import autocast_for
from trainer_tune.workloads.targets import instantiate_target

_POOL_BATCHES = 4
"""Batches drawn once and served in turn (different inputs, so no cache serves a repeat)."""
_WARMUP_PER_SIZE = 3


class LoadReplica:
    def __init__(self, *, cfg: TuneConfig, session: DistSession, flags: TrialFlags, largest_batch: int) -> None:
        self.device = session.device
        torch.manual_seed(cfg.train.seed)
        model = build_trial_model(cfg.model, flags).to(self.device)
        model.eval()
        self.model = compile_module(model, cfg.train.compile_mode) if flags.compile else model
        self.largest_batch = largest_batch
        batches = build_batches(data=cfg.data, model=cfg.model, micro_batch_size=largest_batch,
                                rank=session.rank_env.rank, world_size=session.rank_env.world_size,
                                device=self.device)
        self.pool: list[Any] = [next(batches) for _ in range(_POOL_BATCHES)]
        self.autocast = autocast_for(flags.precision, self.device)
        self.serve_fn: ServeFn = default_serve
        if cfg.step._target_ is not None:
            self.serve_fn = instantiate_target("step._target_", cfg.step._target_, cfg.step.kwargs, partial=True)
        self.served = 0

    def serve(self, size: int) -> None:
        """Serve a batch of `size` requests; returns once its outputs exist."""
        batch = first_samples(self.pool[self.served % len(self.pool)], size)
        self.served += 1
        with torch.inference_mode(), self.autocast():
            self.serve_fn(self.model, batch)
        syncs.synchronize(self.device)

    def warm_up(self) -> None:
        """Every batch size a few times: first calls (allocations, a compiled shape) stay out of what is timed."""
        for size in range(1, self.largest_batch + 1):
            for _ in range(_WARMUP_PER_SIZE):
                self.serve(size)

    def service_samples(self, repeats: int) -> dict[int, list[float]]:
        """Closed loop: every batch size 1..largest served `repeats` times, sizes interleaved (a slow minute of the
        machine then touches every size alike), each timed to its outputs."""
        samples: dict[int, list[float]] = {size: [] for size in range(1, self.largest_batch + 1)}
        for _ in range(repeats):
            for size in samples:
                start_s = time.perf_counter()
                self.serve(size)
                samples[size].append(time.perf_counter() - start_s)
        return samples
