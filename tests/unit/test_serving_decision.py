"""mode=inference decisions: the p99 budget, the point objectives (latency, energy) and what NO-GO says."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest

from tests.unit.result_factory import make_result
from trainer_tune.config.schema import ConfigError, Objective, RecommendArgs, SweepArgs, TrainArgs, TuneConfig
from trainer_tune.config.schema import Mode
from trainer_tune.measure.figures import LatencyFigures
from trainer_tune.decide.verdict import GO, NO_GO, decide
from trainer_tune.decide.sequential import INCONCLUSIVE
from trainer_tune.evidence.estimate import SettingEstimate


def _served(index: int, batch: int, *, rate: float, p99_ms: float, energy: Optional[float] = None) -> SettingEstimate:
    result = make_result(index=index, key=f"k{batch}", micro_batch_size=batch, tokens_per_s=rate,
                         is_baseline=index == 0)
    latency = LatencyFigures(p50_ms=p99_ms / 2, p90_ms=p99_ms * 0.8, p99_ms=p99_ms, max_ms=p99_ms * 1.1,
                             mean_ms=p99_ms / 2, num_batches=40)
    # Three windows that each read the same figures: every comparison is exact, as make_result's rates are.
    rounds = list(result.window_throughput_per_s)
    return dataclasses.replace(result, mode="inference", latency=latency, energy_j_per_sample=energy,
                               energy_note=None if energy is not None else "CPU energy not measured: no powercap",
                               window_p99_ms={r: p99_ms for r in rounds},
                               window_energy_j_per_sample={r: energy for r in rounds} if energy is not None else {})


def _sweep() -> list[SettingEstimate]:
    # Baseline batch 4; throughput grows with the batch, and so does the p99.
    return [_served(0, 4, rate=1000.0, p99_ms=20.0, energy=0.4), _served(1, 1, rate=500.0, p99_ms=8.0, energy=0.9),
            _served(2, 16, rate=1600.0, p99_ms=60.0, energy=0.3), _served(3, 64, rate=2000.0, p99_ms=200.0,
                                                                          energy=0.25)]


def test_a_budget_rules_out_the_largest_batches_and_go_is_the_fastest_within_it() -> None:
    rec = decide(_sweep(), args=RecommendArgs(max_batch_latency_ms=100.0))
    assert rec.decision == GO and rec.chosen is not None and rec.chosen.micro_batch_size == 16
    assert any(r.startswith("64x1 is over the latency budget: p99 200.0 ms > recommend.max_batch_latency_ms=100") for r in
               rec.reasons)
    assert "micro_batch_size=16" in rec.verdict


def test_no_batch_meets_the_budget_no_go_names_the_smallest_p99() -> None:
    rec = decide(_sweep(), args=RecommendArgs(max_batch_latency_ms=5.0))
    assert rec.decision == NO_GO
    assert rec.verdict == "NO-GO: no batch size meets the p99 budget of 5 ms (smallest p99 8.0 ms at 1x1)"


def test_a_baseline_over_budget_must_change() -> None:
    rec = decide(_sweep(), args=RecommendArgs(max_batch_latency_ms=10.0))
    assert rec.decision == GO and rec.chosen is not None and rec.chosen.micro_batch_size == 1
    assert "the baseline 4x1 is over the p99 budget of 10 ms" in rec.verdict


def test_latency_and_energy_objectives_pick_their_own_winner() -> None:
    latency = decide(_sweep(), args=RecommendArgs(objective=Objective.latency))
    assert latency.decision == GO and latency.chosen is not None and latency.chosen.micro_batch_size == 1
    assert "p99 8.0 ms vs p99 20.0 ms for baseline 4x1, +150.0% better" in latency.verdict
    energy = decide(_sweep(), args=RecommendArgs(objective=Objective.energy, max_batch_latency_ms=100.0))
    assert energy.decision == GO and energy.chosen is not None and energy.chosen.micro_batch_size == 16


def test_a_point_objective_is_decided_on_its_windows_with_the_three_verdicts() -> None:
    """p99 per window, paired by round like throughput: a clear gain is GO, a gain inside the windows' spread is
    INCONCLUSIVE (never a GO on a point value), and every setting shown short of the margin (here, slower in every
    round) is NO-GO."""
    def served(index: int, batch: int, p99_by_round: dict[str, float]) -> SettingEstimate:
        result = _served(index, batch, rate=1000.0, p99_ms=sorted(p99_by_round.values())[1])
        return dataclasses.replace(result, window_p99_ms=p99_by_round)

    base = served(0, 4, {"r0": 20.0, "r1": 22.0, "r2": 18.0})
    clear = served(1, 1, {"r0": 10.0, "r1": 11.5, "r2": 8.5})  # half the baseline's, round by round
    noisy = served(1, 1, {"r0": 12.0, "r1": 30.0, "r2": 10.0})  # a better median, but one slow window
    worse = served(1, 1, {"r0": 26.0, "r1": 28.5, "r2": 24.0})  # slower in every round
    args = RecommendArgs(objective=Objective.latency)
    go = decide([base, clear], args=args)
    assert go.decision == GO and go.chosen is not None and go.chosen.label == "1x1"
    assert go.speedup_ci95 is not None and go.speedup_ci95[0] > 1.05
    unsure = decide([base, noisy], args=args)
    assert unsure.decision == INCONCLUSIVE and unsure.chosen is None and unsure.leader.label == "1x1"
    assert unsure.verdict.startswith("INCONCLUSIVE: 1x1 leads with p99")
    no_go = decide([base, worse], args=args)
    assert no_go.decision == NO_GO and no_go.chosen is not None and no_go.chosen.label == "4x1"


def test_energy_objective_without_any_reading_is_no_go_named_unmeasured_never_zero() -> None:
    results = [dataclasses.replace(r, energy_j_per_sample=None, energy_note="CPU energy not measured: no powercap",
                                   window_energy_j_per_sample={}) for r in _sweep()]
    rec = decide(results, args=RecommendArgs(objective=Objective.energy))
    assert rec.decision == NO_GO
    assert rec.verdict == "NO-GO: energy per sample not measured (recommend.objective=energy)"
    assert any("energy per sample was measured for no setting: CPU energy not measured: no powercap" in r
               for r in rec.reasons)


@pytest.mark.parametrize("sweep,train,key", [
    (SweepArgs(grad_accums=[1, 2]), TrainArgs(), "sweep.grad_accums"),
    (SweepArgs(ddp_static_graph=[True, False]), TrainArgs(), "sweep.ddp_static_graph"),
    (SweepArgs(), TrainArgs(grad_accum=2), "train.grad_accum"),
    (SweepArgs(hold_global_batch=True), TrainArgs(), "sweep.hold_global_batch"),
    (SweepArgs(activation_checkpointing=[False, True]), TrainArgs(), "sweep.activation_checkpointing"),
    (SweepArgs(), TrainArgs(activation_checkpointing=True), "train.activation_checkpointing"),
])
def test_inference_refuses_training_axes(sweep: SweepArgs, train: TrainArgs, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}=.* is not allowed: .* with mode=inference"):
        TuneConfig(mode=Mode.inference, sweep=sweep, train=train)


def test_every_key_one_mode_ignores_is_refused_in_it_naming_the_key_and_the_mode() -> None:
    """Each pair of MODE_ONLY_KEYS (the one list of them), set in the mode that ignores it."""
    from trainer_tune.config.schema import MODE_ONLY_KEYS, BaselineArgs, RecommendArgs, ServingArgs

    samples = {"sweep.grad_accums": [1, 2], "sweep.ddp_static_graph": [True], "sweep.ddp_find_unused_parameters": [True],
               "sweep.ddp_bucket_cap_mb": [25.0], "sweep.activation_checkpointing": [True],
               "train.activation_checkpointing": True, "sweep.global_batch_size": 8, "sweep.hold_global_batch": True,
               "recommend.max_batch_latency_ms": 50.0, "recommend.max_p99_ms": 20.0,
               "serving.rate_per_s": [100.0], "serving.max_batch_sizes": [2], "serving.max_queue_delays_ms": [1.0],
               "serving.requests_per_rate": 500, "serving.max_s_per_rate": 2.0, "serving.max_rates": 3,
               "serving.confirm_settings": 1, "serving.service_repeats": 10, "serving.seed": 1}
    assert sorted(samples) == sorted(only.key for only in MODE_ONLY_KEYS)
    groups = {"sweep": SweepArgs, "train": TrainArgs, "recommend": RecommendArgs, "baseline": BaselineArgs,
              "serving": ServingArgs}
    for only in MODE_ONLY_KEYS:
        group, name = only.key.split(".")
        other = Mode.train if only.mode == Mode.inference else Mode.inference
        args = {group: groups[group](**{name: samples[only.key]})}
        with pytest.raises(ConfigError) as refused:
            TuneConfig(mode=other, **args)
        assert str(refused.value).startswith(f"{only.key}=") and f"with mode={other.value} (" in str(refused.value)
        assert str(refused.value).endswith(f"; it applies with mode={only.mode.value}")
        if group == "serving" or only.key == "recommend.max_p99_ms":
            # Serving keys apply under open-loop load: with rates to serve.
            serving = args.get("serving", ServingArgs())
            if serving.rate_per_s is None:
                serving.rate_per_s = [100.0]
            args["serving"] = serving
        TuneConfig(mode=only.mode, **args)  # where it applies, it is taken
