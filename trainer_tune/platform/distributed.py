"""Everything that touches process groups and the rank environment lives here.

A run is either one plain process (world size 1: no process group, collectives are identities), a
torchrun job (one or several nodes; gloo on CPU, nccl on CUDA), or the tasks of one SLURM step started
without torchrun (`srun`, or hydra/launcher=submitit_slurm with several tasks): each task is then a rank,
numbered by SLURM, and `adopt_slurm_tasks` writes the torch.distributed variables from SLURM's. Ranks agree on every decision that changes control flow
(which trials to skip, each trial's outcome) through the collectives below, so no rank can move on
while another waits.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import pickle
import signal
import time
from dataclasses import dataclass
import re
from typing import Any, Mapping, MutableMapping, Optional, Sequence

import torch
import torch.distributed as dist

from trainer_tune.config.schema import Backend, ConfigError, DeviceKind, DistArgs
from trainer_tune.platform.finite import finite_json
from trainer_tune.platform import syncs

log = logging.getLogger(__name__)

_STAMP_KEY = "trainer_tune/run_stamp"
_KEY_PREFIX = "trainer_tune/"
_STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"
# How long a collective waits for the gloo worker to release its tensor (_until_released); far above the microseconds
# it takes, a bound so that a tensor held elsewhere never hangs a rank.
_RELEASE_WAIT_S = 2.0


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
    from_slurm: bool = False
    """The ranks are the tasks of a SLURM step (see adopt_slurm_tasks), not torchrun workers."""

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        return max(self.world_size // max(self.local_world_size, 1), 1)

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world_size} (node {self.node_rank} {self.hostname}, local {self.local_rank})"

    def where(self) -> str:
        """Short form for error messages: which rank on which host."""
        return f"rank {self.rank} on {self.hostname}"

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
                       restart_count=number("TORCHELASTIC_RESTART_COUNT", 0),
                       from_slurm=environ.get(_FROM_SLURM_ENV) == "1")


_FROM_SLURM_ENV = "TRAINER_TUNE_RANKS_FROM_SLURM"
_SLURM_PORT_BASE, _SLURM_PORT_SPAN = 10000, 20000
"""MASTER_PORT for SLURM tasks: a port below Linux's ephemeral range, spread by job id so jobs sharing a
node do not collide."""


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[07-09,12],cpu1` -> `gpu07` (what `scontrol show
    hostnames` prints first)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None or not match.group(1):
        raise ConfigError(f"SLURM node list {nodelist!r} is not allowed: a list such as node[01-04],other")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def adopt_slurm_tasks(environ: MutableMapping[str, str]) -> bool:
    """Make the tasks of a multi-task SLURM step torch.distributed ranks; returns whether it did.

    Only inside an `srun` step (SLURM_STEP_ID is set; the batch script itself also has SLURM_PROCID=0 and
    the job's SLURM_NTASKS, but is one process) with more than one task, and never under torchrun, whose
    own RANK/WORLD_SIZE always win. RANK = SLURM_PROCID, WORLD_SIZE = SLURM_STEP_NUM_TASKS, LOCAL_RANK =
    SLURM_LOCALID, GROUP_RANK = SLURM_NODEID; MASTER_ADDR is the step's first host unless set; MASTER_PORT
    is derived from the job id unless set.
    """
    if environ.get(_FROM_SLURM_ENV) == "1":
        return True
    if "RANK" in environ or "TORCHELASTIC_RUN_ID" in environ or "SLURM_STEP_ID" not in environ:
        return False
    num_tasks = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "1"
    if not num_tasks.isdigit() or int(num_tasks) <= 1:
        return False
    per_node = re.match(r"\d+", environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_NTASKS_PER_NODE")
                        or num_tasks)
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "localhost"
    job_id = environ.get("SLURM_JOB_ID", "0")
    environ.update({
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": num_tasks,
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": per_node.group(0) if per_node else num_tasks,
        "GROUP_RANK": environ.get("SLURM_NODEID", "0"),
        _FROM_SLURM_ENV: "1",
    })
    environ.setdefault("MASTER_ADDR", first_host(nodelist))
    environ.setdefault("MASTER_PORT",
                       str(_SLURM_PORT_BASE + (int(job_id) if job_id.isdigit() else 0) % _SLURM_PORT_SPAN))
    return True


def launch_hint(rank_env: RankEnv) -> str:
    """The command that starts trainer_tune the way this run was started, for "train with the chosen setting"."""
    if rank_env.from_slurm:
        return (f"srun --nodes={rank_env.num_nodes} --ntasks-per-node={rank_env.local_world_size} "
                f"python -m trainer_tune")
    if not rank_env.under_torchrun:
        return "python -m trainer_tune"
    node_part = f" --nnodes={rank_env.num_nodes}" if rank_env.num_nodes > 1 else ""
    return f"torchrun{node_part} --nproc_per_node={rank_env.local_world_size} -m trainer_tune"


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


def _destroy_at_exit() -> None:
    """Destroy a process group still alive when the interpreter exits (an exception that escaped the sweep, an exit
    on a path that never reached DistSession.close), so that its backend shuts down before the interpreter does.
    The abort at exit that this was first written for had another cause (DistSession._until_released); this hook
    only made it rarer. Destroying a gloo group is local; a failure here must not mask the exit code."""
    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - at exit, nothing more can be done; the exit code stands
        pass


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
    def start(args: DistArgs, rank_env: RankEnv, *, namespace: str = "") -> "DistSession":
        """`namespace` separates the process groups of several runs in one process (the jobs of a Hydra
        multirun under torchrun share torchrun's store, one after the other)."""
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
            pg_store = dist.PrefixStore(f"{_KEY_PREFIX}pg/{namespace}attempt_{rank_env.restart_count}", store)
            dist.init_process_group(backend=backend, store=pg_store, rank=rank_env.rank,
                                    world_size=rank_env.world_size, timeout=timeout, device_id=device_id)
        atexit.register(_destroy_at_exit)
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
            syncs.collective("all_reduce")
            dist.all_reduce(tensor, op=op)
            self._until_released(tensor)
        return syncs.to_host(tensor)

    def max_over_ranks(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX, torch.float64)

    def sum_over_ranks(self, values: Sequence[int]) -> list[int]:
        return self._reduce(values, dist.ReduceOp.SUM, torch.int64)

    def mean_over_ranks(self, values: Sequence[float]) -> list[float]:
        total = self._reduce(values, dist.ReduceOp.SUM, torch.float64)
        return [v / self.rank_env.world_size for v in total]

    def mean_tensor_over_ranks(self, tensor: torch.Tensor) -> list:
        """A tensor of float statistics averaged over ranks, read to the host (one all-reduce, one read)."""
        tensor = tensor.detach().to(dtype=torch.float64,
                                    device=self.device if self.backend == "nccl" else torch.device("cpu"))
        if self.distributed:
            syncs.collective("all_reduce")
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            self._until_released(tensor)
            tensor = tensor / self.rank_env.world_size
        return syncs.to_host(tensor)

    def post(self, key: str, value: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.set(f"{_KEY_PREFIX}{key}", finite_json(value))

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
        syncs.collective("store_exchange")
        self.post(f"{topic}/{self.rank_env.rank}", value)
        keys = [f"{_KEY_PREFIX}{topic}/{rank}" for rank in range(self.rank_env.world_size)]
        assert self.store is not None
        self.store.wait(keys, datetime.timedelta(seconds=self.timeout_s))
        return [json.loads(self.store.get(key)) for key in keys]

    def broadcast_from_rank0(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        # Our own tensors rather than dist.broadcast_object_list, whose tensors are its own: each is waited for
        # until the backend has let go of it (_until_released).
        syncs.collective("broadcast")
        device = self.device if self.backend == "nccl" else torch.device("cpu")
        payload = pickle.dumps(obj) if self.rank_env.is_rank0 else b""
        size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
        dist.broadcast(size, src=0)
        self._until_released(size)
        data = (torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device) if self.rank_env.is_rank0
                else torch.empty(int(syncs.to_host(size)[0]), dtype=torch.uint8, device=device))
        dist.broadcast(data, src=0)
        self._until_released(data)
        return obj if self.rank_env.is_rank0 else pickle.loads(data.cpu().numpy().tobytes())

    def _until_released(self, tensor: torch.Tensor) -> None:
        """Return once the gloo worker thread that ran a collective on `tensor` has let go of it.

        A gloo collective returns as soon as its work completes; the worker thread destroys the work a moment
        later, and dropping its reference to a tensor that Python also holds needs the GIL. If the interpreter is
        finalizing by then (the collective was the rank's last act), Python ends that thread with pthread_exit,
        whose unwinding through a C++ destructor calls std::terminate: the rank dies with `terminate called without
        an active exception` (SIGABRT) after a sweep that succeeded. Measured on 2 CPU ranks: the reference was
        still held after about 1 all-reduce in 10, and 2 runs of benchmarks/overhead.py in 31 aborted this way
        (core dump: ProcessGroupGloo::runLoop -> ~AsyncAllreduceWork -> decref -> take_gil -> pthread_exit).
        Sleeping lets the worker take the GIL and finish; microseconds, outside any window. NCCL's works are
        released by its watchdog, which destroy_process_group stops, so only gloo waits here."""
        use_count = getattr(tensor, "_use_count", None)  # a private method: a torch without it waits for nothing
        if self.backend != "gloo" or use_count is None:
            return
        deadline_s = time.monotonic() + _RELEASE_WAIT_S
        while use_count() > 1 and time.monotonic() < deadline_s:
            time.sleep(1e-5)

    def barrier(self) -> None:
        if self.distributed:
            syncs.collective("barrier")
            dist.barrier()

    def from_rank0_when_done(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank, returned once rank 0 has finished what it did before this call and
        every rank has the value: rank 0 publishes, then every rank leaves with the same verdict. A rank that
        left first with a non-zero code would make torchrun terminate rank 0 mid-publish."""
        obj = self.broadcast_from_rank0(obj)
        self.barrier()
        return obj


def tell_launcher(line: str, environ: Mapping[str, str] = os.environ) -> None:
    """Leave `line` where torchrun reads why a worker failed (the file named by TORCHELASTIC_ERROR_FILE), so the
    root cause of its failure summary is our line rather than "To enable traceback see ...".

    The format is the one torch.distributed.elastic's ErrorHandler writes for an exception; its `@record`
    would not help, as it records exceptions and our user mistakes end in sys.exit. Outside torchrun there
    is no such file and nothing to do."""
    path = environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    # torchrun shows py_callstack (indented) when present: the line itself, not a traceback.
    data = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w") as file:
            json.dump(data, file)
    except OSError as exc:
        log.warning("could not write torchrun's error file %s: %s", path, exc)


def leave_with_agreed_code() -> None:
    """Called by a rank about to exit non-zero with the code every rank agreed on (after the last collective) or
    reaches on its own (the same user mistake on every rank).

    torchrun terminates the ranks still running as soon as one exits non-zero; the others are only
    milliseconds behind, and a SIGTERM then would report a rank that was already leaving as killed (-15)
    instead of its code. torchrun waits for the rank to exit (up to 30 s, then SIGKILL)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
