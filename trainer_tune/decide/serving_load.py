"""The verdict of a serving-under-load sweep: which batcher setting sustains the highest arrival rate within the p99
target, and whether it beats the baseline (the batch served today, no queue delay) by the margin.

Each setting's evidence is a SustainableRate (evidence/serving_load.RateSearch.result): the highest measured rate
whose p99 met the target, and the bracket up to the lowest rate that missed it. The true crossing lies inside the
bracket, so two settings are told apart only when their brackets, scaled by the margin, do not overlap:
- GO: the leader's lower end is at least `min_speedup` times the baseline's upper end;
- NO-GO: no other setting's upper end reaches `min_speedup` times the baseline's lower end (none can be better by
  the margin);
- INCONCLUSIVE otherwise: the brackets overlap, and more rates between them would tell. Also when no setting, the
  baseline included, met the target at any measured rate: that says nothing about which is better at lower rates,
  so "keep the baseline" would be a claim the data does not make (a target below every service time is a NO-GO,
  decided before this rule, from that figure).
The checks behind the brackets carry the confidence; this rule adds none of its own. A sweep applies it twice
(decide_serving_load): on brackets from checks at 95% each (LoadGen's level: what the search steers by and what the
report's intervals show), and on brackets from the same requests at the corrected level, which spreads the verdict's
error over every setting compared and every rate each search may measure (decide/sequential.py's Bonferroni over
settings x looks). GO and NO-GO stand only when the corrected brackets say so too; otherwise INCONCLUSIVE, naming
what the 95% brackets suggest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from trainer_tune.decide.sequential import GO, INCONCLUSIVE, NO_GO, ErrorBudget
from trainer_tune.evidence.batcher_sim import sampled_service, simulate
from trainer_tune.evidence.load_point import LoadPoint, load_point
from trainer_tune.evidence.load_search import PredictedRate, capacity_per_s, predict_sustainable_rate
from trainer_tune.evidence.serving_load import (
    QuantileEstimate, RatePoint, RateSearch, SustainableRate, fill_up_requests, quantile_interval)
from trainer_tune.measure.load_record import LoadRecord
from trainer_tune.config.schema import TuneConfig
from trainer_tune.measure.load_record import ServiceRecord
from trainer_tune.plan import BatcherSetting, batcher_plan
from trainer_tune.platform.units import format_ms
from trainer_tune.workloads.arrivals import poisson_arrivals_s


@dataclass(frozen=True)
class ServingVerdict:
    decision: str
    """GO, NO-GO or INCONCLUSIVE."""
    chosen: str
    """The setting to serve with: the leader after a GO, the baseline otherwise."""
    leader: str
    """The setting with the highest sustainable rate (the first of equals, in the order given)."""
    reason: str


def _rate_text(rate_per_s: float) -> str:
    return "any measured rate" if math.isinf(rate_per_s) else f"{rate_per_s:,.4g}/s"


def _bracket(rate: SustainableRate) -> str:
    high = "unbounded" if math.isinf(rate.high_per_s) else f"{rate.high_per_s:,.4g}/s"
    return f"{rate.rate_per_s:,.4g}/s (up to {high})"


def serving_verdict(rates: Mapping[str, SustainableRate], *, baseline: str, min_speedup: float) -> ServingVerdict:
    """`rates`: each setting's sustainable rate by its label, the baseline's among them, in the order ties go by
    (put the cheaper setting first: a smaller batch, a shorter delay)."""
    if baseline not in rates:
        raise ValueError(f"the baseline {baseline} has no sustainable rate among {sorted(rates)}")
    if not min_speedup > 0:
        raise ValueError(f"min_speedup={min_speedup}: needs a positive margin")
    base = rates[baseline]
    leader = max(rates, key=lambda label: rates[label].rate_per_s)  # max keeps the first of equals
    lead = rates[leader]
    if all(rate.rate_per_s == 0 for rate in rates.values()):
        lowest = ", ".join(f"{label} below {_rate_text(rate.high_per_s)}" for label, rate in rates.items())
        return ServingVerdict(INCONCLUSIVE, baseline, baseline,
                              f"{INCONCLUSIVE}: no batcher setting met the p99 target at any measured rate ({lowest}): "
                              f"lower rates (serving.rate_per_s=[...]), more requests per rate "
                              f"(serving.requests_per_rate, serving.max_s_per_rate) or a looser target would tell")
    others = {label: rate for label, rate in rates.items() if label != baseline}
    if leader != baseline and lead.rate_per_s > 0 and lead.rate_per_s >= min_speedup * base.high_per_s:
        return ServingVerdict(GO, leader, leader,
                              f"{GO}: {leader} sustains {_bracket(lead)} within the p99 target, at least "
                              f"{min_speedup:g}x the baseline {baseline}'s {_bracket(base)}")
    if not others:
        return ServingVerdict(INCONCLUSIVE, baseline, baseline,
                              f"{INCONCLUSIVE}: no other setting has a measured rate to compare with the baseline "
                              f"{baseline}'s {_bracket(base)}")
    if all(rate.high_per_s < min_speedup * base.rate_per_s for rate in others.values()):
        return ServingVerdict(NO_GO, baseline, leader,
                              f"{NO_GO}: no confirmed setting can sustain {min_speedup:g}x the baseline {baseline}'s "
                              f"{_bracket(base)}; the best, {leader}, {_bracket(lead)}")
    # Settings that may still be better than the baseline by the margin; the verdict names the best of them.
    contenders = [label for label, rate in others.items() if rate.high_per_s >= min_speedup * base.rate_per_s]
    contender = max(contenders, key=lambda label: rates[label].rate_per_s)
    base_text = (f"{base.rate_per_s:,.4g}/s, not bounded above (it met the target at every measured rate)"
                 if math.isinf(base.high_per_s) else _bracket(base))
    return ServingVerdict(INCONCLUSIVE, baseline, leader,
                          f"{INCONCLUSIVE}: {contender} sustains {_bracket(rates[contender])} and the baseline "
                          f"{baseline} {base_text}: at a margin of {min_speedup:g}x they cannot be told apart "
                          f"yet; rates between them would tell")


# --- A whole serving-under-load sweep, from its journal lines to its Decision ---------------------------------

AGREEMENT_SHARE = 0.2
"""Simulated and measured p99 further apart than this share at one rate: the report says so and trusts the
measurement."""
NEAR_CAPACITY = 0.7
"""Agreement counts at rates of at least this share of a setting's capacity, where queueing matters."""
SIM_REQUESTS = 20_000
"""Simulated requests per predicted rate: enough that the simulated p99 moves by a few percent between seeds."""


