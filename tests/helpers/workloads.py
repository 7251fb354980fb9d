"""Batch sources and models given by `_target_` in the tests of trainer_tune/workloads/: small ones whose batches
say where they came from, and deliberately broken ones (what a user's mistake looks like)."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset


class IndexDataset(Dataset):
    """Sample i is `(tensor([i.0]), i % 2)`: a batch's first element lists the indices it holds."""

    def __init__(self, *, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(index)]), index % 2


class CountingSamples(IterableDataset):
    """Samples `tensor([k.0, rank])` for k = 0, 1, ... without end; the sharding over ranks is its own (each rank
    its own stream), as an IterableDataset's is."""

    def __init__(self, *, rank: int) -> None:
        self.rank = rank

    def __iter__(self) -> Iterator[torch.Tensor]:
        k = 0
        while True:
            yield torch.tensor([float(k), float(self.rank)])
            k += 1


def ready_loader(*, batch_size: int, num_samples: int = 12) -> DataLoader:
    """A DataLoader built by the user with a batch size of its own (not the trial's micro_batch_size):
    trainer_tune uses it as given, epoch after epoch."""
    features = torch.arange(num_samples, dtype=torch.float32).unsqueeze(1)
    return DataLoader(TensorDataset(features, torch.zeros(num_samples, dtype=torch.long)), batch_size=batch_size,
                      drop_last=True)


def ending_batches(*, micro_batch_size: int, num_batches: int) -> Iterator[torch.Tensor]:
    """A generator that ends after num_batches batches: fine for a short script, not for a trial."""
    for _ in range(num_batches):
        yield torch.zeros(micro_batch_size, 3)


def seeded_rows(*, micro_batch_size: int, seed: int, width: int = 3) -> Iterator[torch.Tensor]:
    """Takes two of the runtime arguments and none of the others: rows filled with the seed it was given."""
    while True:
        yield torch.full((micro_batch_size, width), float(seed))


def batches_by_size(*, micro_batch_size: int, seed: int, rank: int) -> Iterator[object]:
    """Three kinds of batch, by micro-batch size, so that one sweep shows three outcomes:
    1: triples (features, labels, weights), which the default step cannot take;
    2: dicts {features, labels}, for which Classifier returns a per-sample .loss (not a scalar);
    4: pairs (features, labels), which train."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    while True:
        features = torch.randn(micro_batch_size, 8, generator=generator)
        labels = torch.randint(0, 4, (micro_batch_size,), generator=generator)
        if micro_batch_size == 1:
            yield features, labels, torch.ones(micro_batch_size)
        elif micro_batch_size == 2:
            yield {"features": features, "labels": labels}
        else:
            yield features, labels


class Classifier(nn.Module):
    """features [B, 8] -> logits [B, 4]; given labels, it returns a .loss it forgot to average (shape [B])."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> object:
        logits = self.linear(features)
        if labels is None:
            return logits
        return {"logits": logits, "loss": F.cross_entropy(logits, labels, reduction="none")}


def sharded_loader(*, micro_batch_size: int, rank: int, world_size: int, seed: int) -> DataLoader:
    """A DataLoader with its own DistributedSampler, as a training script builds it: trainer_tune tells the
    sampler each epoch's number, as the script's loop would, so every epoch has a new order."""
    from torch.utils.data import DistributedSampler

    dataset = IndexDataset(size=16)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=micro_batch_size, sampler=sampler, drop_last=True)
