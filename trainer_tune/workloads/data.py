"""Batch sources: each yields `[micro_batch_size, seq_len + 1]` token ids for one micro-step.

- synthetic (the default): uniformly random ids drawn on the device from a generator seeded per rank, so
  every trial sees the same token stream and no input pipeline cost is measured;
- bytes: windows of a small English text shipped in the package (trainer_tune/corpus/), one token per byte
  (vocabulary 256), at offsets drawn from the same kind of per-rank generator: real text, still no I/O;
- `data._target_`: the user's own `BatchSource`, instantiated with `data.kwargs` plus the runtime arguments
  below. Its batches are checked (shape, integer dtype, range) and moved to the device.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Iterable, Iterator, Protocol

import torch

from trainer_tune.config import DataArgs, DataKind, ModelArgs
from trainer_tune.workloads.targets import TargetError, instantiate_target

CORPUS_FILE = "corpus/docs.txt"


class BatchSource(Protocol):
    """What `data._target_` must name: a function (or class) called once per trial and rank as

        source(micro_batch_size=..., seq_len=..., vocab_size=..., rank=..., world_size=..., seed=..., device=...,
               **data.kwargs)

    returning an iterable that yields, for every micro-step, an integer tensor [micro_batch_size, seq_len + 1]
    of token ids in [0, vocab_size): the model reads positions 0..seq_len-1 and predicts 1..seq_len. It may
    yield CPU tensors (they are moved to the device) and should draw from `rank` and `seed` so that ranks see
    different data and every trial the same. It must not end before the trial does.
    """

    def __call__(self, *, micro_batch_size: int, seq_len: int, vocab_size: int, rank: int, world_size: int,
                 seed: int, device: torch.device) -> Iterable[torch.Tensor]: ...


def _generator(seed: int, rank: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    # Distinct streams per rank, like a sharded data loader; the same streams in every trial.
    generator.manual_seed(seed * 1_000_003 + rank)
    return generator


def synthetic_batches(*, data: DataArgs, model: ModelArgs, micro_batch_size: int, rank: int,
                      device: torch.device) -> Iterator[torch.Tensor]:
    generator = _generator(data.seed, rank, device)
    shape = (micro_batch_size, model.seq_len + 1)
    while True:
        yield torch.randint(0, model.vocab_size, shape, generator=generator, device=device)


@functools.lru_cache(maxsize=1)
def corpus_bytes() -> bytes:
    return resources.files("trainer_tune").joinpath(CORPUS_FILE).read_bytes()


def byte_batches(*, data: DataArgs, model: ModelArgs, micro_batch_size: int, rank: int,
                 device: torch.device) -> Iterator[torch.Tensor]:
    text = torch.frombuffer(bytearray(corpus_bytes()), dtype=torch.uint8).to(device=device, dtype=torch.long)
    window = model.seq_len + 1
    if len(text) < window:
        raise TargetError(f"the built-in corpus has {len(text)} bytes, fewer than model.seq_len + 1 = {window}")
    generator = _generator(data.seed, rank, device)
    offsets_in_window = torch.arange(window, device=device)
    while True:
        starts = torch.randint(0, len(text) - window + 1, (micro_batch_size, 1), generator=generator, device=device)
        yield text[starts + offsets_in_window]


def _checked(batches: Iterable[torch.Tensor], *, target: str, shape: tuple[int, int], vocab_size: int,
             device: torch.device) -> Iterator[torch.Tensor]:
    iterator = iter(batches)
    first = True
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            raise TargetError(f"data._target_={target!r} ran out of batches; a batch source must not end before "
                              f"the trial does") from None
        if not isinstance(batch, torch.Tensor) or tuple(batch.shape) != shape or batch.is_floating_point():
            what = f"{batch.dtype} of shape {list(batch.shape)}" if isinstance(batch, torch.Tensor) \
                else type(batch).__name__
            raise TargetError(f"data._target_={target!r} yielded {what}; expected integer token ids of shape "
                              f"{list(shape)} (micro_batch_size, model.seq_len + 1)")
        batch = batch.to(device=device, dtype=torch.long, non_blocking=True)
        if first:  # a range check reads the values back: once, outside the steady state
            low, high = int(batch.min()), int(batch.max())
            if low < 0 or high >= vocab_size:
                raise TargetError(f"data._target_={target!r} yielded token ids in [{low}, {high}]; expected ids "
                                  f"in [0, {vocab_size}) (model.vocab_size={vocab_size})")
            first = False
        yield batch


def build_batches(*, data: DataArgs, model: ModelArgs, micro_batch_size: int, rank: int, world_size: int,
                  device: torch.device) -> Iterator[torch.Tensor]:
    if data._target_ is not None:
        source = instantiate_target("data._target_", data._target_, data.kwargs, micro_batch_size=micro_batch_size,
                                    seq_len=model.seq_len, vocab_size=model.vocab_size, rank=rank,
                                    world_size=world_size, seed=data.seed, device=device)
        return _checked(source, target=data._target_, shape=(micro_batch_size, model.seq_len + 1),
                        vocab_size=model.vocab_size, device=device)
    if data.kind == DataKind.bytes:
        return byte_batches(data=data, model=model, micro_batch_size=micro_batch_size, rank=rank, device=device)
    return synthetic_batches(data=data, model=model, micro_batch_size=micro_batch_size, rank=rank, device=device)
