"""One rule of what may be chosen (decide/eligible.py), asked by the verdict, the race, the power strategy and the
decision matrix: none of them may pick a setting the rule refuses."""

from __future__ import annotations

from result_factory import make_result
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.decide.eligible import FAILED, OVER_LATENCY, OVER_MEMORY, TOO_FEW_WINDOWS, eligible, ineligibility
from trainer_tune.decide.verdict import decide
from trainer_tune.explain.report import build_report


def _sweep() -> list:
    # The fastest setting needs 95% of the device: over recommend.max_memory_fraction=0.9.
    return [make_result(index=0, key="base", tokens_per_s=500, is_baseline=True, memory_bytes=10,
                        device_memory_bytes=100),
            make_result(index=1, key="greedy", tokens_per_s=2000, micro_batch_size=8, memory_bytes=95,
                        device_memory_bytes=100),
            make_result(index=2, key="ok", tokens_per_s=800, micro_batch_size=4, memory_bytes=50,
                        device_memory_bytes=100)]


def test_the_rule_names_why() -> None:
    args = RecommendArgs(max_batch_latency_ms=5.0)
    base, greedy, ok = _sweep()
    assert eligible(ok, args) is None
    assert ineligibility(greedy, args)[0] == OVER_MEMORY and "95% of the device" in eligible(greedy, args)
    assert ineligibility(make_result(index=3, key="x", status="oom"), args)[0] == FAILED
    one = make_result(index=4, key="one", windows={"r0": 900.0})
    assert eligible(one, args) is None and ineligibility(one, args, min_windows=2)[0] == TOO_FEW_WINDOWS
    import dataclasses

    from trainer_tune.measure.figures import LatencyFigures
    slow = dataclasses.replace(ok, latency=LatencyFigures(p50_ms=4, p90_ms=5, p99_ms=9.5, max_ms=10, mean_ms=4,
                                                          num_batches=300))
    assert ineligibility(slow, args)[0] == OVER_LATENCY and "p99 9.5 ms" in eligible(slow, args)


def test_the_matrix_never_names_a_setting_the_decision_may_not_choose() -> None:
    decision = decide(_sweep(), args=RecommendArgs())
    assert "greedy" in decision.ineligible and decision.best.trial_key == "ok"
    matrix = build_report(decision).explanations.matrix
    picked = {row.objective: row.trial_key for row in matrix}
    assert "greedy" not in picked.values(), picked
    assert picked["max_throughput"] == "ok"
