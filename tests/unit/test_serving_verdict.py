"""The serving-under-load verdict on hand-made sustainable rates (decide/serving_load.py): known answers."""

from __future__ import annotations

import math

import pytest

from trainer_tune.decide.serving_load import serving_verdict
from trainer_tune.evidence.serving_load import SustainableRate


def _rate(met_per_s: float, missed_per_s: float = math.inf) -> SustainableRate:
    return SustainableRate(met_per_s, met_per_s, missed_per_s, "")


def test_go_when_the_leaders_bracket_lies_above_the_baselines_by_the_margin() -> None:
    rates = {"b4 d0": _rate(1000, 1100), "b8 d2": _rate(1600, 1700), "b16 d5": _rate(1500, 1650)}
    verdict = serving_verdict(rates, baseline="b4 d0", min_speedup=1.05)
    assert (verdict.decision, verdict.chosen, verdict.leader) == ("GO", "b8 d2", "b8 d2")
    assert verdict.reason == ("GO: b8 d2 sustains 1,600/s (up to 1,700/s) within the p99 target, at least 1.05x the "
                              "baseline b4 d0's 1,000/s (up to 1,100/s)")


def test_inconclusive_when_the_brackets_overlap_at_the_margin() -> None:
    # 1,120 met against a baseline that may reach 1,100: 1.05 x 1,100 = 1,155 is above 1,120.
    verdict = serving_verdict({"base": _rate(1000, 1100), "b8": _rate(1120, 1300)}, baseline="base", min_speedup=1.05)
    assert (verdict.decision, verdict.chosen, verdict.leader) == ("INCONCLUSIVE", "base", "b8")
    assert verdict.reason.startswith("INCONCLUSIVE: b8 sustains 1,120/s (up to 1,300/s) and the baseline base "
                                     "1,000/s (up to 1,100/s)")


def test_a_baseline_that_never_missed_cannot_be_beaten_yet() -> None:
    verdict = serving_verdict({"base": _rate(1000), "b8": _rate(3000, 3100)}, baseline="base", min_speedup=1.05)
    assert verdict.decision == "INCONCLUSIVE" and "not bounded above" in verdict.reason


def test_no_go_when_no_setting_can_reach_the_margin() -> None:
    # The best other setting missed at 1,040/s: under 1.05 x the baseline's 1,000 met.
    rates = {"base": _rate(1000, 1100), "b8": _rate(950, 1040), "b2": _rate(600, 700)}
    verdict = serving_verdict(rates, baseline="base", min_speedup=1.05)
    assert (verdict.decision, verdict.chosen, verdict.leader) == ("NO-GO", "base", "base")
    assert verdict.reason == ("NO-GO: no confirmed setting can sustain 1.05x the baseline base's 1,000/s (up to 1,100/s); the "
                              "best, base, 1,000/s (up to 1,100/s)")


def test_nothing_met_the_target_at_any_rate_is_inconclusive_not_keep_the_baseline() -> None:
    """Both missed (or could not tell) at every rate measured: which is better at lower rates is unknown."""
    rates = {"base": _rate(0, 200), "b8": _rate(0, 150)}
    verdict = serving_verdict(rates, baseline="base", min_speedup=1.05)
    assert (verdict.decision, verdict.chosen) == ("INCONCLUSIVE", "base")
    assert ("no batcher setting met the p99 target at any measured rate (base below 200/s, b8 below 150/s): lower "
            "rates") in verdict.reason


def test_a_baseline_that_never_met_the_target_is_beaten_by_any_setting_that_did() -> None:
    verdict = serving_verdict({"base": _rate(0, 100), "b8": _rate(400, 450)}, baseline="base", min_speedup=1.05)
    assert (verdict.decision, verdict.chosen) == ("GO", "b8")


def test_ties_go_to_the_first_setting_given() -> None:
    rates = {"base": _rate(500, 520), "b8 d0": _rate(1000, 1050), "b8 d5": _rate(1000, 1050)}
    assert serving_verdict(rates, baseline="base", min_speedup=1.05).chosen == "b8 d0"


@pytest.mark.parametrize("baseline,margin", [("missing", 1.05), ("base", 0.0)])
def test_refuses_a_baseline_without_evidence_and_a_margin_of_zero(baseline: str, margin: float) -> None:
    with pytest.raises(ValueError):
        serving_verdict({"base": _rate(1)}, baseline=baseline, min_speedup=margin)


def test_a_baseline_alone_is_inconclusive_not_a_no_go() -> None:
    """Nothing else has a measured rate (its runs failed, or the grid holds only the baseline): nothing was compared."""
    verdict = serving_verdict({"base": _rate(500, 700)}, baseline="base", min_speedup=1.05)
    assert verdict.decision == "INCONCLUSIVE" and "no other setting has a measured rate" in verdict.reason
