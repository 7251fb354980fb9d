"""The machine and software a window was measured on: what decides speed besides the setting itself.

A sweep resumed on another machine, after a torch upgrade or with another thread count pairs windows that cannot
be compared (FACTS.md: on a loaded 2-core machine the thread count alone changed a rate 9x). Every journal line
carries the fingerprint of the group that measured it, and recommendation.json the sweep's, so such a mix can be
seen, and refused (issue 26's resume rule reads `differences`).

Collected once per process group at the start (`agreed_fingerprint`): each rank reads its own facts, the ranks
exchange them through the store, and the fingerprint keeps one value per fact plus every rank's thread counts.
Every call that can fail without a GPU or a driver (NVML, NCCL) degrades to None and never raises.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from trainer_tune.platform.distributed import DistSession

SPEED_FIELDS = ("cpu_model", "cpus_usable", "gpu_name", "gpu_count", "gpu_memory_bytes", "driver_version",
                "cuda_version", "nccl_version", "torch_version", "trainer_tune_version", "python_version", "world_size",
                "local_world_size", "omp_num_threads", "torch_threads")
"""The facts that decide speed: two fingerprints that differ in any of them measured on different machines or
software. The host name is not one: a SLURM requeue on a like node is the same machine for this purpose."""


@dataclass(frozen=True)
class Fingerprint:
    host: str
    """Rank 0's host name (for people; not compared)."""
    cpu_model: Optional[str]
    cpus_usable: int
    """CPU cores this process may run on (its affinity mask), on rank 0's host."""
    gpu_name: Optional[str]
    gpu_count: int
    """CUDA devices visible to rank 0."""
    gpu_memory_bytes: Optional[int]
    driver_version: Optional[str]
    """The NVIDIA driver (NVML); None without one."""
    cuda_version: Optional[str]
    """The CUDA torch was built with (torch.version.cuda); None for a CPU build."""
    nccl_version: Optional[str]
    torch_version: str
    trainer_tune_version: Optional[str]
    python_version: str
    world_size: int
    local_world_size: int
    """Ranks on rank 0's host, which share its usable cores."""
    omp_num_threads: Optional[str]
    """OMP_NUM_THREADS as rank 0's environment has it (torchrun sets 1 per worker); None when unset."""
    torch_threads: tuple[int, ...]
    """torch.get_num_threads() of every rank, in rank order."""
    other_busy_cores: Optional[float] = None
    """Cores' worth of CPU that processes other than this sweep's used on rank 0's host over half a second at the
    start (not compared: the load comes and goes); None where it could not be read."""
    load_average_1m: Optional[float] = None
    """The host's one-minute load average at the start (this sweep's own start-up included)."""

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json_dict(data: dict[str, Any]) -> "Fingerprint":
        names = {f.name for f in dataclasses.fields(Fingerprint)}
        values = {k: v for k, v in data.items() if k in names}
        values["torch_threads"] = tuple(values.get("torch_threads") or ())
        return Fingerprint(**values)

    def differences(self, other: "Fingerprint") -> list[str]:
        """`name: mine -> theirs` for each speed-deciding fact (SPEED_FIELDS) the two disagree on."""
        return [f"{name}: {getattr(self, name)} -> {getattr(other, name)}" for name in SPEED_FIELDS
                if getattr(self, name) != getattr(other, name)]


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cpus_usable() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _driver_version() -> Optional[str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no library, no driver, no permission: the fact is unknown, not an error
        return None


def _nccl_version() -> Optional[str]:
    if not torch.cuda.is_available():
        return None
    try:
        version = torch.cuda.nccl.version()
        return ".".join(str(v) for v in version) if isinstance(version, tuple) else str(version)
    except Exception:  # noqa: BLE001 - a build without NCCL
        return None


def _package_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("trainer_tune")
    except Exception:  # noqa: BLE001 - run from a source tree that was never installed
        return None


_LOAD_SAMPLE_S = 0.5


def _others_cpu_s() -> dict[int, float]:
    """CPU seconds used so far by each process outside this sweep: not this process, its parent (torchrun's agent),
    the parent's other children (the other ranks) or any process below these (DataLoader workers)."""
    import psutil

    me = psutil.Process()
    parent = me.parent()
    ours = {me.pid} | {c.pid for c in me.children(recursive=True)}
    if parent is not None:
        ours |= {parent.pid} | {c.pid for c in parent.children(recursive=True)}
    seen = {}
    for proc in psutil.process_iter(["pid", "cpu_times"]):
        times = proc.info.get("cpu_times")
        if times is not None and proc.info["pid"] not in ours:
            seen[proc.info["pid"]] = times.user + times.system
    return seen


def _other_busy_cores(interval_s: float = _LOAD_SAMPLE_S) -> Optional[float]:
    """CPU used by processes outside this sweep (_others_cpu_s), in cores, over `interval_s`."""
    try:
        before = _others_cpu_s()
        time.sleep(interval_s)
        after = _others_cpu_s()
        return round(sum(max(0.0, t - before.get(pid, t)) for pid, t in after.items()) / interval_s, 2)
    except Exception:  # noqa: BLE001 - no /proc, no permission: the load is unknown, not an error
        return None


def _load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def local_facts(device: torch.device) -> dict[str, Any]:
    """This rank's facts, as a JSON-ready dict (what the ranks exchange)."""
    cuda = device.type == "cuda" and torch.cuda.is_available()
    properties = torch.cuda.get_device_properties(device) if cuda else None
    return {"host": socket.gethostname(), "cpu_model": _cpu_model(), "cpus_usable": _cpus_usable(),
            "gpu_name": properties.name if properties is not None else None,
            "gpu_count": torch.cuda.device_count() if cuda else 0,
            "gpu_memory_bytes": properties.total_memory if properties is not None else None,
            "driver_version": _driver_version() if cuda else None, "cuda_version": torch.version.cuda,
            "nccl_version": _nccl_version() if cuda else None, "torch_version": torch.__version__,
            "trainer_tune_version": _package_version(), "python_version": platform.python_version() or sys.version,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(),
            "other_busy_cores": _other_busy_cores(), "load_average_1m": _load_average()}


def agreed_fingerprint(session: DistSession) -> Fingerprint:
    """The group's fingerprint: rank 0's facts, every rank's thread count. A collective through the store: every
    rank must call it, once, at the same point (the sweep's start)."""
    facts = session.exchange("fingerprint", local_facts(session.device))
    first = dict(facts[0])
    first["torch_threads"] = tuple(int(f["torch_threads"]) for f in facts)
    first["world_size"] = session.rank_env.world_size
    first["local_world_size"] = session.rank_env.local_world_size
    return Fingerprint.from_json_dict(first)


def threads_note(fingerprint: Fingerprint, *, most_threads_per_rank: Optional[int] = None) -> Optional[str]:
    """Why this machine's figures depend on how its cores are shared, or None: the ranks on rank 0's host run more
    torch threads than the host lets them use (oversubscribed threads spin against each other; FACTS.md: 9x on a
    loaded 2-core machine). `most_threads_per_rank`: the largest train.num_threads a setting sets (sweep.num_threads),
    which stands for every rank's."""
    per_rank_threads = (tuple([most_threads_per_rank] * fingerprint.local_world_size)
                        if most_threads_per_rank is not None
                        else fingerprint.torch_threads[:fingerprint.local_world_size])
    threads = sum(per_rank_threads)
    if threads <= fingerprint.cpus_usable:
        return None
    per_rank = sorted(set(per_rank_threads))
    each = f"{per_rank[0]}" if len(per_rank) == 1 else f"{per_rank[0]} to {per_rank[-1]}"
    return (f"{fingerprint.local_world_size} rank{'s' if fingerprint.local_world_size != 1 else ''} x {each} torch "
            f"threads = {threads} threads on {fingerprint.cpus_usable} usable cores (OMP_NUM_THREADS="
            f"{fingerprint.omp_num_threads or 'unset'}): the threads compete for cores, so every rate here depends "
            f"on that; set OMP_NUM_THREADS (torchrun sets 1 per worker) or run fewer ranks per host")


def load_note(fingerprint: Fingerprint, *, most_threads_per_rank: Optional[int] = None) -> Optional[str]:
    """Why this machine's figures depend on load already on it at the start, or None: other processes were using
    so much of rank 0's host that fewer cores were free than the sweep's ranks run threads (`most_threads_per_rank`:
    the largest train.num_threads a setting sets, else each rank's torch threads at the start)."""
    busy = fingerprint.other_busy_cores
    if busy is None:
        return None
    ranks = fingerprint.local_world_size
    threads = (most_threads_per_rank * ranks if most_threads_per_rank is not None
               else sum(fingerprint.torch_threads[:ranks]))
    free = max(0.0, fingerprint.cpus_usable - busy)
    if free + 0.5 >= threads:  # half a core of slack: a shell, a monitor
        return None
    load = f", load average {fingerprint.load_average_1m:g}" if fingerprint.load_average_1m is not None else ""
    return (f"other processes were using {busy:g} of the {fingerprint.cpus_usable} usable cores when the sweep "
            f"started{load}: {free:g} free for {threads} thread{'s' if threads != 1 else ''} ({ranks} rank"
            f"{'s' if ranks != 1 else ''}), so every rate here depends on that load; measure on an idle machine, "
            f"or with fewer threads")
