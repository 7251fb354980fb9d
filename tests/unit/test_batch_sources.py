"""trainer_tune/workloads/data.py with a user's `data._target_`: a map-style Dataset gets a DataLoader with a
DistributedSampler (ranks disjoint, epochs reshuffled), an IterableDataset is batched, a DataLoader or another
iterable is used as given, a generator that ends is named, and a source gets only the runtime arguments it takes."""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import pytest
import torch

from trainer_tune.config.schema import DataArgs, ModelArgs
from trainer_tune.workloads.data import build_batches, loader_settings
from trainer_tune.workloads.targets import TargetError

CPU = torch.device("cpu")
HELPERS = "helpers.workloads"


def _stream(target: str, *, micro_batch_size: int = 2, rank: int = 0, world_size: int = 2, seed: int = 7,
            **kwargs: Any) -> Iterator[Any]:
    return build_batches(data=DataArgs(_target_=f"{HELPERS}.{target}", kwargs=kwargs, seed=seed),
                         model=ModelArgs(), micro_batch_size=micro_batch_size, rank=rank, world_size=world_size,
                         device=CPU)


def _indices(batches: list[Any]) -> list[list[int]]:
    """The sample indices in each batch of helpers.workloads.IndexDataset."""
    return [[int(v) for v in batch[0].flatten()] for batch in batches]


def test_a_dataset_is_batched_and_split_over_ranks_without_overlap() -> None:
    # 10 samples over 2 ranks: 5 each (DistributedSampler, drop_last), 2 batches of 2 per epoch (the 5th dropped).
    per_rank = {rank: _indices(list(itertools.islice(_stream("IndexDataset", rank=rank, size=10), 2)))
                for rank in (0, 1)}
    for batches in per_rank.values():
        assert [len(batch) for batch in batches] == [2, 2]
    seen = [set(itertools.chain(*batches)) for batches in per_rank.values()]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8
    # A collated pair: features [2, 1] and labels [2] (sample i has label i % 2).
    batch = next(_stream("IndexDataset", size=10))
    assert batch[0].shape == (2, 1) and torch.equal(batch[1], batch[0].flatten().long() % 2)


def test_a_dataset_is_read_epoch_after_epoch_in_a_new_order() -> None:
    # 8 samples, 2 ranks, micro-batch 2: each epoch is 2 batches per rank, the ranks' 4 samples disjoint.
    streams = {rank: _stream("IndexDataset", rank=rank, size=8) for rank in (0, 1)}
    epochs = {rank: [list(itertools.chain(*_indices([next(stream), next(stream)]))) for _ in range(4)]
              for rank, stream in streams.items()}
    for epoch in range(4):
        assert sorted(epochs[0][epoch] + epochs[1][epoch]) == list(range(8))
    assert len({tuple(order) for order in epochs[0]}) > 1  # set_epoch reshuffles
    # The same seed gives the same order in every trial; another seed another one.
    first = _indices(list(itertools.islice(_stream("IndexDataset", size=64), 4)))
    assert first == _indices(list(itertools.islice(_stream("IndexDataset", size=64), 4)))
    assert first != _indices(list(itertools.islice(_stream("IndexDataset", size=64, seed=8), 4)))


def test_a_dataset_too_small_for_the_micro_batch_is_named() -> None:
    with pytest.raises(TargetError, match=r"^data._target_='helpers.workloads.IndexDataset' returned a Dataset of "
                                          r"3 samples: each of the 2 ranks needs at least micro_batch_size=2"):
        _stream("IndexDataset", size=3)


def test_an_iterable_dataset_is_batched_by_a_data_loader() -> None:
    batches = list(itertools.islice(_stream("CountingSamples", micro_batch_size=3, rank=1), 2))
    assert [batch.tolist() for batch in batches] == [[[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]],
                                                     [[3.0, 1.0], [4.0, 1.0], [5.0, 1.0]]]


def test_a_data_loader_is_used_as_given_and_read_again() -> None:
    # 12 samples in batches of 4: 3 batches per pass, then the same loader from the start.
    batches = list(itertools.islice(_stream("ready_loader", micro_batch_size=4, batch_size=4), 4))
    assert [batch[0].flatten().tolist() for batch in batches] == \
        [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0], [0.0, 1.0, 2.0, 3.0]]
    with pytest.raises(TargetError, match=r"yielded a batch of 4 samples .*; expected micro_batch_size=2 samples .*"
                                          r"\(a DataLoader needs batch_size=micro_batch_size and drop_last=True\)"):
        next(_stream("ready_loader", micro_batch_size=2, batch_size=4))


def test_a_generator_that_ends_is_named() -> None:
    stream = _stream("ending_batches", num_batches=2)
    next(stream), next(stream)
    with pytest.raises(TargetError) as info:
        next(stream)
    assert str(info.value) == ("data._target_='helpers.workloads.ending_batches' ran out of batches; a one-pass "
                               "batch source (a generator) must not end before the trial does (return a DataLoader "
                               "or a Dataset to be read epoch after epoch)")
    with pytest.raises(TargetError, match=r"ending_batches' yielded no batch"):
        next(_stream("ending_batches", num_batches=0))


def test_a_source_gets_only_the_runtime_arguments_it_takes() -> None:
    # seeded_rows takes micro_batch_size and seed, not rank, world_size, seq_len, vocab_size or device.
    batch = next(_stream("seeded_rows", micro_batch_size=3, seed=5, width=2))
    assert batch.tolist() == [[5.0, 5.0]] * 3


def test_loader_settings_follow_the_device_and_the_trial() -> None:
    data = DataArgs(num_workers=2, prefetch_factor=4)
    assert loader_settings(data, device=CPU) == \
        loader_settings(data, device=CPU, num_workers=None)  # no axis: data.num_workers
    settings = loader_settings(data, device=CPU)
    assert (settings.num_workers, settings.pin_memory, settings.prefetch_factor, settings.persistent_workers) == \
        (2, False, 4, True)
    assert loader_settings(data, device=torch.device("cuda")).pin_memory  # null pins on CUDA only
    # The trial's value of sweep.num_workers wins; with no workers there is nothing to prefetch or keep.
    none = loader_settings(data, device=CPU, num_workers=0)
    assert (none.num_workers, none.prefetch_factor, none.persistent_workers) == (0, None, False)
    assert loader_settings(DataArgs(pin_memory=True), device=CPU).pin_memory


def test_a_data_loader_with_its_own_distributed_sampler_gets_each_epoch_number() -> None:
    # 16 samples, 2 ranks, micro-batch 2: 4 batches per epoch on rank 0; without set_epoch every epoch repeats.
    stream = _stream("sharded_loader")
    epochs = [tuple(itertools.chain(*_indices([next(stream) for _ in range(4)]))) for _ in range(4)]
    assert all(len(set(order)) == 8 for order in epochs)  # each epoch this rank's half, no sample twice
    assert len(set(epochs)) > 1  # reshuffled: the sampler was told the epoch