CHECK_CONFIDENCE = 0.95
"""The level of each rate's p99 interval and target check as measured and reported (LoadGen's early-stopping level)."""


@dataclass(frozen=True)
class MeasuredRate:
    """One real (setting, rate): its figures over every replica, and the simulation's p99 at the same rate."""

    point: LoadPoint
    """At CHECK_CONFIDENCE."""
    strict: RatePoint
    """The same requests' target check at the sweep's corrected level."""
    simulated_p99_s: float
    """The batcher simulation at this rate, driven by the service times of this setting's other real runs (not this
    run's own; closed-loop samples for a batch size those never served)."""
    behind_s: float
    """The most any replica's loop woke after the time it waited for (its own lateness on a busy host)."""
    share_of_capacity: float

    @property
    def disagreement(self) -> float:
        """|simulated / measured p99 - 1|."""
        return abs(self.simulated_p99_s / self.point.p99.point_s - 1.0)


def _interval_ms(estimate: QuantileEstimate) -> list[Optional[float]]:
    """[low, high] in milliseconds; an open upper end (the data cannot bound it) is null."""
    return [1e3 * estimate.low_s, None if math.isinf(estimate.high_s) else 1e3 * estimate.high_s]


@dataclass(frozen=True)
class SettingLoad:
    """One batcher setting's evidence: its simulated prediction and, when confirmed for real, its measured rates."""

    label: str
    max_batch_size: int
    max_queue_delay_ms: float
    is_baseline: bool
    capacity_per_s: float
    predicted: Optional[PredictedRate]
    """The simulated search (None without a p99 target)."""
    measured: tuple[MeasuredRate, ...]
    """In the order measured."""
    rate: Optional[SustainableRate]
    """The real search's answer from checks at CHECK_CONFIDENCE (None when not measured for real, or without a
    target)."""
    rate_corrected: Optional[SustainableRate] = None
    """The same from the checks at the corrected level: what GO and NO-GO rest on."""
    error: Optional[str] = None
    """A run that failed on some replica: the setting is out of the verdict."""

    @property
    def confirmed(self) -> bool:
        return bool(self.measured) and self.error is None

    def at_rate(self) -> Optional[MeasuredRate]:
        """The measured rate the sustainable rate names (the highest that met the target), else the lowest."""
        if not self.measured:
            return None
        if self.rate is not None and self.rate.rate_per_s > 0:
            return next(m for m in self.measured if math.isclose(m.point.rate_per_s, self.rate.rate_per_s))
        return min(self.measured, key=lambda m: m.point.rate_per_s)

    def serving_json(self) -> dict[str, Any]:
        """recommendation.json's `settings[].serving`."""
        at = self.at_rate()
        rate = self.rate
        return {"max_batch_size": self.max_batch_size, "max_queue_delay_ms": self.max_queue_delay_ms,
                "sustainable_rate_per_s": None if rate is None else rate.rate_per_s,
                "sustainable_rate_ci95": None if rate is None else [rate.low_per_s,
                                                                    None if math.isinf(rate.high_per_s)
                                                                    else rate.high_per_s],
                "p99_ms_at_rate": None if at is None else 1e3 * at.point.p99.point_s,
                "p99_ci95_at_rate": None if at is None else _interval_ms(at.point.p99),
                "num_requests": None if at is None else at.point.num_requests,
                "rate_reason": None if rate is None else rate.reason,
                "sustainable_rate_corrected_per_s": None if self.rate_corrected is None else [
                    self.rate_corrected.rate_per_s, None if math.isinf(self.rate_corrected.high_per_s)
                    else self.rate_corrected.high_per_s],
                "predicted_rate_per_s": None if self.predicted is None else self.predicted.rate.rate_per_s,
                "capacity_per_s": self.capacity_per_s, "confirmed": self.confirmed, "error": self.error,
                "measured": [{"rate_per_s": m.point.rate_per_s, "p50_ms": 1e3 * m.point.p50.point_s,
                              "p50_interval_ms": _interval_ms(m.point.p50), "p90_ms": 1e3 * m.point.p90.point_s,
                              "p90_interval_ms": _interval_ms(m.point.p90), "p99_ms": 1e3 * m.point.p99.point_s,
                              "p99_interval_ms": _interval_ms(m.point.p99),
                              "num_requests": m.point.num_requests, "dropped_requests": m.point.dropped_requests,
                              "check": m.point.check.status, "more_requests": m.point.check.more_requests,
                              "sustainable": m.point.sustainability.sustainable,
                              "sustainability": m.point.sustainability.reason,
                              "simulated_p99_ms": 1e3 * m.simulated_p99_s, "behind_ms": 1e3 * m.behind_s,
                              "share_of_capacity": m.share_of_capacity} for m in self.measured]}


