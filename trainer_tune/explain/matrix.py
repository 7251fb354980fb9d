"""Why settings differ, in measured facts only: per-sample time and scaling efficiency, the figures beside each
point, and the winner for each objective (the decision matrix).

Pure: finished TrialResults in, one frozen `Explanations` out, attached to the Decision; the sinks only
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
the one comparison rule the decision uses (comparison.compare, passed in as `compare`: paired over rounds); a
point is flagged only when that interval stays on one side of 1.

The decision matrix. One row per objective, each ignoring the others, within the latency budget when one is set
(recommend.max_batch_latency_ms: a setting over it is picked by no row): the highest throughput (ties by
comparison.compare), the lowest p99 latency per batch (mode=inference only), the least energy per sample
(SettingEstimate.energy_j_per_sample), the least peak memory. Latency, energy and memory are point figures with no
interval: their rows say the measurements cannot tell whether the winner beats the runner-up beyond noise.
Unmeasured figures give a row without a winner and the reason, never a zero.

Busy but idle. NVML's GPU utilization is the share of time any kernel ran; on Hopper and newer, GPM's SM
activity (gpm.py) is the share of SMs busy. A setting whose utilization is at least BUSY_UTIL_PCT while its SM
activity is below IDLE_SM_ACTIVE_PCT gets a fact saying both figures (`sms_mostly_idle` is the rule).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Collection, Optional, Sequence

from trainer_tune.measure.figures import GpuFigures, describe_memory_source
from trainer_tune.config.flags import FLAG_SPECS, FlagSpec, format_flag
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.evidence.comparison import ranking
from trainer_tune.platform.units import count, format_bytes, format_ms

if TYPE_CHECKING:
    from trainer_tune.evidence.comparison import Comparison

Compare = Callable[[SettingEstimate, SettingEstimate], "Comparison"]

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
    """SettingEstimate.peak_memory_bytes."""
    exposed_comm_fraction: Optional[float]
    """Share of the synced step that the gradient all-reduce adds (SettingEstimate.comm); None when not measured."""
    exposed_comm_within_noise: Optional[bool]
    """The sync vs no-sync gap is inside the synced steps' own spread: the share is not distinguishable from 0."""


MAX_THROUGHPUT = "max_throughput"
MIN_LATENCY = "min_latency_p99_ms"
MIN_ENERGY = "min_energy_j_per_sample"
MIN_MEMORY = "min_memory_bytes"
OBJECTIVES = (MAX_THROUGHPUT, MIN_LATENCY, MIN_ENERGY, MIN_MEMORY)
"""The decision matrix's rows, in order; MIN_LATENCY only for mode=inference."""
MAX_GOODPUT = "max_goodput"
"""A last row in training, where a gradient noise scale was measured (throughput x statistical efficiency)."""


@dataclass(frozen=True)
class ObjectiveWinner:
    """One row of the decision matrix: the setting an objective picks, ignoring the others, and its figures."""

    objective: str
    """One of OBJECTIVES, or MAX_GOODPUT where a gradient noise scale was measured."""
    trial_key: Optional[str]
    label: Optional[str]
    value: Optional[float]
    """The winner's figure in the objective's unit; None (with the reason in `note`) when not measured."""
    value_ci95: Optional[tuple[float, float]]
    tied_with: tuple[str, ...]
    """Labels of the settings that measurement cannot tell apart from the winner (comparison.compare) or, for a
    point figure (latency, energy, memory), that have exactly the winner's figure."""
    note: str
    """How the winner was found and when the measurements cannot order it (a tie, a point value)."""
    micro_batch_size: Optional[int] = None
    throughput_per_s: Optional[float] = None
    """The winner's rate in the decision's unit (Decision.unit) per second."""
    latency_p99_ms: Optional[float] = None
    energy_j_per_sample: Optional[float] = None
    memory_bytes: Optional[int] = None
    goodput_per_s: Optional[float] = None
    """The winner's goodput in the decision's unit per second; None where no gradient noise scale was measured."""


