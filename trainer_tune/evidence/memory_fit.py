"""Peak memory, predicted: per series of settings, a straight line through the measured peaks against the
micro-batch size, and the largest micro-batch that line puts under the memory limit.

A series is the settings that share every flag (precision, compile, checkpointing, ...): only the micro-batch
(and the accumulation, which adds no activations) changes along it. What a step holds is the model's state
(weights, gradients, optimizer moments: the same at every micro-batch) plus the activations of one micro-batch
(proportional to it), so peak = a + b x micro_batch_size; a least-squares line over the measured settings, from
two distinct micro-batch sizes on. strategy=power skips a setting this line puts over the limit (run/sweep.py); every
strategy reports the prediction beside the measured peaks (verdict.decide attaches it, the sinks render it).

Pure: the limit arrives from the caller (run/sweep.py reads the device), the peaks from aggregated results.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from trainer_tune.config.flags import format_flag
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.platform.units import format_bytes


@dataclass(frozen=True)
class MemoryLimit:
    """The memory one rank may use: `fraction` of `capacity_bytes`."""

    capacity_bytes: int
    fraction: float
    fraction_key: str
    """The config key the fraction comes from: train.max_memory_fraction when set, else
    recommend.max_memory_fraction."""
    capacity_source: str
    """What capacity_bytes is, for people: a CUDA device's total memory, or on CPUs the host memory available
    at the start of the sweep shared by the node's ranks."""

    @property
    def limit_bytes(self) -> float:
        return self.capacity_bytes * self.fraction

    def describe(self) -> str:
        return f"limit {format_bytes(self.capacity_bytes)} x {self.fraction:g}"

    def to_json_dict(self) -> dict[str, Any]:
        return {"capacity_bytes": self.capacity_bytes, "fraction": self.fraction, "fraction_key": self.fraction_key,
                "capacity_source": self.capacity_source, "limit_bytes": self.limit_bytes}


@dataclass(frozen=True)
class MemoryFit:
    """One series' line peak = intercept + slope x micro_batch_size, and what it predicts under the limit."""

    series: str
    """The flags the series' settings share, where series differ ("precision=bf16"); "all settings" with one."""
    flags: dict[str, Any]
    source: str
    """figures' memory source of every fitted peak (a fit never mixes sources)."""
    points: tuple[tuple[int, int], ...]
    """(micro_batch_size, measured peak bytes) of each fitted setting, by micro-batch."""
    labels: tuple[str, ...]
    """Each fitted setting's label, in the order of `points`."""
    intercept_bytes: float
    slope_bytes: float
    """Bytes per sample of micro-batch: the activations of one sample (and what else grows with it)."""
    limit: Optional[MemoryLimit]
    largest_micro_batch_size: Optional[int]
    """The largest micro-batch predicted to fit under the limit; None with `note`."""
    note: Optional[str] = None
    """Why there is no largest micro-batch (memory does not grow with the micro-batch, no limit known, ...)."""

    def predict_bytes(self, micro_batch_size: int) -> float:
        return self.intercept_bytes + self.slope_bytes * micro_batch_size

    def describe(self) -> str:
        sizes = ", ".join(str(m) for m in sorted({m for m, _ in self.points}))
        return (f"fit over {sizes}: {format_bytes(round(self.intercept_bytes))} + "
                f"{format_bytes(round(self.slope_bytes))} x mbs")

    def rows(self) -> list[tuple[str, int, int, float]]:
        """(label, micro_batch_size, measured peak bytes, the line's peak bytes) of each fitted setting."""
        return [(label, m, measured, self.predict_bytes(m)) for label, (m, measured) in zip(self.labels, self.points)]

    def verdict(self) -> str:
        """One line for people: the series, the line, and the largest micro-batch predicted to fit."""
        head = f"{self.series}: {self.describe()}"
        if self.largest_micro_batch_size is None:
            return f"{head}; no largest micro-batch: {self.note}"
        assert self.limit is not None
        return (f"{head}; largest micro-batch predicted to fit: {self.largest_micro_batch_size} "
                f"({self.limit.describe()}, {self.limit.fraction_key})")

    def to_json_dict(self) -> dict[str, Any]:
        return {"series": self.series, "flags": self.flags, "source": self.source,
                "points": [list(p) for p in self.points], "labels": list(self.labels), "intercept_bytes": self.intercept_bytes,
                "slope_bytes": self.slope_bytes, "limit": self.limit.to_json_dict() if self.limit else None,
                "largest_micro_batch_size": self.largest_micro_batch_size, "note": self.note}