@dataclass(frozen=True)
class ServingLoadDecision:
    decision: Optional[str]
    """GO, NO-GO or INCONCLUSIVE; None without a p99 target (the rates are reported, nothing is compared)."""
    chosen: str
    leader: str
    reason: str
    baseline: str
    target_p99_ms: Optional[float]
    confidence: float
    """The corrected two-sided level GO and NO-GO rest on (each rate's reported interval is at CHECK_CONFIDENCE)."""
    budget: str
    """How the corrected level was reached (`99.72% intervals: 95% over 3 settings x 6 rates`)."""
    settings: tuple[SettingLoad, ...]
    """Plan order, the baseline first."""
    fastest_single_ms: float
    notes: tuple[str, ...]
    """Where the simulation and the measurement disagree, and what else a reader must know."""
    agreement: tuple[int, int]
    """(measured rates at >= 70% of capacity where the simulated p99 is within 20% of the measured, such rates)."""

    def setting(self, label: str) -> SettingLoad:
        return next(s for s in self.settings if s.label == label)


def serving_budget(*, num_confirmed: int, max_rates: int) -> ErrorBudget:
    """Every p99 check of the real searches may be a bracket's end, and the brackets of every confirmed setting
    and the baseline are compared: Bonferroni over (confirmed settings + the baseline) x the rates each search may
    measure, as decide/sequential.py spreads a training verdict's error over settings x looks."""
    return ErrorBudget(num_settings=num_confirmed + 1, num_looks=max_rates)


