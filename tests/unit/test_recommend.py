from __future__ import annotations

import random
from typing import Optional

import pytest

from result_factory import make_result
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.config.flags import TrialFlags
from trainer_tune.decide.verdict import GO, INCONCLUSIVE, NO_GO, decide

ARGS = RecommendArgs(min_speedup=1.05)


def test_go_when_the_best_beats_the_baseline_by_the_margin() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True),
               make_result(index=1, key="fast", tokens_per_s=1230, micro_batch_size=4),
               make_result(index=2, key="slow", tokens_per_s=900, micro_batch_size=1)]
    rec = decide(results, args=ARGS)
    assert rec.decision == GO
    assert rec.chosen is not None and rec.chosen.trial_key == "fast"
    assert rec.speedup == pytest.approx(1.23)
    # Two settings could have been chosen: each comparison is made at 97.5% (decide/sequential.py).
    assert rec.verdict == ("GO: micro_batch_size=4 grad_accum=1 (+23.0% tokens/s vs baseline 2x1, "
                           "97.5% CI +23.0% to +23.0%)")
    assert "train.micro_batch_size=4" in rec.overrides and "train.grad_accum=1" in rec.overrides
    assert any("global batch changes from 4 to 8" in r for r in rec.reasons)
    assert rec.speedup_by_key["slow"] == pytest.approx(0.9)


def test_no_go_below_the_margin_keeps_the_baseline() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True),
               make_result(index=1, key="fast", tokens_per_s=1040, micro_batch_size=4)]
    rec = decide(results, args=ARGS)
    assert rec.decision == NO_GO
    assert rec.chosen is not None and rec.chosen.trial_key == "base"
    assert rec.best is not None and rec.best.trial_key == "fast"
    assert "+4.0%" in rec.verdict and "no setting reaches +5.0%" in rec.verdict
    assert "train.micro_batch_size=2" in rec.overrides


def test_exactly_the_margin_is_go() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True),
               make_result(index=1, key="fast", tokens_per_s=1050, micro_batch_size=4)]
    assert decide(results, args=ARGS).decision == GO


def test_baseline_already_fastest_is_no_go() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True),
               make_result(index=1, key="slow", tokens_per_s=800, micro_batch_size=1)]
    rec = decide(results, args=ARGS)
    assert rec.decision == NO_GO and "is the fastest setting measured" in rec.reasons[0]


def test_failed_settings_are_never_chosen_and_are_listed() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True),
               make_result(index=1, key="oom", status="oom", micro_batch_size=64),
               make_result(index=2, key="nan", status="nan", tokens_per_s=5000, micro_batch_size=8),
               make_result(index=3, key="ok", tokens_per_s=1100, micro_batch_size=4)]
    rec = decide(results, args=ARGS)
    assert rec.chosen is not None and rec.chosen.trial_key == "ok"
    assert rec.num_failed == 2
    assert any("64x1 (oom)" in r and "8x1 (nan)" in r for r in rec.reasons)


def test_failed_baseline_makes_any_working_setting_a_go() -> None:
    results = [make_result(index=0, key="base", status="oom", is_baseline=True, micro_batch_size=32),
               make_result(index=1, key="ok", tokens_per_s=700, micro_batch_size=4)]
    rec = decide(results, args=ARGS)
    assert rec.decision == GO and rec.speedup is None
    assert "baseline 32x1 failed (oom)" in rec.verdict


def test_nothing_finished_is_no_go_without_a_choice() -> None:
    results = [make_result(index=0, key="base", status="error", is_baseline=True)]
    rec = decide(results, args=ARGS)
    assert rec.decision == NO_GO and rec.chosen is None and rec.overrides == ()


