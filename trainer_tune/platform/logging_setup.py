"""Rank-aware logging: rank 0 talks on the console, every rank keeps a full log file of its own."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

from trainer_tune.platform.distributed import RankEnv


def setup_logging(rank_env: RankEnv, *, log_dir: Optional[Path]) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.INFO)
    prefix = f"[rank {rank_env.rank}] " if rank_env.world_size > 1 else ""
    console = logging.StreamHandler(sys.stderr)
    # Other ranks only speak up for problems, so the console is not N copies of the same story.
    console.setLevel(logging.INFO if rank_env.is_rank0 else logging.WARNING)
    console.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_dir / f"rank-{rank_env.rank}.log")
        to_file.setFormatter(logging.Formatter(
            f"%(asctime)s {rank_env.hostname} rank {rank_env.rank} %(levelname)s %(name)s: %(message)s"))
        root.addHandler(to_file)
