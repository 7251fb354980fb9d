"""A process's peak resident memory growth over a region (Linux /proc): peak memory on a CPU device.

On a CPU there is no allocator peak to read (torch's CPU allocator keeps no statistics), so the figure is how
far this process's resident set rose above where it stood before the region: `VmHWM` (the high-water mark of
the resident set, reset to the current size by writing "5" to /proc/self/clear_refs) minus `VmRSS` read just
before the reset, less the growth of `RssFile` over the region. Before the first reading the garbage collector
runs and glibc's `malloc_trim(0)` hands freed heap pages back to the kernel, so memory the last trial freed (but
the allocator kept) is not mistaken for a baseline that the next trial's peak could reuse unseen.

Why RssFile's growth is taken out: the first trial of a process pages in library code it runs for the first
time (torch's backward and optimizer kernels: about 20 MB for the tiny GPT), which stays resident, so it would
land in whichever setting happens to be measured first. Code is not what a larger micro-batch costs.

What it counts: anonymous and shared memory this process held at once: tensors, autograd's saved activations,
optimizer state, gloo's buffers, the Python objects around them. What it does not: DataLoader worker processes
(their own resident sets), memory that was resident before the region and reused inside it, and file pages (an
error of the size of whatever file pages come and go during the region). Where /proc/self/clear_refs cannot be
written (macOS, a locked-down container) there is no reading, and the reason says why.
"""

from __future__ import annotations

import ctypes
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

_PROC_SELF = Path("/proc/self")
_RESET_PEAK = "5"
"""clear_refs value that resets the resident set's high-water mark (VmHWM) to the current resident set
(Linux 4.0+, proc(5))."""


@dataclass(frozen=True)
class RssGrowth:
    """The peak resident memory growth of one region, or why there is none."""

    growth_bytes: Optional[int]
    """Highest resident set during the region minus the resident set before it; None with `note`."""
    note: Optional[str] = None


def _read_status_bytes(proc: Path) -> dict[str, int]:
    """VmRSS, VmHWM and RssFile from /proc/<pid>/status, in bytes (the file gives kB)."""
    values: dict[str, int] = {}
    for line in (proc / "status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssFile"):
            number, unit = rest.split()
            assert unit == "kB", f"{name} in {unit}"
            values[name] = int(number) * 1024
    return values


def _trim_heap() -> None:
    """Hand freed heap pages back to the kernel (glibc only; elsewhere nothing to do).

    malloc_trim is looked up in the symbols already loaded (ctypes.CDLL(None)), not through
    ctypes.util.find_library, which runs `ldconfig -p` in a subprocess at every call: a fork of a rank with live
    gloo threads at every trainer build."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)


class RssWatch:
    """Watches this process's resident set from `start()` to `read()`.

    One watch at a time per process: starting one resets the high-water mark every watch reads."""

    def __init__(self, proc: Path = _PROC_SELF) -> None:
        self._proc = proc
        self._before_bytes: Optional[int] = None
        self._file_before_bytes = 0
        self._why_not: Optional[str] = None

    def start(self) -> "RssWatch":
        gc.collect()
        _trim_heap()
        try:
            status = _read_status_bytes(self._proc)
            self._before_bytes, self._file_before_bytes = status["VmRSS"], status.get("RssFile", 0)
            (self._proc / "clear_refs").write_text(_RESET_PEAK)
        except (OSError, KeyError) as exc:
            self._before_bytes = None
            self._why_not = f"peak resident memory not readable here ({self._proc}/clear_refs, status: {exc})"
        return self

    def read(self) -> RssGrowth:
        if self._before_bytes is None:
            return RssGrowth(None, self._why_not or "the watch was not started")
        try:
            status = _read_status_bytes(self._proc)
            peak_bytes = status["VmHWM"]
        except (OSError, KeyError) as exc:
            return RssGrowth(None, f"peak resident memory not readable here ({self._proc}/status: {exc})")
        file_growth_bytes = max(0, status.get("RssFile", 0) - self._file_before_bytes)
        return RssGrowth(max(0, peak_bytes - self._before_bytes - file_growth_bytes))
