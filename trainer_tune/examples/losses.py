"""A loss given by `loss._target_`: loss(logits [batch, seq, vocab], targets [batch, seq], **loss.kwargs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *,
                                 smoothing: float = 0.1) -> torch.Tensor:
    """Next-token cross-entropy with label smoothing, in float32.

        loss._target_=trainer_tune.examples.losses.label_smoothed_cross_entropy +loss.kwargs.smoothing=0.05
    """
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           label_smoothing=smoothing)
