"""The go / no-go decision: the only place that compares trials.

GO means: switch to `chosen`, the fastest setting that finished cleanly, because it beats the baseline
by at least `recommend.min_speedup`. NO-GO means: keep the baseline. MEASURED means: the run measured one
setting only (no sweep), so there is nothing to compare. Every reason behind the verdict is
listed, including what a switch would change besides speed (the global batch size).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from trainer_tune.evidence.compile_payback import CompilePayback, compile_paybacks
from trainer_tune.config.schema import Objective, RecommendArgs, SweepArgs, TuneConfig
from trainer_tune.measure.figures import NoiseScaleFigures
from trainer_tune.config.flags import FLAG_SPECS, flags_to_environ, flags_to_overrides, format_flag
from trainer_tune.decide.goodput import (
    LrChange, batch_change_reason, lr_change, noise_scale_reason, other_measure_note, throughput_vs_goodput, without_lr)
from trainer_tune.evidence.input_bound import InputWait, input_bound_reasons, input_waits, verdict_note
from trainer_tune.evidence.memory_fit import MemoryFit, MemoryLimit, fit_memory
from trainer_tune.measure.memory_trace import MemoryPrediction
from trainer_tune.measure.record import TOKENS
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.evidence.comparison import (
    Comparison, Drift, baseline_drift, compare, compare_lower, level_text, lower_figures_by_round, percent)
from trainer_tune.decide.confirm import confirm_overrides, confirmation_reason
from trainer_tune.decide.eligible import eligible, over_latency_budget, predicted_over_limit
from trainer_tune.decide.pool import (
    OBJECTIVE_BEST, OBJECTIVE_FIGURE, Pool, build_pool, pick_best, with_sweep_goodput)
from trainer_tune.decide.race import RaceResult, RaceSummary
from trainer_tune.decide.sequential import (
    GO, INCONCLUSIVE, NO_GO, ErrorBudget, error_budget, rounds_to_decide, weigh)
from trainer_tune.decide.strategy import NotMeasured
from trainer_tune.platform.units import count

MEASURED = "MEASURED"
"""Only one setting was measured (no sweep): its figures, and no comparison, so neither GO nor NO-GO."""


def _drift_reason(drift: Drift, unit: str) -> str:
    rates = ", ".join(f"{v:,.0f}" for _, v in drift.series)
    return (f"the baseline {drift.label} in each of its {len(drift.series)} rounds: {rates} {unit}/s "
            f"({percent(1.0 + drift.change)} first to last, {drift.spread:.1%} between its fastest and slowest "
            f"round); comparisons pair windows of the same round, so drift shared by a round cancels")


@dataclass(frozen=True)
class Decision:
    decision: str
    chosen: Optional[SettingEstimate]
    """The setting to train with: the best one on GO, the baseline on NO-GO (None if it failed too)."""
    best: Optional[SettingEstimate]
    """The fastest setting that finished cleanly."""
    baseline: Optional[SettingEstimate]
    speedup: Optional[float]
    """best's rate over the baseline's (in `unit` per second); None when either is missing."""
    speedup_ci95: Optional[tuple[float, float]]
    """95% interval of the speedup (compare: paired over rounds); None with one window on a side."""
    min_speedup: float
    reasons: tuple[str, ...]
    verdict: str
    overrides: tuple[str, ...]
    """Hydra overrides that measure (or train with) the chosen setting."""
    environment: dict[str, str]
    num_trials: int
    num_failed: int
    speedup_by_key: dict[str, float]
    """Each finished trial's rate over the baseline's (empty when the baseline did not finish)."""
    not_measured: tuple[NotMeasured, ...] = ()
    """Planned settings the search strategy did not measure, each with the reason."""
    """Labels of trials whose window strategy=adaptive ended early (they could not reach the best)."""
    drift: Optional[Drift] = None
    """The baseline's rate round by round; None with fewer than two clean baseline windows."""
    race: Optional[RaceSummary] = None
    """How the race went (rounds, drops, why it ended); None for results decided without one."""
    comparison: Optional[Comparison] = None
    """The chosen (or best) setting against the baseline, by the one comparison rule."""
    tied: tuple[str, ...] = ()
    """Labels of the settings the measurements could not order against the best (the best included)."""
    settings: tuple[SettingEstimate, ...] = ()
    """Every setting decided on, aggregated over its windows: the evidence behind the verdict."""
    speedup_intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    """Each finished setting's 95% interval of its rate over the baseline's (compare), where it has one."""
    unit: str = TOKENS
    """What every rate of the decision counts per second: samples, tokens or throughput.count.unit."""
    input_waits: tuple[InputWait, ...] = ()
    """Each finished setting's wait for batches, when a setting is input-bound or the settings differ in
    data.num_workers (input_bound.input_waits); empty otherwise."""
    input_bound_fraction: Optional[float] = None
    """recommend.input_bound_fraction the decision named input-bound settings by."""
    objective: str = Objective.throughput.value
    """recommend.objective the verdict was decided on."""
    gradient_noise_scale: Optional[NoiseScaleFigures] = None
    """The sweep's B_noise, pooled over every finished setting's noise steps (noise_scale.sweep_noise_scale);
    None when not measured, with the reason in gradient_noise_scale_note. Every setting's statistical_efficiency
    and goodput come from it."""
    gradient_noise_scale_note: Optional[str] = None
    """What B_noise rests on (steps, settings pooled), or why there is none."""
    lr_change: Optional[LrChange] = None
    """The scaled train.lr recommendation.yaml's overrides carry (recommend.lr_scaling); None when the global
    batch does not change, on NO-GO, or with lr_scaling=none."""
    max_batch_latency_ms: Optional[float] = None
    """recommend.max_batch_latency_ms: the p99 budget per batch the decision held the settings to; None without one."""
    memory_fits: tuple[MemoryFit, ...] = ()
    """Per series with peaks at two or more micro-batch sizes, the line through them and the largest micro-batch
    predicted to fit under `memory_limit` (memory_fit.py)."""
    memory_limit: Optional[MemoryLimit] = None
    """The memory one rank may use, the predictions' limit; None where the caller did not know it (a multirun)."""
    memory_predictions: tuple[MemoryPrediction, ...] = ()
    """Each planned setting's memory from a traced step (measure/memory_trace.py), measured or not built."""
    over_budget: tuple[str, ...] = ()
    """Trial keys of the finished settings whose p99 is over max_batch_latency_ms (never chosen, picked by no row of
    the decision matrix)."""
    leader: Optional[SettingEstimate] = None
    """The setting ahead on the evidence: the chosen one after a GO, the best after a NO-GO, the one that would be
    chosen if more rounds confirmed it after INCONCLUSIVE (chosen is then None)."""
    confidence: float = 0.95
    """The two-sided level of the comparisons the verdict rests on (decide/sequential.py: corrected for every
    setting and every look)."""
    more_rounds: Optional[int] = None
    """INCONCLUSIVE: about how many more rounds would decide, from the spread seen so far; None otherwise."""
    more_seconds: Optional[float] = None
    """more_rounds at this sweep's seconds per round."""
    continue_overrides: tuple[str, ...] = ()
    confirm_overrides: tuple[str, ...] = ()
    """A sweep of the named setting (the chosen one after a GO, else the leader) against the baseline in paired
    rounds (decide/confirm.py); empty when there is no such pair."""
    """INCONCLUSIVE: what to add to the same command, with the same hydra.run.dir, to measure the rounds it needs
    (sweep.budget_s, sweep.max_rounds); empty otherwise."""
    ineligible: dict[str, str] = dataclasses.field(default_factory=dict)
    """Why each setting that may not be chosen may not (decide/eligible.py), by trial key: what the decision
    matrix and every sink respect."""
    compile_paybacks: tuple[CompilePayback, ...] = ()
    """Each compiled setting against its eager twin: compile time and the steps after which it pays back
    (compile_payback.py); empty without such pairs."""

    @property
    def serving(self) -> bool:
        """mode=inference: the settings are serving batch sizes, with latency figures."""
        return any(r.mode == "inference" for r in self.settings)

    @property
    def count_unit(self) -> Optional[str]:
        """What the settings' tokens_per_s counts (SettingEstimate.count_unit: tokens, or throughput.count.unit);
        None when no setting's batches carried any, so the sinks show no such figure."""
        return next((r.count_unit for r in self.settings if r.tokens_per_s is not None), None)

    def to_json_dict(self) -> dict[str, Any]:
        predictions = {p.setting_key: p for p in self.memory_predictions}

        def trial(result: Optional[SettingEstimate]) -> Optional[dict[str, Any]]:
            return None if result is None else result.to_json_dict()

        return {"decision": self.decision, "verdict": self.verdict, "unit": self.unit, "speedup": self.speedup,
                "speedup_ci95": list(self.speedup_ci95) if self.speedup_ci95 else None,
                "min_speedup": self.min_speedup, "reasons": list(self.reasons), "chosen": trial(self.chosen),
                "best": trial(self.best), "baseline": trial(self.baseline), "overrides": list(self.overrides),
                "environment": self.environment, "num_trials": self.num_trials, "num_failed": self.num_failed,
                "speedup_by_key": self.speedup_by_key,
                "not_measured": [{"label": n.label, "reason": n.reason} for n in self.not_measured],
                "drift": self.drift.to_json_dict() if self.drift else None,
                "race": self.race.to_json_dict() if self.race else None,
                "comparison": None if self.comparison is None else {
                    "a": self.comparison.a_label, "b": self.comparison.b_label, "ratio": self.comparison.ratio,
                    "ci95": list(self.comparison.interval) if self.comparison.interval else None,
                    "paired": self.comparison.estimate.paired, "num_pairs": self.comparison.estimate.num_pairs,
                    "outcome": self.comparison.outcome.value},
                "tied": list(self.tied),
                "settings": [_with_prediction(r.to_json_dict(), predictions.get(r.trial_key)) for r in self.settings],
                "memory_predictions": [_prediction_json(p, self.memory_limit) for p in self.memory_predictions],
                "speedup_intervals": {k: list(v) for k, v in self.speedup_intervals.items()},
                "input_waits": [w.to_json_dict() for w in self.input_waits],
                "input_bound_fraction": self.input_bound_fraction,
                "objective": self.objective,
                "gradient_noise_scale": _noise_scale_json(self.gradient_noise_scale, self.gradient_noise_scale_note),
                "lr": dataclasses.asdict(self.lr_change) if self.lr_change else None,
                "max_batch_latency_ms": self.max_batch_latency_ms, "over_budget": list(self.over_budget),
                "compile_payback": [p.to_json_dict() for p in self.compile_paybacks],
                "memory_fits": [f.to_json_dict() for f in self.memory_fits],
                "memory_limit": self.memory_limit.to_json_dict() if self.memory_limit else None,
                "leader": trial(self.leader), "confidence": self.confidence, "more_rounds": self.more_rounds,
                "more_seconds": self.more_seconds, "continue_overrides": list(self.continue_overrides),
                "confirm_overrides": list(self.confirm_overrides),
                "ineligible": dict(self.ineligible)}


