"""The training loss: next-token cross-entropy, or the function named by `loss._target_`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer_tune.config import LossArgs
from trainer_tune.workloads.targets import LossFn, TargetError, instantiate_target


def next_token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [batch, seq, vocab] against the next tokens [batch, seq], in float32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def build_loss(args: LossArgs) -> LossFn:
    if args._target_ is None:
        return next_token_cross_entropy
    return instantiate_target("loss._target_", args._target_, args.kwargs, partial=True)


def checked_loss(value: object, *, target: str | None) -> torch.Tensor:
    """A loss must be a scalar tensor to call backward() on; say so in one line when it is not."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TargetError(f"loss._target_={target!r} returned {shape}; expected a scalar tensor")
    return value.reshape(())
