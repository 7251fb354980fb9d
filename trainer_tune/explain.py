"""Why settings differ, in measured facts only: per-sample time and scaling efficiency, the figures beside each
point, and the winner for each objective (the decision matrix).

Pure: finished TrialResults in, one frozen `Explanations` out, attached to the Recommendation; the sinks only
present it. A sentence here states what was measured side by side ("GPU utilization 35% vs 100% at 1x1"),
never a cause nobody measured ("a PCIe bottleneck").

Scaling. A *series* is a set of finished settings that differ in one knob only: the micro-batch (same
grad_accum and flags) or the accumulation (same micro-batch and flags). Within a series, linear scaling from
the smallest global batch means the step time grows in proportion to the batch, so a sample costs the same:

    per_sample_time_s = 1 / samples_per_s                                          (whole job, all ranks)
    efficiency        = per_sample_time_s(reference) / per_sample_time_s(point)

Above 1 a sample is cheaper than at the reference (super-linear), below 1 dearer (sub-linear). With the same
samples per unit of the decision's rate (always, in samples; in tokens unless padding differs), efficiency is
the ratio of the two settings' rates, so it and its 95% interval come from
the one comparison rule the decision uses (recommend.compare, passed in as `compare`: paired over rounds); a
point is flagged only when that interval stays on one side of 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from trainer_tune.figures import describe_memory_source
from trainer_tune.flags import FLAG_SPECS, FlagSpec, format_flag
from trainer_tune.results import TrialResult
from trainer_tune.units import format_bytes

if TYPE_CHECKING:
    from trainer_tune.recommend import Comparison

Compare = Callable[[TrialResult, TrialResult], "Comparison"]

SUPER_LINEAR = "super-linear"
SUB_LINEAR = "sub-linear"
LINEAR = "linear within noise"
REFERENCE = "reference"
NO_INTERVAL = "no interval"
"""A rate's interval is missing (an old journal line), so noise cannot be told from a real difference."""


@dataclass(frozen=True)
class ScalingPoint:
    trial_key: str
    label: str
    series: str
    """What the series holds fixed, e.g. `grad_accum=1` (the micro-batch varies) or `micro_batch_size=2`."""
    varies: str
    """The knob that varies along the series: micro_batch_size or grad_accum."""
    micro_batch_size: int
    grad_accum: int
    global_batch_size: int
    reference_label: str
    """The series' smallest global batch, against which efficiency is measured."""
    per_sample_time_s: float
    per_sample_time_s_ci95: Optional[tuple[float, float]]
    efficiency: float
    efficiency_ci95: Optional[tuple[float, float]]
    scaling: str
    """SUPER_LINEAR, SUB_LINEAR, LINEAR, REFERENCE or NO_INTERVAL."""
    gpu_util_mean_pct: Optional[float]
    memory_bytes: Optional[int]
    """TrialResult.peak_memory_bytes."""
    exposed_comm_fraction: Optional[float]
    """Share of the synced step that the gradient all-reduce adds (TrialResult.comm); None when not measured."""
    exposed_comm_within_noise: Optional[bool]
    """The sync vs no-sync gap is inside the synced steps' own spread: the share is not distinguishable from 0."""


@dataclass(frozen=True)
class ObjectiveWinner:
    objective: str
    """max_throughput, min_memory_bytes, min_energy_j_per_token, or max_goodput (where goodput was measured)."""
    trial_key: Optional[str]
    label: Optional[str]
    value: Optional[float]
    """The winner's figure in the objective's unit; None (with the reason in `note`) when not measured."""
    value_ci95: Optional[tuple[float, float]]
    tied_with: tuple[str, ...]
    """Labels of the settings that measurement cannot tell apart from the winner."""
    note: str


@dataclass(frozen=True)
class Explanations:
    points: tuple[ScalingPoint, ...]
    facts: tuple[str, ...]
    """Plain-language statements, each built only from measured figures."""
    matrix: tuple[ObjectiveWinner, ...]

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