def _noise_scale_json(figures: Optional[NoiseScaleFigures], note: Optional[str]) -> dict[str, Any]:
    """recommendation.json's `gradient_noise_scale`: the sweep's figure without the per-step estimates."""
    if figures is None:
        return {"value": None, "ci95": None, "num_steps": 0, "note": note}
    return {"value": figures.value, "ci95": figures.ci95, "num_steps": figures.num_steps,
            "batch_sizes": list(figures.batch_sizes), "g2_mean": figures.g2_mean,
            "trace_sigma_mean": figures.trace_sigma_mean, "note": note}


def _setting(result: SettingEstimate, *, against: Optional[SettingEstimate]) -> str:
    """`micro_batch_size=4 grad_accum=1`, plus every flag that differs from `against`."""
    text = f"micro_batch_size={result.micro_batch_size} grad_accum={result.grad_accum}"
    for spec in FLAG_SPECS:
        value = getattr(result.flags, spec.field_name)
        if against is not None and getattr(against.flags, spec.field_name) != value:
            text += f" {spec.config_key}={format_flag(value)}"
    return text


def _ci_text(interval: Optional[tuple[float, float]], confidence: float = 0.95) -> str:
    return ("" if interval is None
            else f", {level_text(confidence)} CI {percent(interval[0])} to {percent(interval[1])}")


