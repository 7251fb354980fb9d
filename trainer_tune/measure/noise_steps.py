"""The noise steps of a window: extra optimizer steps that read gradient norms for the noise scale (noise_scale.py).

They run after the measured steps, outside every timed region, because reading a rank's own gradient means
keeping DDP from all-reducing it: every micro-step runs under `no_sync`. (A DDP comm hook would see the buckets
before the all-reduce, but it replaces DDP's own all-reduce in the measured steps too, changing the throughput
being measured, and cannot be removed again.) Per step:

- after micro-step 0 (when grad_accum >= 2): the squared norm of the gradient of one micro-batch. Each
  micro-step's loss is divided by grad_accum, so the gradients then hold g0 / grad_accum: rescaled here;
- with fp16, the GradScaler's scale is divided out of micro-step 0's reading, and the gradients are unscaled
  (GradScaler.unscale_) before the last reading;
- after the last micro-step: the rank's accumulated gradient, a mean over micro_batch_size x grad_accum samples;
- with two ranks or more: all-reducing the gradients by hand, in place, divided by the world size, gives the global
  batch's gradient, and makes the optimizer step that follows a real synced step, the same on every rank.

A rank's squared norms are each an unbiased reading; they are averaged over ranks (a small float64 all-reduce),
which keeps them unbiased and makes them less noisy.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

from trainer_tune.measure.noise_estimate import NoiseReading


def squared_norm(parameters: Iterable[nn.Parameter]) -> torch.Tensor:
    """The squared L2 norm of the gradients, summed in float64 (a zero-dimensional tensor on their device). Each
    tensor's norm is taken in float32, which copies nothing for fp32 gradients: no memory a setting that fits
    would run out of here."""
    norms = [torch.linalg.vector_norm(p.grad, dtype=torch.float32).double() ** 2
             for p in parameters if p.grad is not None]
    return torch.stack(norms).sum() if norms else torch.zeros((), dtype=torch.float64)


class GradientNormReader:
    """The hooks one noise step calls (window._Trainer.step): after each micro-step, and before the update."""

    def __init__(self, parameters: Iterable[nn.Parameter], *, micro_batch_size: int, grad_accum: int,
                 world_size: int) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        self.micro_batch_size, self.grad_accum, self.world_size = micro_batch_size, grad_accum, world_size
        self._micro: Optional[torch.Tensor] = None
        self.readings: list[NoiseReading] = []

    def after_micro_step(self, micro: int, *, grad_scale: float = 1.0) -> None:
        """`grad_scale`: the fp16 GradScaler's loss scale the gradients still carry (1 without one)."""
        if micro == 0 and self.grad_accum > 1:
            self._micro = squared_norm(self.parameters) * (self.grad_accum / grad_scale) ** 2

    def before_update(self) -> None:
        local_batch = self.micro_batch_size * self.grad_accum
        local = [squared_norm(self.parameters)] + ([self._micro] if self._micro is not None else [])
        sizes = [local_batch] + ([self.micro_batch_size] if self._micro is not None else [])
        norms = torch.stack(local)
        reading = []
        if self.world_size > 1:
            dist.all_reduce(norms, op=dist.ReduceOp.SUM)
            norms = norms / self.world_size
            reading.append((local_batch * self.world_size, float(self._all_reduce_gradients())))
        reading += [(b, float(v)) for b, v in zip(sizes, norms.tolist())]
        self.readings.append(tuple(sorted(reading)))
        self._micro = None

    def _all_reduce_gradients(self) -> torch.Tensor:
        """Average the gradients over ranks in place (what DDP would have done); the global squared norm.

        One all-reduce per parameter, in place: untimed, so their number does not matter, and no flat copy of
        every gradient is made (on a GPU close to full, that copy alone could run out of memory)."""
        device = self.parameters[0].device if self.parameters else torch.device("cpu")
        used = torch.tensor([p.grad is not None for p in self.parameters], dtype=torch.int32, device=device)
        dist.all_reduce(used, op=dist.ReduceOp.SUM)
        for p, ranks_using in zip(self.parameters, used.tolist()):
            if not ranks_using:
                continue  # unused on every rank: no gradient, as after DDP's own all-reduce
            if p.grad is None:  # unused on this rank only: a zero contribution
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= self.world_size
        return squared_norm(self.parameters)


def why_not_measured(*, num_steps: int, world_size: int, grad_accum: int, training: bool,
                     first_window: bool = True) -> Optional[str]:
    """Why a window reads no noise steps, or None when it does (a setting's first window only)."""
    if not training:
        return "mode=inference: no gradients"
    if num_steps == 0:
        return "window.noise_steps=0"
    if not first_window:
        return "read in the setting's first window only"
    if world_size < 2 and grad_accum < 2:
        return ("one rank and grad_accum=1 give one batch size only; the noise scale needs two (two ranks, or "
                "grad_accum >= 2)")
    return None


def run_noise_steps(trainer: Any, *, num_steps: int, world_size: int) -> list[NoiseReading]:
    """`num_steps` noise steps of `trainer` (window._Trainer): one reading per step, the same on every rank."""
    reader = GradientNormReader(trainer.module.parameters(), micro_batch_size=trainer.micro_batch_size,
                                grad_accum=trainer.grad_accum, world_size=world_size)
    for _ in range(num_steps):
        trainer.step(trainer.steps_done, sync=False, grad_reader=reader)
    return reader.readings
