"""Statistical efficiency, goodput and the scaled learning rate in the decision (verdict.decide, decide/goodput.py) on
constructed settings whose noise steps give a known B_noise."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from result_factory import make_result
from trainer_tune.config.schema import ConfigError, LrScaling, Mode, Objective, RecommendArgs, TuneConfig
from trainer_tune.explain.report import build_report
from trainer_tune.measure.figures import NoiseScaleFigures
from trainer_tune.evidence.noise_scale import with_goodput
from trainer_tune.measure.noise_estimate import from_step_estimates, pool
from trainer_tune.decide.verdict import GO, NO_GO, decide
from trainer_tune.evidence.comparison import behind
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.decide.race import race_drops
from trainer_tune.sinks.files import write_recommendation

B_NOISE = 4.0


def _noise() -> NoiseScaleFigures:
    """Four noise steps whose estimates average to |G|^2 = 1 and tr(Sigma) = 4: B_noise = 4 samples."""
    return from_step_estimates([1.0, 1.1, 0.9, 1.0], [3.0, 5.0, 4.0, 4.0], batch_sizes=(2, 4))


def _settings(noise: bool = True) -> list[SettingEstimate]:
    """Two ranks: the baseline 2x1 (global batch 4), 8x1 (16: 30% faster, far past B_noise) and 1x1 (2: 20%
    slower, below it). Each measured in three rounds at exactly its rate, so every comparison is exact."""
    results = [make_result(index=0, key="base", micro_batch_size=2, is_baseline=True, tokens_per_s=1000.0),
               make_result(index=1, key="big", micro_batch_size=8, tokens_per_s=1300.0),
               make_result(index=2, key="small", micro_batch_size=1, tokens_per_s=800.0)]
    return [dataclasses.replace(r, noise_scale=_noise()) if noise else
            dataclasses.replace(r, noise_scale_note="window.noise_steps=0") for r in results]


def test_efficiency_and_goodput_of_each_setting() -> None:
    rec = decide(_settings(), args=RecommendArgs())
    assert rec.gradient_noise_scale is not None and rec.gradient_noise_scale.value == pytest.approx(B_NOISE)
    by_key = {r.trial_key: r for r in rec.settings}
    assert by_key["base"].statistical_efficiency == pytest.approx(1.0)
    assert by_key["big"].statistical_efficiency == pytest.approx((B_NOISE + 4) / (B_NOISE + 16))
    assert by_key["big"].statistical_efficiency < 1  # above B0
    assert by_key["small"].statistical_efficiency == pytest.approx((B_NOISE + 4) / (B_NOISE + 2))
    assert by_key["small"].statistical_efficiency > 1  # below B0
    for r in rec.settings:
        assert r.goodput_tokens_per_s == pytest.approx(r.tokens_per_s * r.statistical_efficiency)
        assert r.goodput_samples_per_s == pytest.approx(r.samples_per_s * r.statistical_efficiency)
        low, high = r.statistical_efficiency_ci95
        assert low <= r.statistical_efficiency <= high


def test_goodput_objective_changes_the_verdict() -> None:
    by_throughput = decide(_settings(), args=RecommendArgs())
    assert by_throughput.decision == GO and by_throughput.chosen.trial_key == "big"
    # Both measures in the verdict, and the setting that wins on one and loses on the other named.
    assert "+30.0% tokens/s vs baseline" in by_throughput.verdict
    assert "8x1 goodput -48.0% vs baseline" in by_throughput.verdict
    assert "8x1 is fastest in tokens/s but 1x1 has more goodput" in by_throughput.verdict
    assert any(r.startswith("8x1 wins on throughput but loses on goodput against 1x1") for r in by_throughput.reasons)

    by_goodput = decide(_settings(), args=RecommendArgs(objective=Objective.goodput))
    assert by_goodput.decision == GO and by_goodput.chosen.trial_key == "small"
    assert by_goodput.objective == "goodput"
    # 800 x (8 / 6) = 1,067 against 1,000: +6.7% goodput, though 20% slower.
    assert "+6.7% goodput in tokens/s vs baseline" in by_goodput.verdict
    assert "1x1 throughput -20.0% vs baseline" in by_goodput.verdict
    assert by_goodput.speedup == pytest.approx(800 * (8 / 6) / 1000)
    assert by_goodput.reasons[0].startswith("1x1 reaches a goodput of 1,067 tokens/s (800 tokens/s x efficiency 1.33)")


def test_goodput_objective_keeps_the_baseline_when_only_a_bigger_batch_is_faster() -> None:
    settings = [r for r in _settings() if r.trial_key != "small"]
    assert decide(settings, args=RecommendArgs()).decision == GO
    rec = decide(settings, args=RecommendArgs(objective=Objective.goodput))
    assert rec.decision == NO_GO and rec.chosen.trial_key == "base"
    assert "most goodput measured" in rec.verdict


def test_goodput_objective_without_a_noise_scale_is_no_go_and_says_why() -> None:
    rec = decide(_settings(noise=False), args=RecommendArgs(objective=Objective.goodput))
    assert rec.decision == NO_GO and "goodput not measured" in rec.verdict
    assert any("gradient noise scale: not measured: window.noise_steps=0" in r for r in rec.reasons)
    assert all(r.goodput_per_s is None for r in rec.settings)
    # The default objective is decided as before, and says there is no goodput.
    assert decide(_settings(noise=False), args=RecommendArgs()).decision == GO


@pytest.mark.parametrize("rule,factor", [(LrScaling.sqrt, 2.0), (LrScaling.linear, 4.0), (LrScaling.none, None)])
def test_scaled_learning_rate_in_recommendation_yaml(tmp_path: Path, rule: LrScaling, factor: float | None) -> None:
    """GO to 8x1 quadruples the global batch (4 to 16): train.lr 1e-3 becomes 2e-3 (sqrt) or 4e-3 (linear), in
    place of the train.lr the run was measured with."""
    settings = [dataclasses.replace(r, run_overrides=("model=tiny", "train.lr=0.001")) for r in _settings()]
    rec = decide(settings, args=RecommendArgs(lr_scaling=rule), lr=1e-3)
    write_recommendation(tmp_path, build_report(rec), launch_hint="python -m trainer_tune")
    text = (tmp_path / "recommendation.yaml").read_text()
    overrides = yaml.safe_load(text)["overrides"]
    lrs = [o for o in overrides if o.startswith("train.lr=")]
    saved = json.loads((tmp_path / "recommendation.json").read_text())
    if factor is None:
        assert lrs == ["train.lr=0.001"] and rec.lr_change is None and saved["lr"] is None
        assert any("recommend.lr_scaling=none leaves train.lr as it is" in r for r in rec.reasons)
        return
    assert lrs == [f"train.lr={1e-3 * factor:.6g}"]
    assert float(lrs[0].split("=")[1]) == pytest.approx(1e-3 * factor)
    assert f"train.lr 0.001 -> {1e-3 * factor:.3g} ({rule.value} rule)" in text.splitlines()[0]  # the verdict
    assert saved["lr"] == {"rule": rule.value, "from_lr": 1e-3, "to_lr": pytest.approx(1e-3 * factor),
                           "from_global_batch_size": 4, "to_global_batch_size": 16}
    assert saved["gradient_noise_scale"]["value"] == pytest.approx(B_NOISE)


def test_no_lr_change_when_the_global_batch_stays() -> None:
    settings = _settings()
    settings[1] = dataclasses.replace(settings[1], micro_batch_size=2, global_batch_size=4)  # same batch, faster
    rec = decide(settings, args=RecommendArgs(), lr=1e-3)
    assert rec.decision == GO and rec.lr_change is None
    assert not any(o.startswith("train.lr=") for o in rec.overrides)


def test_goodput_is_a_training_objective() -> None:
    with pytest.raises(ConfigError, match=r"^recommend.objective='goodput' is not allowed: .* with mode=inference"):
        TuneConfig(mode=Mode.inference, recommend=RecommendArgs(objective=Objective.goodput))


def test_decision_matrix_names_the_goodput_winner() -> None:
    matrix = {w.objective: w for w in build_report(decide(_settings(), args=RecommendArgs())).explanations.matrix}
    assert matrix["max_throughput"].label == "8x1" and matrix["max_goodput"].label == "1x1"
    assert matrix["max_goodput"].value == pytest.approx(800 * 8 / 6)
    assert "max_goodput" not in {w.objective for w in build_report(decide(_settings(noise=False),
                                                                          args=RecommendArgs())).explanations.matrix}


def test_the_race_on_goodput_drops_the_big_batch_not_the_small_one() -> None:
    """With recommend.objective=goodput the sweep races on goodput (race.after_round): the leader is the setting
    with the most goodput, and a setting leaves when it has less beyond noise."""
    settings = with_goodput(_settings(), pool([r.noise_scale for r in _settings()]))
    on_throughput = race_drops(settings, after_round=3, behind=behind)
    on_goodput = race_drops(settings, after_round=3, rate=lambda r: r.goodput_per_s,
                            behind=lambda c, leader: behind(c, leader, goodput=True))
    assert sorted(d.trial_key for d in on_throughput) == ["base", "small"]
    assert sorted(d.trial_key for d in on_goodput) == ["base", "big"]
    assert all("in goodput against 1x1" in d.reason for d in on_goodput)


def test_a_goodput_interval_carries_the_noise_scales_own_uncertainty() -> None:
    """Known answer by hand: a's throughput over the baseline's is 1.1, 1.21, 1.331 in three rounds (log ratios
    0.0953, 0.1906, 0.2859: mean 0.1906, sd 0.0953, t(0.975, 2) = 4.303, half-width 0.2368); its efficiency is 0.8,
    0.6 to 0.9 over B_noise's 95% interval, the baseline's 1. The goodput ratio's centre is 0.1906 + ln 0.8 = -0.0325;
    its ends are the throughput half-width and the efficiency's distances (ln(0.8/0.6) = 0.2877 below, ln(0.9/0.8)
    = 0.1178 above) added in quadrature: exp(-0.0325 - 0.3726) = 0.667 and exp(-0.0325 + 0.2645) = 1.261."""
    from trainer_tune.evidence.comparison import compare

    base = make_result(index=0, key="base", is_baseline=True, windows={"r0": 1000.0, "r1": 1000.0, "r2": 1000.0})
    a = make_result(index=1, key="a", micro_batch_size=8, windows={"r0": 1100.0, "r1": 1210.0, "r2": 1331.0})
    base = dataclasses.replace(base, statistical_efficiency=1.0, statistical_efficiency_ci95=[1.0, 1.0])
    a = dataclasses.replace(a, statistical_efficiency=0.8, statistical_efficiency_ci95=[0.6, 0.9])
    throughput = compare(a, base)
    assert throughput.interval == pytest.approx((1.21 * 0.7891, 1.21 * 1.2672), rel=2e-3)
    goodput = compare(a, base, goodput=True)
    assert goodput.ratio == pytest.approx(1.21 * 0.8, rel=1e-6)
    assert goodput.interval == pytest.approx((0.667, 1.261), rel=2e-3)
    # Without an interval of B_noise (efficiency known exactly) the goodput interval is the throughput one, moved.
    exact = dataclasses.replace(a, statistical_efficiency_ci95=[0.8, 0.8])
    moved = compare(exact, base, goodput=True).interval
    assert moved == pytest.approx((throughput.interval[0] * 0.8, throughput.interval[1] * 0.8), rel=1e-6)
