"""A batch source given by `data._target_` (the contract is trainer_tune.workloads.data.BatchSource)."""

from __future__ import annotations

from typing import Iterator

import torch


def counting_batches(*, micro_batch_size: int, seq_len: int, vocab_size: int, rank: int, world_size: int,
                     seed: int, device: torch.device, max_step: int = 7) -> Iterator[torch.Tensor]:
    """Sequences that count up by a random step modulo vocab_size: learnable (the loss falls fast), different
    on every rank, the same in every trial. Yields CPU tensors [micro_batch_size, seq_len + 1]; trainer_tune
    moves them to `device`.

        data._target_=trainer_tune.examples.batches.counting_batches +data.kwargs.max_step=3
    """
    del world_size, device  # part of the contract; this source needs neither
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    positions = torch.arange(seq_len + 1)
    while True:
        start = torch.randint(0, vocab_size, (micro_batch_size, 1), generator=generator)
        step = torch.randint(1, max_step + 1, (micro_batch_size, 1), generator=generator)
        yield (start + step * positions) % vocab_size
