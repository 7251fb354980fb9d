"""A batch source (data._target_) that runs out part-way through the trials of one micro-batch size: a
failure that hits every rank at the same step, as a real one of the data would."""

from __future__ import annotations

from typing import Iterator

import torch


def batches_that_run_out(*, micro_batch_size: int, seq_len: int, vocab_size: int, rank: int, world_size: int,
                         seed: int, device: torch.device, short_micro_batch_size: int,
                         num_batches: int) -> Iterator[torch.Tensor]:
    """Random token ids, endless except at micro_batch_size == short_micro_batch_size: there `num_batches`."""
    del world_size, device
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    produced = 0
    while micro_batch_size != short_micro_batch_size or produced < num_batches:
        produced += 1
        yield torch.randint(0, vocab_size, (micro_batch_size, seq_len + 1), generator=generator)
