"""A workload whose time is in its input pipeline, for the tests of data_wait_fraction, input-bound verdicts and
sweep.num_workers: map-style Datasets that are slow to load or break in DataLoader workers, and a classifier
whose forward stands for a fixed amount of device work.

Both wait with time.sleep, not with CPU work: on a shared two-core machine, two ranks and their workers would
otherwise fight for the cores, and the test would measure the contention instead of the pipeline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import Dataset, get_worker_info

VOCAB_SIZE = 64
SEQ_LEN = 8
NUM_CLASSES = 4


class SleepyClassifier(nn.Module):
    """A bag-of-tokens classifier of [batch, 8] token ids whose forward also sleeps `compute_s`: a step with a
    known, CPU-free cost, as a GPU step leaves the host free while the device works."""

    def __init__(self, compute_s: float = 0.01) -> None:
        super().__init__()
        self.compute_s = compute_s
        self.embedding = nn.EmbeddingBag(VOCAB_SIZE, NUM_CLASSES)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        time.sleep(self.compute_s)
        return self.embedding(token_ids)


def _sample(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids [8], label): a short tokenized text and its class."""
    generator = torch.Generator().manual_seed(index)
    return torch.randint(0, VOCAB_SIZE, (SEQ_LEN,), generator=generator), torch.tensor(index % NUM_CLASSES)


class SlowDataset(Dataset):
    """(token ids, label) pairs, each taking `load_s` to load, as a read from slow storage would.

    With `record_dir`, every process that loads samples (a rank's training process, or each of its DataLoader
    workers) writes one file there, `<pid>.txt` holding `rank=R num_workers=N worker=ID` (`worker=main` in the
    training process): evidence of where the samples were loaded."""

    def __init__(self, *, rank: int, size: int = 512, load_s: float = 0.003, record_dir: Optional[str] = None) -> None:
        self.rank = rank
        self.size = size
        self.load_s = load_s
        self.record_dir = record_dir
        self._recorded_pid: Optional[int] = None

    def __len__(self) -> int:
        return self.size

    def _record(self) -> None:
        if self.record_dir is None or self._recorded_pid == os.getpid():
            return
        self._recorded_pid = os.getpid()
        info = get_worker_info()
        where = "num_workers=0 worker=main" if info is None else f"num_workers={info.num_workers} worker={info.id}"
        Path(self.record_dir, f"{os.getpid()}.txt").write_text(f"rank={self.rank} {where}\n")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._record()
        time.sleep(self.load_s)
        return _sample(index)


class ForkUnsafeDataset(Dataset):
    """Loads in the training process, raises in a DataLoader worker: a Dataset holding a handle (a database
    connection, say) that does not survive being copied into a worker process."""

    def __init__(self, *, size: int = 512) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if get_worker_info() is not None:
            raise OSError(f"sample {index}: the storage handle is not valid in a worker process")
        return _sample(index)