def test_a_tie_goes_to_the_higher_point_estimate_by_default() -> None:
    # 4x1 and 8x1 cannot be told apart (their per-round ratios straddle 1); 8x1 has the higher estimate.
    results = [make_result(index=0, key="base", windows={"r0": 500, "r1": 510, "r2": 490}, is_baseline=True),
               make_result(index=1, key="big", windows={"r0": 1050, "r1": 990, "r2": 1000}, micro_batch_size=8),
               make_result(index=2, key="small", windows={"r0": 1000, "r1": 1010, "r2": 980}, micro_batch_size=4)]
    rec = decide(results, args=ARGS)
    # 8x1 leads, but 4x1 may still be more than recommend.indifference faster: not yet a GO.
    assert rec.decision == INCONCLUSIVE and rec.chosen is None
    assert rec.leader is not None and rec.leader.trial_key == "big" and "may be faster than 8x1 by more than" in rec.reasons[0] and "4x1" in rec.reasons[0]
    assert set(rec.tied) == {"8x1", "4x1"}
    tie = next(r for r in rec.reasons if "cannot order" in r)
    # The tie is named with what it may cost: how much slower 8x1 may be than 4x1 at the interval's lower end.
    assert "the tie goes to 8x1 (the higher paired ratio to the baseline, recommend.tie_break=fastest)" in tie
    assert "at worst it is" in tie and "slower than 4x1" in tie


def test_a_winning_flag_appears_in_the_verdict_and_overrides() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True),
               make_result(index=1, key="bucket", tokens_per_s=1200, flags=TrialFlags(bucket_cap_mb=100))]
    rec = decide(results, args=ARGS)
    assert rec.verdict.startswith("GO: micro_batch_size=2 grad_accum=1 ddp.bucket_cap_mb=100 ")
    assert "ddp.bucket_cap_mb=100" in rec.overrides and rec.environment["NSA_DDP_BUCKET_MB"] == "100"
    assert not any("global batch changes" in r for r in rec.reasons)


def test_go_needs_the_lower_end_of_the_speedup_interval() -> None:
    # The same point speedup (+8%) twice: with consistent rounds the interval clears 1.05, with rounds that
    # disagree it does not.
    steady = [make_result(index=0, key="base", is_baseline=True, windows={"r0": 1000, "r1": 900, "r2": 1100}),
              make_result(index=1, key="fast", windows={"r0": 1081, "r1": 971, "r2": 1187})]
    noisy = [make_result(index=0, key="base", is_baseline=True, windows={"r0": 1000, "r1": 900, "r2": 1100}),
             make_result(index=1, key="fast", windows={"r0": 1200, "r1": 855, "r2": 1210})]
    go, unsure = decide(steady, args=ARGS), decide(noisy, args=ARGS)
    assert go.speedup == pytest.approx(1.08, abs=0.002) and unsure.speedup == pytest.approx(1.08, abs=0.01)
    assert go.decision == GO and go.speedup_ci95 is not None and go.speedup_ci95[0] >= 1.05
    assert "95% CI" in go.verdict and go.comparison is not None and go.comparison.estimate.paired
    # An interval that straddles the margin cannot tell: INCONCLUSIVE, never "keep the baseline".
    assert unsure.decision == INCONCLUSIVE and unsure.speedup_ci95 is not None
    assert unsure.speedup_ci95[0] < 1.05 < unsure.speedup_ci95[1] and unsure.chosen is None
    assert "lower end of its speedup" in unsure.reasons[0]
    # +7.8% against a +5% margin with this spread: the margin sits inside the noise, so no round count is promised.
    assert unsure.more_rounds is None and "more rounds alone are unlikely to decide it" in unsure.verdict


def test_one_window_gives_no_interval_and_no_verdict() -> None:
    results = [make_result(index=0, key="base", is_baseline=True, windows={"r0": 1000}),
               make_result(index=1, key="fast", micro_batch_size=4, windows={"r0": 2000})]
    rec = decide(results, args=ARGS)
    assert rec.decision == INCONCLUSIVE and rec.speedup == pytest.approx(2.0) and rec.speedup_ci95 is None
    assert "one window only" in rec.reasons[0]


