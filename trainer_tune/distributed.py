"""Everything that touches process groups and the rank environment lives here.

A run is either one plain process (world size 1: no process group, collectives are identities) or a
torchrun job (gloo on CPU, nccl on CUDA). Ranks agree on every decision that changes control flow
(which trials to skip, each trial's outcome) through the collectives below, so no rank can move on
while another waits.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from trainer_tune.config import Backend, ConfigError, DeviceKind, DistArgs

log = logging.getLogger(__name__)

_STAMP_KEY = "trainer_tune/run_stamp"
_STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"


@dataclass(frozen=True)
class RankEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    hostname: str
    under_torchrun: bool

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world_size} (node {self.node_rank} {self.hostname}, local {self.local_rank})"

    @staticmethod
    def from_environ(environ: Mapping[str, str]) -> "RankEnv":
        def number(name: str, default: int) -> int:
            raw = environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"environment {name}={raw!r} is not allowed: an integer") from None

        world_size = number("WORLD_SIZE", 1)
        rank = number("RANK", 0)
        if not 0 <= rank < world_size:
            raise ConfigError(f"environment RANK={rank} is not allowed: 0 <= RANK < WORLD_SIZE={world_size}")
        return RankEnv(rank=rank, local_rank=number("LOCAL_RANK", 0), world_size=world_size,
                       local_world_size=number("LOCAL_WORLD_SIZE", 1), node_rank=number("GROUP_RANK", 0),
                       hostname=os.uname().nodename, under_torchrun="TORCHELASTIC_RUN_ID" in environ)


def shared_run_stamp(rank_env: RankEnv, environ: Mapping[str, str]) -> str:
    """One timestamp for the output directory, the same on every rank and every node.

    Each rank's clock would give its own directory (ranks start a second apart). Under torchrun, the
    first rank to ask stores its stamp in the elastic agent's store and every other rank reads it back;
    the key outlives worker restarts, so a restarted sweep finds its own directory again.
    """
    local = time.strftime(_STAMP_FORMAT)
    if rank_env.world_size == 1:
        return local
    if environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and "MASTER_ADDR" in environ:
        store = dist.TCPStore(environ["MASTER_ADDR"], int(environ["MASTER_PORT"]), is_master=False,
                              timeout=datetime.timedelta(seconds=120))
        return store.compare_set(_STAMP_KEY, "", local).decode()
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        if environ.get(name, "none") != "none":
            return f"{name.lower()}-{environ[name]}"
    log.warning("no shared launcher id: ranks may pick different output directories; pass hydra.run.dir=DIR")
    return local


def choose_device(args: DistArgs, rank_env: RankEnv) -> torch.device:
    if args.device == DeviceKind.cpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", rank_env.local_rank % torch.cuda.device_count())
    if args.device == DeviceKind.cuda:
        raise ConfigError("dist.device='cuda' is not allowed: torch sees no CUDA device here "
                          f"(torch {torch.__version__}); use dist.device=auto or cpu")
    return torch.device("cpu")


def choose_backend(args: DistArgs, device: torch.device) -> str:
    if args.backend == Backend.auto:
        return "nccl" if device.type == "cuda" else "gloo"
    if args.backend == Backend.nccl and device.type != "cuda":
        raise ConfigError("dist.backend='nccl' is not allowed on a CPU device: use gloo or auto")
    return args.backend.value


class DistSession:
    """The process group of one run, and the few collectives the tuner needs."""

    def __init__(self, *, rank_env: RankEnv, device: torch.device, backend: Optional[str]) -> None:
        self.rank_env = rank_env
        self.device = device
        self.backend = backend

    @staticmethod
    def start(args: DistArgs, rank_env: RankEnv) -> "DistSession":
        device = choose_device(args, rank_env)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if rank_env.world_size == 1:
            return DistSession(rank_env=rank_env, device=device, backend=None)
        backend = choose_backend(args, device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=args.timeout_s),
                                device_id=device if device.type == "cuda" else None)
        return DistSession(rank_env=rank_env, device=device, backend=backend)

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def _reduce(self, values: Sequence[float], op: Any, dtype: torch.dtype) -> list:
        tensor = torch.tensor(list(values), dtype=dtype, device=self.device if self.backend == "nccl" else "cpu")
        if self.distributed:
            dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def max_over_ranks(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX, torch.float64)

    def sum_over_ranks(self, values: Sequence[int]) -> list[int]:
        return self._reduce(values, dist.ReduceOp.SUM, torch.int64)

    def mean_over_ranks(self, values: Sequence[float]) -> list[float]:
        total = self._reduce(values, dist.ReduceOp.SUM, torch.float64)
        return [v / self.rank_env.world_size for v in total]

    def gather_from_all(self, obj: Any) -> list[Any]:
        """Every rank receives every rank's object, in rank order (used to agree on a trial's outcome)."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.rank_env.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_from_rank0(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        holder = [obj if self.rank_env.is_rank0 else None]
        dist.broadcast_object_list(holder, src=0, device=self.device if self.backend == "nccl" else None)
        return holder[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()