@dataclass(frozen=True)
class Explanations:
    points: tuple[ScalingPoint, ...]
    facts: tuple[str, ...]
    """Plain-language statements, each built only from measured figures."""
    matrix: tuple[ObjectiveWinner, ...]
    """One row per objective, in OBJECTIVES order (then MAX_GOODPUT, where measured)."""
    pareto_keys: tuple[str, ...] = ()
    """mode=inference: trial keys of the settings on the throughput vs p99 Pareto front (pareto_front)."""
    sms_mostly_idle: tuple[str, ...] = ()
    """Labels of the settings whose GPU read busy while most SMs idled (sms_mostly_idle); their facts say more."""

    def winner(self, objective: str) -> Optional[ObjectiveWinner]:
        return next((w for w in self.matrix if w.objective == objective), None)

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


def per_sample_time_s(result: SettingEstimate) -> float:
    assert result.samples_per_s, "only finished trials have a per-sample time"
    return 1.0 / result.samples_per_s


def per_sample_time_interval_s(result: SettingEstimate) -> Optional[tuple[float, float]]:
    """The per-sample time's interval from the decision rate's: samples per unit of that rate scale it."""
    if result.throughput_ci95 is None or not result.throughput_per_s or not result.samples_per_s:
        return None
    samples_per_unit = result.samples_per_s / result.throughput_per_s
    low, high = result.throughput_ci95
    return 1.0 / (high * samples_per_unit), 1.0 / (low * samples_per_unit)


def varying_flags(results: Sequence[SettingEstimate]) -> tuple[FlagSpec, ...]:
    """The flags whose value differs between some of `results`: what tells settings apart besides the batch."""
    return tuple(spec for spec in FLAG_SPECS if len({getattr(r.flags, spec.field_name) for r in results}) > 1)


def flags_text(result: SettingEstimate, flags: Sequence[FlagSpec]) -> str:
    """`bucket_cap_mb=1` for each of `flags`, read from result.flags (labels are for people, never parsed)."""
    return " ".join(f"{spec.field_name}={format_flag(getattr(result.flags, spec.field_name))}" for spec in flags)


def _series(finished: Sequence[SettingEstimate]) -> list[tuple[str, str, list[SettingEstimate]]]:
    """(name, varying knob, members by global batch) for every series of at least two finished settings.
    Settings that differ in a flag are never in one series."""
    groups: dict[tuple[str, str], list[SettingEstimate]] = {}
    differing = varying_flags(finished)
    for r in finished:
        flags = flags_text(r, differing)
        for varies, fixed in (("micro_batch_size", f"grad_accum={r.grad_accum}"),
                              ("grad_accum", f"micro_batch_size={r.micro_batch_size}")):
            groups.setdefault((varies, f"{fixed} {flags}".strip()), []).append(r)
    def order(group: tuple[tuple[str, str], list[SettingEstimate]]) -> tuple:
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


def _point(r: SettingEstimate, ref: SettingEstimate, *, series: str, varies: str, compare: Compare) -> ScalingPoint:
    time_s, interval = per_sample_time_s(r), per_sample_time_interval_s(r)
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


BUSY_UTIL_PCT = 80.0
"""NVML utilization from here up reads as a GPU kept busy: what a user takes for "the GPU is not the problem"."""
IDLE_SM_ACTIVE_PCT = 40.0
"""GPM SM activity under this means most SMs sat idle over the window. A step of large matrix products keeps it
well above (every SM gets tiles); under 40% while utilization reads busy, the time counted as busy went to kernels
that use few SMs or wait (an all-reduce waiting on the network, small kernels between launch gaps)."""


def sms_mostly_idle(gpu: Optional[GpuFigures]) -> bool:
    """The GPU read busy (utilization >= BUSY_UTIL_PCT) while its SMs were mostly idle (GPM SM activity
    < IDLE_SM_ACTIVE_PCT); False where either figure was not measured."""
    if gpu is None or gpu.util_mean_pct is None or gpu.sm_active_mean_pct is None:
        return False
    return gpu.util_mean_pct >= BUSY_UTIL_PCT and gpu.sm_active_mean_pct < IDLE_SM_ACTIVE_PCT