def test_least_change_breaks_a_tie_toward_the_baselines_global_batch_then_less_memory() -> None:
    from trainer_tune.config.schema import TieBreak

    results = [make_result(index=0, key="base", windows={"r0": 500, "r1": 505, "r2": 495}, is_baseline=True),
               make_result(index=1, key="big", windows={"r0": 1000, "r1": 940, "r2": 1060}, micro_batch_size=8),
               make_result(index=2, key="same-batch", windows={"r0": 960, "r1": 950, "r2": 970}, micro_batch_size=1,
                           grad_accum=2, memory_bytes=200),
               make_result(index=3, key="same-batch-lean", windows={"r0": 950, "r1": 960, "r2": 940},
                           micro_batch_size=2, memory_bytes=100)]
    # The leader the tie-break picks (whether it is a GO yet is the evidence's business, tested above).
    rec = decide(results, args=RecommendArgs(min_speedup=1.05, tie_break=TieBreak.least_change))
    assert rec.best is not None and rec.best.trial_key == "same-batch-lean"
    assert any("the tie goes to 2x1" in r and "least_change" in r for r in rec.reasons)
    assert not any("global batch changes" in r for r in rec.reasons)
    fastest = decide(results, args=ARGS)
    assert fastest.best is not None and fastest.best.trial_key == "big"


def test_settings_over_the_memory_limit_are_never_chosen() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=500, is_baseline=True, memory_bytes=10,
                           device_memory_bytes=100),
               make_result(index=1, key="greedy", tokens_per_s=2000, micro_batch_size=8, memory_bytes=95,
                           device_memory_bytes=100),
               make_result(index=2, key="ok", tokens_per_s=800, micro_batch_size=4, memory_bytes=50,
                           device_memory_bytes=100)]
    rec = decide(results, args=ARGS)
    assert rec.chosen is not None and rec.chosen.trial_key == "ok"
    assert any("8x1 is excluded: its peak memory is 95% of the device" in r for r in rec.reasons)


def test_a_throughput_target_must_be_met() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=500, is_baseline=True),
               make_result(index=1, key="fast", tokens_per_s=800, micro_batch_size=4)]
    rec = decide(results, args=RecommendArgs(min_speedup=1.05, target_throughput_per_s=1000))
    assert rec.decision == NO_GO and "below recommend.target_throughput_per_s=1,000" in rec.reasons[0]


def test_settings_left_out_and_the_race_are_named_with_their_reason() -> None:
    from trainer_tune.decide.race import Drop, RaceSummary
    from trainer_tune.decide.strategy import NotMeasured

    base = make_result(index=0, key="b", windows={"r0": 1000, "r1": 990, "r2": 1010}, is_baseline=True)
    slow = make_result(index=1, key="c", windows={"r0": 500, "r1": 490, "r2": 505}, micro_batch_size=1)
    skipped = [NotMeasured("8x1", "4x1 ended oom, so larger micro-batches were not tried"),
               NotMeasured("16x1", "4x1 ended oom, so larger micro-batches were not tried")]
    race = RaceSummary(num_rounds=3, end_reason="one setting left after 3 rounds: the race is decided",
                       drops=(Drop(label="1x1", trial_key="c", after_round=3, reason="-50.0% against 2x1"),),
                       contenders=("2x1",),
                       contender_keys=("b",))
    rec = decide([base, slow], args=RecommendArgs(), not_measured=skipped, race=race)
    assert rec.not_measured == tuple(skipped)
    assert any("1x1 left the race after round 3: -50.0% against 2x1" in r for r in rec.reasons)
    assert any("3 rounds measured; the race ended: one setting left" in r for r in rec.reasons)
    # One line per reason, naming every setting it left out.
    assert any("2 planned settings not measured" in r and "8x1, 16x1: 4x1 ended oom" in r for r in rec.reasons)
    as_json = rec.to_json_dict()
    assert as_json["not_measured"][0] == {"label": "8x1", "reason": "4x1 ended oom, so larger micro-batches were not tried"}
    assert as_json["race"]["drops"][0]["label"] == "1x1" and as_json["race"]["num_rounds"] == 3


# --- drift: the baseline measured in every round ---------------------------------------------------------