def per_sample_time_s(result: TrialResult) -> float:
    assert result.samples_per_s, "only finished trials have a per-sample time"
    return 1.0 / result.samples_per_s


def per_sample_time_interval_s(result: TrialResult) -> Optional[tuple[float, float]]:
    """The per-sample time's interval from the decision rate's: samples per unit of that rate scale it."""
    if result.throughput_ci95 is None or not result.throughput_per_s or not result.samples_per_s:
        return None
    samples_per_unit = result.samples_per_s / result.throughput_per_s
    low, high = result.throughput_ci95
    return 1.0 / (high * samples_per_unit), 1.0 / (low * samples_per_unit)


def varying_flags(results: Sequence[TrialResult]) -> tuple[FlagSpec, ...]:
    """The flags whose value differs between some of `results`: what tells settings apart besides the batch."""
    return tuple(spec for spec in FLAG_SPECS if len({r.flags.get(spec.field_name) for r in results}) > 1)


def flags_text(result: TrialResult, flags: Sequence[FlagSpec]) -> str:
    """`bucket_cap_mb=1` for each of `flags`, read from result.flags (labels are for people, never parsed)."""
    return " ".join(f"{spec.field_name}={format_flag(result.flags.get(spec.field_name))}" for spec in flags)


def _series(finished: Sequence[TrialResult]) -> list[tuple[str, str, list[TrialResult]]]:
    """(name, varying knob, members by global batch) for every series of at least two finished settings.
    Settings that differ in a flag are never in one series."""
    groups: dict[tuple[str, str], list[TrialResult]] = {}
    differing = varying_flags(finished)
    for r in finished:
        flags = flags_text(r, differing)
        for varies, fixed in (("micro_batch_size", f"grad_accum={r.grad_accum}"),
                              ("grad_accum", f"micro_batch_size={r.micro_batch_size}")):
            groups.setdefault((varies, f"{fixed} {flags}".strip()), []).append(r)
    def order(group: tuple[tuple[str, str], list[TrialResult]]) -> tuple:
        (varies, name), members = group
        fixed = members[0].grad_accum if varies == "micro_batch_size" else members[0].micro_batch_size
        return varies != "micro_batch_size", fixed, name

    return [(name, varies, sorted(members, key=lambda r: (r.global_batch_size, r.index)))
            for (varies, name), members in sorted(groups.items(), key=order) if len(members) > 1]


def _classify(interval: Optional[tuple[float, float]]) -> str:
    if interval is None:
        return NO_INTERVAL
    if interval[0] > 1.0:
        return SUPER_LINEAR
    if interval[1] < 1.0:
        return SUB_LINEAR
    return LINEAR


def _point(r: TrialResult, ref: TrialResult, *, series: str, varies: str, compare: Compare) -> ScalingPoint:
    time_s, ref_time_s = per_sample_time_s(r), per_sample_time_s(ref)
    interval, ref_interval = per_sample_time_interval_s(r), per_sample_time_interval_s(ref)
    is_ref = r.trial_key == ref.trial_key
    # Same samples per unit of rate: the efficiency is the rate ratio, so it and its interval are the comparison's.
    comparison = None if is_ref else compare(r, ref)
    efficiency_ci = comparison.interval if comparison is not None else None
    comm = r.comm
    return ScalingPoint(
        trial_key=r.trial_key, label=r.label, series=series, varies=varies, micro_batch_size=r.micro_batch_size,
        grad_accum=r.grad_accum, global_batch_size=r.global_batch_size, reference_label=ref.label,
        per_sample_time_s=time_s, per_sample_time_s_ci95=interval,
        efficiency=1.0 if comparison is None else comparison.ratio, efficiency_ci95=efficiency_ci,
        scaling=REFERENCE if is_ref else _classify(efficiency_ci),
        gpu_util_mean_pct=r.gpu.util_mean_pct if r.gpu else None, memory_bytes=r.peak_memory_bytes,
        exposed_comm_fraction=comm.exposed_comm_fraction if comm else None,
        exposed_comm_within_noise=comm.within_noise if comm else None)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _beside(p: ScalingPoint, ref: ScalingPoint) -> str:
    parts = []
    if p.gpu_util_mean_pct is not None and ref.gpu_util_mean_pct is not None:
        parts.append(f"GPU utilization {p.gpu_util_mean_pct:.0f}% vs {ref.gpu_util_mean_pct:.0f}% at {ref.label}")
    if p.memory_bytes is not None and ref.memory_bytes is not None:
        parts.append(f"peak memory {format_bytes(p.memory_bytes)} vs {format_bytes(ref.memory_bytes)}")
    if p.exposed_comm_fraction is not None and not p.exposed_comm_within_noise:
        parts.append(f"exposed all-reduce {p.exposed_comm_fraction:.0%} of the step")
    return f"; beside it: {', '.join(parts)}" if parts else ""


