"""Writes that survive a kill, and appends that survive concurrent writers.

Several processes may append to one journal (the jobs of a Hydra multirun share one): each line is one
`os.write` on an `O_APPEND` descriptor, under an exclusive `flock`, then fsynced. Readers never lock: a
line is either all there or is the torn last line a killed writer left, which readers already tolerate.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable, Optional


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def append_line(path: Path, line: str, *, unless: Optional[Callable[[str], bool]] = None) -> bool:
    """Append one line and fsync it; returns whether it was written.

    `unless(text)` sees the file's current contents under the lock: when it returns true the line is not
    written (a concurrent writer already recorded the same thing). A torn last line left by a killed writer
    must not swallow this one, so the line then starts on a fresh line, in the same single write.
    """
    assert "\n" not in line, "one journal record per line"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = line.encode() + b"\n"
        size = os.fstat(fd).st_size
        if size > 0 or unless is not None:
            with open(path, "rb") as reader:
                text = reader.read()
            if unless is not None and unless(text.decode("utf-8", errors="replace")):
                return False
            if text and not text.endswith(b"\n"):
                data = b"\n" + data
        written = os.write(fd, data)
        assert written == len(data), f"short append to {path}: {written} of {len(data)} bytes"
        os.fsync(fd)
        return True
    finally:
        os.close(fd)  # closing releases the lock
