"""Batch sources: where each micro-step's batch comes from.

- synthetic (the default): uniformly random token ids `[micro_batch_size, seq_len + 1]` drawn on the device from
  a generator seeded per rank, so every trial sees the same token stream and no input pipeline cost is measured;
- bytes: windows of a small English text shipped in the package (trainer_tune/corpus/), one token per byte
  (vocabulary 256), at offsets drawn from the same kind of per-rank generator: real text, still no I/O;
- `data._target_`: the user's own source (see `BatchSource`), which may return
  * a map-style `torch.utils.data.Dataset`: trainer_tune builds the DataLoader, as a training script would, with
    a `DistributedSampler` (shuffled, seeded with data.seed, the last incomplete batch dropped), the trial's
    micro-batch size and data.num_workers / pin_memory / prefetch_factor / persistent_workers;
  * an `IterableDataset` of samples: batched by a DataLoader the same way (its sharding over ranks is its own);
  * a `DataLoader`, or any iterable of batches: used as given.
  A source that can be iterated again (a DataLoader, a list) is read epoch after epoch; a one-pass iterator (a
  generator) must not end before the trial does.

Every batch is checked to hold micro_batch_size samples (a short batch would measure another setting) and moved
to the device; the first bare token tensor is checked against model.vocab_size (an id out of range is a
device-side assert on CUDA).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Iterator, Optional, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from trainer_tune.config.schema import DataArgs, DataKind, ModelArgs
from trainer_tune.workloads.batch import _is_token_ids, count_samples, describe, move_to_device
from trainer_tune.workloads.targets import TargetError, instantiate_target, locate, one_line, runtime_kwargs_taken

CORPUS_FILE = "corpus/docs.txt"

log = logging.getLogger(__name__)
_warned_unused_workers: set[str] = set()
"""Targets already warned about (once per process, not once per trial)."""

class BatchSource(Protocol):
    """What `data._target_` must name: a function or class called once per trial and rank as

        source(**data.kwargs, + whichever of micro_batch_size, seq_len, vocab_size, rank, world_size, seed,
               device its signature takes)

    returning a map-style Dataset, an IterableDataset, a DataLoader or any iterable of batches (a tensor, a
    tuple/list or a dict of tensors, nested allowed; see trainer_tune/workloads/batch.py and step.py). Batches
    may be CPU tensors (trainer_tune moves them) and should differ between ranks (draw from `rank` and `seed`)
    and be the same in every trial.
    """

    def __call__(self, **kwargs: Any) -> Iterable[Any]: ...


@dataclass(frozen=True)
class LoaderSettings:
    """How trainer_tune builds a DataLoader for a Dataset: the trial's data.* values, resolved."""

    num_workers: int
    pin_memory: bool
    prefetch_factor: Optional[int]
    persistent_workers: bool


def loader_settings(data: DataArgs, *, device: torch.device, num_workers: Optional[int] = None) -> LoaderSettings:
    """data.* for this trial; `num_workers` is the trial's own (its TrialFlags.num_workers: data.num_workers, or
    its value on the sweep.num_workers axis)."""
    workers = data.num_workers if num_workers is None else num_workers
    pin = data.pin_memory if data.pin_memory is not None else device.type == "cuda"
    return LoaderSettings(num_workers=workers, pin_memory=pin,
                          prefetch_factor=data.prefetch_factor if workers > 0 else None,
                          persistent_workers=data.persistent_workers and workers > 0)


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


def _is_map_dataset(source: object) -> bool:
    return isinstance(source, Dataset) and not isinstance(source, IterableDataset) \
        and hasattr(source, "__getitem__") and hasattr(source, "__len__")


