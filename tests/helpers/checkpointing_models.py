"""Models for the activation checkpointing tests (tests/unit/test_activation_checkpointing.py): one that defines the
hook with trainer_tune's helper, as docs/your-model.md shows, and one whose hook fails."""

from __future__ import annotations

import torch
from torch import nn

from trainer_tune.workloads.checkpointing import checkpoint_blocks


class MLPBlock(nn.Sequential):
    """LayerNorm, Linear, GELU, Linear; counts the forwards that start, recomputations included."""

    calls = 0
    """Forward calls over every instance (a class attribute: what a trainer built and dropped ran is counted)."""

    def __init__(self, hidden: int) -> None:
        super().__init__(nn.LayerNorm(hidden), nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return super().forward(x)


class ResidualMLP(nn.Module):
    """features [batch, in_features] -> logits [batch, num_classes] through a residual stack of MLP blocks."""

    def __init__(self, *, in_features: int = 12, hidden: int = 32, num_blocks: int = 3, num_classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(MLPBlock(hidden) for _ in range(num_blocks))
        self.head = nn.Linear(hidden, num_classes)

    def activation_checkpointing_enable(self) -> None:
        checkpoint_blocks(self.blocks)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.embed(features)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


class RefusesCheckpointing(nn.Module):
    """Has the hook, but it refuses, as a Hugging Face model without gradient checkpointing support does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def activation_checkpointing_enable(self) -> None:
        raise ValueError("RefusesCheckpointing does not support gradient checkpointing.\nSee its docs.")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)
