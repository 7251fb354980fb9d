"""Run trainer_tune with torch's synchronising entry points trapped: `python -m sync_trap ARGS` (tests/helpers on
PYTHONPATH) is `python -m trainer_tune ARGS`, except that every call of Tensor.item, Tensor.tolist,
torch.cuda.synchronize and the torch.distributed collectives made from trainer_tune's own code is counted, apart
for calls made while a window's measured steps are open (platform/syncs.window_open). At exit each rank writes
{"in_window": {...}, "outside": {...}} to $SYNC_TRAP_DIR/rank-<RANK>.json.

This is the check platform/syncs.py cannot make of itself: a synchronising call that bypasses it (a bare .item()
in the window's code) is counted here all the same. DDP's reducer works in C++, so its collectives are not seen.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import runpy
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist

from trainer_tune.platform import syncs

_PACKAGE_DIR = str(Path(syncs.__file__).resolve().parents[1]) + os.sep
IN_WINDOW: Counter = Counter()
OUTSIDE: Counter = Counter()


def _from_trainer_tune() -> bool:
    caller = sys._getframe(2).f_code.co_filename  # 0: this function, 1: the wrapper, 2: who called torch
    return os.path.realpath(caller).startswith(_PACKAGE_DIR)


def _trap(owner: object, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def counted(*args, **kwargs):
        if _from_trainer_tune():
            (IN_WINDOW if syncs.window_open() else OUTSIDE)[label] += 1
        return original(*args, **kwargs)

    setattr(owner, name, counted)


def install() -> None:
    _trap(torch.Tensor, "item", "Tensor.item")
    _trap(torch.Tensor, "tolist", "Tensor.tolist")
    _trap(torch.cuda, "synchronize", "cuda.synchronize")
    for name in ("all_reduce", "all_gather", "broadcast", "barrier", "broadcast_object_list", "all_gather_object",
                 "reduce", "gather", "scatter", "monitored_barrier"):
        _trap(dist, name, f"dist.{name}")


def _write() -> None:
    folder = Path(os.environ["SYNC_TRAP_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    rank = os.environ.get("RANK", "0")
    (folder / f"rank-{rank}.json").write_text(json.dumps({"in_window": IN_WINDOW, "outside": OUTSIDE}))


if __name__ == "__main__":
    install()
    atexit.register(_write)
    sys.argv[0] = "trainer_tune"
    runpy.run_module("trainer_tune", run_name="__main__", alter_sys=True)