def test_drift_is_reported_from_the_baselines_rounds_and_cancels_in_paired_ratios() -> None:
    # The machine slows by 20% over the sweep; the faster setting is 10% ahead of the baseline in every round.
    speed = {"r0": 1.0, "r1": 0.9, "r2": 0.8}
    results = [make_result(index=0, key="base", is_baseline=True, windows={r: 1000 * f for r, f in speed.items()}),
               make_result(index=1, key="fast", micro_batch_size=4,
                           windows={r: 1100 * f * (1.01 if r == "r1" else 1.0) for r, f in speed.items()})]
    rec = decide(results, args=ARGS)
    assert rec.drift is not None and rec.drift.change == pytest.approx(-0.2) and rec.drift.spread == pytest.approx(0.25)
    assert any("-20.0% first to last" in r and "cancels" in r for r in rec.reasons)
    # Pairing within rounds: the 20% drift is not noise in the ratio, so +10% clears the +5% margin.
    assert rec.decision == GO and rec.speedup_ci95 is not None and rec.speedup_ci95[0] > 1.05
    assert rec.to_json_dict()["drift"]["series"] == [["r0", 1000.0], ["r1", 900.0], ["r2", 800.0]]


def test_a_baseline_with_one_clean_window_has_no_drift() -> None:
    results = [make_result(index=0, key="base", is_baseline=True, windows={"r0": 1000}),
               make_result(index=1, key="fast", micro_batch_size=4)]
    assert decide(results, args=ARGS).drift is None


def test_a_setting_measured_once_is_not_recommended_over_settings_measured_in_several() -> None:
    # strategy=power let 4x2 in for the last round: one fast window against 4x1's three.
    results = [make_result(index=0, key="base", is_baseline=True, windows={"r0": 1000, "r1": 990, "r2": 1010}),
               make_result(index=1, key="4x1", micro_batch_size=4, windows={"r0": 1300, "r1": 1290, "r2": 1310}),
               make_result(index=2, key="4x2", micro_batch_size=4, grad_accum=2, windows={"r2": 1400})]
    rec = decide(results, args=ARGS)
    assert rec.decision == GO and rec.chosen is not None and rec.chosen.trial_key == "4x1"
    assert any("4x2: measured in one window only" in r for r in rec.reasons)


@pytest.mark.parametrize("lean_memory,rule", [(100, "least change: less memory"),
                                              (None, "least change: the smaller micro-batch")])
def test_the_tie_reason_names_the_rule_that_decided(lean_memory: Optional[int], rule: str) -> None:
    """It once always said "the baseline's global batch first, then less memory", even where every tied setting
    had the baseline's global batch and no memory was measured (a CPU)."""
    from trainer_tune.config.schema import TieBreak

    results = [make_result(index=0, key="base", windows={"r0": 500, "r1": 505, "r2": 495}, is_baseline=True),
               make_result(index=1, key="accum", windows={"r0": 960, "r1": 950, "r2": 970}, micro_batch_size=2,
                           grad_accum=2, memory_bytes=None if lean_memory is None else 200),
               make_result(index=2, key="lean", windows={"r0": 950, "r1": 960, "r2": 940}, micro_batch_size=1,
                           grad_accum=4, memory_bytes=lean_memory)]
    # The baseline is 2x1 on 2 ranks (global batch 4): neither tied setting has it, so that rule cannot decide.
    rec = decide(results, args=RecommendArgs(min_speedup=1.05, tie_break=TieBreak.least_change))
    [reason] = [r for r in rec.reasons if "the tie goes to" in r]
    assert f"the tie goes to 1x4 ({rule}, recommend.tie_break=least_change)" in reason
    assert "the baseline's global batch" not in reason


def test_nothing_else_to_choose_keeps_the_baseline() -> None:
    """Every other setting failed: the baseline is all there is, a NO-GO (not "cannot tell")."""
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True),
               make_result(index=1, key="oom", status="oom", micro_batch_size=64)]
    rec = decide(results, args=ARGS)
    assert rec.decision == NO_GO and rec.chosen is not None and rec.chosen.trial_key == "base"
    assert "no other setting may be chosen" in rec.reasons[0]