def _idle_sm_fact(r: SettingEstimate) -> str:
    gpu = r.gpu
    assert gpu is not None and gpu.util_mean_pct is not None and gpu.sm_active_mean_pct is not None
    tensor = f", tensor cores active {gpu.tensor_active_mean_pct:.0f}%" \
        if gpu.tensor_active_mean_pct is not None else ""
    return (f"GPU busy {gpu.util_mean_pct:.0f}% but SMs active {gpu.sm_active_mean_pct:.0f}%{tensor} at {r.label}: "
            f"utilization counts any kernel running, so kernels ran on few SMs or waited (communication, launches)")


def _trial_facts(finished: Sequence[SettingEstimate]) -> list[str]:
    facts = [_idle_sm_fact(r) for r in finished if sms_mostly_idle(r.gpu)]
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


@dataclass(frozen=True)
class _Budget:
    max_batch_latency_ms: Optional[float]
    over_keys: frozenset[str]
    """Over the p99 budget."""
    excluded_keys: frozenset[str] = frozenset()
    """May not be chosen for any reason (decide/eligible.py), those over the budget included: no row picks them."""


def _budget_text(max_batch_latency_ms: Optional[float]) -> str:
    return f"the p99 budget of {max_batch_latency_ms:g} ms (recommend.max_batch_latency_ms)"


def _winner(objective: str, best: SettingEstimate, value: float, *, ci: Optional[tuple[float, float]] = None,
            tied: tuple[str, ...] = (), note: str) -> ObjectiveWinner:
    latency = best.latency
    return ObjectiveWinner(objective=objective, trial_key=best.trial_key, label=best.label, value=value,
                           value_ci95=ci, tied_with=tied, note=note, micro_batch_size=best.micro_batch_size,
                           throughput_per_s=best.throughput_per_s,
                           latency_p99_ms=latency.p99_ms if latency is not None else None,
                           energy_j_per_sample=best.energy_j_per_sample, memory_bytes=best.peak_memory_bytes,
                           goodput_per_s=best.goodput_per_s)


def _nobody(objective: str, note: str) -> ObjectiveWinner:
    return ObjectiveWinner(objective, None, None, None, None, (), note)


def _within(finished: Sequence[SettingEstimate], budget: _Budget) -> tuple[list[SettingEstimate], Optional[str]]:
    """The settings an objective may pick (those within the latency budget), or none and why."""
    if not finished:
        return [], "no setting finished cleanly"
    within = [r for r in finished if r.trial_key not in budget.excluded_keys]
    if not within and budget.over_keys:
        return [], f"no batch size meets {_budget_text(budget.max_batch_latency_ms)}"
    if not within:
        return [], "no setting may be chosen (see the verdict's reasons)"
    return within, None


def _budget_note(finished: Sequence[SettingEstimate], budget: _Budget) -> str:
    over = [r.label for r in finished if r.trial_key in budget.over_keys]
    if budget.max_batch_latency_ms is None:
        return ""
    return f"; within {_budget_text(budget.max_batch_latency_ms)}" + (f" ({', '.join(over)} over it, never picked)"
                                                                 if over else "")


def _point_note(best: SettingEstimate, others: Sequence[SettingEstimate], value_of: Callable[[SettingEstimate], float],
                fmt: Callable[[float], str], what: str) -> str:
    """A point figure has no interval: say so, naming the runner-up whose gap the measurements cannot judge."""
    rest = [r for r in others if r.trial_key != best.trial_key]
    if not rest:
        return f"{what}; a point value with no interval"
    runner_up = min(rest, key=value_of)
    if value_of(runner_up) == value_of(best):
        same = [r.label for r in rest if value_of(r) == value_of(best)]
        return f"{what}; {', '.join(same)} measured the same, so the higher throughput won the tie"
    return (f"{what}; a point value with no interval, so the measurements cannot say whether it beats the "
            f"runner-up {runner_up.label} ({fmt(value_of(runner_up))}) beyond noise")


