"""The loss: cross-entropy by default, or the function named by `loss._target_` (see step.py for how each
batch type calls it)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from trainer_tune.config.schema import LossArgs
from trainer_tune.workloads.targets import instantiate_target


def cross_entropy(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in float32 of a model's outputs (a tensor, or an object with `.logits`) against class
    ids. Logits with one more dimension than the targets and the same leading shape ([batch, seq, vocab] against
    [batch, seq]: tokens) are scored over their last dimension; anything else as torch does ([batch, classes]
    against [batch]; [batch, classes, ...] against [batch, ...])."""
    logits = getattr(outputs, "logits", outputs)
    if logits.dim() > 2 and logits.dim() == targets.dim() + 1 and logits.shape[:-1] == targets.shape:
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(logits.float(), targets)


def build_loss(args: LossArgs) -> Optional[Callable[..., torch.Tensor]]:
    """loss._target_ with loss.kwargs bound; None for the default (cross-entropy, or the model's own .loss)."""
    if args._target_ is None:
        return None
    return instantiate_target("loss._target_", args._target_, args.kwargs, partial=True)