@dataclass(frozen=True)
class _Verdict:
    decision: str
    chosen: Optional[SettingEstimate]
    text: str
    reason: str
    """The first reason: what decided."""
    comparison: Optional[Comparison] = None
    speedup: Optional[float] = None
    leader: Optional[SettingEstimate] = None
    """INCONCLUSIVE: the setting ahead so far (chosen is None: nothing is recommended yet)."""
    more_rounds: Optional[int] = None


def decide_race(race: RaceResult, cfg: TuneConfig, *, memory_limit: Optional[MemoryLimit] = None,
                memory_predictions: Sequence[MemoryPrediction] = ()) -> Decision:
    """The verdict on what a race measured (decide/race.py), with the error budget its looks were spent from: what a
    sweep, a replay of its journal and a simulated sweep all call. `memory_predictions` ride along for the report
    (the settings predicted over the limit are already among race.not_measured)."""
    settings = sorted(race.settings.values(), key=lambda r: r.index)  # plan order, whatever order measured in
    decision = decide(settings, args=cfg.recommend, not_measured=race.not_measured, race=race.summary,
                      lr=cfg.train.lr, memory_limit=memory_limit, budget=race.budget, sweep=cfg.sweep)
    return dataclasses.replace(decision, memory_predictions=tuple(memory_predictions))


def _with_prediction(setting: dict[str, Any], prediction: Optional[MemoryPrediction]) -> dict[str, Any]:
    """A setting's recommendation.json entry with its predicted and real-step tensor peaks (null without them)."""
    return {**setting, "predicted_peak_bytes": None if prediction is None else prediction.predicted.peak_bytes,
            "tensor_peak_bytes": None if prediction is None else prediction.tensor_peak_bytes}


def _prediction_json(prediction: MemoryPrediction, limit: Optional[MemoryLimit]) -> dict[str, Any]:
    return {"label": prediction.label, "setting_key": prediction.setting_key,
            "predicted_peak_bytes": prediction.predicted.peak_bytes, "tensor_peak_bytes": prediction.tensor_peak_bytes,
            "error": prediction.error, "parts_bytes": dict(prediction.predicted.parts_bytes),
            "notes": list(prediction.predicted.notes),
            "over_limit": predicted_over_limit(prediction.predicted.peak_bytes, limit)}