def _max_throughput(finished: Sequence[SettingEstimate], compare: Compare, budget: _Budget) -> ObjectiveWinner:
    within, why = _within(finished, budget)
    if not within:
        return _nobody(MAX_THROUGHPUT, why or "")
    best = max(within, key=ranking(finished))
    tied = tuple(r.label for r in within if r is not best and compare(r, best).outcome.value in ("tie", "unknown"))
    others = "every other setting" + (" within the budget" if budget.max_batch_latency_ms is not None else "")
    note = (f"the measurements cannot order {', '.join(tied)} against the winner (the paired comparison): a tie" if tied
            else f"{others} is slower than the winner beyond noise (the paired comparison)" if len(within) > 1
            else "the only setting to pick from")
    ci = (best.throughput_ci95[0], best.throughput_ci95[1]) if best.throughput_ci95 else None
    return _winner(MAX_THROUGHPUT, best, best.throughput_per_s, ci=ci, tied=tied,  # type: ignore[arg-type]
                   note=note + _budget_note(finished, budget))


def _max_goodput(finished: Sequence[SettingEstimate], compare: Compare, budget: _Budget) -> list[ObjectiveWinner]:
    """The setting with the most goodput (noise_scale.with_goodput put it on the settings); no row without it."""
    within, _why = _within(finished, budget)
    measured = [r for r in within if r.goodput_per_s is not None]
    if not measured:
        return []
    best = max(measured, key=ranking(finished, goodput=True))
    tied = tuple(r.label for r in measured if r is not best
                 and compare(r, best, goodput=True).outcome.value in ("tie", "unknown"))  # type: ignore[call-arg]
    note = ("throughput x statistical efficiency from the sweep's gradient noise scale (recommend.objective="
            "goodput); the tie test's intervals carry B_noise's own uncertainty")
    return [_winner(MAX_GOODPUT, best, best.goodput_per_s, tied=tied, note=note)]  # type: ignore[arg-type]


def _min_latency(finished: Sequence[SettingEstimate], budget: _Budget) -> ObjectiveWinner:
    """The lowest p99 per batch: within the budget whenever any setting is, so the budget needs no filter here."""
    # Over the budget stays in (the row says when every batch size is); excluded for any other reason does not.
    measured = [r for r in finished if r.latency is not None
                and (r.trial_key not in budget.excluded_keys or r.trial_key in budget.over_keys)]
    if not measured:
        return _nobody(MIN_LATENCY, "no setting finished cleanly" if not finished
                       else "not measured: no setting has latency figures")
    p99 = lambda r: r.latency.p99_ms  # noqa: E731 - the one figure this objective orders by
    best = min(measured, key=lambda r: (p99(r), -(r.throughput_per_s or 0.0)))
    batches = best.latency.num_batches  # type: ignore[union-attr]
    what = f"p99 of {count(batches, 'batch', 'batches')} (the slowest replica at each)"
    if batches < 100:
        what += ", fewer than 100, so it interpolates towards the slowest batch"
    tied = tuple(r.label for r in measured if r is not best and p99(r) == p99(best))
    note = _point_note(best, measured, p99, lambda v: f"{format_ms(v)} ms", what)
    if budget.max_batch_latency_ms is not None and p99(best) > budget.max_batch_latency_ms:
        note += f"; over {_budget_text(budget.max_batch_latency_ms)}, as is every batch size"
    return _winner(MIN_LATENCY, best, p99(best), tied=tied, note=note)


def _min_energy(finished: Sequence[SettingEstimate], budget: _Budget) -> ObjectiveWinner:
    within, why = _within(finished, budget)
    if not within:
        return _nobody(MIN_ENERGY, why or "")
    measured = [r for r in within if r.energy_j_per_sample is not None]
    if not measured:
        notes = sorted({r.energy_note or "no energy reading" for r in within})
        return _nobody(MIN_ENERGY, f"not measured: {'; '.join(notes)}")
    energy = lambda r: r.energy_j_per_sample  # noqa: E731 - the one figure this objective orders by
    best = min(measured, key=lambda r: (energy(r), -(r.throughput_per_s or 0.0)))
    sources = sorted({r.energy_source for r in measured if r.energy_source})
    what = (f"whole-job energy over the measured steps per sample ({'; '.join(sources) or 'source not recorded'})"
            f"; one reading per window")
    note = _point_note(best, measured, energy, lambda v: f"{v:.3g} J", what)
    if len(measured) < len(within):
        note += f"; measured for {len(measured)} of {len(within)} settings"
    tied = tuple(r.label for r in measured if r is not best and energy(r) == energy(best))
    return _winner(MIN_ENERGY, best, energy(best), tied=tied,  # type: ignore[arg-type]
                   note=note + _budget_note(finished, budget))


