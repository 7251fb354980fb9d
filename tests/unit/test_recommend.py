from __future__ import annotations

import random

import pytest

from result_factory import make_result
from trainer_tune.config import RecommendArgs
from trainer_tune.flags import TrialFlags
from trainer_tune.recommend import GO, NO_GO, decide

ARGS = RecommendArgs(min_speedup=1.05)


def test_go_when_the_best_beats_the_baseline_by_the_margin() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True),
               make_result(index=1, key="fast", tokens_per_s=1230, micro_batch_size=4),
               make_result(index=2, key="slow", tokens_per_s=900, micro_batch_size=1)]
    rec = decide(results, args=ARGS)
    assert rec.decision == GO
    assert rec.chosen is not None and rec.chosen.trial_key == "fast"
    assert rec.speedup == pytest.approx(1.23)
    assert rec.verdict == "GO: micro_batch_size=4 grad_accum=1 (+23.0% tokens/s vs baseline 2x1)"
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
    assert "+4.0%" in rec.verdict and "needs +5.0%" in rec.verdict
    assert "train.micro_batch_size=2" in rec.overrides


def test_exactly_the_margin_is_go() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True),
               make_result(index=1, key="fast", tokens_per_s=1050, micro_batch_size=4)]
    assert decide(results, args=ARGS).decision == GO


def test_baseline_already_fastest_is_no_go() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True),
               make_result(index=1, key="slow", tokens_per_s=800, micro_batch_size=1)]
    rec = decide(results, args=ARGS)
    assert rec.decision == NO_GO and "already the fastest" in rec.reasons[0]


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


def test_ties_go_to_the_smaller_global_batch() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=500, is_baseline=True),
               make_result(index=1, key="big", tokens_per_s=1000, micro_batch_size=8),
               make_result(index=2, key="small", tokens_per_s=1000, micro_batch_size=4)]
    assert decide(results, args=ARGS).chosen.trial_key == "small"  # type: ignore[union-attr]


def test_a_winning_flag_appears_in_the_verdict_and_overrides() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True),
               make_result(index=1, key="bucket", tokens_per_s=1200, flags=TrialFlags(bucket_cap_mb=100))]
    rec = decide(results, args=ARGS)
    assert rec.verdict.startswith("GO: micro_batch_size=2 grad_accum=1 ddp.bucket_cap_mb=100 ")
    assert "ddp.bucket_cap_mb=100" in rec.overrides and rec.environment["NSA_DDP_BUCKET_MB"] == "100"
    assert not any("global batch changes" in r for r in rec.reasons)


def _steps(mean_s: float, *, spread: float, n: int = 40) -> list[float]:
    """Steps alternating mean x (1 +- spread): the mean is exact, so only the spread differs between cases."""
    return [mean_s * (1 + spread if i % 2 else 1 - spread) for i in range(n)]


def test_go_needs_the_lower_end_of_the_speedup_interval() -> None:
    # The same point speedup (+8.1%) twice: with steady steps the interval clears 1.05, with noisy ones it does not.
    steady = [make_result(index=0, key="base", is_baseline=True, step_times=_steps(0.100, spread=0.005)),
              make_result(index=1, key="fast", step_times=_steps(0.0925, spread=0.005))]
    noisy = [make_result(index=0, key="base", is_baseline=True, step_times=_steps(0.100, spread=0.5)),
             make_result(index=1, key="fast", step_times=_steps(0.0925, spread=0.5))]
    go, no_go = decide(steady, args=ARGS), decide(noisy, args=ARGS)
    assert go.speedup == pytest.approx(no_go.speedup) == pytest.approx(0.1 / 0.0925)
    assert go.decision == GO and go.speedup_ci95 is not None and go.speedup_ci95[0] >= 1.05
    assert "95% CI" in go.verdict
    assert no_go.decision == NO_GO and no_go.speedup_ci95 is not None and no_go.speedup_ci95[0] < 1.05
    assert "lower end of its speedup" in no_go.reasons[0]


def test_a_tie_goes_to_the_baselines_global_batch_then_less_memory() -> None:
    results = [make_result(index=0, key="base", tokens_per_s=500, is_baseline=True, ci=[490, 510]),
               make_result(index=1, key="big", tokens_per_s=1000, micro_batch_size=8, ci=[900, 1100]),
               make_result(index=2, key="same-batch", tokens_per_s=960, micro_batch_size=1, grad_accum=2,
                           ci=[930, 990], memory_bytes=200),
               make_result(index=3, key="same-batch-lean", tokens_per_s=950, micro_batch_size=2, ci=[920, 980],
                           memory_bytes=100)]
    rec = decide(results, args=ARGS)
    assert rec.chosen is not None and rec.chosen.trial_key == "same-batch-lean"
    assert any("within noise of the fastest (8x1)" in r for r in rec.reasons)
    assert not any("global batch changes" in r for r in rec.reasons)


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
    rec = decide(results, args=RecommendArgs(min_speedup=1.05, target_tokens_per_s=1000))
    assert rec.decision == NO_GO and "below recommend.target_tokens_per_s=1,000" in rec.reasons[0]