def _scaling_facts(points: Sequence[ScalingPoint]) -> list[str]:
    refs = {(p.series, p.varies): p for p in points if p.scaling == REFERENCE}
    facts = []
    for p in points:
        if p.scaling not in (SUPER_LINEAR, SUB_LINEAR):
            continue
        ref = refs[(p.series, p.varies)]
        low, high = p.efficiency_ci95  # type: ignore[misc]
        cheaper = "cheaper" if p.scaling == SUPER_LINEAR else "dearer"
        facts.append(f"{p.label} is {p.scaling} against {ref.label} ({p.series}): a sample takes "
                     f"{_ms(p.per_sample_time_s)} vs {_ms(ref.per_sample_time_s)}, efficiency {p.efficiency:.2f} "
                     f"(95% CI {low:.2f} to {high:.2f}), {cheaper} per sample beyond noise{_beside(p, ref)}")
    return facts


def _trial_facts(finished: Sequence[TrialResult]) -> list[str]:
    facts = []
    noisy = []
    for r in finished:
        comm = r.comm
        if comm is None:
            continue
        if comm.within_noise:
            # A gap inside the synced steps' own spread is no evidence of communication cost: listed, not stated.
            noisy.append(f"{r.label} ({comm.exposed_comm_fraction:.0%})")
            continue
        facts.append(f"exposed all-reduce takes {comm.exposed_comm_fraction:.0%} of the step at {r.label} "
                     f"(median step {_ms(comm.step_time_sync_s)} with gradient sync, "
                     f"{_ms(comm.step_time_no_sync_s)} without: {_ms(comm.exposed_comm_s)})")
    if noisy:
        facts.append(f"the exposed all-reduce share is within the synced steps' noise, so not distinguishable from "
                     f"0, at {', '.join(noisy)}")
    for r in finished:
        if r.num_outlier_steps:
            facts.append(f"{r.label}: {r.num_outlier_steps} of {r.num_measured_steps} measured steps were outliers "
                         f"(slower than median + 5 MAD); they are kept in every figure")
    return facts


def _max_throughput(finished: Sequence[TrialResult], compare: Compare) -> ObjectiveWinner:
    if not finished:
        return ObjectiveWinner("max_throughput", None, None, None, None, (), "no setting finished cleanly")
    best = max(finished, key=lambda r: r.throughput_per_s)  # type: ignore[arg-type,return-value]
    tied = tuple(r.label for r in finished if r is not best and compare(r, best).outcome.value in ("tie", "unknown"))
    note = (f"the measurements cannot order {', '.join(tied)} against the winner (recommend.compare): a tie" if tied
            else "every other setting is slower than the winner beyond noise")
    ci = tuple(best.throughput_ci95) if best.throughput_ci95 else None
    return ObjectiveWinner("max_throughput", best.trial_key, best.label, best.throughput_per_s, ci, tied,  # type: ignore
                           note)


