"""Search strategies: which planned settings enter the race, and when.

The plan (plan.py) lists every setting a strategy may try; the race (decide/race.py) measures the settings that
have entered, round after round, and drops those clearly behind the leader. A strategy only decides entry:

- grid: every planned setting enters in the first round.
- power: per chain of micro-batch sizes (same accumulation and flags; the same flags only when the global
  batch is fixed), the smallest size enters first; the next doubling enters once the newest one has been
  measured in `sweep.min_rounds` windows and is faster than the chain's best so far by the one comparison
  rule (comparison.compare). A chain stops at the first failure (OOM, NaN, ...) or after
  `sweep.power_patience` doublings in a row that were not faster beyond noise. Like Lightning's batch-size
  finder, but judged on measured speed, not only on fit.

These are pure functions of the plan and of aggregated results that every rank holds identically; the sweep
still broadcasts rank 0's answer, so no rank can ever measure a setting the others skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from trainer_tune.config.schema import RecommendArgs, Strategy, SweepArgs
from trainer_tune.decide.eligible import eligible, predicted_over_limit
from trainer_tune.evidence.memory_fit import MemoryLimit
from trainer_tune.measure.memory_trace import MemoryPrediction
from trainer_tune.plan import TrialSpec
from trainer_tune.evidence.estimate import SettingEstimate


@dataclass(frozen=True)
class NotMeasured:
    """A planned setting that never entered the race, and why (shown with the verdict)."""

    label: str
    reason: str


def first_entrants(plan: Sequence[TrialSpec], sweep: SweepArgs) -> list[TrialSpec]:
    """The settings measured from the first round on; the baseline always among them."""
    if sweep.strategy == Strategy.grid:
        return list(plan)
    fixed = sweep.fixes_global_batch
    smallest: dict[tuple, TrialSpec] = {}
    for spec in plan[1:]:
        key = _chain_key(spec, fixed_global_batch=fixed)
        if key not in smallest or spec.micro_batch_size < smallest[key].micro_batch_size:
            smallest[key] = spec
    return [plan[0], *sorted(smallest.values(), key=lambda s: s.index)]


def _chain_key(spec: TrialSpec, *, fixed_global_batch: bool) -> tuple:
    # With a fixed global batch, accumulation falls as the micro-batch doubles: the chain is the flags alone.
    return (spec.flags,) if fixed_global_batch else (spec.flags, spec.grad_accum)


Faster = Callable[[SettingEstimate, SettingEstimate], Optional[bool]]
"""faster(a, b): True when a is faster than b beyond noise, False when not, None while either has too few
windows to tell (the sweep passes comparison.compare with sweep.min_rounds)."""


@dataclass(frozen=True)
class Gate:
    """What strategy=power says of a planned setting that has not entered the race yet."""

    enter: bool
    reason: Optional[str] = None
    """Why it never will (the chain stopped below it); None while it may still enter."""


def power_gate(spec: TrialSpec, *, plan: Sequence[TrialSpec], settings: Mapping[str, SettingEstimate],
               sweep: SweepArgs, faster: Faster, recommend: Optional[RecommendArgs] = None) -> Gate:
    """Whether `spec` enters the race now, waits, or never enters (with the reason).

    Walks the smaller settings of spec's chain in order of micro-batch size: each must have entered and
    finished cleanly, be decided by `faster` against the chain's best so far (None means: not enough
    windows yet, so wait), and the run of doublings that were not faster must stay shorter than
    sweep.power_patience."""
    fixed = sweep.fixes_global_batch
    key = _chain_key(spec, fixed_global_batch=fixed)
    # The baseline belongs to a chain it matches: it is measured in every round anyway.
    smaller = sorted((s for s in plan if s.micro_batch_size < spec.micro_batch_size
                      and _chain_key(s, fixed_global_batch=fixed) == key), key=lambda s: s.micro_batch_size)
    best: Optional[SettingEstimate] = None
    no_gain = 0
    for member in smaller:
        result = settings.get(member.key)
        if result is None:
            # Not entered yet: wait for it, unless its own chain below stopped (then for the same reason).
            inner = power_gate(member, plan=plan, settings=settings, sweep=sweep, faster=faster, recommend=recommend)
            return Gate(enter=False, reason=inner.reason)
        if not result.ok:
            return Gate(enter=False, reason=f"{result.label} ended {result.status}, so larger micro-batches were "
                                            f"not tried")
        why = eligible(result, recommend) if recommend is not None else None
        if why is not None:
            return Gate(enter=False, reason=f"{result.label} may not be chosen ({why}), so larger micro-batches "
                                            f"were not tried")
        if best is None:
            best = result
            continue
        verdict = faster(result, best)
        if verdict is None:
            return Gate(enter=False)
        if verdict:
            best, no_gain = result, 0
            continue
        no_gain += 1
        if no_gain >= sweep.power_patience:
            return Gate(enter=False, reason=(f"{result.label} ({result.throughput_per_s:,.0f} {result.throughput_unit}/s) was not faster "
                                             f"beyond noise than {best.label} ({best.throughput_per_s:,.0f}), so "
                                             f"larger micro-batches were not tried"))
        if result.throughput_per_s > best.throughput_per_s:  # type: ignore[operator]
            best = result
    return Gate(enter=True)


def fitting_plan(plan: Sequence[TrialSpec], predictions: Mapping[str, MemoryPrediction], *,
                 limit: Optional[MemoryLimit], trust: bool,
                 swept: tuple[str, ...]) -> tuple[list[TrialSpec], list[NotMeasured]]:
    """(the settings to race, those not built: predicted over the memory limit, each with why). The baseline is raced
    whatever its prediction (it is what runs today, and every comparison needs it); trust=false
    (sweep.trust_memory_prediction) builds every setting. The sweep and a re-decide of its journal both ask this."""
    if not trust:
        return list(plan), []
    raced, not_built = [], []
    for spec in plan:
        prediction = predictions.get(spec.key)
        why = None if spec.is_baseline or prediction is None else \
            predicted_over_limit(prediction.predicted.peak_bytes, limit)
        if why is None:
            raced.append(spec)
        else:
            not_built.append(NotMeasured(label=spec.label(swept_flags=swept), reason=why))
    return raced, not_built
