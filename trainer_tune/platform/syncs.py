"""The tuner's own waits on the device and on other ranks, counted while a window's measured steps run.

A `torch.cuda.synchronize()`, a collective, or reading a device tensor on the host (`.item()`, `.tolist()`,
`int(t)`) empties the GPU's queue: the host stops launching until the device has caught up, so the next step's
launch no longer overlaps this step's kernels. A window that did any of these between its measured steps would
time a synchronous loop, not the user's training (docs/measurement.md, "One synchronisation per window"). Every
such call the tuner makes goes through this module, which counts the ones made while a window's measured steps
are open (`measured_steps`): the count is the journal's `syncs_in_window`, and a test holds it at 0 for training
windows (tests/distributed/test_syncs.py also traps torch's own entry points, to catch a call that bypasses this
module). DDP's reducer, the GradScaler's overflow check and whatever the user's step does are the user's
training, and are not counted.

One counter per process: windows run one at a time, and only the main thread measures.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch


@dataclass
class SyncTally:
    """The tuner's synchronising calls made while one window's measured steps were open, by kind."""

    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


_open: Optional[SyncTally] = None


def note(kind: str) -> None:
    """Count one synchronising call of `kind` when a window's measured steps are open (nothing otherwise)."""
    if _open is not None:
        _open.by_kind[kind] = _open.by_kind.get(kind, 0) + 1


def window_open() -> bool:
    """Whether a window's measured steps are running now (for tests that trap torch's own entry points)."""
    return _open is not None


@contextlib.contextmanager
def measured_steps() -> Iterator[SyncTally]:
    """Count the synchronising calls made inside; the tally stays readable after the block."""
    global _open
    if _open is not None:
        raise RuntimeError("a window's measured steps are already open: windows run one at a time")
    tally = SyncTally()
    _open = tally
    try:
        yield tally
    finally:
        _open = None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on a CPU, where it counts all the same: a call
    here inside the measured steps is a fault on either device)."""
    note("synchronize")
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_host(tensor: torch.Tensor) -> list:
    """A tensor's values as Python numbers (waits for the device when the tensor is on one)."""
    note("to_host")
    return tensor.tolist()


def host_int(value: "int | torch.Tensor") -> int:
    """An int, or a one-element tensor read as one (a wait for the device when it lives there)."""
    if isinstance(value, torch.Tensor):
        note("to_host")
        return int(value.item())
    return int(value)


def collective(kind: str) -> None:
    """Count a collective the tuner is about to make (distributed.DistSession and the noise steps call this)."""
    note(kind)