def predict_settings(samples_s: Mapping[int, Sequence[float]], settings: Sequence[BatcherSetting], *,
                     target_p99_s: float, seed: int) -> dict[str, PredictedRate]:
    """The simulated sustainable rate of every setting (seconds: the whole grid, before anything runs under load)."""
    return {s.label: predict_sustainable_rate(samples_s, max_batch_size=s.max_batch_size,
                                              max_queue_delay_s=s.max_queue_delay_s, target_p99_s=target_p99_s,
                                              num_requests=SIM_REQUESTS, seed=seed) for s in settings}


def settings_to_confirm(settings: Sequence[BatcherSetting], baseline: BatcherSetting, *,
                        predicted: Mapping[str, PredictedRate], count: int) -> list[BatcherSetting]:
    """The baseline and the `count` settings the simulation ranks highest (ties: plan order, smaller first): the
    ones the real searches measure."""
    others = [s for s in settings if s != baseline]
    ranked = sorted(others, key=lambda s: -predicted[s.label].rate.rate_per_s)  # sorted is stable: plan order
    return [baseline, *ranked[:count]]


def _simulated_p99_s(record: LoadRecord, others: Sequence[LoadRecord], closed_s: Mapping[int, Sequence[float]], *,
                     seed: int) -> float:
    """The simulation's p99 at `record`'s rate, on service times the setting's other real runs served."""
    served: dict[int, list[float]] = {}
    for other in others:
        for replica in other.replicas:
            for size, times in replica.service_by_batch_size().items():
                served.setdefault(size, []).extend(times)
    samples = {**closed_s, **served}
    arrivals_s = poisson_arrivals_s(record.rate_per_s, SIM_REQUESTS, seed)
    run = simulate(arrivals_s, sampled_service(samples, seed + 1), max_batch_size=record.max_batch_size,
                   max_queue_delay_s=record.max_queue_delay_ms / 1e3)
    latency = list(run.latency_s)
    return quantile_interval(latency[fill_up_requests(latency):], 0.99).point_s


