"""What each rank samples during a trial's measured steps: its GPU (NVML), its CPU use, its CUDA allocator.

One probe per process, opened once (NVML initialisation is not free) and started/stopped around the
measured steps of every trial. `stop()` returns a plain dict (JSON-safe), which travels to rank 0 in the
outcome exchange; metrics.py combines the ranks' dicts into the trial's figures.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from trainer_tune.config import TelemetryArgs
from trainer_tune.cpu_usage import CpuMeter
from trainer_tune.gpu_sampler import GpuSampler, summarize_gpu_samples


class TelemetryProbe:
    def __init__(self, args: TelemetryArgs, *, local_rank: int, device: torch.device) -> None:
        self.device = device
        self.cpu = CpuMeter()
        self.gpu: Optional[GpuSampler] = None
        self.gpu_off_reason: Optional[str] = "telemetry.gpu_sampling=false"
        if args.gpu_sampling:
            self.gpu = GpuSampler(local_rank=local_rank, interval_s=1.0 / args.sample_hz)
            self.gpu_off_reason = self.gpu.unavailable_reason

    def start(self) -> None:
        self.cpu.start()
        if self.gpu is not None:
            self.gpu.start()

    def stop(self, *, tokens: int) -> dict[str, Any]:
        """This rank's readings; `tokens` are the tokens this rank processed while sampling."""
        readings: dict[str, Any] = {"cpu": dataclasses.asdict(self.cpu.stop())}
        if self.gpu is not None:
            samples = self.gpu.stop()
            readings["gpu"] = dataclasses.asdict(summarize_gpu_samples(samples, tokens=tokens))
            readings["gpu_utilization_series"] = [list(point) for point in samples.utilization_pct]
        else:
            readings["gpu"] = None
        if self.device.type == "cuda":
            stats = torch.cuda.memory_stats(self.device)
            readings["cuda_allocator"] = {"num_alloc_retries": int(stats.get("num_alloc_retries", 0)),
                                          "num_ooms": int(stats.get("num_ooms", 0))}
        return readings

    def close(self) -> None:
        if self.gpu is not None:
            self.gpu.close()
