"""A stand-in for the `pynvml` module (nvidia-ml-py) with GPM, for a machine without a GPU.

It mirrors the part of pynvml that gpu_sampler.py and gpm.py call: the same function names and parameters
(tests/unit/test_gpm.py checks them against the installed pynvml), pynvml's own constants and GPM structs
(`c_nvmlGpmMetricsGet_t`, sample buffers that are real `c_nvmlGpmSample_t` pointers: a caller that puts the
wrong thing in a field fails here as it would on a GPU), and an NVMLError built from a return code whose str()
is NVML's message.

Like the hardware, a GPM sample is a snapshot of counters: each metric accumulates its current activity (%)
over time, and nvmlGpmMetricsGet returns the average activity between two snapshots. Tests set the activity
with `set_activity`; the clock is time.monotonic, as the sampler's.
"""

from __future__ import annotations

import ctypes
import time
from types import SimpleNamespace
from typing import Any, Optional

import pynvml

GPM_FUNCTIONS = ("nvmlGpmQueryDeviceSupport", "nvmlGpmSampleAlloc", "nvmlGpmSampleGet", "nvmlGpmSampleFree",
                 "nvmlGpmMetricsGet")
GPM_NAMES = (*GPM_FUNCTIONS, "c_nvmlGpmMetricsGet_t", "NVML_GPM_METRICS_GET_VERSION")

# pynvml's constants, so codes and ids mean what they mean on a GPU.
NVML_SUCCESS = pynvml.NVML_SUCCESS
NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
NVML_ERROR_FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
NVML_ERROR_INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT

_MESSAGES = {
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
}