def _max_goodput(finished: Sequence[TrialResult], compare: Compare) -> list[ObjectiveWinner]:
    """The setting with the most goodput (noise_scale.with_goodput put it on the settings); no row without it."""
    measured = [r for r in finished if r.goodput_per_s is not None]
    if not measured:
        return []
    best = max(measured, key=lambda r: r.goodput_per_s)  # type: ignore[arg-type,return-value]
    tied = tuple(r.label for r in measured if r is not best
                 and compare(r, best, goodput=True).outcome.value in ("tie", "unknown"))  # type: ignore[call-arg]
    note = ("throughput x statistical efficiency from the sweep's gradient noise scale (recommend.objective="
            "goodput); B_noise's own uncertainty is not in the tie test")
    return [ObjectiveWinner("max_goodput", best.trial_key, best.label, best.goodput_per_s, None, tied, note)]


def _min_memory(finished: Sequence[TrialResult]) -> ObjectiveWinner:
    measured = [r for r in finished if r.peak_memory_bytes is not None]
    if not measured:
        notes = sorted({r.peak_memory_note for r in finished if r.peak_memory_note})
        why = "; ".join(notes) if finished and notes else "no setting finished cleanly"
        return ObjectiveWinner("min_memory_bytes", None, None, None, None, (), f"not measured: {why}")
    # Equal peaks are a tie (allocators round to blocks); the faster setting wins it.
    best = min(measured, key=lambda r: (r.peak_memory_bytes, -r.throughput_per_s))  # type: ignore
    value = best.peak_memory_bytes
    tied = tuple(r.label for r in measured if r is not best and r.peak_memory_bytes == value)
    note = "peak memory " + describe_memory_source(best.peak_memory_source)
    if len(measured) < len(finished):
        note += f"; measured for {len(measured)} of {len(finished)} finished settings"
    return ObjectiveWinner("min_memory_bytes", best.trial_key, best.label, float(value),  # type: ignore[arg-type]
                           None, tied, note)


def _min_energy(finished: Sequence[TrialResult]) -> ObjectiveWinner:
    measured = [r for r in finished if r.gpu is not None and r.gpu.energy_j_per_token is not None]
    if not measured:
        notes = sorted({r.gpu_note or "GPU figures were not recorded" for r in finished if r.gpu is None})
        if not finished:
            why = "no setting finished cleanly"
        elif all(r.tokens_per_s is None for r in finished):
            why = "the batches carry no tokens, so there is no energy per token"
        elif notes:
            why = "; ".join(notes)
        else:
            sources = sorted({str(r.gpu.energy_source) for r in finished})  # type: ignore[union-attr]
            why = f"the GPUs reported no energy reading (energy source: {', '.join(sources)})"
        return ObjectiveWinner("min_energy_j_per_token", None, None, None, None, (), f"not measured: {why}")
    best = min(measured, key=lambda r: r.gpu.energy_j_per_token)  # type: ignore[union-attr]
    note = "whole-job energy over the measured steps; no interval (one energy reading per window)"
    if len(measured) < len(finished):
        note += f"; measured for {len(measured)} of {len(finished)} finished settings"
    value = best.gpu.energy_j_per_token  # type: ignore[union-attr]
    return ObjectiveWinner("min_energy_j_per_token", best.trial_key, best.label, value, None, (), note)


def explain(results: Sequence[TrialResult], *, compare: Compare) -> Explanations:
    finished = sorted((r for r in results if r.ok and r.throughput_per_s), key=lambda r: r.index)
    points: list[ScalingPoint] = []
    for name, varies, members in _series(finished):
        points += [_point(r, members[0], series=name, varies=varies, compare=compare) for r in members]
    facts = _scaling_facts(points) + _trial_facts(finished)
    if finished and not points:
        facts.insert(0, "no scaling to compare: that needs two finished settings that differ only in micro-batch "
                        "or only in grad_accum")
    return Explanations(points=tuple(points), facts=tuple(facts),
                        matrix=(_max_throughput(finished, compare), _min_memory(finished), _min_energy(finished),
                                *_max_goodput(finished, compare)))
