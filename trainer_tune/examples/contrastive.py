"""A step function (`step._target_`): a model with two inputs and a loss that is not a function of one output.

A contrastive encoder embeds two views of each sample, and the loss (InfoNCE) scores every anchor against every
positive in the micro-batch. No default rule fits: the batch is a dict, but `model(**batch)` returns two
embeddings and no `.loss`, and there are no labels. The step function says how to get a loss from a batch:

    model=pair_encoder data=pairs step._target_=trainer_tune.examples.contrastive.contrastive_step

trainer_tune calls `contrastive_step(model, batch, **step.kwargs)` on every micro-step, with the model wrapped in
DDP and the batch on the device, then runs backward on what it returns (a scalar tensor).
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class PairEncoder(nn.Module):
    """One MLP encoder applied to both views: (anchor [B, dim], positive [B, dim]) -> two unit-length
    embeddings [B, embed_dim]. Both views go through the encoder in one call, as one batch of 2B rows: faster
    than two calls of B rows each."""

    def __init__(self, *, dim: int = 32, hidden: int = 128, embed_dim: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                     nn.Linear(hidden, embed_dim))

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = F.normalize(self.encoder(torch.cat([anchor, positive])), dim=-1)
        return embedded[: len(anchor)], embedded[len(anchor):]


def contrastive_step(model: nn.Module, batch: dict[str, torch.Tensor], *, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE: each anchor should be closest to its own positive among the micro-batch's positives.

        step._target_=trainer_tune.examples.contrastive.contrastive_step +step.kwargs.temperature=0.05
    """
    anchors, positives = model(batch["anchor"], batch["positive"])
    logits = anchors.float() @ positives.float().T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def pair_batches(*, micro_batch_size: int, rank: int, seed: int, dim: int = 32,
                 noise: float = 0.1) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches `{anchor [B, dim], positive [B, dim]}`: random points and a noisy copy of each. A
    generator is fine as a source as long as it never ends; this one differs on every rank and is the same in
    every trial (seeded by data.seed and rank)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    while True:
        anchor = torch.randn(micro_batch_size, dim, generator=generator)
        yield {"anchor": anchor, "positive": anchor + noise * torch.randn(micro_batch_size, dim, generator=generator)}
