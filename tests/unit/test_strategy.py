"""Search strategies: what power skips and why, what adaptive cuts short, in which order they measure."""

from __future__ import annotations

import dataclasses

import pytest

from result_factory import make_result
from trainer_tune.config import ConfigError, Strategy, SweepArgs, TuneConfig
from trainer_tune.flags import TrialFlags
from trainer_tune.plan import TrialSpec, build_plan, power_ladder
from trainer_tune.results import TrialResult
from trainer_tune.strategy import (
    BestSoFar, best_so_far, cannot_reach_reason, measurement_order, power_skip_reason)


def _plan(**sweep: object) -> list[TrialSpec]:
    cfg = TuneConfig()
    cfg.sweep = SweepArgs(**sweep)  # type: ignore[arg-type]
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = 1, 1
    return build_plan(cfg, world_size=2, base_flags=TrialFlags(), device_type="cpu")


def _result(spec: TrialSpec, *, tokens_per_s: float = 1000.0, half_width: float = 10.0,
            status: str = "ok") -> TrialResult:
    return make_result(index=spec.index, key=spec.key, tokens_per_s=tokens_per_s, status=status,
                       micro_batch_size=spec.micro_batch_size, grad_accum=spec.grad_accum,
                       is_baseline=spec.is_baseline, ci=[tokens_per_s - half_width, tokens_per_s + half_width])


def _sweep(**kw: object) -> SweepArgs:
    return SweepArgs(strategy=Strategy.power, **kw)  # type: ignore[arg-type]


def test_power_ladder_doubles_up_to_the_cap_and_rejects_a_cap_below_the_start() -> None:
    assert power_ladder(start=1, maximum=10) == [1, 2, 4, 8]
    assert power_ladder(start=3, maximum=3) == [3]
    with pytest.raises(ConfigError, match="sweep.max_micro_batch_size=2"):
        power_ladder(start=4, maximum=2)


def test_power_plan_walks_the_ladder_from_the_smallest_listed_size() -> None:
    plan = _plan(strategy=Strategy.power, micro_batch_sizes=[2, 5], grad_accums=[1], max_micro_batch_size=16)
    assert [(s.micro_batch_size, s.grad_accum) for s in plan] == [(1, 1), (2, 1), (4, 1), (8, 1), (16, 1)]


def test_power_goes_on_while_each_doubling_is_faster_beyond_noise() -> None:
    plan = _plan(strategy=Strategy.power, micro_batch_sizes=[1], grad_accums=[1], max_micro_batch_size=8)
    by_size = {s.micro_batch_size: s for s in plan}
    results = {by_size[1].key: _result(by_size[1], tokens_per_s=1000),
               by_size[2].key: _result(by_size[2], tokens_per_s=1500)}
    assert power_skip_reason(by_size[4], plan=plan, results=results, sweep=_sweep()) is None


def test_power_stops_a_chain_when_a_doubling_is_within_noise() -> None:
    plan = _plan(strategy=Strategy.power, micro_batch_sizes=[1], grad_accums=[1], max_micro_batch_size=8)
    by_size = {s.micro_batch_size: s for s in plan}
    # 1010 +- 10 overlaps 1000 +- 10: not faster beyond noise.
    results = {by_size[1].key: _result(by_size[1], tokens_per_s=1000),
               by_size[2].key: _result(by_size[2], tokens_per_s=1010)}
    reason = power_skip_reason(by_size[4], plan=plan, results=results, sweep=_sweep())
    assert reason == ("2x1 (1,010 tokens/s) was not faster beyond noise than 1x1 (1,000), so larger "
                      "micro-batches were not tried")
    # The size above the first skipped one is skipped for the same reason.
    assert power_skip_reason(by_size[8], plan=plan, results=results, sweep=_sweep()) == reason
    # With patience 2 one flat doubling is tolerated.
    assert power_skip_reason(by_size[4], plan=plan, results=results, sweep=_sweep(power_patience=2)) is None