def setting_load(setting: BatcherSetting, *, is_baseline: bool, records: Sequence[LoadRecord],
                 closed_s: Mapping[int, Sequence[float]], predicted: Optional[PredictedRate],
                 target_p99_s: Optional[float], confidence: float, search: Optional[RateSearch],
                 seed: int) -> SettingLoad:
    """One setting's evidence from its journal lines (in the order measured)."""
    capacity = capacity_per_s(closed_s, setting.max_batch_size)
    failed = next((r for r in records if not r.ok), None)
    measured = []
    ok = [r for r in records if r.ok]
    target = target_p99_s if target_p99_s is not None else math.inf
    for record in ok:
        point = load_point(record.replicas, rate_per_s=record.rate_per_s, target_p99_s=target,
                           confidence=CHECK_CONFIDENCE)
        strict = load_point(record.replicas, rate_per_s=record.rate_per_s, target_p99_s=target,
                            confidence=confidence).rate_point()
        others = [r for r in ok if r is not record]
        measured.append(MeasuredRate(point=point, strict=strict,
                                     simulated_p99_s=_simulated_p99_s(record, others, closed_s, seed=seed),
                                     behind_s=max(r.behind_us for r in record.replicas) / 1e6,
                                     share_of_capacity=record.rate_per_s / capacity))
    rate = corrected = None
    if search is not None and measured and failed is None:
        rate = search.result([m.point.rate_point() for m in measured])
        corrected = search.result([m.strict for m in measured])
    return SettingLoad(label=setting.label, max_batch_size=setting.max_batch_size,
                       max_queue_delay_ms=setting.max_queue_delay_ms, is_baseline=is_baseline,
                       capacity_per_s=capacity, predicted=predicted, measured=tuple(measured), rate=rate,
                       rate_corrected=corrected, error=None if failed is None else failed.error)


def decide_serving_load(*, settings: Sequence[SettingLoad], baseline: str, target_p99_ms: Optional[float],
                        min_speedup: float, budget: ErrorBudget, fastest_single_s: float) -> ServingLoadDecision:
    """The verdict over the confirmed settings (serving_verdict on their brackets), with what the report says."""
    notes = []
    agree = near = 0
    for s in settings:
        for m in s.measured:
            if m.share_of_capacity >= NEAR_CAPACITY:
                near += 1
                agree += m.disagreement <= AGREEMENT_SHARE
            if m.disagreement > AGREEMENT_SHARE:
                notes.append(f"{s.label} at {m.point.rate_per_s:,.4g}/s: simulated p99 "
                             f"{format_ms(1e3 * m.simulated_p99_s)} ms vs measured "
                             f"{format_ms(1e3 * m.point.p99.point_s)} ms ({m.simulated_p99_s / m.point.p99.point_s - 1:+.0%}"
                             f"): more than {AGREEMENT_SHARE:.0%} apart, the measurement is what counts")
    for s in settings:
        if s.error is not None:
            notes.append(f"{s.label} failed under load and is out of the verdict: {s.error}")
    common = dict(baseline=baseline, target_p99_ms=target_p99_ms, confidence=budget.confidence,
                  budget=budget.describe(look="rate"), settings=tuple(settings),
                  fastest_single_ms=1e3 * fastest_single_s, agreement=(agree, near))
    if target_p99_ms is None:
        return ServingLoadDecision(decision=None, chosen=baseline, leader=baseline, notes=tuple(notes),
                                   reason="no p99 target (recommend.max_p99_ms): the listed rates are measured and "
                                          "reported, no setting is compared with the baseline", **common)
    if target_p99_ms / 1e3 < fastest_single_s:
        return ServingLoadDecision(decision=NO_GO, chosen=baseline, leader=baseline, notes=tuple(notes),
                                   reason=f"{NO_GO}: recommend.max_p99_ms={target_p99_ms:g} is below the fastest "
                                          f"one-request service time measured, {format_ms(1e3 * fastest_single_s)} "
                                          f"ms: no rate and no batcher setting can meet it", **common)
    rates = {s.label: s.rate for s in settings if s.confirmed and s.rate is not None}
    if baseline not in rates:
        base = next(s for s in settings if s.label == baseline)
        return ServingLoadDecision(decision=INCONCLUSIVE, chosen=baseline, leader=baseline, notes=tuple(notes),
                                   reason=f"{INCONCLUSIVE}: the baseline {baseline} has no measured sustainable rate"
                                          f"{': ' + base.error if base.error else ''}; nothing can be compared "
                                          f"with it", **common)
    verdict = serving_verdict(rates, baseline=baseline, min_speedup=min_speedup)
    strict = serving_verdict({s.label: s.rate_corrected for s in settings
                              if s.confirmed and s.rate_corrected is not None},
                             baseline=baseline, min_speedup=min_speedup)
    level = f"the corrected level ({budget.describe(look='rate')})"
    if strict.decision != INCONCLUSIVE and strict.decision == verdict.decision:
        # Both levels agree. (A stricter level can move a bracket up as well as widen it: a rate missed at 95% may
        # be unknown at the corrected level, and a met rate above it then counts; a verdict only one level gives
        # is not one the evidence supports.)
        return ServingLoadDecision(decision=strict.decision, chosen=strict.chosen, leader=strict.leader,
                                   reason=f"{strict.reason}; at {level}", notes=tuple(notes), **common)
    if verdict.decision == INCONCLUSIVE and strict.decision == INCONCLUSIVE:
        return ServingLoadDecision(decision=INCONCLUSIVE, chosen=baseline, leader=verdict.leader,
                                   reason=verdict.reason, notes=tuple(notes), **common)
    if verdict.decision == INCONCLUSIVE:
        return ServingLoadDecision(
            decision=INCONCLUSIVE, chosen=baseline, leader=verdict.leader, notes=tuple(notes),
            reason=f"{INCONCLUSIVE}: checks at {CHECK_CONFIDENCE:.0%} each cannot tell ({verdict.reason.split(': ', 1)[1]})"
                   f", and the corrected level's {strict.decision} alone is not evidence", **common)
    return ServingLoadDecision(
        decision=INCONCLUSIVE, chosen=baseline, leader=verdict.leader, notes=tuple(notes),
        reason=f"{INCONCLUSIVE}: checks at {CHECK_CONFIDENCE:.0%} each say {verdict.decision} "
               f"({verdict.reason.split(': ', 1)[1]}), but not at {level}, where {strict.reason.split(': ', 1)[1]}",
        **common)