def decide(results: Sequence[SettingEstimate], *, args: RecommendArgs, not_measured: Sequence[NotMeasured] = (),
           race: Optional[RaceSummary] = None, lr: Optional[float] = None,
           memory_limit: Optional[MemoryLimit] = None, budget: Optional[ErrorBudget] = None,
           sweep: Optional[SweepArgs] = None) -> Decision:
    """The verdict from each setting's estimate over its windows (evidence/estimate.py). `lr`: the sweep's
    train.lr, which recommend.lr_scaling scales when a GO changes the global batch.

    In training, every setting first gets its statistical efficiency and goodput from the sweep's gradient noise
    scale (noise_scale.py); recommend.objective=goodput then decides on goodput by the same comparison rule.
    The steps: the pool of candidates (eligible.py), the best of them (ties broken by recommend.tie_break), the
    verdict against the baseline, then what else the verdict says (learning rate, goodput, input, the race)."""
    training = any(r.mode == "train" for r in results)
    results, gradient_noise, gradient_noise_note = with_sweep_goodput(results)
    pool, reasons = build_pool(results, args=args, contender_keys=race.contender_keys if race is not None else None)
    best, tied, pick_reasons = pick_best(pool)
    reasons += pick_reasons
    if budget is None:
        budget = error_budget(num_planned=len(results) + len(not_measured), sweep=None)
    verdict = _verdict(pool, best, budget)
    reasons.insert(0, verdict.reason)
    baseline, unit, chosen, text = pool.baseline, pool.unit, verdict.chosen, verdict.text

    change: Optional[LrChange] = None
    if verdict.decision == GO and chosen is not None and baseline is not None and chosen.mode == "train" \
            and chosen.global_batch_size != baseline.global_batch_size:
        change = lr_change(lr, chosen=chosen, baseline=baseline, rule=args.lr_scaling)
        reasons.append(batch_change_reason(change, chosen=chosen, baseline=baseline, rule=args.lr_scaling))
    if training:
        reasons.append(noise_scale_reason(gradient_noise, gradient_noise_note, baseline=baseline))
        conflict, conflict_note = throughput_vs_goodput(pool.candidates, compare=compare, unit=unit,
                                                        noise=gradient_noise)
        if conflict is not None:
            reasons.append(conflict)
        text += other_measure_note(best, baseline, goodput=pool.goodput, compare=compare) + conflict_note
    if change is not None:
        text += f"; train.lr {change.from_lr:g} -> {change.to_lr:.3g} ({change.rule} rule)"
    if best is not None:
        reasons.extend(_measured_apart_reason(best, pool.contenders, baseline=baseline))
    # Named, never disqualifying: a faster pipeline would only make an input-bound setting faster still.
    shown = chosen if chosen is not None else best
    reasons.extend(input_bound_reasons(pool.finished, threshold=args.input_bound_fraction, first=shown))
    text += verdict_note(shown, threshold=args.input_bound_fraction)
    drift = baseline_drift(baseline)
    reasons.extend(_history_reasons(race=race, drift=drift, not_measured=not_measured, unit=unit))
    overrides, environment = _overrides(chosen, change)
    named = chosen if verdict.decision == GO else (verdict.leader or best)
    confirm = confirm_overrides(named, baseline, decision=verdict.decision, args=args)
    if args.confirms:
        reasons.insert(1, confirmation_reason(args.confirms, decision=verdict.decision, chosen=chosen,
                                              baseline=baseline))
    speedup_by_key, speedup_intervals = _against_baseline(pool.finished, baseline)
    over_all = tuple(r.trial_key for r in pool.finished if args.max_batch_latency_ms is not None
                     and over_latency_budget(r, args.max_batch_latency_ms) is not None)
    return Decision(decision=verdict.decision, unit=unit, speedup_by_key=speedup_by_key,
                    leader=(verdict.leader if verdict.leader is not None
                            else best if verdict.comparison is not None else chosen), confidence=budget.confidence,
                    more_rounds=verdict.more_rounds,
                    more_seconds=(verdict.more_rounds * _round_s(pool) if verdict.more_rounds else None),
                    continue_overrides=_continue_overrides(verdict, pool=pool, race=race, sweep=sweep),
                    confirm_overrides=confirm,
                    speedup_ci95=verdict.comparison.interval if verdict.comparison else None,
                    chosen=chosen, best=best, baseline=baseline, speedup=verdict.speedup,
                    min_speedup=args.min_speedup, reasons=tuple(reasons), verdict=text,
                    overrides=overrides, environment=environment, num_trials=len(results),
                    num_failed=sum(1 for r in results if not r.ok), not_measured=tuple(not_measured), drift=drift,
                    race=race, comparison=verdict.comparison, tied=tuple(r.label for r in tied),
                    settings=tuple(results), speedup_intervals=speedup_intervals,
                    input_waits=input_waits(results, args.input_bound_fraction),
                    input_bound_fraction=args.input_bound_fraction, objective=args.objective.value,
                    gradient_noise_scale=gradient_noise, gradient_noise_scale_note=gradient_noise_note,
                    lr_change=change, max_batch_latency_ms=args.max_batch_latency_ms, over_budget=over_all,
                    compile_paybacks=tuple(compile_paybacks(results, compare=compare)),
                    memory_fits=tuple(fit_memory(results, limit=memory_limit)), memory_limit=memory_limit,
                    ineligible={r.trial_key: why for r in results if (why := eligible(r, args)) is not None})


