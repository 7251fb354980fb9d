"""Batch sources: each yields `[micro_batch_size, seq_len + 1]` token ids for one micro-step.

The synthetic source draws uniformly random ids on the device from a generator seeded per rank, so every
trial sees the same token stream and no input pipeline cost is measured.
"""

from __future__ import annotations

from typing import Iterator

import torch

from trainer_tune.config import DataArgs, ModelArgs


def synthetic_batches(*, data: DataArgs, model: ModelArgs, micro_batch_size: int, rank: int,
                      device: torch.device) -> Iterator[torch.Tensor]:
    generator = torch.Generator(device=device)
    # Distinct streams per rank, like a sharded data loader; the same streams in every trial.
    generator.manual_seed(data.seed * 1_000_003 + rank)
    shape = (micro_batch_size, model.seq_len + 1)
    while True:
        yield torch.randint(0, model.vocab_size, shape, generator=generator, device=device)


def build_batches(*, data: DataArgs, model: ModelArgs, micro_batch_size: int, rank: int,
                  device: torch.device) -> Iterator[torch.Tensor]:
    return synthetic_batches(data=data, model=model, micro_batch_size=micro_batch_size, rank=rank, device=device)
