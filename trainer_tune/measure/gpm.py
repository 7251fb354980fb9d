"""NVML GPU Performance Monitoring (GPM, Hopper and newer): what the SMs did between two samples.

NVML's "GPU utilization" is the share of time in which *any* kernel ran, however few SMs it kept busy: a GPU
whose only kernel is an NCCL all-reduce waiting on the network reads near 100%. GPM counts the SMs themselves.
Each figure is a percentage over the interval between two GPM samples (nvmlGpmMetricsGet on two buffers filled
by nvmlGpmSampleGet), read through nvidia-ml-py (pynvml) beside utilization by gpu_sampler.GpuSampler:

- sm_active: SMs busy (NVML_GPM_METRIC_SM_UTIL, "percentage of SMs that were busy");
- sm_occupancy: warps resident vs the SMs' maximum (NVML_GPM_METRIC_SM_OCCUPANCY);
- tensor_active: time the SMs ran any tensor-core instruction (NVML_GPM_METRIC_ANY_TENSOR_UTIL);
- dram_bw: DRAM bandwidth used vs its maximum (NVML_GPM_METRIC_DRAM_BW_UTIL).

Where GPM is not there (a GPU older than Hopper, a driver or nvidia-ml-py without the calls, a MIG slice) every
figure is None with the reason, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

__all__ = ["GPM_FIELDS", "GPM_METRICS", "GPM_MIN_INTERVAL_S", "GpmReader", "summarize_gpm"]

GPM_METRICS: dict[str, str] = {
    "sm_active": "NVML_GPM_METRIC_SM_UTIL",
    "sm_occupancy": "NVML_GPM_METRIC_SM_OCCUPANCY",
    "tensor_active": "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    "dram_bw": "NVML_GPM_METRIC_DRAM_BW_UTIL",
}
"""Our name -> the pynvml constant of its metric id. GpuSummary and GpuFigures hold `<name>_mean_pct`."""

GPM_FIELDS = tuple(f"{name}_mean_pct" for name in GPM_METRICS)
"""The GpuSummary and GpuFigures fields of the GPM figures, one per metric."""

GPM_MIN_INTERVAL_S = 0.1
"""NVML's GPM reference asks for two samples more than 100 ms apart (its counters refresh at that rate): at a
faster sampler rate, GPM is read at every tick that is at least this far from the last GPM sample."""

_API = ("nvmlGpmQueryDeviceSupport", "nvmlGpmSampleAlloc", "nvmlGpmSampleGet", "nvmlGpmSampleFree",
        "nvmlGpmMetricsGet", "c_nvmlGpmMetricsGet_t", "NVML_GPM_METRICS_GET_VERSION", *GPM_METRICS.values())
"""The pynvml names used here; nvidia-ml-py releases before GPM lack them."""


def _error_text(nvml: Any, code: int) -> str:
    """NVML's message for a return code, as pynvml's NVMLError words it."""
    try:
        return str(nvml.NVMLError(code))
    except Exception:  # noqa: BLE001 - only the wording is at stake
        return f"NVML return code {code}"


class GpmReader:
    """GPM samples of one device into two buffers used in turn; each sample after the first gives the metrics
    over the interval since the one before. Not thread-safe: one sampler thread owns it. `close()` frees the
    buffers."""

    def __init__(self, nvml: Any, handle: Any, buffers: tuple[Any, Any]) -> None:
        self._nvml = nvml
        self._handle = handle
        self._buffers = buffers
        self._ids = {name: int(getattr(nvml, constant)) for name, constant in GPM_METRICS.items()}
        self._next = 0
        self._have_previous = False

    @staticmethod
    def open(nvml: Any, handle: Any) -> tuple[Optional["GpmReader"], Optional[str]]:
        """(reader, None) where this device has GPM, else (None, why)."""
        missing = [name for name in _API if not hasattr(nvml, name)]
        if missing:
            version = getattr(nvml, "__version__", None) or "this version"
            return None, f"nvidia-ml-py {version} has no GPM API ({missing[0]} missing)"
        try:
            support = nvml.nvmlGpmQueryDeviceSupport(handle)
        except Exception as exc:  # noqa: BLE001 - a driver before GPM raises NVMLError Function Not Found
            return None, f"nvmlGpmQueryDeviceSupport failed: {exc}"
        if not support.isSupportedDevice:
            return None, "GPM is not supported on this GPU (Hopper or newer, not a MIG slice)"
        buffers: list[Any] = []
        try:
            for _ in range(2):
                buffers.append(nvml.nvmlGpmSampleAlloc())
        except nvml.NVMLError as exc:
            for buffer in buffers:
                nvml.nvmlGpmSampleFree(buffer)
            return None, f"nvmlGpmSampleAlloc failed: {exc}"
        return GpmReader(nvml, handle, (buffers[0], buffers[1])), None

    def reset(self) -> None:
        """Forget the last sample: the next one starts a new series (a new window)."""
        self._have_previous = False

    def sample(self) -> Optional[dict[str, tuple[Optional[float], Optional[str]]]]:
        """Take a sample; None for the first of a series, else per metric (value %, None) or (None, why) over the
        interval since the previous sample. Raises (nvml.NVMLError) when the sample or the computation fails: the
        sampler then turns GPM off."""
        nvml = self._nvml
        previous, current = self._buffers[1 - self._next], self._buffers[self._next]
        nvml.nvmlGpmSampleGet(self._handle, current)
        self._next = 1 - self._next
        if not self._have_previous:
            self._have_previous = True
            return None
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(self._ids)
        request.sample1, request.sample2 = previous, current
        for index, metric_id in enumerate(self._ids.values()):
            request.metrics[index].metricId = metric_id
        nvml.nvmlGpmMetricsGet(request)
        values: dict[str, tuple[Optional[float], Optional[str]]] = {}
        for index, name in enumerate(self._ids):
            metric = request.metrics[index]
            if metric.nvmlReturn != 0:  # NVML_SUCCESS: each metric carries its own return code
                values[name] = (None, f"nvmlGpmMetricsGet {GPM_METRICS[name]}: "
                                      f"{_error_text(nvml, metric.nvmlReturn)}")
            elif not math.isfinite(metric.value):
                values[name] = (None, f"nvmlGpmMetricsGet {GPM_METRICS[name]}: not a number ({metric.value})")
            else:
                values[name] = (float(metric.value), None)
        return values

    def close(self) -> None:
        for buffer in self._buffers:
            try:
                self._nvml.nvmlGpmSampleFree(buffer)
            except self._nvml.NVMLError:
                pass  # at shutdown: nothing left to do about it
        self._buffers = ()


def summarize_gpm(series: Mapping[str, Sequence[tuple[float, float, float]]], *, disabled: Mapping[str, str],
                  unavailable_reason: Optional[str], duration_s: float
                  ) -> tuple[dict[str, Optional[float]], Optional[str]]:
    """({`<name>_mean_pct`: value or None}, why any is None) of one window. `series`: per metric, (start s, end s,
    value %) per interval between GPM samples; the mean weights each interval by its length (the last one before
    stop may be short). A metric that failed in any interval of the window (`disabled`) has no figure: the rest
    would cover part of the window only."""
    means: dict[str, Optional[float]] = dict.fromkeys(GPM_FIELDS)
    if unavailable_reason is not None:
        return means, unavailable_reason
    missing = []
    for name in GPM_METRICS:
        intervals = series.get(name) or ()
        total_s = math.fsum(end - start for start, end, _ in intervals)
        if name in disabled:
            missing.append(f"{name}: {disabled[name]}")
        elif total_s <= 0:
            missing.append(f"{name}: no two GPM samples {GPM_MIN_INTERVAL_S * 1000:.0f} ms apart in the "
                           f"{duration_s:.3g} s window")
        else:
            means[f"{name}_mean_pct"] = math.fsum((end - start) * value for start, end, value in intervals) / total_s
    return means, "; ".join(missing) or None
