"""Models given by `model._target_` that break the forward contract on purpose, for the tests and the docs'
examples of what such a mistake looks like."""

from __future__ import annotations

import torch
from torch import nn


class WrongShape(nn.Module):
    """Returns [batch, vocab] instead of [batch, seq, vocab]: what a shape error looks like."""

    def __init__(self, *, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids).mean(dim=1)
