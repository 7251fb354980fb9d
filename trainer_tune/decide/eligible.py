"""The one rule of what may be chosen: `eligible(setting, args)` is None, or why the setting may not be chosen.

The verdict, the race, the search strategies, goodput advice and the decision matrix all ask this function; none
keeps a rule of its own. A setting that is not eligible keeps its figures (they are shown), it is only never picked.
"""

from __future__ import annotations

from typing import Optional, Sequence

from trainer_tune.config.schema import RecommendArgs
from trainer_tune.measure.figures import describe_memory_source
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.evidence.memory_fit import MemoryLimit
from trainer_tune.platform.units import format_bytes

FAILED = "failed"
NO_RATE = "no rate"
OVER_MEMORY = "over memory"
OVER_LATENCY = "over the latency budget"
NOT_COMPILED = "did not stay compiled"
TOO_FEW_WINDOWS = "too few windows"
KINDS = (FAILED, NO_RATE, OVER_MEMORY, OVER_LATENCY, NOT_COMPILED, TOO_FEW_WINDOWS)
"""What `ineligibility` names as the kind of each reason, in the order the rule checks them."""


def over_latency_budget(setting: SettingEstimate, max_batch_latency_ms: float) -> Optional[str]:
    """Why `setting` breaks the p99 budget, or None when it meets it (a setting without latency figures, a training
    trial, meets it)."""
    if setting.latency is None or setting.latency.p99_ms <= max_batch_latency_ms:
        return None
    return (f"over the latency budget: p99 {setting.latency.p99_ms:,.1f} ms > recommend.max_batch_latency_ms="
            f"{max_batch_latency_ms:g} (never chosen)")


def over_memory(setting: SettingEstimate, max_memory_fraction: float) -> Optional[str]:
    """Why `setting`'s peak memory is over recommend.max_memory_fraction of its device, or None (also when either
    figure is unknown: on a CPU there is no device memory to be a fraction of)."""
    memory, device_memory = setting.peak_memory_bytes, setting.device_memory_bytes
    if memory is None or not device_memory or memory <= max_memory_fraction * device_memory:
        return None
    return (f"its peak memory is {memory / device_memory:.0%} of the device "
            f"({describe_memory_source(setting.peak_memory_source)}), above "
            f"recommend.max_memory_fraction={max_memory_fraction:g}")


def predicted_over_limit(predicted_peak_bytes: Optional[int], limit: Optional[MemoryLimit]) -> Optional[str]:
    """Why a setting predicted at `predicted_peak_bytes` (measure/memory_trace.py) is not built, or None (no
    prediction, no limit, or under it)."""
    if predicted_peak_bytes is None or limit is None or predicted_peak_bytes <= limit.limit_bytes:
        return None
    return (f"predicted peak {format_bytes(predicted_peak_bytes)} > limit {format_bytes(int(limit.limit_bytes))} "
            f"({limit.fraction_key}={limit.fraction:g} of {limit.capacity_source}); "
            f"sweep.trust_memory_prediction=false measures it anyway")


def ineligibility(setting: SettingEstimate, args: RecommendArgs, *, min_windows: int = 1) -> Optional[tuple[str, str]]:
    """(kind, reason) why `setting` may not be chosen, or None. `min_windows`: how many clean windows a setting
    needs; the verdict asks for 2 once any contender has them (one window says nothing about the next)."""
    if not setting.ok:
        return FAILED, f"did not finish cleanly ({setting.status})"
    if setting.throughput_per_s is None:
        return NO_RATE, "no rate was measured"
    memory = over_memory(setting, args.max_memory_fraction)
    if memory is not None:
        return OVER_MEMORY, memory
    if args.max_batch_latency_ms is not None:
        latency = over_latency_budget(setting, args.max_batch_latency_ms)
        if latency is not None:
            return OVER_LATENCY, latency
    not_compiled = setting.compile.why_not_compiled() if setting.compile is not None else None
    if not_compiled is not None:
        return NOT_COMPILED, not_compiled
    if len(setting.rates_by_round()) < min_windows:
        return TOO_FEW_WINDOWS, ("measured in one window only, which gives no interval, so not recommended over "
                                 "settings measured in several")
    return None


def eligible(setting: SettingEstimate, args: RecommendArgs, *, min_windows: int = 1) -> Optional[str]:
    """None when `setting` may be chosen, else why not (see ineligibility)."""
    found = ineligibility(setting, args, min_windows=min_windows)
    return None if found is None else found[1]


def eligible_only(settings: Sequence[SettingEstimate], args: RecommendArgs, *,
                  min_windows: int = 1) -> list[SettingEstimate]:
    """The settings that may be chosen, in their order."""
    return [s for s in settings if eligible(s, args, min_windows=min_windows) is None]
