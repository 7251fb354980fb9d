"""The one comparison of two settings: rate(a) / rate(b), paired by round, with its interval and what it means.

Every caller that asks "is A faster than B?" (the verdict, the race, the strategies, goodput advice, the decision
matrix, compile payback) calls `compare` here; nothing else orders two settings."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Optional, Sequence

from trainer_tune.evidence.stats import RatioEstimate, point_ratio, ratio_estimate
from trainer_tune.evidence.estimate import SettingEstimate


def percent(speedup: float) -> str:
    """A ratio as a signed change: 1.123 -> `+12.3%`."""
    return f"{(speedup - 1.0) * 100:+.1f}%"


class Outcome(Enum):
    """How setting a compares with setting b by the one comparison rule (`compare`)."""

    better = "better"
    """a is faster than b beyond noise: the whole 95% interval of rate(a) / rate(b) is above 1."""
    worse = "worse"
    """a is slower than b beyond noise: the whole interval is below 1."""
    tie = "tie"
    """The interval holds 1: the measurements cannot order them."""
    unknown = "unknown"
    """No interval: a side was measured in one window only, which says nothing about the next window."""


@dataclass(frozen=True)
class Comparison:
    """rate(a) / rate(b), its interval and what it means: the only way two settings are compared."""

    a_label: str
    b_label: str
    estimate: RatioEstimate
    confidence: float = 0.95
    """Two-sided level of the interval: 0.95 for one comparison, higher where the decision corrects for many
    settings and many looks (decide/error_budget.py)."""

    @property
    def ratio(self) -> float:
        return self.estimate.ratio

    @property
    def interval(self) -> Optional[tuple[float, float]]:
        return self.estimate.interval

    @property
    def outcome(self) -> Outcome:
        if self.interval is None:
            return Outcome.unknown
        if self.interval[0] > 1.0:
            return Outcome.better
        if self.interval[1] < 1.0:
            return Outcome.worse
        return Outcome.tie

    def describe(self) -> str:
        """`+12.3% (95% CI +5.0% to +20.1%, paired over 4 rounds)`: a's speed relative to b's."""
        how = (f"paired over {self.estimate.num_pairs} rounds" if self.estimate.paired
               else "unpaired windows")
        if self.interval is None:
            return f"{percent(self.ratio)} (one window: no interval)"
        return (f"{percent(self.ratio)} ({level_text(self.confidence)} CI {percent(self.interval[0])} to "
                f"{percent(self.interval[1])}, {how})")


def level_text(confidence: float) -> str:
    """0.95 -> `95%`, 0.99911 -> `99.91%`: as many digits as say how far from 1 the level is."""
    text = f"{100 * confidence:.4g}"
    return f"{text}%"


def compare(a: SettingEstimate, b: SettingEstimate, *, goodput: bool = False,
            confidence: float = 0.95) -> Comparison:
    """The one comparison rule, used by the decision, the race, the strategies and the explanations.

    From the settings' window rates keyed by round: paired within rounds where both were measured (drift
    common to a round cancels), else unpaired (evidence/stats.ratio_estimate); never narrower than the sweep's noise
    floor (stats.NoiseFloor). goodput=True compares the window rates times each setting's statistical
    efficiency, a constant per setting: the interval is the throughput ratio's, moved by the ratio of the two
    efficiencies and widened by B_noise's own uncertainty (`_with_efficiency_uncertainty`)."""
    rates_a = a.goodput_rates_by_round() if goodput else a.rates_by_round()
    rates_b = b.goodput_rates_by_round() if goodput else b.rates_by_round()
    if not rates_a or not rates_b:
        raise ValueError(f"compare({a.label}, {b.label}): both need a clean window"
                         + (" and a statistical efficiency" if goodput else ""))
    # Both settings' results carry the same sweep's noise floor (estimate.sweep_noise).
    estimate = ratio_estimate(rates_a, rates_b, confidence=confidence, floor=a.noise or b.noise)
    if goodput:
        estimate = _with_efficiency_uncertainty(estimate, a, b, confidence=confidence)
    return Comparison(a_label=a.label, b_label=b.label, confidence=confidence, estimate=estimate)


LOWER_IS_BETTER = ("latency", "energy")
"""The figures compare_lower compares: p99 latency per batch, energy per sample (recommend.objective's values)."""


def lower_figures_by_round(setting: SettingEstimate, figure: str) -> dict[str, float]:
    """`setting`'s per-window p99 (figure "latency") or energy per sample ("energy"), by round id."""
    if figure == "latency":
        return setting.window_p99_ms
    if figure == "energy":
        return setting.window_energy_j_per_sample
    raise ValueError(f"{figure!r} is not one of {LOWER_IS_BETTER}")


def compare_lower(a: SettingEstimate, b: SettingEstimate, *, figure: str, confidence: float = 0.95) -> Comparison:
    """The one comparison rule on a figure where lower is better (p99 latency, energy per sample): b's figure over
    a's, paired by round like compare, so that above 1 means a is better, as a speedup would (1.25: a's p99 is
    b's / 1.25). Each window's figure is the observation (a p99 of one window's batches, one window's energy
    reading), so the interval is over windows, like throughput's. Raises without a window with the figure on a
    side."""
    mine, theirs = lower_figures_by_round(a, figure), lower_figures_by_round(b, figure)
    if not mine or not theirs:
        raise ValueError(f"compare_lower({a.label}, {b.label}): both need a window with a {figure} figure")
    return Comparison(a_label=a.label, b_label=b.label, confidence=confidence,
                      estimate=ratio_estimate(theirs, mine, confidence=confidence))


