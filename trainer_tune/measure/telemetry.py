"""What each rank samples during a trial's measured steps: its GPU (NVML), its CPU use, its CUDA allocator.

One probe per process, opened once (NVML initialisation is not free) and started/stopped around the
measured steps of every trial. `stop()` returns this rank's `RankTelemetry`; it becomes a plain dict only to
cross the store in the outcome exchange (`to_json_dict` / `from_json_dict`), and measure/summarize.py combines the
ranks' readings into the trial's figures. A window that fails while sampling calls `abandon()` instead, so
the next trial finds the probe as a successful one leaves it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch

from trainer_tune.config.schema import TelemetryArgs
from trainer_tune.measure.cpu_usage import CpuMeter, CpuUtilization
from trainer_tune.measure.figures import from_fields
from trainer_tune.measure.gpu_sampler import GpuSampler, GpuSummary, summarize_gpu_samples
from trainer_tune.measure.rapl import CpuEnergy, RaplMeter


@dataclass(frozen=True)
class AllocatorCounts:
    """The CUDA caching allocator's counters of this rank (cumulative over the process)."""

    num_alloc_retries: int
    num_ooms: int


@dataclass(frozen=True)
class RankTelemetry:
    """One rank's readings over the measured steps of one trial."""

    cpu: CpuUtilization
    gpu: Optional[GpuSummary]
    """None when GPU sampling is off (telemetry.gpu_sampling=false)."""
    gpu_utilization_series: tuple[tuple[float, float], ...] = ()
    """(seconds since start, utilization %) per sample."""
    cuda_allocator: Optional[AllocatorCounts] = None
    """None on a device without the CUDA caching allocator."""
    cpu_energy: Optional[CpuEnergy] = None
    """The node's CPU package energy (rapl.py), read by local rank 0 only; None on the other ranks."""

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json_dict(data: dict[str, Any]) -> "RankTelemetry":
        return RankTelemetry(
            cpu=from_fields(CpuUtilization, data["cpu"]),
            gpu=from_fields(GpuSummary, data["gpu"]) if data.get("gpu") is not None else None,
            gpu_utilization_series=tuple((t_s, pct) for t_s, pct in data.get("gpu_utilization_series") or ()),
            cuda_allocator=(from_fields(AllocatorCounts, data["cuda_allocator"])
                            if data.get("cuda_allocator") is not None else None),
            cpu_energy=from_fields(CpuEnergy, data["cpu_energy"]) if data.get("cpu_energy") is not None else None)


_ALLOCATOR_COUNTERS = ("num_alloc_retries", "num_ooms")
"""CUDA allocator counters reported per window: cache flushes to retry a failed cudaMalloc, and OOMs raised."""


def _allocator_counts(device: torch.device) -> dict[str, int]:
    """The allocator's counters since the process started; {} on a device without them."""
    if device.type != "cuda":
        return {}
    stats = torch.cuda.memory_stats(device)
    return {name: int(stats.get(name, 0)) for name in _ALLOCATOR_COUNTERS}


class TelemetryProbe:
    def __init__(self, args: TelemetryArgs, *, local_rank: int, device: torch.device) -> None:
        self.device = device
        self.cpu = CpuMeter()
        self.gpu: Optional[GpuSampler] = None
        self.gpu_off_reason: Optional[str] = "telemetry.gpu_sampling=false"
        if args.gpu_sampling:
            self.gpu = GpuSampler(local_rank=local_rank, interval_s=1.0 / args.sample_hz)
            self.gpu_off_reason = self.gpu.unavailable_reason
        self._allocator_start: dict[str, int] = {}
        # The sockets are the node's: one reader per node, or each rank would count them again.
        self.rapl: Optional[RaplMeter] = RaplMeter() if local_rank == 0 else None

    @property
    def running(self) -> bool:
        return self.cpu.running or (self.gpu is not None and self.gpu.running)

    def start(self) -> None:
        """Start sampling; end it with `stop()`, or `abandon()` on any other path."""
        if self.running:
            raise RuntimeError("TelemetryProbe.start() called twice without stop() or abandon()")
        # The counters count from process start: an earlier trial's OOM must not show in this one's window.
        self._allocator_start = _allocator_counts(self.device)
        self.cpu.start()
        if self.rapl is not None:
            self.rapl.start()
        if self.gpu is not None:
            self.gpu.start()

    def stop(self, *, tokens: Optional[int], samples: Optional[int] = None) -> RankTelemetry:
        """This rank's readings; `tokens` (None: its batches carry none) and `samples` are what this rank
        processed while sampling."""
        try:
            cpu = self.cpu.stop()
            cpu_energy = self.rapl.stop() if self.rapl is not None else None
            gpu, series = None, ()
            if self.gpu is not None:
                readings = self.gpu.stop()
                gpu = summarize_gpu_samples(readings, tokens=tokens, data_samples=samples)
                series = tuple((t_s, pct) for t_s, pct in readings.utilization_pct)
            allocator = None
            if self.device.type == "cuda":
                counts = _allocator_counts(self.device)
                allocator = AllocatorCounts(**{name: counts[name] - self._allocator_start.get(name, 0)
                                               for name in _ALLOCATOR_COUNTERS})
            return RankTelemetry(cpu=cpu, gpu=gpu, gpu_utilization_series=series, cuda_allocator=allocator,
                                 cpu_energy=cpu_energy)
        finally:
            self.abandon()  # whatever an exception above left sampling

    def abandon(self) -> None:
        """Stop sampling and drop the readings (the window failed); nothing happens when not sampling."""
        if self.cpu.running:
            self.cpu.stop()
        if self.gpu is not None and self.gpu.running:
            self.gpu.stop()

    def close(self) -> None:
        if self.gpu is not None:
            self.gpu.close()
