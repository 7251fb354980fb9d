"""The go / no-go decision: the only place that compares trials.

GO means: switch to `chosen`, the fastest setting that finished cleanly, because it beats the baseline
by at least `recommend.min_speedup`. NO-GO means: keep the baseline. Every reason behind the verdict is
listed, including what a switch would change besides speed (the global batch size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from trainer_tune.config import RecommendArgs
from trainer_tune.explain import Explanations, explain
from trainer_tune.figures import describe_memory_source
from trainer_tune.flags import FLAG_SPECS, TrialFlags, flags_to_environ, flags_to_overrides, format_flag
from trainer_tune.results import TrialResult
from trainer_tune.stats import ratio_ci
from trainer_tune.strategy import NotMeasured

GO = "GO"
NO_GO = "NO-GO"


@dataclass(frozen=True)
class Drift:
    """The baseline measured at the start of the sweep and again after the last trial."""

    label: str
    first_tokens_per_s: float
    again_tokens_per_s: float
    change: float
    """again / first - 1: how much the machine's speed moved during the sweep."""
    within_noise: bool
    """The two windows' 95% intervals overlap: no change beyond noise, and nothing is widened."""

    @property
    def widening(self) -> float:
        """Factor applied to both ends of every comparison: 1 on a steady machine, else 1 + |change|.

        A monotonic drift of |change| between the first and the last window bounds how far the machine's
        speed moved between any two trials, so a ratio of two trials is uncertain by that much beyond its
        own statistical interval."""
        return 1.0 if self.within_noise else 1.0 + abs(self.change)

    def to_json_dict(self) -> dict[str, Any]:
        return {"label": self.label, "first_tokens_per_s": self.first_tokens_per_s,
                "again_tokens_per_s": self.again_tokens_per_s, "change": self.change,
                "within_noise": self.within_noise, "widening": self.widening}


def baseline_drift(baseline: Optional[TrialResult], recheck: Optional[TrialResult]) -> Optional[Drift]:
    """None unless both baseline windows finished cleanly."""
    if baseline is None or recheck is None or not (baseline.ok and recheck.ok) \
            or not baseline.tokens_per_s or not recheck.tokens_per_s:
        return None
    (low_a, high_a), (low_b, high_b) = _bounds(baseline), _bounds(recheck)
    return Drift(label=baseline.label, first_tokens_per_s=baseline.tokens_per_s,
                 again_tokens_per_s=recheck.tokens_per_s,
                 change=recheck.tokens_per_s / baseline.tokens_per_s - 1.0,
                 within_noise=low_a <= high_b and low_b <= high_a)


def _drift_reason(drift: Drift) -> str:
    measured = (f"the baseline {drift.label} measured again after the last trial: {drift.again_tokens_per_s:,.0f} vs "
                f"{drift.first_tokens_per_s:,.0f} tokens/s at the start ({drift.change * 100:+.1f}%)")
    if drift.within_noise:
        return f"{measured}, within noise: the machine's speed held steady during the sweep"
    return (f"{measured}, beyond noise: the machine's speed changed during the sweep (other load, clocks, "
            f"thermals), so every comparison is widened by {abs(drift.change) * 100:.1f}% and differences smaller "
            f"than that are not evidence; measure again on a quiet machine for a sharper answer")


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
    speedup_ci95: Optional[tuple[float, float]]
    """95% interval of the speedup (independent block bootstraps of both windows); None without step times."""
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
    explanations: Optional[Explanations] = None
    """Per-sample efficiency, measured facts and the decision matrix (explain.py); computed from the same
    results, never an input to the verdict."""
    not_measured: tuple[NotMeasured, ...] = ()
    """Planned settings the search strategy did not measure, each with the reason."""
    cut_short: tuple[str, ...] = ()
    """Labels of trials whose window strategy=adaptive ended early (they could not reach the best)."""
    drift: Optional[Drift] = None
    """The baseline's re-check after the last trial (sweep.recheck_baseline); None when not measured."""

    def to_json_dict(self) -> dict[str, Any]:
        def trial(result: Optional[TrialResult]) -> Optional[dict[str, Any]]:
            return None if result is None else result.to_json_dict()

        return {"decision": self.decision, "verdict": self.verdict, "speedup": self.speedup,
                "speedup_ci95": list(self.speedup_ci95) if self.speedup_ci95 else None,
                "min_speedup": self.min_speedup, "reasons": list(self.reasons), "chosen": trial(self.chosen),
                "best": trial(self.best), "baseline": trial(self.baseline), "overrides": list(self.overrides),
                "environment": self.environment, "num_trials": self.num_trials, "num_failed": self.num_failed,
                "speedup_by_key": self.speedup_by_key,
                "not_measured": [{"label": n.label, "reason": n.reason} for n in self.not_measured],
                "cut_short": list(self.cut_short),
                "drift": self.drift.to_json_dict() if self.drift else None,
                "explanations": self.explanations.to_json_dict() if self.explanations else None}


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