def _loader(source: Any, *, target: str, micro_batch_size: int, rank: int, world_size: int, seed: int,
            settings: LoaderSettings) -> tuple[Iterable[Any], Optional[Any]]:
    """(what to iterate, the sampler to advance each epoch) for what the source returned."""
    common = dict(batch_size=micro_batch_size, num_workers=settings.num_workers, pin_memory=settings.pin_memory,
                  drop_last=True, persistent_workers=settings.persistent_workers)
    if settings.prefetch_factor is not None:
        common["prefetch_factor"] = settings.prefetch_factor
    if _is_map_dataset(source):
        size = len(source)
        if size // world_size < micro_batch_size:
            raise TargetError(f"data._target_={target!r} returned a Dataset of {size} samples: each of the "
                              f"{world_size} ranks needs at least micro_batch_size={micro_batch_size}")
        sampler = DistributedSampler(source, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
        return DataLoader(source, sampler=sampler, **common), sampler
    if isinstance(source, IterableDataset):
        return DataLoader(source, **common), None
    if isinstance(source, Dataset):
        raise TargetError(f"data._target_={target!r} returned a {type(source).__name__}, a Dataset with no "
                          f"__getitem__ and __len__: give a map-style Dataset, an IterableDataset or a DataLoader")
    if not isinstance(source, Iterable):
        raise TargetError(f"data._target_={target!r} returned a {type(source).__name__}; expected a Dataset, a "
                          f"DataLoader or an iterable of batches")
    if settings.num_workers > 0 and target not in _warned_unused_workers:
        _warned_unused_workers.add(target)
        log.warning("data.num_workers=%d (or sweep.num_workers) changes nothing here: data._target_=%r returned a "
                    "%s, used as given; workers only load a Dataset that trainer_tune wraps in its own DataLoader",
                    settings.num_workers, target, type(source).__name__)
    # A DataLoader given as is: its own sampler is advanced each epoch too (a DistributedSampler reshuffles only
    # when told the epoch, as a training loop tells it).
    sampler = getattr(source, "sampler", None) if isinstance(source, DataLoader) else None
    return source, sampler if callable(getattr(sampler, "set_epoch", None)) else None


def _epochs(source: Iterable[Any], sampler: Optional[Any], *, target: str) -> Iterator[Any]:
    """Batches epoch after epoch from a source that can be iterated again; a one-pass iterator once."""
    epoch = 0
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        iterator = iter(source)
        produced = False
        for batch in iterator:
            produced = True
            yield batch
        if iterator is source or not produced:
            what = "ran out of batches" if produced else "yielded no batch"
            raise TargetError(f"data._target_={target!r} {what}; a one-pass batch source (a generator) must not "
                              f"end before the trial does (return a DataLoader or a Dataset to be read epoch "
                              f"after epoch)")
        epoch += 1


def _checked(batches: Iterator[Any], *, target: str, micro_batch_size: int, vocab_size: Optional[int],
             device: torch.device, non_blocking: bool) -> Iterator[Any]:
    first = True
    while True:
        try:
            batch = next(batches)
        except TargetError:
            raise
        except StopIteration:
            raise TargetError(f"data._target_={target!r} ran out of batches") from None
        except Exception as exc:  # noqa: BLE001 - the user's Dataset, collate or worker: this trial's error
            raise TargetError(f"data._target_={target!r} raised while producing a batch: {one_line(exc)}") from exc
        samples = count_samples(batch)
        if samples != micro_batch_size:
            found = f"a batch of {samples} samples" if samples is not None else "a batch with no tensor"
            raise TargetError(f"data._target_={target!r} yielded {found} ({describe(batch)}); expected "
                              f"micro_batch_size={micro_batch_size} samples in the first dimension of its first "
                              f"tensor (a DataLoader needs batch_size=micro_batch_size and drop_last=True)")
        batch = move_to_device(batch, device, non_blocking=non_blocking)
        if first and vocab_size is not None and isinstance(batch, torch.Tensor) and _is_token_ids(batch):
            # A range check reads the values back: once, outside the steady state.
            low, high = int(batch.min()), int(batch.max())
            if low < 0 or high >= vocab_size:
                raise TargetError(f"data._target_={target!r} yielded token ids in [{low}, {high}]; expected ids "
                                  f"in [0, {vocab_size}) (model.vocab_size={vocab_size})")
        first = False
        yield batch


def build_batches(*, data: DataArgs, model: ModelArgs, micro_batch_size: int, rank: int, world_size: int,
                  device: torch.device, num_workers: Optional[int] = None) -> Iterator[Any]:
    """The trial's batches on `device`, one per micro-step, for as long as the trial asks."""
    if data._target_ is not None:
        runtime = dict(micro_batch_size=micro_batch_size, seq_len=model.seq_len, vocab_size=model.vocab_size,
                       rank=rank, world_size=world_size, seed=data.seed, device=device)
        taken = runtime_kwargs_taken(locate("data._target_", data._target_), runtime)
        source = instantiate_target("data._target_", data._target_, data.kwargs, **taken)
        settings = loader_settings(data, device=device, num_workers=num_workers)
        iterable, sampler = _loader(source, target=data._target_, micro_batch_size=micro_batch_size, rank=rank,
                                    world_size=world_size, seed=data.seed, settings=settings)
        return _checked(_epochs(iterable, sampler, target=data._target_), target=data._target_,
                        micro_batch_size=micro_batch_size,
                        vocab_size=model.vocab_size, device=device,
                        non_blocking=settings.pin_memory and device.type == "cuda")
    if data.kind == DataKind.bytes:
        return byte_batches(data=data, model=model, micro_batch_size=micro_batch_size, rank=rank, device=device)
    return synthetic_batches(data=data, model=model, micro_batch_size=micro_batch_size, rank=rank, device=device)
