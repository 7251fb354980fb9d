"""Search strategies: which planned settings to measure, in which order, and which to leave out.

The plan (plan.py) lists every setting a strategy may try; a strategy only orders them and decides, from
the results so far, whether the next one is worth measuring. These are pure functions of the plan and of
results that every rank holds identically, and the sweep still broadcasts rank 0's answer, so no rank can
ever measure a trial the others skip.

- grid: everything, in plan order.
- power: along each chain of micro-batch sizes (same accumulation and flags; the same flags only when the
  global batch is fixed), stop at the first failure (OOM, NaN, ...) or after `sweep.power_patience`
  doublings that were not faster beyond noise. Like Lightning's batch-size finder, but judged on speed,
  not only on fit.
- adaptive: everything, most promising first (largest tokens per optimizer step, a heuristic that only
  affects order), with each window ended early once its interval cannot reach the best lower bound so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from trainer_tune.config import Strategy, SweepArgs
from trainer_tune.plan import TrialSpec
from trainer_tune.results import TrialResult
from trainer_tune.stats import throughput_ci


@dataclass(frozen=True)
class NotMeasured:
    """A planned setting the strategy left out, and why (shown with the verdict)."""

    label: str
    reason: str


@dataclass(frozen=True)
class BestSoFar:
    """What an adaptive window must be able to reach to stay worth measuring."""

    label: str
    tokens_per_s_low: float
    """Lower end of the best measured trial's 95% interval."""


def measurement_order(plan: Sequence[TrialSpec], strategy: Strategy) -> list[TrialSpec]:
    """The baseline always first (the reference, and a sweep cut short still has it)."""
    if strategy != Strategy.adaptive:
        return list(plan)
    baseline, others = list(plan[:1]), plan[1:]
    return baseline + sorted(others, key=lambda s: (-s.micro_batch_size * s.grad_accum, s.index))


def _chain_key(spec: TrialSpec, *, fixed_global_batch: bool) -> tuple:
    # With a fixed global batch, accumulation falls as the micro-batch doubles: the chain is the flags alone.
    return (spec.flags,) if fixed_global_batch else (spec.flags, spec.grad_accum)


def _lower(result: TrialResult) -> float:
    return result.tokens_per_s_ci95[0] if result.tokens_per_s_ci95 else result.tokens_per_s  # type: ignore[return-value]


def _upper(result: TrialResult) -> float:
    return result.tokens_per_s_ci95[1] if result.tokens_per_s_ci95 else result.tokens_per_s  # type: ignore[return-value]


def power_skip_reason(spec: TrialSpec, *, plan: Sequence[TrialSpec], results: Mapping[str, TrialResult],
                      sweep: SweepArgs) -> Optional[str]:
    """Why strategy=power does not measure `spec`, or None to measure it.

    Walks the smaller settings of spec's chain in order of micro-batch size; each must have been measured
    (else the chain was stopped below, for that one's reason), finished cleanly, and the run of doublings
    that were not faster beyond noise must stay shorter than sweep.power_patience."""
    if spec.is_baseline:
        return None
    key = _chain_key(spec, fixed_global_batch=sweep.global_batch_size is not None)
    smaller = sorted((s for s in plan if s.micro_batch_size < spec.micro_batch_size
                      and _chain_key(s, fixed_global_batch=sweep.global_batch_size is not None) == key),
                     key=lambda s: s.micro_batch_size)
    best: Optional[TrialResult] = None
    no_gain = 0
    for member in smaller:
        result = results.get(member.key)
        if result is None:
            return power_skip_reason(member, plan=plan, results=results, sweep=sweep)
        if not result.ok:
            return f"{result.label} ended {result.status}, so larger micro-batches were not tried"
        if best is None or _lower(result) > _upper(best):
            best, no_gain = result, 0
            continue
        no_gain += 1
        if no_gain >= sweep.power_patience:
            return (f"{result.label} ({result.tokens_per_s:,.0f} tokens/s) was not faster beyond noise than "
                    f"{best.label} ({best.tokens_per_s:,.0f}), so larger micro-batches were not tried")
        if result.tokens_per_s > best.tokens_per_s:  # type: ignore[operator]
            best = result
    return None


def skip_reason(spec: TrialSpec, *, plan: Sequence[TrialSpec], results: Mapping[str, TrialResult],
                sweep: SweepArgs) -> Optional[str]:
    if sweep.strategy == Strategy.power:
        return power_skip_reason(spec, plan=plan, results=results, sweep=sweep)
    return None


def cannot_reach_reason(times_s: Sequence[float], *, tokens_per_step: int, best: BestSoFar) -> Optional[str]:
    """Why an adaptive window ends now: the upper end of its tokens/s interval is below the best lower bound
    measured so far, so more steps could only confirm that it loses. None to go on measuring."""
    _low, high = throughput_ci(times_s, amount_per_step=float(tokens_per_step))
    if high >= best.tokens_per_s_low:
        return None
    return (f"cut short after {len(times_s)} steps: at most {high:,.0f} tokens/s at 95%, below the "
            f"{best.tokens_per_s_low:,.0f} that {best.label} reaches at its interval's lower end")


def best_so_far(results: Sequence[TrialResult], strategy: Strategy) -> Optional[BestSoFar]:
    """The bar an adaptive window is measured against: the highest lower bound among clean results."""
    if strategy != Strategy.adaptive:
        return None
    finished = [r for r in results if r.ok and r.tokens_per_s is not None]
    if not finished:
        return None
    best = max(finished, key=_lower)
    return BestSoFar(label=best.label, tokens_per_s_low=_lower(best))