def test_settings_left_out_or_cut_short_are_named_with_their_reason() -> None:
    import dataclasses

    from trainer_tune.strategy import NotMeasured

    base = make_result(index=0, key="b", tokens_per_s=1000.0, is_baseline=True)
    cut = dataclasses.replace(make_result(index=1, key="c", tokens_per_s=500.0, micro_batch_size=1),
                              window_cut_short=True)
    skipped = [NotMeasured("8x1", "4x1 ended oom, so larger micro-batches were not tried"),
               NotMeasured("16x1", "4x1 ended oom, so larger micro-batches were not tried")]
    rec = decide([base, cut], args=RecommendArgs(), not_measured=skipped)
    assert rec.cut_short == ("1x1",)
    assert rec.not_measured == tuple(skipped)
    assert any("could not reach the best (strategy=adaptive): 1x1" in r for r in rec.reasons)
    # One line per reason, naming every setting it left out.
    assert any("2 planned setting(s) not measured" in r and "8x1, 16x1: 4x1 ended oom" in r for r in rec.reasons)
    as_json = rec.to_json_dict()
    assert as_json["not_measured"][0] == {"label": "8x1", "reason": "4x1 ended oom, so larger micro-batches were not tried"}
    assert as_json["cut_short"] == ["1x1"]


# --- the baseline's re-check after the last trial (sweep.recheck_baseline) ---------------------------------

def _drift_sweep(recheck_tokens_per_s: float, recheck_ci: list[float]) -> tuple[list, object]:
    results = [make_result(index=0, key="base", tokens_per_s=1000, ci=[990, 1010], is_baseline=True),
               make_result(index=1, key="fast", tokens_per_s=1080, ci=[1070, 1090], micro_batch_size=4)]
    recheck = make_result(index=2, key="base-recheck", tokens_per_s=recheck_tokens_per_s, ci=recheck_ci)
    return results, recheck


def test_a_steady_recheck_changes_nothing_and_says_so() -> None:
    results, recheck = _drift_sweep(1005, [995, 1015])
    steady = decide(results, args=ARGS, recheck=recheck)
    plain = decide(results, args=ARGS)
    assert steady.decision == plain.decision == GO and steady.speedup_ci95 == plain.speedup_ci95
    assert steady.drift is not None and steady.drift.within_noise and steady.drift.widening == 1.0
    assert steady.drift.change == pytest.approx(0.005)
    assert any("within noise: the machine's speed held steady" in r for r in steady.reasons)
    assert steady.to_json_dict()["drift"]["widening"] == 1.0


def test_a_drifting_machine_widens_every_comparison_into_no_go() -> None:
    # +8% measured, but the baseline itself moved 10% between the start and the end of the sweep.
    results, recheck = _drift_sweep(900, [890, 910])
    rec = decide(results, args=ARGS, recheck=recheck)
    assert rec.drift is not None and not rec.drift.within_noise
    assert rec.drift.widening == pytest.approx(1.10)
    assert rec.decision == NO_GO and rec.chosen is not None and rec.chosen.trial_key == "base"
    # 1080 / 1.1 < 1010: within the widened noise the baseline ties with the faster setting.
    assert any("within noise of the fastest" in r for r in rec.reasons)
    assert any("beyond noise: the machine's speed changed during the sweep" in r and "widened by 10.0%" in r
               for r in rec.reasons)


def test_drift_widens_the_speedup_interval_by_the_change() -> None:
    # A setting 2x faster than the baseline, and a machine that slowed down 6.25% during the sweep.
    # Same step time (0.2 s +- 1%), twice the tokens per step: 2x1 moves 512 tokens a step (2,560 tokens/s),
    # 4x1 1,024 (5,120 tokens/s); the re-check's 2,400 tokens/s is 2,400 / 2,560 - 1 = -6.25%.
    rng = random.Random(3)
    base_times = [0.200 + rng.uniform(-0.002, 0.002) for _ in range(30)]
    fast_times = [0.200 + rng.uniform(-0.002, 0.002) for _ in range(30)]
    results = [make_result(index=0, key="base", step_times=base_times, ci=[2540, 2580], is_baseline=True),
               make_result(index=1, key="fast", step_times=fast_times, ci=[5080, 5160], micro_batch_size=4)]
    for result in results:  # the fixture's intervals contain its own figures
        assert result.tokens_per_s_ci95[0] <= result.tokens_per_s <= result.tokens_per_s_ci95[1]
    plain = decide(results, args=ARGS)
    recheck = make_result(index=2, key="base-recheck", tokens_per_s=2400, ci=[2390, 2410])
    drifted = decide(results, args=ARGS, recheck=recheck)
    assert plain.speedup_ci95 is not None and drifted.speedup_ci95 is not None and drifted.drift is not None
    assert plain.speedup == pytest.approx(2.0, rel=0.01)
    assert drifted.drift.change == pytest.approx(-0.0625, rel=0.01) and not drifted.drift.within_noise
    widening = drifted.drift.widening
    assert widening == pytest.approx(1.0625, rel=0.01)
    assert drifted.speedup_ci95[0] == pytest.approx(plain.speedup_ci95[0] / widening)
    assert drifted.speedup_ci95[1] == pytest.approx(plain.speedup_ci95[1] * widening)
    # 2x faster survives a 6.25% drift: even the widened interval's lower end clears the +5% margin.
    assert drifted.decision == GO and drifted.chosen is not None and drifted.chosen.trial_key == "fast"
    assert drifted.speedup_ci95[0] > 1.8 > ARGS.min_speedup


def test_a_failed_recheck_is_reported_not_used() -> None:
    results, _ = _drift_sweep(1000, [990, 1010])
    failed = make_result(index=2, key="base-recheck", status="error")
    rec = decide(results, args=ARGS, recheck=failed)
    assert rec.drift is None and rec.decision == GO
    assert any("re-check after the last trial did not finish cleanly (error)" in r for r in rec.reasons)
