"""Everything that touches process groups and the rank environment lives here.

A run is either one plain process (world size 1: no process group, collectives are identities) or a
torchrun job (gloo on CPU, nccl on CUDA). Ranks agree on every decision that changes control flow
(which trials to skip, each trial's outcome) through the collectives below, so no rank can move on
while another waits.
"""

from __future__ import annotations

import datetime
import json
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
_KEY_PREFIX = "trainer_tune/"
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
    restart_count: int
    """TORCHELASTIC_RESTART_COUNT: how many times torchrun has restarted this group."""

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
                       hostname=os.uname().nodename, under_torchrun="TORCHELASTIC_RUN_ID" in environ,
                       restart_count=number("TORCHELASTIC_RESTART_COUNT", 0))


def agent_store(environ: Mapping[str, str]) -> Optional[dist.Store]:
    """A client of torchrun's agent store, which outlives worker restarts; None when not under torchrun."""
    if environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_ADDR" not in environ:
        return None
    return dist.TCPStore(environ["MASTER_ADDR"], int(environ["MASTER_PORT"]), is_master=False,
                         timeout=datetime.timedelta(seconds=120))


def shared_run_stamp(rank_env: RankEnv, environ: Mapping[str, str]) -> str:
    """One timestamp for the output directory, the same on every rank and every node.

    Each rank's clock would give its own directory (ranks start a second apart). Under torchrun, the
    first rank to ask stores its stamp in the elastic agent's store and every other rank reads it back;
    the key outlives worker restarts, so a restarted sweep finds its own directory again.
    """
    local = time.strftime(_STAMP_FORMAT)
    if rank_env.world_size == 1:
        return local
    store = agent_store(environ)
    if store is not None:
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

    def __init__(self, *, rank_env: RankEnv, device: torch.device, backend: Optional[str],
                 store: Optional[dist.Store] = None, timeout_s: float = 600.0) -> None:
        self.rank_env = rank_env
        self.device = device
        self.backend = backend
        self.store = store
        """Key-value store shared by all ranks (torchrun's agent store when there is one, as it survives
        restarts); None for a single process."""
        self.timeout_s = timeout_s

    @staticmethod
    def start(args: DistArgs, rank_env: RankEnv) -> "DistSession":
        device = choose_device(args, rank_env)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if rank_env.world_size == 1:
            return DistSession(rank_env=rank_env, device=device, backend=None)
        backend = choose_backend(args, device)
        timeout = datetime.timedelta(seconds=args.timeout_s)
        device_id = device if device.type == "cuda" else None
        store = agent_store(os.environ)
        if store is None:
            dist.init_process_group(backend=backend, timeout=timeout, device_id=device_id)
            store = dist.distributed_c10d._get_default_store()
        else:
            # torch 2.13's torchrun keeps one agent store across worker restarts, while its env:// set-up
            # assumes a fresh store per attempt and adds no prefix: a restarted group would read the
            # previous attempt's addresses and fail to connect. Our own per-attempt prefix avoids that.
            pg_store = dist.PrefixStore(f"{_KEY_PREFIX}pg/attempt_{rank_env.restart_count}", store)
            dist.init_process_group(backend=backend, store=pg_store, rank=rank_env.rank,
                                    world_size=rank_env.world_size, timeout=timeout, device_id=device_id)
        return DistSession(rank_env=rank_env, device=device, backend=backend, store=store,
                           timeout_s=args.timeout_s)

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

    def post(self, key: str, value: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.set(f"{_KEY_PREFIX}{key}", json.dumps(value))

    def read_post(self, key: str) -> Optional[dict[str, Any]]:
        """A value some rank posted under `key`, in this or an earlier attempt of the group; never blocks."""
        if self.store is None or not self.store.check([f"{_KEY_PREFIX}{key}"]):
            return None
        return json.loads(self.store.get(f"{_KEY_PREFIX}{key}"))

    def exchange(self, topic: str, value: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank posts `value` under `topic` and receives all ranks' values, in rank order.

        Through the store rather than a collective: a rank whose trial failed half-way (say, before a
        gradient all-reduce its peers are waiting in) can still post, and a collective it entered would be
        paired with the wrong operation. A peer that never posts is the watchdog's business.
        """
        if not self.distributed:
            return [value]
        self.post(f"{topic}/{self.rank_env.rank}", value)
        keys = [f"{_KEY_PREFIX}{topic}/{rank}" for rank in range(self.rank_env.world_size)]
        assert self.store is not None
        self.store.wait(keys, datetime.timedelta(seconds=self.timeout_s))
        return [json.loads(self.store.get(key)) for key in keys]

    def broadcast_from_rank0(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        holder = [obj if self.rank_env.is_rank0 else None]
        dist.broadcast_object_list(holder, src=0, device=self.device if self.backend == "nccl" else None)
        return holder[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()