def _verdict(pool: Pool, best: Optional[SettingEstimate], budget: ErrorBudget) -> _Verdict:
    """GO, NO-GO, INCONCLUSIVE or MEASURED for `best` against the baseline, with the reason that decided it."""
    baseline, args, unit = pool.baseline, pool.args, pool.unit
    keep = baseline if baseline is not None and baseline.ok else None
    if best is None:
        return _nothing_to_choose(pool, keep)
    if baseline is None or not baseline.ok:
        state = "was not measured" if baseline is None else f"{baseline.label} failed ({baseline.status})"
        return _Verdict(GO, best, f"{GO}: {_setting(best, against=baseline)} (fastest in {unit}/s; baseline {state})",
                        f"the baseline {state}; the fastest setting that runs is {best.label} at "
                        f"{best.throughput_per_s:,.0f} {unit}/s")
    if len(pool.results) == 1:
        return _measured_only(baseline, unit)
    if any(r.trial_key == baseline.trial_key for r in pool.over_budget):
        return _Verdict(
            GO, best, (f"{GO}: {_setting(best, against=baseline)} (the baseline {baseline.label} is over the p99 budget "
                       f"of {args.max_batch_latency_ms:g} ms; {_objective_text(best, args.objective, unit)})"),
            f"the baseline {baseline.label} breaks the latency budget (p99 {baseline.latency.p99_ms:,.1f} ms > "  # type: ignore
            f"{args.max_batch_latency_ms:g} ms); {best.label} is the {OBJECTIVE_BEST[args.objective]} within it: "
            f"{_objective_text(best, args.objective, unit)}")
    if pool.point_objective:
        return _weighed_point(best, baseline, pool=pool, budget=budget)
    return _weighed(best, baseline, pool=pool, budget=budget)


def _nothing_to_choose(pool: Pool, keep: Optional[SettingEstimate]) -> _Verdict:
    args = pool.args
    if pool.over_budget and not pool.candidates:
        quickest = min(pool.over_budget, key=lambda r: r.latency.p99_ms)  # type: ignore[union-attr]
        smallest = f"{quickest.latency.p99_ms:,.1f} ms at {quickest.label}"  # type: ignore[union-attr]
        return _Verdict(NO_GO, keep, f"{NO_GO}: no batch size meets the p99 budget of {args.max_batch_latency_ms:g} ms "
                                     f"(smallest p99 {smallest})",
                        f"no batch size meets the p99 latency budget recommend.max_batch_latency_ms="
                        f"{args.max_batch_latency_ms:g}: the smallest p99 measured is {smallest}")
    if (pool.point_objective or pool.goodput) and pool.contenders:
        return _Verdict(NO_GO, keep, f"{NO_GO}: {OBJECTIVE_FIGURE[args.objective]} not measured (recommend.objective="
                                     f"{args.objective.value})",
                        f"recommend.objective={args.objective.value} cannot be decided: "
                        f"{OBJECTIVE_FIGURE[args.objective]} was not measured")
    return _Verdict(NO_GO, keep, f"{NO_GO}: no setting finished cleanly",
                    "no setting finished cleanly within the memory limit, so there is nothing to recommend")


def _measured_only(baseline: SettingEstimate, unit: str) -> _Verdict:
    interval = baseline.throughput_ci95
    spread = f", 95% CI {interval[0]:,.0f} to {interval[1]:,.0f}" if interval else ""
    windows = count(baseline.num_windows, "window")
    sweep = "+sweep=serving" if baseline.latency is not None else "+sweep=batch"
    p99 = f", p99 {baseline.latency.p99_ms:,.1f} ms" if baseline.latency is not None else ""
    return _Verdict(MEASURED, baseline, (f"{MEASURED}: {_setting(baseline, against=None)} at "
                                         f"{baseline.throughput_per_s:,.0f} {unit}/s ({windows}{spread}{p99}); one "
                                         f"setting, nothing to compare"),
                    f"only the baseline {baseline.label} was measured (no sweep: add {sweep} or sweep.* keys to "
                    f"compare settings), so there is nothing to compare it with")