def test_power_stops_a_chain_at_a_failure_but_not_other_chains() -> None:
    plan = _plan(strategy=Strategy.power, micro_batch_sizes=[1], grad_accums=[1, 2], max_micro_batch_size=4)
    spec = {(s.micro_batch_size, s.grad_accum): s for s in plan}
    results = {spec[1, 1].key: _result(spec[1, 1], tokens_per_s=1000),
               spec[2, 1].key: _result(spec[2, 1], status="oom"),
               spec[1, 2].key: _result(spec[1, 2], tokens_per_s=1000),
               spec[2, 2].key: _result(spec[2, 2], tokens_per_s=2000)}
    assert power_skip_reason(spec[4, 1], plan=plan, results=results, sweep=_sweep()) == \
        "2x1 ended oom, so larger micro-batches were not tried"
    assert power_skip_reason(spec[4, 2], plan=plan, results=results, sweep=_sweep()) is None


def test_with_a_fixed_global_batch_a_chain_is_the_flags_alone() -> None:
    plan = _plan(strategy=Strategy.power, micro_batch_sizes=[1], grad_accums=[1, 2, 4], global_batch_size=8,
                 max_micro_batch_size=4)
    spec = {(s.micro_batch_size, s.grad_accum): s for s in plan}
    assert set(spec) == {(1, 1), (1, 4), (2, 2), (4, 1)}  # baseline 1x1, then the pairs that give 8
    results = {spec[1, 1].key: _result(spec[1, 1]), spec[1, 4].key: _result(spec[1, 4], status="nan")}
    # 1x1 (the baseline) is in the chain too but is smaller; the failure of 1x4 stops 2x2 and 4x1.
    assert "1x4 ended nan" in power_skip_reason(spec[2, 2], plan=plan, results=results, sweep=_sweep(
        global_batch_size=8))  # type: ignore[operator]


def test_the_baseline_is_never_skipped() -> None:
    plan = _plan(strategy=Strategy.power, micro_batch_sizes=[1], grad_accums=[1], max_micro_batch_size=4)
    assert power_skip_reason(plan[0], plan=plan, results={}, sweep=_sweep()) is None


def test_adaptive_order_puts_the_baseline_first_then_the_largest_steps() -> None:
    plan = _plan(strategy=Strategy.adaptive, micro_batch_sizes=[1, 2, 4], grad_accums=[1, 2])
    ordered = measurement_order(plan, Strategy.adaptive)
    assert ordered[0].is_baseline
    assert [(s.micro_batch_size, s.grad_accum) for s in ordered[1:]] == [(4, 2), (2, 2), (4, 1), (1, 2), (2, 1)]
    assert measurement_order(plan, Strategy.grid) == plan


def test_best_so_far_is_the_highest_lower_bound_among_clean_results() -> None:
    plan = _plan(micro_batch_sizes=[1, 2, 4], grad_accums=[1])
    results = [_result(plan[0], tokens_per_s=1000, half_width=100),
               _result(plan[1], tokens_per_s=1200, half_width=300),  # higher estimate, lower bound 900
               _result(plan[2], status="oom")]
    assert best_so_far(results, Strategy.adaptive) == BestSoFar(label="1x1", tokens_per_s_low=900.0)
    assert best_so_far(results, Strategy.grid) is None
    assert best_so_far([results[2]], Strategy.adaptive) is None


def test_a_window_is_cut_short_only_when_its_upper_bound_is_below_the_bar() -> None:
    steady = [0.1] * 10  # 1000 tokens per step: exactly 10,000 tokens/s, a zero-width interval
    assert cannot_reach_reason(steady, tokens_per_step=1000, best=BestSoFar("4x1", 9_999.0)) is None
    reason = cannot_reach_reason(steady, tokens_per_step=1000, best=BestSoFar("4x1", 12_000.0))
    assert reason == ("cut short after 10 steps: at most 10,000 tokens/s at 95%, below the 12,000 that 4x1 "
                      "reaches at its interval's lower end")


def test_adaptive_results_are_keyed_apart_from_full_windows() -> None:
    grid = _plan(micro_batch_sizes=[1, 2], grad_accums=[1])
    adaptive = _plan(strategy=Strategy.adaptive, micro_batch_sizes=[1, 2], grad_accums=[1])
    power = _plan(strategy=Strategy.power, micro_batch_sizes=[1], grad_accums=[1], max_micro_batch_size=2)
    assert {s.key for s in grid}.isdisjoint({s.key for s in adaptive})
    assert [s.key for s in grid] == [s.key for s in power]