class NVMLError(Exception):
    """pynvml.NVMLError's shape: built from a return code (`.value`), str() is NVML's message."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"Unknown Error {self.value}")


class FakeNvml:
    """One or more GPUs with fixed utilization, memory and power, and GPM counters driven by `set_activity`.

    gpm_api=False: an nvidia-ml-py before GPM (the names are missing). gpm_driver=False: a driver without GPM
    (nvmlGpmQueryDeviceSupport raises Function Not Found, as pynvml does when the library lacks the symbol).
    gpm_supported=False: a GPU before Hopper. metric_errors: metric id -> the return code nvmlGpmMetricsGet puts
    in that metric. sample_fails_after: nvmlGpmSampleGet raises GPU is lost from that call on (0-based).
    """

    def __init__(self, *, num_devices: int = 2, utilization_pct: int = 97, gpm_api: bool = True,
                 gpm_driver: bool = True, gpm_supported: bool = True, metric_errors: Optional[dict[int, int]] = None,
                 sample_fails_after: Optional[int] = None) -> None:
        self.num_devices = num_devices
        self.utilization_pct = utilization_pct
        self.gpm_api = gpm_api
        self.gpm_driver = gpm_driver
        self.gpm_supported = gpm_supported
        self.metric_errors = dict(metric_errors or {})
        self.sample_fails_after = sample_fails_after
        self.calls: dict[str, int] = {}
        self.live_buffers: set[int] = set()
        self.metrics_get_versions: list[int] = []
        # Per device: metric id -> (activity %, accumulated %-seconds, time of the last change).
        self._activity: dict[int, dict[int, float]] = {}
        self._integral: dict[int, dict[int, float]] = {}
        self._since_s: dict[int, float] = {}
        self._samples: dict[int, tuple[int, float, dict[int, float]]] = {}  # buffer address -> snapshot
        self._keep: list[Any] = []  # the structs behind the buffers must outlive them
        for device in range(num_devices):
            self._activity[device] = {}
            self._integral[device] = {}
            self._since_s[device] = time.monotonic()
        self.NVMLError = NVMLError
        for name in dir(pynvml):  # constants and structs, not functions: those are this class's methods
            if name.startswith(("NVML_", "c_nvml", "struct_c_nvml")) and not hasattr(self, name):
                setattr(self, name, getattr(pynvml, name))

    def __getattribute__(self, name: str) -> Any:
        if name in GPM_NAMES and not object.__getattribute__(self, "gpm_api"):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    def _count(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name] - 1

    # --- the activity the GPM counters integrate ---------------------------------------------------------------
    def set_activity(self, device: int, **percent_by_constant: float) -> None:
        """E.g. set_activity(0, NVML_GPM_METRIC_SM_UTIL=23.0): from now on, until the next change."""
        now_s = time.monotonic()
        self._accumulate(device, now_s)
        for constant, percent in percent_by_constant.items():
            self._activity[device][getattr(pynvml, constant)] = percent

    def _accumulate(self, device: int, now_s: float) -> None:
        elapsed_s = now_s - self._since_s[device]
        for metric_id, percent in self._activity[device].items():
            self._integral[device][metric_id] = self._integral[device].get(metric_id, 0.0) + percent * elapsed_s
        self._since_s[device] = now_s

    # --- NVML: init, devices, the plain readings ----------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._count("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        return self.num_devices

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if not 0 <= index < self.num_devices:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return ("handle", index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return f"GPU-fake-{handle[1]}"

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        self._count("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=self.utilization_pct, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: Any = None) -> Any:
        return SimpleNamespace(used=2**30, total=80 * 2**30, free=79 * 2**30)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return 300_000

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return int(time.monotonic() * 300_000)

    # --- NVML GPM ---------------------------------------------------------------------------------------------
    def nvmlGpmQueryDeviceSupport(self, device: Any) -> Any:
        if not self.gpm_driver:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = int(self.gpm_supported)
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        self._count("nvmlGpmSampleAlloc")
        target = pynvml.struct_c_nvmlGpmSample_t()
        self._keep.append(target)
        buffer = pynvml.c_nvmlGpmSample_t(target)
        self.live_buffers.add(ctypes.addressof(target))
        return buffer

    def nvmlGpmSampleFree(self, gpmSample: Any) -> None:
        address = ctypes.addressof(gpmSample.contents)
        if address not in self.live_buffers:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)  # freed twice, or never allocated here
        self.live_buffers.discard(address)
        self._samples.pop(address, None)

    def nvmlGpmSampleGet(self, device: Any, gpmSample: Any) -> Any:
        n = self._count("nvmlGpmSampleGet")
        if self.sample_fails_after is not None and n >= self.sample_fails_after:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if not self.gpm_supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if not isinstance(gpmSample, pynvml.c_nvmlGpmSample_t):
            raise TypeError(f"gpmSample must be a c_nvmlGpmSample_t, got {type(gpmSample).__name__}")
        address = ctypes.addressof(gpmSample.contents)
        if address not in self.live_buffers:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        index = device[1]
        now_s = time.monotonic()
        self._accumulate(index, now_s)
        self._samples[address] = (index, now_s, dict(self._integral[index]))
        return gpmSample

    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
        if not isinstance(metricsGet, pynvml.c_nvmlGpmMetricsGet_t):
            raise TypeError(f"metricsGet must be a c_nvmlGpmMetricsGet_t, got {type(metricsGet).__name__}")
        self.metrics_get_versions.append(metricsGet.version)
        if metricsGet.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        first = self._samples.get(ctypes.addressof(metricsGet.sample1.contents))
        second = self._samples.get(ctypes.addressof(metricsGet.sample2.contents))
        if first is None or second is None or first[0] != second[0] or second[1] <= first[1]:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        elapsed_s = second[1] - first[1]
        for index in range(metricsGet.numMetrics):
            metric = metricsGet.metrics[index]
            code = self.metric_errors.get(metric.metricId, NVML_SUCCESS)
            metric.nvmlReturn = code
            metric.value = 0.0 if code != NVML_SUCCESS else \
                (second[2].get(metric.metricId, 0.0) - first[2].get(metric.metricId, 0.0)) / elapsed_s
        return metricsGet