def _weighed(best: SettingEstimate, baseline: SettingEstimate, *, pool: Pool, budget: ErrorBudget) -> _Verdict:
    """GO, NO-GO or INCONCLUSIVE on the evidence (decide/sequential.py): paired against the baseline, at the level
    that corrects for every setting and every look."""
    args, unit, goodput = pool.args, pool.unit, pool.goodput
    weighed = weigh(best, baseline, candidates=pool.candidates, contenders=pool.contenders, args=args,
                    budget=budget, goodput=goodput)
    comparison = weighed.comparison
    assert comparison is not None  # weigh always compares the leader with the baseline
    speedup, interval, level = comparison.ratio, comparison.interval, budget.confidence
    measure = f"goodput in {unit}/s" if goodput else f"{unit}/s"
    measured = (f"{best.label} reaches {best.throughput_per_s:,.0f} {unit}/s vs {baseline.throughput_per_s:,.0f} for the "
                f"baseline {baseline.label}: {comparison.describe()}")
    if goodput:
        measured = (f"{best.label} reaches a goodput of {best.goodput_per_s:,.0f} {unit}/s "
                    f"({best.throughput_per_s:,.0f} {unit}/s x efficiency {best.statistical_efficiency:.2f}) "
                    f"vs {baseline.goodput_per_s:,.0f} for the baseline {baseline.label}: "
                    f"{comparison.describe()} (recommend.objective=goodput)")
        if best.statistical_efficiency_ci95 is not None and best.statistical_efficiency:
            # The baseline's efficiency is 1 whatever B_noise is: only best's moves with it.
            ends = [comparison.ratio * e / best.statistical_efficiency for e in best.statistical_efficiency_ci95]
            measured += (f"; with B_noise at either end of its 95% interval the ratio would be "
                         f"{percent(ends[0])} to {percent(ends[1])}")
    measured += f" ({budget.describe()})"
    keep = f"keep baseline {_setting(baseline, against=None)}"
    if args.target_throughput_per_s is not None and best.throughput_per_s < args.target_throughput_per_s:  # type: ignore
        return _Verdict(NO_GO, baseline, f"{NO_GO}: {keep} (best {best.label} reaches {best.throughput_per_s:,.0f} "
                                         f"{unit}/s, below recommend.target_throughput_per_s)",
                        f"{measured}; but {best.throughput_per_s:,.0f} {unit}/s is below "
                        f"recommend.target_throughput_per_s={args.target_throughput_per_s:,.0f}",
                        comparison=comparison, speedup=speedup)
    if weighed.decision == GO:
        return _Verdict(GO, best, (f"{GO}: {_setting(best, against=baseline)} ({percent(speedup)} {measure} vs "
                                   f"baseline {baseline.label}{_ci_text(interval, level)})"),
                        f"{measured}; {weighed.reason}", comparison=comparison, speedup=speedup)
    if weighed.decision == NO_GO and best.trial_key == baseline.trial_key:
        most = "most goodput" if goodput else "fastest"
        rate = (f"{baseline.goodput_per_s:,.0f} {unit}/s of goodput" if goodput
                else f"{baseline.throughput_per_s:,.0f} {unit}/s")
        return _Verdict(NO_GO, baseline, f"{NO_GO}: {keep} ({most} measured in {unit}/s)",
                        f"the baseline {baseline.label} is the {'setting with the most goodput' if goodput else 'fastest setting'} "
                        f"measured ({rate}); {weighed.reason} ({budget.describe()})", comparison=comparison,
                        speedup=speedup)
    if weighed.decision == NO_GO:
        return _Verdict(NO_GO, baseline, (f"{NO_GO}: {keep} (no setting reaches {percent(args.min_speedup)}: best "
                                          f"{best.label} is {percent(speedup)} {measure}{_ci_text(interval, level)})"),
                        f"{measured}; {weighed.reason}", comparison=comparison, speedup=speedup)
    leads = "the baseline" if best.trial_key == baseline.trial_key else best.label
    if weighed.rivals:
        # The leader clears the margin: what is open is which of the close settings is fastest, not whether to
        # change. Say so, and the indifference that would accept the leader as it stands (a re-decide, no rounds).
        ahead = weighed.rivals[0][1]
        more = rounds_to_decide(ahead, num_rounds=ahead.estimate.num_pairs, margin=1.0 + args.indifference)
        names = ", ".join(rival.label for rival, _ in weighed.rivals[:3])
        if len(weighed.rivals) > 3:
            names += f" and {len(weighed.rivals) - 3} more"
        text = (f"{INCONCLUSIVE}: {leads} clears the margin at {percent(speedup)} {measure} vs baseline "
                f"{baseline.label}{_ci_text(interval, level)}, but {names} may be faster than it by more than "
                f"{args.indifference:.0%}")
        if ahead.interval is not None:
            wider = math.ceil((ahead.interval[1] - 1.0) * 100.0) / 100.0
            text += (f" (up to {percent(ahead.interval[1])}); recommend.indifference={wider:g} would accept "
                     f"{best.label} as measured")
        text += (f"; about {count(more, 'more round')} would tell them apart" if more
                 else "; they are too close for more rounds alone to tell apart")
    elif interval is None:
        more = 1
        text = (f"{INCONCLUSIVE}: {leads} leads at {percent(speedup)} {measure} vs baseline {baseline.label} in one "
                f"window each, which gives no interval; another round would give one")
    else:
        more = rounds_to_decide(comparison, num_rounds=comparison.estimate.num_pairs, margin=args.min_speedup)
        text = (f"{INCONCLUSIVE}: {leads} leads at {percent(speedup)} {measure} vs baseline "
                f"{baseline.label}{_ci_text(interval, level)}, needs {percent(args.min_speedup)}")
        text += _more_rounds_text(more)
    return _Verdict(INCONCLUSIVE, None, text, f"{measured}; but {weighed.reason}", comparison=comparison,
                    speedup=speedup, leader=best, more_rounds=more)