def _speedup_interval(a: TrialResult, b: TrialResult) -> Optional[tuple[float, float]]:
    """95% interval of tokens/s(a) / tokens/s(b), or None when either lacks its step times (old journals)."""
    times_a, times_b = a.step_times_s, b.step_times_s
    if len(times_a) < 2 or len(times_b) < 2:
        return None
    low, high = ratio_ci(times_a, times_b, amount_a=a.tokens_per_step, amount_b=b.tokens_per_step)
    # The bootstrap works on per-step slowest times; centre its relative interval on the reported ratio.
    per_step = (a.tokens_per_step * len(times_a) / math.fsum(times_a)) / \
        (b.tokens_per_step * len(times_b) / math.fsum(times_b))
    point = a.tokens_per_s / b.tokens_per_s  # type: ignore[operator]
    return low * point / per_step, high * point / per_step


def _bounds(result: TrialResult) -> tuple[float, float]:
    if result.tokens_per_s_ci95 is not None:
        return result.tokens_per_s_ci95[0], result.tokens_per_s_ci95[1]
    return result.tokens_per_s, result.tokens_per_s  # type: ignore[return-value]


def _ci_text(interval: Optional[tuple[float, float]]) -> str:
    return "" if interval is None else f", 95% CI {_percent(interval[0])} to {_percent(interval[1])}"


