"""CPU utilization of the training process and of the whole machine over one measured window.

Always available (psutil), so even a machine without GPU telemetry records how busy it was. Works
from CPU-time counters read at start and stop rather than ``psutil.cpu_percent(None)``, whose
system-wide form keeps one hidden "last call" per process that any other caller would reset.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

__all__ = ["CpuMeter", "CpuUtilization"]


@dataclass(frozen=True)
class CpuUtilization:
    """CPU use over one window; a figure is None when it could not be read."""

    process_pct: float | None
    """CPU time of the measured process over wall time, x100: 100 is one core fully busy, and a
    multi-threaded process can exceed 100 (psutil's convention). DataLoader workers are separate
    processes and are not included; the system figure sees them."""
    system_pct: float | None
    """Busy share of all logical CPUs, 0-100."""
    num_logical_cpus: int | None
    duration_s: float
    unavailable_reason: str | None


def _process_cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _system_busy_and_total_s() -> tuple[float, float]:
    times = psutil.cpu_times()
    fields = times._asdict()
    # Linux counts guest time inside user/nice already; adding it again would double count.
    total_s = sum(value for name, value in fields.items() if name not in ("guest", "guest_nice"))
    idle_s = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return total_s - idle_s, total_s


class CpuMeter:
    """Measures CPU utilization between ``start()`` and ``stop()``; may be reused for many windows."""

    def __init__(self, *, pid: int | None = None) -> None:
        self._pid = os.getpid() if pid is None else pid
        self._start_s: float | None = None
        self._process_start_s: float | None = None
        self._system_start: tuple[float, float] | None = None
        self._reason: str | None = None
        try:
            self._process: psutil.Process | None = psutil.Process(self._pid)
        except psutil.Error as exc:
            self._process = None
            self._reason = f"cannot watch process {self._pid}: {exc}"

    @property
    def running(self) -> bool:
        """Between ``start()`` and ``stop()``."""
        return self._start_s is not None

    def start(self) -> None:
        self._start_s = time.monotonic()
        self._process_start_s = self._read_process()
        self._system_start = _system_busy_and_total_s()

    def stop(self) -> CpuUtilization:
        if self._start_s is None or self._system_start is None:
            raise RuntimeError("CpuMeter.stop() called without start()")
        duration_s = time.monotonic() - self._start_s
        process_stop_s = self._read_process()
        busy_s, total_s = _system_busy_and_total_s()
        busy_start_s, total_start_s = self._system_start
        self._start_s = None

        process_pct = None
        if self._process_start_s is not None and process_stop_s is not None and duration_s > 0:
            process_pct = 100.0 * (process_stop_s - self._process_start_s) / duration_s
        system_pct = None
        if total_s > total_start_s:
            # A share of the machine's time: summing psutil's per-state seconds can round just past 100% when every
            # core was busy the whole window.
            system_pct = min(100.0, 100.0 * (busy_s - busy_start_s) / (total_s - total_start_s))
        reason = self._reason
        if reason is None and system_pct is None:
            reason = "window too short for the system CPU counters to advance"
        return CpuUtilization(
            process_pct=process_pct,
            system_pct=system_pct,
            num_logical_cpus=psutil.cpu_count(logical=True),
            duration_s=duration_s,
            unavailable_reason=reason,
        )

    def _read_process(self) -> float | None:
        if self._process is None:
            return None
        try:
            return _process_cpu_s(self._process)
        except psutil.Error as exc:
            self._reason = f"cannot read CPU times of process {self._pid}: {exc}"
            return None