def _min_memory(finished: Sequence[SettingEstimate], budget: _Budget) -> ObjectiveWinner:
    within, why = _within(finished, budget)
    if not within:
        return _nobody(MIN_MEMORY, why or "")
    measured = [r for r in within if r.peak_memory_bytes is not None]
    if not measured:
        notes = sorted({r.peak_memory_note for r in within if r.peak_memory_note})
        return _nobody(MIN_MEMORY, f"not measured: {'; '.join(notes) or 'no peak memory reading'}")
    # Equal peaks are a tie (allocators round to blocks); the faster setting wins it.
    best = min(measured, key=lambda r: (r.peak_memory_bytes, -r.throughput_per_s))  # type: ignore
    value = best.peak_memory_bytes
    tied = tuple(r.label for r in measured if r is not best and r.peak_memory_bytes == value)
    note = "peak memory " + describe_memory_source(best.peak_memory_source)
    if len(measured) < len(within):
        note += f"; measured for {len(measured)} of {len(within)} settings"
    return _winner(MIN_MEMORY, best, float(value), tied=tied,  # type: ignore[arg-type]
                   note=note + _budget_note(finished, budget))


def pareto_front(finished: Sequence[SettingEstimate]) -> tuple[str, ...]:
    """Trial keys of the settings with latency figures that no other beats on both throughput and p99 (at least
    as fast and at most as slow, better in one): the batch sizes worth choosing between. Point values: a setting
    just off the front may be on it within noise."""
    served = [r for r in finished if r.latency is not None and r.throughput_per_s]

    def beats(a: SettingEstimate, b: SettingEstimate) -> bool:
        rate_a, rate_b = a.throughput_per_s, b.throughput_per_s
        p99_a, p99_b = a.latency.p99_ms, b.latency.p99_ms  # type: ignore[union-attr]
        return rate_a >= rate_b and p99_a <= p99_b and (rate_a > rate_b or p99_a < p99_b)  # type: ignore[operator]

    return tuple(r.trial_key for r in sorted(served, key=lambda r: r.micro_batch_size)
                 if not any(beats(other, r) for other in served if other is not r))


def explain(results: Sequence[SettingEstimate], *, compare: Compare, max_batch_latency_ms: Optional[float] = None,
            over_budget: Collection[str] = (), ineligible: Collection[str] = ()) -> Explanations:
    """`over_budget`: trial keys of the settings whose p99 is over `max_batch_latency_ms`; `ineligible`: trial keys of every
    setting that may not be chosen (decide/eligible.py, over_budget among them). No objective picks either."""
    finished = sorted((r for r in results if r.ok and r.throughput_per_s), key=lambda r: r.index)
    points: list[ScalingPoint] = []
    for name, varies, members in _series(finished):
        points += [_point(r, members[0], series=name, varies=varies, compare=compare) for r in members]
    facts = _scaling_facts(points) + _trial_facts(finished)
    if finished and not points:
        facts.insert(0, "no scaling to compare: that needs two finished settings that differ only in micro-batch "
                        "or only in grad_accum")
    budget = _Budget(max_batch_latency_ms=max_batch_latency_ms, over_keys=frozenset(over_budget),
                     excluded_keys=frozenset(over_budget) | frozenset(ineligible))
    # Latency has a row only where it was measured (mode=inference): training steps are not served batches.
    serving = any(r.mode == "inference" for r in results)
    matrix = (_max_throughput(finished, compare, budget), *([_min_latency(finished, budget)] if serving else []),
              _min_energy(finished, budget), _min_memory(finished, budget), *_max_goodput(finished, compare, budget))
    return Explanations(points=tuple(points), facts=tuple(facts), matrix=matrix,
                        pareto_keys=pareto_front(finished) if serving else (),
                        sms_mostly_idle=tuple(r.label for r in finished if sms_mostly_idle(r.gpu)))