def decide_from_records(cfg: TuneConfig, service: ServiceRecord, records: Sequence[LoadRecord], *,
                        predicted: Optional[Mapping[str, PredictedRate]] = None) -> ServingLoadDecision:
    """A serving-under-load sweep's Decision from its journal lines (the sweep's own, or a re-decide's with other
    recommend.* keys): every planned setting, the confirmed ones with their measured rates in the order measured.
    `predicted`: the sweep's simulated searches when it has them (else computed again: the same seed and samples give
    the same prediction)."""
    baseline, settings = batcher_plan(cfg)
    closed_s = service.pooled_s()
    target_s = None if cfg.recommend.max_p99_ms is None else cfg.recommend.max_p99_ms / 1e3
    if predicted is None:
        predicted = ({} if target_s is None else
                     predict_settings(closed_s, settings, target_p99_s=target_s, seed=cfg.serving.seed))
    by_label: dict[str, list[LoadRecord]] = {}
    for record in records:
        by_label.setdefault(record.setting, []).append(record)
    listed = None if cfg.serving.rate_per_s == "auto" else list(cfg.serving.rate_per_s)
    confirmed = [s for s in settings if s.label in by_label]
    budget = serving_budget(num_confirmed=max(0, len(confirmed) - 1),
                            max_rates=cfg.serving.max_rates if listed is None else len(listed))
    loads = []
    for setting in settings:
        search = None
        if target_s is not None and setting.label in by_label:
            # The result of a search reads only its points and its target: the bounds are any valid pair.
            rates = [r.rate_per_s for r in by_label[setting.label]]
            search = RateSearch(target_s=target_s, lo_rate_per_s=min(rates), hi_rate_per_s=2 * max(rates))
        loads.append(setting_load(setting, is_baseline=setting == baseline, records=by_label.get(setting.label, []),
                                  closed_s=closed_s, predicted=predicted.get(setting.label), target_p99_s=target_s,
                                  confidence=budget.confidence, search=search, seed=cfg.serving.seed))
    return decide_serving_load(settings=loads, baseline=baseline.label, target_p99_ms=cfg.recommend.max_p99_ms,
                               min_speedup=cfg.recommend.min_speedup, budget=budget,
                               fastest_single_s=service.fastest_single_s())
