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
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads()}


def agreed_fingerprint(session: DistSession) -> Fingerprint:
    """The group's fingerprint: rank 0's facts, every rank's thread count. A collective through the store: every
    rank must call it, once, at the same point (the sweep's start)."""
    facts = session.exchange("fingerprint", local_facts(session.device))
    first = dict(facts[0])
    first["torch_threads"] = tuple(int(f["torch_threads"]) for f in facts)
    first["world_size"] = session.rank_env.world_size
    first["local_world_size"] = session.rank_env.local_world_size
    return Fingerprint.from_json_dict(first)


def threads_note(fingerprint: Fingerprint) -> Optional[str]:
    """Why this machine's figures depend on how its cores are shared, or None: the ranks on rank 0's host run more
    torch threads than the host lets them use (oversubscribed threads spin against each other; FACTS.md: 9x on a
    loaded 2-core machine)."""
    threads = sum(fingerprint.torch_threads[:fingerprint.local_world_size])
    if threads <= fingerprint.cpus_usable:
        return None
    per_rank = sorted(set(fingerprint.torch_threads[:fingerprint.local_world_size]))
    each = f"{per_rank[0]}" if len(per_rank) == 1 else f"{per_rank[0]} to {per_rank[-1]}"
    return (f"{fingerprint.local_world_size} rank{'s' if fingerprint.local_world_size != 1 else ''} x {each} torch "
            f"threads = {threads} threads on {fingerprint.cpus_usable} usable cores (OMP_NUM_THREADS="
            f"{fingerprint.omp_num_threads or 'unset'}): the threads compete for cores, so every rate here depends "
            f"on that; set OMP_NUM_THREADS (torchrun sets 1 per worker) or run fewer ranks per host")