def decide(results: Sequence[TrialResult], *, args: RecommendArgs, not_measured: Sequence[NotMeasured] = (),
           recheck: Optional[TrialResult] = None) -> Recommendation:
    baseline = next((r for r in results if r.is_baseline), None)
    drift = baseline_drift(baseline, recheck)
    widening = drift.widening if drift is not None else 1.0
    finished = [r for r in results if r.ok and r.tokens_per_s is not None]
    failed = [r for r in results if not r.ok]
    reasons: list[str] = []
    if failed:
        listed = ", ".join(f"{r.label} ({r.status})" for r in failed)
        reasons.append(f"{len(failed)} of {len(results)} settings did not finish cleanly and cannot be "
                       f"recommended: {listed}")
    candidates = []
    for r in finished:
        memory, device_memory = r.peak_memory_bytes, r.device_memory_bytes
        if memory is not None and device_memory and memory > args.max_memory_fraction * device_memory:
            reasons.append(f"{r.label} is excluded: its peak memory is {memory / device_memory:.0%} of the device "
                           f"({describe_memory_source(r.peak_memory_source)}), above "
                           f"recommend.max_memory_fraction={args.max_memory_fraction:g}")
        else:
            candidates.append(r)

    fastest = max(candidates, key=lambda r: r.tokens_per_s, default=None)  # type: ignore[arg-type,return-value]
    best = fastest
    if fastest is not None:
        # Settings whose interval reaches the fastest one's are a tie: measurement cannot order them. Break
        # toward the baseline's global batch (a different one changes optimisation), then less memory.
        floor = _bounds(fastest)[0]
        tied = [r for r in candidates if _bounds(r)[1] * widening >= floor]
        base_batch = baseline.global_batch_size if baseline is not None else None
        best = min(tied, key=lambda r: (r.global_batch_size != base_batch, r.peak_memory_bytes or 0,
                                        r.global_batch_size, r.micro_batch_size, -r.tokens_per_s))  # type: ignore
        if len(tied) > 1:
            reasons.append(f"within noise of the fastest ({fastest.label}): {', '.join(r.label for r in tied)}; "
                           f"the tie goes to {best.label} (the baseline's global batch first, then less memory)")

    speedup: Optional[float] = None
    speedup_interval: Optional[tuple[float, float]] = None
    if best is None:
        decision, chosen = NO_GO, (baseline if baseline is not None and baseline.ok else None)
        reasons.insert(0, "no setting finished cleanly within the memory limit, so there is nothing to recommend")
        verdict = f"{NO_GO}: no setting finished cleanly"
    elif baseline is None or not baseline.ok:
        decision, chosen = GO, best
        state = "was not measured" if baseline is None else f"{baseline.label} failed ({baseline.status})"
        reasons.insert(0, f"the baseline {state}; the fastest setting that runs is {best.label} at "
                          f"{best.tokens_per_s:,.0f} tokens/s")
        verdict = f"{GO}: {_setting(best, against=baseline)} (baseline {state})"
    elif best.trial_key == baseline.trial_key:
        speedup = 1.0
        decision, chosen = NO_GO, baseline
        reasons.insert(0, f"the baseline {baseline.label} is already the fastest setting measured, or within "
                          f"noise of it ({baseline.tokens_per_s:,.0f} tokens/s)")
        verdict = f"{NO_GO}: keep baseline {_setting(baseline, against=None)} (fastest measured)"
    else:
        speedup = best.tokens_per_s / baseline.tokens_per_s  # type: ignore[operator]
        speedup_interval = _speedup_interval(best, baseline)
        if speedup_interval is not None and widening != 1.0:
            speedup_interval = (speedup_interval[0] / widening, speedup_interval[1] * widening)
        lower = speedup_interval[0] if speedup_interval is not None else speedup / widening
        shortfalls = []
        if lower < args.min_speedup:
            shortfalls.append(f"the lower end of its speedup ({_percent(lower)}) is below the required "
                              f"{_percent(args.min_speedup)} (recommend.min_speedup={args.min_speedup:g})")
        if args.target_tokens_per_s is not None and best.tokens_per_s < args.target_tokens_per_s:  # type: ignore
            shortfalls.append(f"{best.tokens_per_s:,.0f} tokens/s is below recommend.target_tokens_per_s="
                              f"{args.target_tokens_per_s:,.0f}")
        measured = (f"{best.label} reaches {best.tokens_per_s:,.0f} tokens/s vs {baseline.tokens_per_s:,.0f} for the "
                    f"baseline {baseline.label}: {_percent(speedup)}{_ci_text(speedup_interval)}")
        if not shortfalls:
            decision, chosen = GO, best
            reasons.insert(0, f"{measured}; at least the required {_percent(args.min_speedup)} even at the "
                              f"interval's lower end" if speedup_interval else
                           f"{measured}, at least the required {_percent(args.min_speedup)} (recommend.min_speedup)")
            verdict = (f"{GO}: {_setting(best, against=baseline)} ({_percent(speedup)} tokens/s vs baseline "
                       f"{baseline.label}{_ci_text(speedup_interval)})")
        else:
            decision, chosen = NO_GO, baseline
            reasons.insert(0, f"{measured}; but " + "; and ".join(shortfalls))
            verdict = (f"{NO_GO}: keep baseline {_setting(baseline, against=None)} (best {best.label} is "
                       f"{_percent(speedup)} tokens/s{_ci_text(speedup_interval)}, needs {_percent(args.min_speedup)})")

    if decision == GO and chosen is not None and baseline is not None \
            and chosen.global_batch_size != baseline.global_batch_size:
        reasons.append(f"the global batch changes from {baseline.global_batch_size} to "
                       f"{chosen.global_batch_size} samples per optimizer step: that changes optimisation "
                       f"(learning rate and schedule may need retuning), not only speed")

    if drift is not None:
        reasons.append(_drift_reason(drift))
    elif recheck is not None:
        reasons.append(f"the baseline's re-check after the last trial did not finish cleanly ({recheck.status}), "
                       f"so whether the machine's speed held steady during the sweep is unknown")
    cut_short = tuple(r.label for r in results if r.window_cut_short)
    if cut_short:
        reasons.append(f"{len(cut_short)} setting(s) measured only until their interval showed they could not "
                       f"reach the best (strategy=adaptive): {', '.join(cut_short)}")
    if not_measured:
        reasons.append(f"{len(not_measured)} planned setting(s) not measured (strategy=power): "
                       + "; ".join(f"{n.label}: {n.reason}" for n in _first_per_reason(not_measured)))

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
    return Recommendation(decision=decision, speedup_by_key=speedup_by_key, speedup_ci95=speedup_interval, chosen=chosen, best=best, baseline=baseline, speedup=speedup,
                          min_speedup=args.min_speedup, reasons=tuple(reasons), verdict=verdict,
                          overrides=overrides, environment=environment, num_trials=len(results),
                          num_failed=len(failed), not_measured=tuple(not_measured), cut_short=cut_short, drift=drift,
                          explanations=explain(results))


def _first_per_reason(items: Sequence[NotMeasured]) -> list[NotMeasured]:
    """One line per distinct reason: a chain stopped at 8 leaves 16, 32, ... with the same reason."""
    grouped: dict[str, list[str]] = {}
    for item in items:
        grouped.setdefault(item.reason, []).append(item.label)
    return [NotMeasured(label=", ".join(labels), reason=reason) for reason, labels in grouped.items()]
