"""The go / no-go decision: the only place that compares trials.

GO means: switch to `chosen`, the fastest setting that finished cleanly, because it beats the baseline
by at least `recommend.min_speedup`. NO-GO means: keep the baseline. Every reason behind the verdict is
listed, including what a switch would change besides speed (the global batch size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from trainer_tune.config import RecommendArgs
from trainer_tune.flags import FLAG_SPECS, TrialFlags, flags_to_environ, flags_to_overrides, format_flag
from trainer_tune.results import TrialResult

GO = "GO"
NO_GO = "NO-GO"


@dataclass(frozen=True)
class Recommendation:
    decision: str
    chosen: Optional[TrialResult]
    """The setting to train with: the best one on GO, the baseline on NO-GO (None if it failed too)."""
    best: Optional[TrialResult]
    """The fastest setting that finished cleanly."""
    baseline: Optional[TrialResult]
    speedup: Optional[float]
    """best tokens/s over baseline tokens/s; None when either is missing."""
    min_speedup: float
    reasons: tuple[str, ...]
    verdict: str
    overrides: tuple[str, ...]
    """Hydra overrides that measure (or train with) the chosen setting."""
    environment: dict[str, str]
    num_trials: int
    num_failed: int
    speedup_by_key: dict[str, float]
    """Each finished trial's tokens/s over the baseline's (empty when the baseline did not finish)."""

    def to_json_dict(self) -> dict[str, Any]:
        def trial(result: Optional[TrialResult]) -> Optional[dict[str, Any]]:
            return None if result is None else result.to_json_dict()

        return {"decision": self.decision, "verdict": self.verdict, "speedup": self.speedup,
                "min_speedup": self.min_speedup, "reasons": list(self.reasons), "chosen": trial(self.chosen),
                "best": trial(self.best), "baseline": trial(self.baseline), "overrides": list(self.overrides),
                "environment": self.environment, "num_trials": self.num_trials, "num_failed": self.num_failed,
                "speedup_by_key": self.speedup_by_key}


def _setting(result: TrialResult, *, against: Optional[TrialResult]) -> str:
    """`micro_batch_size=4 grad_accum=1`, plus every flag that differs from `against`."""
    text = f"micro_batch_size={result.micro_batch_size} grad_accum={result.grad_accum}"
    for spec in FLAG_SPECS:
        value = result.flags[spec.field_name]
        if against is not None and against.flags[spec.field_name] != value:
            text += f" {spec.config_key}={format_flag(value)}"
    return text


def _percent(speedup: float) -> str:
    return f"{(speedup - 1.0) * 100:+.1f}%"


def decide(results: Sequence[TrialResult], *, args: RecommendArgs) -> Recommendation:
    baseline = next((r for r in results if r.is_baseline), None)
    finished = [r for r in results if r.ok and r.tokens_per_s is not None]
    failed = [r for r in results if not r.ok]
    # Ties in tokens/s go to the smaller global batch, then the smaller micro-batch (less memory).
    best = max(finished, key=lambda r: (r.tokens_per_s, -r.global_batch_size, -r.micro_batch_size),
               default=None)
    reasons: list[str] = []
    if failed:
        listed = ", ".join(f"{r.label} ({r.status})" for r in failed)
        reasons.append(f"{len(failed)} of {len(results)} settings did not finish cleanly and cannot be "
                       f"recommended: {listed}")

    speedup: Optional[float] = None
    if best is None:
        decision, chosen = NO_GO, (baseline if baseline is not None and baseline.ok else None)
        reasons.insert(0, "no setting finished cleanly, so there is nothing to recommend")
        verdict = f"{NO_GO}: no setting finished cleanly"
    elif baseline is None or not baseline.ok:
        decision, chosen = GO, best
        state = "was not measured" if baseline is None else f"{baseline.label} failed ({baseline.status})"
        reasons.insert(0, f"the baseline {state}; the fastest setting that runs is {best.label} at "
                          f"{best.tokens_per_s:,.0f} tokens/s")
        verdict = f"{GO}: {_setting(best, against=baseline)} (baseline {state})"
    else:
        speedup = best.tokens_per_s / baseline.tokens_per_s  # type: ignore[operator]
        if best.trial_key == baseline.trial_key:
            decision, chosen = NO_GO, baseline
            reasons.insert(0, f"the baseline {baseline.label} is already the fastest setting measured "
                              f"({baseline.tokens_per_s:,.0f} tokens/s)")
            verdict = f"{NO_GO}: keep baseline {_setting(baseline, against=None)} (fastest measured)"
        elif speedup >= args.min_speedup:
            decision, chosen = GO, best
            reasons.insert(0, f"{best.label} reaches {best.tokens_per_s:,.0f} tokens/s vs "
                              f"{baseline.tokens_per_s:,.0f} for the baseline {baseline.label}: {_percent(speedup)}, "
                              f"at least the required {_percent(args.min_speedup)} (recommend.min_speedup)")
            verdict = (f"{GO}: {_setting(best, against=baseline)} ({_percent(speedup)} tokens/s vs baseline "
                       f"{baseline.label})")
        else:
            decision, chosen = NO_GO, baseline
            reasons.insert(0, f"the fastest setting {best.label} is {_percent(speedup)} vs the baseline "
                              f"{baseline.label}; a switch needs at least {_percent(args.min_speedup)} "
                              f"(recommend.min_speedup={args.min_speedup:g})")
            verdict = (f"{NO_GO}: keep baseline {_setting(baseline, against=None)} (best {best.label} is "
                       f"{_percent(speedup)} tokens/s, needs {_percent(args.min_speedup)})")

    if decision == GO and chosen is not None and baseline is not None \
            and chosen.global_batch_size != baseline.global_batch_size:
        reasons.append(f"the global batch changes from {baseline.global_batch_size} to "
                       f"{chosen.global_batch_size} samples per optimizer step: that changes optimisation "
                       f"(learning rate and schedule may need retuning), not only speed")

    overrides: tuple[str, ...] = ()
    environment: dict[str, str] = {}
    if chosen is not None:
        flags = TrialFlags(**chosen.flags)
        overrides = (f"train.micro_batch_size={chosen.micro_batch_size}", f"train.grad_accum={chosen.grad_accum}",
                     *flags_to_overrides(flags))
        environment = flags_to_environ(flags)
    speedup_by_key: dict[str, float] = {}
    if baseline is not None and baseline.ok and baseline.tokens_per_s:
        speedup_by_key = {r.trial_key: r.tokens_per_s / baseline.tokens_per_s  # type: ignore[operator]
                          for r in finished}
    return Recommendation(decision=decision, speedup_by_key=speedup_by_key, chosen=chosen, best=best, baseline=baseline, speedup=speedup,
                          min_speedup=args.min_speedup, reasons=tuple(reasons), verdict=verdict,
                          overrides=overrides, environment=environment, num_trials=len(results),
                          num_failed=len(failed))