def _continue_overrides(verdict: _Verdict, *, pool: Pool, race: Optional[RaceSummary],
                        sweep: Optional[SweepArgs]) -> tuple[str, ...]:
    """INCONCLUSIVE: the overrides that let the same sweep (same output directory) measure the rounds it needs:
    its finished windows are kept and the race goes on from where it stopped."""
    if verdict.decision != INCONCLUSIVE or sweep is None or race is None:
        return ()
    more = verdict.more_rounds or max(2, race.num_rounds)
    spent_s = math.fsum(r.wall_s or 0.0 for r in pool.results)
    budget_s = math.ceil((spent_s + more * _round_s(pool)) / 5.0) * 5
    rounds = max(sweep.max_rounds, race.num_rounds + more)
    return (f"sweep.budget_s={max(budget_s, sweep.budget_s or 0):g}", f"sweep.max_rounds={rounds}")


def _round_s(pool: Pool) -> float:
    """Seconds one more round takes: a window of the baseline and of every setting still in the race, each at its
    mean window's wall time so far."""
    racing = [r for r in pool.finished if r.is_baseline or r in pool.contenders]
    return math.fsum((r.wall_s or 0.0) / max(1, r.num_windows) for r in racing)


def _history_reasons(*, race: Optional[RaceSummary], drift: Optional[Drift], not_measured: Sequence[NotMeasured],
                     unit: str) -> list[str]:
    """How the sweep went: the race's rounds and drops, the baseline's drift, the settings never measured."""
    reasons = []
    if race is not None:
        reasons.append(f"{count(race.num_rounds, 'round')} measured; the race ended: {race.end_reason}")
        reasons += [f"{d.label} left the race after round {d.after_round}: {d.reason}" for d in race.drops]
    if drift is not None:
        reasons.append(_drift_reason(drift, unit))
    if not_measured:
        reasons.append(f"{count(len(not_measured), 'planned setting')} not measured: "
                       + "; ".join(f"{n.label}: {n.reason}" for n in _first_per_reason(not_measured)))
    return reasons