def _with_efficiency_uncertainty(estimate: RatioEstimate, a: SettingEstimate, b: SettingEstimate, *,
                                 confidence: float) -> RatioEstimate:
    """A goodput ratio's interval widened by what B_noise's 95% interval does to the ratio of the two efficiencies:
    each end's distance on the log scale, taken to `confidence` as a normal quantile would, added in quadrature to
    the throughput ratio's (the two come from different measurements: noise steps against timed windows). The ends
    pair each efficiency's lower end with the other's upper one, which is wider than the exact range when both
    move with B_noise; against the baseline (efficiency 1 at any B_noise) it is exact."""
    ci_a, ci_b = a.statistical_efficiency_ci95, b.statistical_efficiency_ci95
    if estimate.interval is None or not ci_a or not ci_b or not a.statistical_efficiency \
            or not b.statistical_efficiency or min(*ci_a, *ci_b) <= 0:
        return estimate
    from scipy.stats import norm  # only sweeps with an objective of goodput need it

    point = a.statistical_efficiency / b.statistical_efficiency
    scale = float(norm.ppf(0.5 + confidence / 2.0) / norm.ppf(0.975))
    below = scale * max(0.0, math.log(point) - math.log(ci_a[0] / ci_b[1]))
    above = scale * max(0.0, math.log(ci_a[1] / ci_b[0]) - math.log(point))
    low, high = estimate.interval
    centre = math.log(estimate.ratio)
    widened = (math.exp(centre - math.hypot(centre - math.log(low), below)),
               math.exp(centre + math.hypot(math.log(high) - centre, above)))
    return dataclasses.replace(estimate, interval=widened)


def ranking(settings: Sequence[SettingEstimate], *, goodput: bool = False) -> Callable[[SettingEstimate], float]:
    """The one order of settings by speed (or goodput): a sort key, each setting's paired ratio to the sweep's
    baseline (compare against the setting measured in every round), so drift shared by a round cancels and a
    setting measured only in the fast rounds is not favoured over one that stayed for the slow ones (the race drops
    settings, so their windows cover different rounds). Without a clean baseline among `settings`, their own
    rates. The race's leader, the verdict's best, the tie-break's fastest and the decision matrix's winner all
    rank by it."""
    baseline = next((s for s in settings if s.is_baseline and s.ok and s.rates_by_round()
                     and (not goodput or s.goodput_per_s is not None)), None)

    def rate(setting: SettingEstimate) -> float:
        return (setting.goodput_per_s if goodput else setting.throughput_per_s) or 0.0

    def key(setting: SettingEstimate) -> float:
        if baseline is None or not setting.rates_by_round() or (goodput and setting.goodput_per_s is None):
            return rate(setting) / (rate(baseline) if baseline is not None and rate(baseline) else 1.0)
        # The paired ratio alone (compare's centre, without its interval): called for every racing setting after
        # every round.
        if goodput:
            return point_ratio(setting.goodput_rates_by_round(), baseline.goodput_rates_by_round())
        return point_ratio(setting.rates_by_round(), baseline.rates_by_round())

    return key


@dataclass(frozen=True)
class Drift:
    """The baseline's rate in each round: how the machine's speed moved during the sweep.

    Shown, charted and recorded, never used to widen a comparison: comparisons pair windows of the same
    round (compare), so a drift common to a round cancels in the ratio instead of blurring it."""

    label: str
    series: tuple[tuple[str, float], ...]
    """(round id, the baseline's rate) in measurement order."""

    @property
    def change(self) -> float:
        """last / first - 1: the drift from the first round to the last."""
        return self.series[-1][1] / self.series[0][1] - 1.0

    @property
    def spread(self) -> float:
        """fastest / slowest round - 1."""
        values = [v for _, v in self.series]
        return max(values) / min(values) - 1.0

    def to_json_dict(self) -> dict[str, Any]:
        return {"label": self.label, "series": [list(p) for p in self.series], "change": self.change,
                "spread": self.spread}


def baseline_drift(baseline: Optional[SettingEstimate]) -> Optional[Drift]:
    """None unless the baseline finished cleanly in at least two rounds."""
    if baseline is None or not baseline.ok or len(baseline.window_throughput_per_s) < 2:
        return None
    return Drift(label=baseline.label, series=tuple(baseline.window_throughput_per_s.items()))


def behind(contender: SettingEstimate, leader: SettingEstimate, *, goodput: bool = False,
           confidence: float = 0.95) -> Optional[str]:
    """Why `contender` is out of the race against `leader` (slower beyond noise at `confidence`, in goodput with
    goodput=True), or None."""
    comparison = compare(contender, leader, goodput=goodput, confidence=confidence)
    if comparison.outcome != Outcome.worse:
        return None
    return f"{comparison.describe()}{' in goodput' if goodput else ''} against {leader.label}"
