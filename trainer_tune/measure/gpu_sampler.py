"""Background GPU telemetry for one rank through NVML, and its summary for one measured window.

One ``GpuSampler`` per rank watches that rank's GPU. The caller starts it when measured steps begin
and stops it when they end, so warm-up never counts. Sampling reads NVML only (no CUDA calls), so it
never synchronizes or slows the training stream.

Everything NVML says is board-wide: memory used includes other processes and the CUDA context,
power and energy include every process on the GPU. Utilization is the share of the last sample
period in which *any* kernel ran, so a waiting NCCL kernel reads as busy; tokens/s stays the measure
of throughput. On Hopper and newer the sampler also reads NVML's GPM counters (gpm.py: SM activity,
occupancy, tensor activity, DRAM bandwidth), which say how much of the GPU those kernels kept busy.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from trainer_tune.measure.gpm import GPM_METRICS, GPM_MIN_INTERVAL_S, GpmReader, summarize_gpm

__all__ = [
    "GpuSampler",
    "GpuSamples",
    "GpuSummary",
    "open_nvml_device",
    "summarize_gpu_samples",
]

logger = logging.getLogger(__name__)

# The NVML call behind each metric, named in reasons so a reader can look the call up.
_METRIC_CALLS: dict[str, str] = {
    "utilization": "nvmlDeviceGetUtilizationRates",
    "memory": "nvmlDeviceGetMemoryInfo",
    "power": "nvmlDeviceGetPowerUsage",
    "energy": "nvmlDeviceGetTotalEnergyConsumption",
}

# Read at every tick; energy is a cumulative counter, read only at start and stop.
_PERIODIC_METRICS = ("utilization", "memory", "power")


def _read_utilization_pct(nvml: Any, handle: Any) -> float:
    return float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)


def _read_memory_used_bytes(nvml: Any, handle: Any) -> int:
    return int(nvml.nvmlDeviceGetMemoryInfo(handle).used)


def _read_power_w(nvml: Any, handle: Any) -> float:
    return nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # NVML reports mW


def _read_energy_j(nvml: Any, handle: Any) -> float:
    return nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0  # mJ since driver load


_READERS: dict[str, Callable[[Any, Any], float]] = {
    "utilization": _read_utilization_pct,
    "memory": _read_memory_used_bytes,
    "power": _read_power_w,
    "energy": _read_energy_j,
}


def _import_nvml() -> tuple[Any | None, str | None]:
    try:
        import pynvml
    except ImportError as exc:
        return None, f"nvidia-ml-py is not installed (import pynvml failed: {exc})"
    return pynvml, None


def _shutdown_quietly(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError as exc:
        logger.debug("nvmlShutdown failed: %s", exc)


def _handle_by_uuid(nvml: Any, uuid: str) -> Any:
    try:
        return nvml.nvmlDeviceGetHandleByUUID(uuid)
    except nvml.NVMLError:
        # CUDA also accepts a unique prefix of a UUID ("GPU-8932f9"); NVML wants the whole one.
        matches = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            full = nvml.nvmlDeviceGetUUID(handle)
            if isinstance(full, bytes):
                full = full.decode()
            if full.startswith(uuid):
                matches.append(handle)
        if len(matches) == 1:
            return matches[0]
        raise


def _handle_for_rank(nvml: Any, *, local_rank: int, environ: Mapping[str, str]) -> tuple[Any | None, str | None]:
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        entry = str(local_rank)
    else:
        entries = [item.strip() for item in visible.split(",") if item.strip()]
        if local_rank >= len(entries):
            return None, (
                f"local rank {local_rank} has no GPU: CUDA_VISIBLE_DEVICES={visible!r} lists {len(entries)}"
            )
        entry = entries[local_rank]
    # CUDA numbers devices fastest-first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, while NVML numbers
    # them by PCI bus; the two agree on machines with one GPU model. UUIDs are exact either way.
    try:
        if entry.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(entry)), None
        if entry.startswith(("GPU-", "MIG-")):
            return _handle_by_uuid(nvml, entry), None
    except nvml.NVMLError as exc:
        return None, f"NVML has no device for CUDA_VISIBLE_DEVICES entry {entry!r} (local rank {local_rank}): {exc}"
    return None, f"cannot map CUDA_VISIBLE_DEVICES entry {entry!r} (expected an index or a GPU-/MIG- UUID)"


def open_nvml_device(
    *, local_rank: int, environ: Mapping[str, str], nvml: Any | None = None
) -> tuple[Any | None, str | None]:
    """Initialise NVML and return ``(handle, None)`` for this rank's GPU, or ``(None, reason)``.

    The local rank indexes the devices CUDA shows this process, so it is mapped through
    ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-``/``MIG-`` UUIDs) to the physical device. ``nvml`` is the
    ``pynvml`` module, or a stand-in with the same names (tests); by default ``pynvml`` is imported.
    On success NVML stays initialised; call ``nvml.nvmlShutdown()`` when done (``GpuSampler.close``).
    """
    if local_rank < 0:
        raise ValueError(f"local_rank must be >= 0, got {local_rank}")
    if nvml is None:
        nvml, reason = _import_nvml()
        if nvml is None:
            return None, reason
    # Importing pynvml works without a driver; nvmlInit is where a missing library shows.
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return None, f"nvidia-ml-py could not initialise NVML: {exc}"
    handle, reason = _handle_for_rank(nvml, local_rank=local_rank, environ=environ)
    if handle is None:
        _shutdown_quietly(nvml)  # nvmlInit is reference-counted: balance it
    return handle, reason


@dataclass(frozen=True)
class GpuSamples:
    """Raw telemetry of one window between ``GpuSampler.start`` and ``stop``."""

    utilization_pct: tuple[tuple[float, float], ...] = ()
    """(t_s since start, GPU utilization %) per tick."""
    memory_used_bytes: tuple[tuple[float, int], ...] = ()
    """(t_s since start, device memory used in bytes, all processes) per tick."""
    power_w: tuple[tuple[float, float], ...] = ()
    """(t_s since start, board power in W) per tick."""
    energy_counter_start_j: float | None = None
    """Board energy counter (J since driver load) at start, None when unsupported."""
    energy_counter_stop_j: float | None = None
    """Board energy counter at stop, None when unsupported."""
    duration_s: float = 0.0
    """Wall time from start to stop."""
    disabled: Mapping[str, str] = field(default_factory=dict)
    """Metric name -> why it is off. A metric listed here is not to be trusted for this window."""
    unavailable_reason: str | None = None
    """Why there is no GPU telemetry at all (no NVML, no device for this rank); None otherwise."""
    gpm_pct: Mapping[str, tuple[tuple[float, float, float], ...]] = field(default_factory=dict)
    """GPM metric name (gpm.GPM_METRICS) -> (start t_s, end t_s, value %) per interval between GPM samples."""
    gpm_disabled: Mapping[str, str] = field(default_factory=dict)
    """GPM metric name -> why it failed in this window."""
    gpm_unavailable_reason: str | None = None
    """Why this GPU has no GPM figures at all (older than Hopper, old driver or nvidia-ml-py); None otherwise."""


class GpuSampler:
    """Samples one GPU from a daemon thread between ``start()`` and ``stop()``.

    Start and stop may alternate any number of times (one window per trial). A metric whose NVML
    call raises is switched off for the sampler's lifetime and its reason kept, so a failing metric
    never shows up as zero.
    """

    def __init__(
        self,
        *,
        local_rank: int,
        interval_s: float = 0.1,
        environ: Mapping[str, str] | None = None,
        nvml: Any | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._interval_s = interval_s
        self._local_rank = local_rank
        self._disabled: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._running = False
        self._stop_event = threading.Event()
        self._start_s = 0.0
        self._energy_start_j: float | None = None
        self._series: dict[str, list[tuple[float, float]]] = {}
        self._gpm: Optional[GpmReader] = None
        self._gpm_reason: Optional[str] = None
        self._gpm_series: dict[str, list[tuple[float, float, float]]] = {}
        self._gpm_disabled: dict[str, str] = {}
        self._gpm_last_t_s: Optional[float] = None

        if nvml is None:
            nvml, reason = _import_nvml()
        self._nvml = nvml
        if nvml is None:
            self._handle = None
        else:
            self._handle, reason = open_nvml_device(
                local_rank=local_rank, environ=os.environ if environ is None else environ, nvml=nvml
            )
        self._unavailable_reason = reason
        if reason is not None:
            # Said once here, not at every window: the cause cannot change during the run.
            logger.warning("GPU telemetry off for local rank %d: %s", local_rank, reason)
        else:
            self._gpm, self._gpm_reason = GpmReader.open(nvml, self._handle)
            if self._gpm_reason is not None:  # expected before Hopper: not a warning
                logger.info("GPM figures off for local rank %d: %s", local_rank, self._gpm_reason)

    @property
    def available(self) -> bool:
        return self._handle is not None

    @property
    def unavailable_reason(self) -> str | None:
        return self._unavailable_reason

    @property
    def running(self) -> bool:
        """Between ``start()`` and ``stop()``."""
        return self._running

    def start(self) -> None:
        if self._running:
            raise RuntimeError("GpuSampler.start() called twice without stop()")
        self._running = True
        self._series = {metric: [] for metric in _PERIODIC_METRICS}
        self._gpm_series = {name: [] for name in GPM_METRICS}
        self._gpm_disabled = {}
        self._gpm_last_t_s = None
        if self._gpm is not None:
            self._gpm.reset()
        self._stop_event.clear()
        self._start_s = time.monotonic()
        if self._handle is None:
            return
        self._energy_start_j = self._read("energy")
        self._thread = threading.Thread(
            target=self._run, name=f"gpu-sampler-rank{self._local_rank}", daemon=True
        )
        self._thread.start()

    def stop(self) -> GpuSamples:
        if not self._running:
            raise RuntimeError("GpuSampler.stop() called without start()")
        self._running = False
        if self._thread is None:  # no NVML: nothing was sampled
            return GpuSamples(
                duration_s=time.monotonic() - self._start_s, unavailable_reason=self._unavailable_reason
            )
        self._stop_event.set()
        self._thread.join()
        self._thread = None
        # From here on only this thread touches the series and the disabled map.
        duration_s = time.monotonic() - self._start_s
        # A closing sample, so the power integral reaches the end of the window.
        self._sample_once(t_s=duration_s)
        energy_stop_j = self._read("energy")
        energy_start_j = self._energy_start_j if energy_stop_j is not None else None
        return GpuSamples(
            utilization_pct=tuple(self._series["utilization"]),
            memory_used_bytes=tuple((t, int(v)) for t, v in self._series["memory"]),
            power_w=tuple(self._series["power"]),
            energy_counter_start_j=energy_start_j,
            energy_counter_stop_j=energy_stop_j if energy_start_j is not None else None,
            duration_s=duration_s,
            disabled=dict(self._disabled),
            gpm_pct={name: tuple(series) for name, series in self._gpm_series.items()},
            gpm_disabled=dict(self._gpm_disabled),
            gpm_unavailable_reason=self._gpm_reason,
        )

    def close(self) -> None:
        """Stop sampling if running and release NVML."""
        if self._running:
            self.stop()
        if self._gpm is not None:
            self._gpm.close()
            self._gpm, self._gpm_reason = None, "GpuSampler was closed"
        if self._handle is not None:
            _shutdown_quietly(self._nvml)
            self._handle = None
            self._unavailable_reason = "GpuSampler was closed"

    def __enter__(self) -> GpuSampler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read(self, metric: str) -> float | None:
        if metric in self._disabled:
            return None
        try:
            return _READERS[metric](self._nvml, self._handle)
        except self._nvml.NVMLError as exc:
            reason = f"{_METRIC_CALLS[metric]} failed: {exc}"
            self._disabled[metric] = reason
            logger.warning(
                "GPU %s metric off for the rest of the run (local rank %d): %s", metric, self._local_rank, reason
            )
            return None

    def _sample_once(self, *, t_s: float) -> None:
        for metric in _PERIODIC_METRICS:
            value = self._read(metric)
            if value is not None:
                self._series[metric].append((t_s, value))
        self._sample_gpm(t_s=t_s)

    def _sample_gpm(self, *, t_s: float) -> None:
        if self._gpm is None or self._gpm_reason is not None:
            return
        last_t_s = self._gpm_last_t_s
        if last_t_s is not None and t_s - last_t_s < GPM_MIN_INTERVAL_S:
            return
        try:
            values = self._gpm.sample()
        except Exception as exc:  # noqa: BLE001 - GPM must never take utilization, memory and power down with it
            # Off for the sampler's lifetime, as any failing metric: a half-covered window would mislead.
            self._gpm_reason = f"GPM sampling failed: {exc}"
            logger.warning("GPM figures off for the rest of the run (local rank %d): %s", self._local_rank, exc)
            return
        self._gpm_last_t_s = t_s
        if values is None or last_t_s is None:  # the first sample of the window: the others count from it
            return
        for name, (value, why) in values.items():
            if value is None:
                self._gpm_disabled.setdefault(name, why or "no value")
            else:
                self._gpm_series[name].append((last_t_s, t_s, value))

    def _run(self) -> None:
        try:
            next_tick_s = self._start_s
            while True:
                now_s = time.monotonic()
                self._sample_once(t_s=now_s - self._start_s)
                # Ticks on a fixed grid so the cost of each NVML call does not stretch the period;
                # after a stall the missed ticks are skipped, not replayed in a burst.
                next_tick_s += self._interval_s
                now_s = time.monotonic()
                if next_tick_s < now_s:
                    next_tick_s += math.ceil((now_s - next_tick_s) / self._interval_s) * self._interval_s
                if self._stop_event.wait(next_tick_s - now_s):
                    return
        except Exception as exc:  # a dead thread would otherwise look like an idle GPU
            logger.exception("GPU sampler thread failed (local rank %d)", self._local_rank)
            for metric in _PERIODIC_METRICS:
                self._disabled.setdefault(metric, f"sampler thread failed: {exc!r}")
            for name in GPM_METRICS:
                self._gpm_disabled.setdefault(name, f"sampler thread failed: {exc!r}")


@dataclass(frozen=True)
class GpuSummary:
    """Telemetry of one measured window; each figure is None when it could not be measured."""

    util_mean_pct: float | None
    util_p10_pct: float | None
    util_p90_pct: float | None
    memory_used_peak_bytes: int | None
    power_mean_w: float | None
    energy_j: float | None
    energy_source: str | None
    """"counter" (NVML total-energy delta) or "power_integral" (trapezoid over power samples)."""
    energy_j_per_token: float | None
    num_samples: int | None
    duration_s: float | None
    unavailable_reason: str | None
    """One line naming every figure that is None and why; None when all were measured."""
    energy_j_per_sample: float | None = None
    """Energy over the samples this GPU trained on in the window (the figure for batches without tokens)."""
    sm_active_mean_pct: float | None = None
    """NVML GPM: share of SMs busy, time-weighted mean over the window (gpm.py); None before Hopper."""
    sm_occupancy_mean_pct: float | None = None
    """NVML GPM: resident warps vs the SMs' maximum, mean over the window."""
    tensor_active_mean_pct: float | None = None
    """NVML GPM: time the SMs ran any tensor-core instruction, mean over the window."""
    dram_bw_mean_pct: float | None = None
    """NVML GPM: DRAM bandwidth used vs its maximum, mean over the window."""
    gpm_note: str | None = None
    """Why any GPM figure is None (the GPU has no GPM, a metric failed); None when all were measured. Kept out
    of unavailable_reason: most GPUs have no GPM, and that is no fault of the window."""


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default "linear" method)."""
    position = fraction * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] * (1.0 - weight) + sorted_values[upper] * weight


def _trapezoid_j(power_w: Sequence[tuple[float, float]]) -> float:
    return sum((t1 - t0) * (p0 + p1) / 2.0 for (t0, p0), (t1, p1) in zip(power_w, power_w[1:]))


def summarize_gpu_samples(samples: GpuSamples, *, tokens: int | None, data_samples: int | None = None) -> GpuSummary:
    """Summarize one window. ``tokens``: tokens this GPU processed in the window (for J/token; None when its
    batches carry none); ``data_samples``: the samples it trained on (for J/sample; None: not given).

    Energy prefers the board's energy counter (exact, but it ticks every 20-100 ms, so windows
    under about a second carry that much quantisation) and falls back to integrating sampled power
    over time when the counter is unsupported.
    """
    if tokens is not None and tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    if samples.unavailable_reason is not None:
        return GpuSummary(
            util_mean_pct=None, util_p10_pct=None, util_p90_pct=None, memory_used_peak_bytes=None,
            power_mean_w=None, energy_j=None, energy_source=None, energy_j_per_token=None,
            num_samples=None, duration_s=samples.duration_s, unavailable_reason=samples.unavailable_reason,
        )  # fmt: skip
    missing: list[str] = []

    def usable(metric: str, series: Sequence[tuple[float, float]]) -> list[float]:
        # A metric that failed part-way covered only part of the window: its figures would be
        # biased towards the start, so none are reported.
        if metric in samples.disabled:
            missing.append(f"{metric}: {samples.disabled[metric]}")
            return []
        if not series:
            missing.append(f"{metric}: no samples in the window")
        return [value for _, value in series]

    util = sorted(usable("utilization", samples.utilization_pct))
    memory = usable("memory", samples.memory_used_bytes)
    power = usable("power", samples.power_w)

    energy_j: float | None = None
    energy_source: str | None = None
    start_j, stop_j = samples.energy_counter_start_j, samples.energy_counter_stop_j
    if start_j is not None and stop_j is not None and stop_j >= start_j:
        energy_j, energy_source = stop_j - start_j, "counter"
    elif len(power) >= 2:
        energy_j, energy_source = _trapezoid_j(samples.power_w), "power_integral"
    else:
        counter_reason = samples.disabled.get("energy", "energy counter went backwards (driver reloaded?)")
        missing.append(f"energy: {counter_reason}, and fewer than 2 power samples to integrate")

    if energy_j is not None and tokens == 0:
        missing.append("energy_j_per_token: no tokens in the window")
    num_samples = max(len(samples.utilization_pct), len(samples.memory_used_bytes), len(samples.power_w))
    gpm_means, gpm_note = summarize_gpm(samples.gpm_pct, disabled=samples.gpm_disabled,
                                        unavailable_reason=samples.gpm_unavailable_reason,
                                        duration_s=samples.duration_s)
    return GpuSummary(
        util_mean_pct=sum(util) / len(util) if util else None,
        util_p10_pct=_percentile(util, 0.1) if util else None,
        util_p90_pct=_percentile(util, 0.9) if util else None,
        memory_used_peak_bytes=int(max(memory)) if memory else None,
        # Ticks are evenly spaced, so the plain mean is the time-weighted mean.
        power_mean_w=sum(power) / len(power) if power else None,
        energy_j=energy_j,
        energy_source=energy_source,
        energy_j_per_token=energy_j / tokens if energy_j is not None and tokens else None,
        energy_j_per_sample=energy_j / data_samples if energy_j is not None and data_samples else None,
        num_samples=num_samples or None,
        duration_s=samples.duration_s,
        unavailable_reason="; ".join(missing) or None,
        **gpm_means,
        gpm_note=gpm_note,
    )
