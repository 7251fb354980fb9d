"""What a change of global batch means for training, in the verdict's words: goodput beside throughput, and the
learning rate that moves with the batch.

Pure text and arithmetic over settings whose statistical efficiency and goodput are already on them
(noise_scale.with_goodput). Comparisons go through the one rule, comparison.compare, passed in as `compare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from trainer_tune.config.schema import LrScaling
from trainer_tune.measure.figures import NoiseScaleFigures
from trainer_tune.evidence.estimate import SettingEstimate

if TYPE_CHECKING:
    from trainer_tune.evidence.comparison import Comparison

GoodputCompare = Callable[..., "Comparison"]
"""comparison.compare: (a, b, goodput=False) -> Comparison."""

_RULES = {LrScaling.sqrt: "the square-root rule for Adam-family optimizers, lr x sqrt(B / B0)",
          LrScaling.linear: "the linear rule for SGD, lr x B / B0"}


@dataclass(frozen=True)
class LrChange:
    """train.lr scaled with the global batch (recommend.lr_scaling)."""

    rule: str
    """sqrt or linear."""
    from_lr: float
    to_lr: float
    from_global_batch_size: int
    to_global_batch_size: int

    @property
    def override(self) -> str:
        return f"train.lr={self.to_lr:.6g}"


def scaled_lr(lr: float, *, batch_size: int, baseline_batch_size: int, rule: LrScaling) -> float:
    """The learning rate for `batch_size` by `rule`, from `lr` at the baseline's global batch."""
    ratio = batch_size / baseline_batch_size
    if rule == LrScaling.sqrt:
        return lr * ratio ** 0.5
    if rule == LrScaling.linear:
        return lr * ratio
    return lr


def lr_change(lr: Optional[float], *, chosen: SettingEstimate, baseline: SettingEstimate,
              rule: LrScaling) -> Optional[LrChange]:
    """The scaled learning rate when `chosen` trains at another global batch than the baseline; None when it does
    not, with lr_scaling=none, or when the sweep's train.lr is not known."""
    if lr is None or rule == LrScaling.none or chosen.global_batch_size == baseline.global_batch_size:
        return None
    return LrChange(rule=rule.value, from_lr=lr, to_global_batch_size=chosen.global_batch_size,
                    to_lr=scaled_lr(lr, batch_size=chosen.global_batch_size,
                                    baseline_batch_size=baseline.global_batch_size, rule=rule),
                    from_global_batch_size=baseline.global_batch_size)


def batch_change_reason(change: Optional[LrChange], *, chosen: SettingEstimate, baseline: SettingEstimate,
                        rule: LrScaling) -> str:
    """Why a GO at another global batch is more than a speed-up, and what recommendation.yaml does about it."""
    text = (f"the global batch changes from {baseline.global_batch_size} to {chosen.global_batch_size} samples per "
            f"optimizer step: that changes optimisation, not only speed")
    if change is not None:
        return (f"{text}; recommendation.yaml sets {change.override} (from {change.from_lr:g}: {_RULES[rule]}, "
                f"recommend.lr_scaling={rule.value}); the schedule (warm-up, decay) may still need retuning")
    if rule == LrScaling.none:
        return f"{text} (recommend.lr_scaling=none leaves train.lr as it is: learning rate and schedule may need retuning)"
    return f"{text} (learning rate and schedule may need retuning)"


def without_lr(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides less any of train.lr, which a scaled learning rate replaces."""
    return tuple(o for o in overrides if o.split("=")[0].lstrip("+~") != "train.lr")


def _ci(values: Optional[Sequence[Optional[float]]]) -> str:
    if values is None:
        return "no interval"
    low, high = values
    return f"95% CI {low:.3g} to {'unbounded' if high is None else f'{high:.3g}'}"


def noise_scale_reason(noise: Optional[NoiseScaleFigures], note: Optional[str], *,
                       baseline: Optional[SettingEstimate]) -> str:
    """What the sweep's B_noise is and what it rests on, or why there is no goodput."""
    if noise is None or noise.value is None:
        why = (noise.note if noise is not None else None) or note or "not measured"
        return f"gradient noise scale: {why}; so no statistical efficiency and no goodput"
    b0 = baseline.global_batch_size if baseline is not None else None
    return (f"gradient noise scale B_noise = {noise.value:.3g} samples ({_ci(noise.ci95)}), {note}; a setting's "
            f"statistical efficiency is (B_noise + B0) / (B_noise + B) against the baseline's global batch B0"
            f"{f' = {b0}' if b0 is not None else ''}, and its goodput is throughput x efficiency (the goodput "
            f"intervals carry B_noise's own uncertainty too)")


def throughput_vs_goodput(candidates: Sequence[SettingEstimate], *, compare: GoodputCompare, unit: str,
                          noise: Optional[NoiseScaleFigures]) -> tuple[Optional[str], str]:
    """(reason, verdict note) naming the setting that wins on throughput but loses on goodput: the fastest candidate
    (finished, within the memory limit and latency budget; left the race or not) against the one with the most
    goodput, when they differ. (None, "") when they agree or goodput is unknown."""
    measured = [r for r in candidates if r.goodput_per_s is not None and r.throughput_per_s is not None]
    if len(measured) < 2 or noise is None or noise.value is None:
        return None, ""
    fastest = max(measured, key=lambda r: r.throughput_per_s)  # type: ignore[arg-type,return-value]
    most = max(measured, key=lambda r: r.goodput_per_s)  # type: ignore[arg-type,return-value]
    if fastest.trial_key == most.trial_key:
        return None, ""
    rate, good = compare(fastest, most), compare(fastest, most, goodput=True)
    reason = (f"{fastest.label} wins on throughput but loses on goodput against {most.label}: "
              f"{rate.describe()} in {unit}/s, {good.describe()} in goodput; at global batch "
              f"{fastest.global_batch_size} a sample is worth {fastest.statistical_efficiency:.2f} of one at the "
              f"baseline's, at {most.global_batch_size} {most.statistical_efficiency:.2f} (B_noise {noise.value:.3g})")
    return reason, f"; {fastest.label} is fastest in {unit}/s but {most.label} has more goodput"


def other_measure_note(best: Optional[SettingEstimate], baseline: Optional[SettingEstimate], *, goodput: bool,
                       compare: GoodputCompare) -> str:
    """The verdict's word on the measure it was not decided on: goodput beside a throughput verdict, throughput
    beside a goodput one ("" when either side lacks it)."""
    if best is None or baseline is None or best.trial_key == baseline.trial_key or best.goodput_per_s is None \
            or baseline.goodput_per_s is None:
        return ""
    ratio = compare(best, baseline, goodput=not goodput).ratio
    return f"; {best.label} {'throughput' if goodput else 'goodput'} {(ratio - 1) * 100:+.1f}% vs baseline"
