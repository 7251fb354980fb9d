"""The verdict of a serving-under-load sweep: which batcher setting sustains the highest arrival rate within the p99
target, and whether it beats the baseline (the batch served today, no queue delay) by the margin.

Each setting's evidence is a SustainableRate (evidence/serving_load.RateSearch.result): the highest measured rate
whose p99 met the target, and the bracket up to the lowest rate that missed it. The true crossing lies inside the
bracket, so two settings are told apart only when their brackets, scaled by the margin, do not overlap:
- GO: the leader's lower end is at least `min_speedup` times the baseline's upper end;
- NO-GO: no other setting's upper end reaches `min_speedup` times the baseline's lower end (none can be better by
  the margin), or no setting, the baseline included, met the target at any measured rate;
- INCONCLUSIVE otherwise: the brackets overlap, and more rates between them would tell.
The checks behind the brackets carry the confidence (a sweep computes them at its corrected level, as for training:
decide/sequential.py); this rule adds none of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from trainer_tune.decide.sequential import GO, INCONCLUSIVE, NO_GO
from trainer_tune.evidence.serving_load import SustainableRate


@dataclass(frozen=True)
class ServingVerdict:
    decision: str
    """GO, NO-GO or INCONCLUSIVE."""
    chosen: str
    """The setting to serve with: the leader after a GO, the baseline otherwise."""
    leader: str
    """The setting with the highest sustainable rate (the first of equals, in the order given)."""
    reason: str


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
        return ServingVerdict(NO_GO, baseline, baseline,
                              f"{NO_GO}: no batcher setting met the p99 target at any measured rate; "
                              f"{baseline} stays (it does not meet it either)")
    others = {label: rate for label, rate in rates.items() if label != baseline}
    if leader != baseline and lead.rate_per_s > 0 and lead.rate_per_s >= min_speedup * base.high_per_s:
        return ServingVerdict(GO, leader, leader,
                              f"{GO}: {leader} sustains {_bracket(lead)} within the p99 target, at least "
                              f"{min_speedup:g}x the baseline {baseline}'s {_bracket(base)}")
    if all(rate.high_per_s < min_speedup * base.rate_per_s for rate in others.values()):
        return ServingVerdict(NO_GO, baseline, leader,
                              f"{NO_GO}: no setting can sustain {min_speedup:g}x the baseline {baseline}'s "
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