def _series_key(flags: Mapping[str, Any]) -> str:
    return json.dumps(dict(flags), sort_keys=True, default=str)


def _series_names(flag_sets: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each series named by the flags that differ between series (the shared ones say nothing)."""
    differing = sorted({k for f in flag_sets for k in f if any(g.get(k) != f.get(k) for g in flag_sets)})
    return [" ".join(f"{k}={format_flag(f.get(k))}" for k in differing) or "all settings" for f in flag_sets]


def least_squares(points: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through (x, y) points with at least two distinct x."""
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    mean_x, mean_y = math.fsum(xs) / len(xs), math.fsum(ys) / len(ys)
    spread = math.fsum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        raise ValueError("a line needs two distinct micro-batch sizes")
    slope = math.fsum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
    return mean_y - slope * mean_x, slope


def fit_memory(results: Sequence[SettingEstimate], *, limit: Optional[MemoryLimit]) -> list[MemoryFit]:
    """A fit per series with peaks measured at two or more micro-batch sizes (settings that finished cleanly
    with a peak memory figure; a series whose peaks come from different sources is fitted on the commonest)."""
    groups: dict[str, list[SettingEstimate]] = {}
    for r in results:
        if r.ok and r.peak_memory_bytes is not None and r.peak_memory_source is not None:
            groups.setdefault(_series_key(r.flags.as_dict()), []).append(r)
    fits: list[MemoryFit] = []
    usable: list[tuple[dict[str, Any], str, list[SettingEstimate]]] = []
    for members in groups.values():
        sources = [r.peak_memory_source for r in members]
        source = max(set(sources), key=sources.count)  # type: ignore[arg-type]
        fitted = sorted((r for r in members if r.peak_memory_source == source),
                        key=lambda r: (r.micro_batch_size, r.grad_accum))
        if len({r.micro_batch_size for r in fitted}) >= 2:
            usable.append((members[0].flags.as_dict(), str(source), fitted))
    for (flags, source, fitted), name in zip(usable, _series_names([u[0] for u in usable])):
        points = [(r.micro_batch_size, int(r.peak_memory_bytes)) for r in fitted]  # type: ignore[arg-type]
        intercept, slope = least_squares(points)
        largest: Optional[int] = None
        note: Optional[str] = None
        if slope <= 0:
            note = "peak memory does not grow with the micro-batch over the measured settings"
        elif limit is None:
            note = "no memory limit known"
        else:
            largest = math.floor((limit.limit_bytes - intercept) / slope)
            if largest < 1:
                largest, note = None, f"not even micro-batch 1 is predicted to fit ({limit.describe()})"
        fits.append(MemoryFit(series=name, flags=flags, source=source, points=tuple(points),
                              labels=tuple(r.label for r in fitted),
                              intercept_bytes=intercept, slope_bytes=slope, limit=limit,
                              largest_micro_batch_size=largest, note=note))
    return fits


def fit_for(flags: Mapping[str, Any], fits: Sequence[MemoryFit]) -> Optional[MemoryFit]:
    key = _series_key(flags)
    return next((f for f in fits if _series_key(f.flags) == key), None)


def predicted_not_to_fit(micro_batch_size: int, flags: Mapping[str, Any],
                         fits: Sequence[MemoryFit]) -> Optional[str]:
    """Why a setting is predicted not to fit under the limit (the reason it is skipped with), or None."""
    fit = fit_for(flags, fits)
    if fit is None or fit.limit is None or fit.slope_bytes <= 0:
        return None
    predicted = fit.predict_bytes(micro_batch_size)
    if predicted <= fit.limit.limit_bytes:
        return None
    return (f"predicted peak memory {format_bytes(round(predicted))} > {fit.limit.describe()} "
            f"({fit.limit.fraction_key}; {fit.describe()})")