def _overrides(chosen: Optional[SettingEstimate], change: Optional[LrChange]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The Hydra overrides and NSA_* environment that train (or measure) with the chosen setting."""
    if chosen is None:
        return (), {}
    overrides = (*chosen.run_overrides, f"train.micro_batch_size={chosen.micro_batch_size}",
                 f"train.grad_accum={chosen.grad_accum}", *flags_to_overrides(chosen.flags))
    if change is not None:
        overrides = (*without_lr(overrides), change.override)
    return overrides, flags_to_environ(chosen.flags)


def _against_baseline(finished: Sequence[SettingEstimate], baseline: Optional[SettingEstimate]
                      ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Each finished setting's speedup over the baseline and its interval, where it has one."""
    if baseline is None or not baseline.ok or not baseline.throughput_per_s:
        return {}, {}
    against = {r.trial_key: compare(r, baseline) for r in finished}
    return ({key: c.ratio for key, c in against.items()},
            {key: c.interval for key, c in against.items() if c.interval is not None})


def _objective_text(result: SettingEstimate, objective: Objective, unit: str) -> str:
    if objective == Objective.latency:
        return f"p99 {result.latency.p99_ms:,.1f} ms"  # type: ignore[union-attr]
    if objective == Objective.energy:
        return f"{result.energy_j_per_sample:.3g} J per sample"
    return f"{result.throughput_per_s:,.0f} {unit}/s"


def _weighed_point(best: SettingEstimate, baseline: SettingEstimate, *, pool: Pool, budget: ErrorBudget) -> _Verdict:
    """recommend.objective=latency or energy: GO, NO-GO or INCONCLUSIVE by the same rule and error budget as
    throughput (decide/sequential.weigh), on the objective's figure per window: compare_lower pairs the baseline's
    p99 (or energy per sample) over each setting's by round, so 1.25 means 25% lower. Settings without the figure
    take no part; without the baseline's, the best figure is chosen and the verdict says it was not compared."""
    args, unit, objective = pool.args, pool.unit, pool.args.objective
    figure = objective.value
    mine, theirs = _objective_text(best, objective, unit), _objective_text(baseline, objective, unit)
    if not lower_figures_by_round(baseline, figure):
        return _Verdict(GO, best, f"{GO}: {_setting(best, against=baseline)} ({mine}; the baseline's "
                                  f"{OBJECTIVE_FIGURE[objective]} was not measured)",
                        f"{best.label} has the {OBJECTIVE_BEST[objective]}: {mine}")

    def comparer(a: SettingEstimate, b: SettingEstimate, confidence: float) -> Comparison:
        return compare_lower(a, b, figure=figure, confidence=confidence)

    measured_too = [r for r in pool.candidates if lower_figures_by_round(r, figure)]
    weighed = weigh(best, baseline, candidates=measured_too, args=args, budget=budget, comparer=comparer,
                    contenders=[r for r in pool.contenders if lower_figures_by_round(r, figure)])
    comparison = weighed.comparison
    assert comparison is not None
    gain, interval, level = comparison.ratio, comparison.interval, budget.confidence
    better = f"{percent(gain)} better{_ci_text(interval, level)}"
    measured = (f"{best.label} has the {OBJECTIVE_BEST[objective]}: {mine} vs {theirs} for the baseline "
                f"{baseline.label}; the baseline's over its, window by window: {comparison.describe()} "
                f"({budget.describe()})")
    keep = f"keep baseline {_setting(baseline, against=None)}"
    if weighed.decision == GO:
        return _Verdict(GO, best, f"{GO}: {_setting(best, against=baseline)} ({mine} vs {theirs} for baseline "
                                  f"{baseline.label}, {better})", f"{measured}; {weighed.reason}",
                        comparison=comparison, speedup=gain)
    if weighed.decision == NO_GO:
        shown = (f"{OBJECTIVE_BEST[objective]} measured" if best.trial_key == baseline.trial_key
                 else f"best {best.label} {mine}, {better}, needs {percent(args.min_speedup)}")
        return _Verdict(NO_GO, baseline, f"{NO_GO}: {keep} ({shown})", f"{measured}; {weighed.reason}",
                        comparison=comparison, speedup=gain)
    more = (rounds_to_decide(comparison, num_rounds=comparison.estimate.num_pairs, margin=args.min_speedup)
            if interval is not None else 1)
    leads = "the baseline" if best.trial_key == baseline.trial_key else best.label
    text = (f"{INCONCLUSIVE}: {leads} leads with {mine} vs {theirs} for baseline {baseline.label} "
            f"({better if interval is not None else f'{percent(gain)} better, one window: no interval'}), needs "
            f"{percent(args.min_speedup)}")
    text += _more_rounds_text(more)
    return _Verdict(INCONCLUSIVE, None, text, f"{measured}; but {weighed.reason}", comparison=comparison,
                    speedup=gain, leader=best, more_rounds=more)


def _more_rounds_text(more: Optional[int]) -> str:
    """The end of an INCONCLUSIVE verdict against the margin (throughput or a point objective): how many more
    rounds would decide, or that the margin sits inside the noise."""
    return (f"; about {count(more, 'more round')} would decide" if more
            else "; the margin sits inside the noise: more rounds alone are unlikely to decide it")


def _measured_apart_reason(best: SettingEstimate, contenders: Sequence[SettingEstimate], *,
                           baseline: Optional[SettingEstimate]) -> list[str]:
    """Say so when `best` was chosen over settings it shares no round with: the jobs of a multirun each race
    their setting against the baseline in rounds of their own, so two jobs' settings are compared unpaired."""
    rounds = set(best.rates_by_round())
    apart = [r.label for r in contenders if r.trial_key != best.trial_key and not r.is_baseline
             and not rounds & set(r.rates_by_round())]
    if not apart or best.is_baseline:
        return []
    return [f"{best.label} and {', '.join(apart)} were measured at different times, in rounds with none in common "
            f"(separate jobs of a multirun): each one's speedup over the baseline pairs it with the baseline's "
            f"windows of its own job, but {best.label} was chosen over them from unpaired windows, where a change "
            f"in the machine's speed between jobs does not cancel; to choose between close settings, measure them "
            f"in one sweep (+sweep=... or sweep.* axes, without -m)"]


def _first_per_reason(items: Sequence[NotMeasured]) -> list[NotMeasured]:
    """One line per distinct reason: a chain stopped at 8 leaves 16, 32, ... with the same reason."""
    grouped: dict[str, list[str]] = {}
    for item in items:
        grouped.setdefault(item.reason, []).append(item.label)
    return [NotMeasured(label=", ".join(labels), reason=reason) for reason, labels in grouped.items()]
