"""Search strategies: which settings enter the race first, and when strategy=power lets the next doubling in."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest

from result_factory import make_result
from trainer_tune.config.schema import ConfigError, Strategy, SweepArgs, TuneConfig
from trainer_tune.config.flags import TrialFlags
from trainer_tune.plan import TrialSpec, build_plan, power_ladder
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.decide.strategy import first_entrants, power_gate


def _plan(**sweep: object) -> list[TrialSpec]:
    cfg = TuneConfig()
    cfg.sweep = SweepArgs(**sweep)  # type: ignore[arg-type]
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = 1, 1
    return build_plan(cfg, world_size=2, base_flags=TrialFlags(), device_type="cpu")


def _result(spec: TrialSpec, *, tokens_per_s: float = 1000.0, status: str = "ok") -> SettingEstimate:
    result = make_result(index=spec.index, key=spec.key, tokens_per_s=tokens_per_s, status=status,
                         micro_batch_size=spec.micro_batch_size, grad_accum=spec.grad_accum,
                         is_baseline=spec.is_baseline)
    return dataclasses.replace(result, window_throughput_per_s={"r0": tokens_per_s} if status == "ok" else {})


def _sweep(**kw: object) -> SweepArgs:
    return SweepArgs(strategy=Strategy.power, **kw)  # type: ignore[arg-type]


def _by_speed(a: SettingEstimate, b: SettingEstimate) -> Optional[bool]:
    """A stand-in for the sweep's rule: faster by more than 10%, decided at once."""
    return a.tokens_per_s > 1.1 * b.tokens_per_s  # type: ignore[operator]


def _undecided(a: SettingEstimate, b: SettingEstimate) -> Optional[bool]:
    return None


def test_power_ladder_doubles_up_to_the_cap_and_rejects_a_cap_below_the_start() -> None:
    assert power_ladder(start=1, maximum=10) == [1, 2, 4, 8]
    assert power_ladder(start=3, maximum=3) == [3]
    with pytest.raises(ConfigError, match="sweep.max_micro_batch_size=2"):
        power_ladder(start=4, maximum=2)


def test_power_plan_walks_the_ladder_from_the_smallest_listed_size() -> None:
    plan = _plan(strategy=Strategy.power, micro_batch_sizes=[2, 5], grad_accums=[1], max_micro_batch_size=16)
    assert [(s.micro_batch_size, s.grad_accum) for s in plan] == [(1, 1), (2, 1), (4, 1), (8, 1), (16, 1)]


def test_grid_lets_every_setting_in_at_once_and_power_the_bottom_of_each_chain() -> None:
    grid = _plan(micro_batch_sizes=[1, 2, 4], grad_accums=[1, 2])
    assert first_entrants(grid, SweepArgs()) == grid
    power = _plan(strategy=Strategy.power, micro_batch_sizes=[2], grad_accums=[1, 2], max_micro_batch_size=8)
    entrants = first_entrants(power, _sweep())
    assert entrants[0].is_baseline
    assert [(s.micro_batch_size, s.grad_accum) for s in entrants[1:]] == [(2, 1), (2, 2)]


def test_power_lets_the_next_doubling_in_once_the_last_one_is_faster() -> None:
    # The baseline 1x1 is the bottom of the grad_accum=1 chain: 1x1, 2x1, 4x1, 8x1.
    plan = _plan(strategy=Strategy.power, micro_batch_sizes=[2], grad_accums=[1], max_micro_batch_size=16)
    by_size = {s.micro_batch_size: s for s in plan}
    settings = {by_size[1].key: _result(by_size[1], tokens_per_s=500)}
    # The first doubling above the baseline needs no comparison: 2x1 may enter once 1x1 has a clean window.
    assert power_gate(by_size[2], plan=plan, settings=settings, sweep=_sweep(), faster=_undecided).enter
    settings[by_size[2].key] = _result(by_size[2], tokens_per_s=1000)
    # 4x1 waits while 2x1 has not been compared with 1x1 yet (the sweep's rule says None until both have
    # sweep.min_rounds windows) ...
    waiting = power_gate(by_size[4], plan=plan, settings=settings, sweep=_sweep(), faster=_undecided)
    assert not waiting.enter and waiting.reason is None
    # ... and enters once the rule says 2x1 beats 1x1; 8x1 then waits for 4x1, which has not entered.
    assert power_gate(by_size[4], plan=plan, settings=settings, sweep=_sweep(), faster=_by_speed).enter
    eight = power_gate(by_size[8], plan=plan, settings=settings, sweep=_sweep(), faster=_by_speed)
    assert not eight.enter and eight.reason is None


def test_power_stops_a_chain_when_a_doubling_is_not_faster_beyond_noise() -> None:
    plan = _plan(strategy=Strategy.power, micro_batch_sizes=[2], grad_accums=[1], max_micro_batch_size=16)
    by_size = {s.micro_batch_size: s for s in plan}
    settings = {by_size[1].key: _result(by_size[1], tokens_per_s=600),
                by_size[2].key: _result(by_size[2], tokens_per_s=1000),
                by_size[4].key: _result(by_size[4], tokens_per_s=1050)}
    gate = power_gate(by_size[8], plan=plan, settings=settings, sweep=_sweep(), faster=_by_speed)
    assert not gate.enter
    assert gate.reason == ("4x1 (1,050 tokens/s) was not faster beyond noise than 2x1 (1,000), so larger "
                           "micro-batches were not tried")
    # The size above it never enters either, for the same reason.
    assert power_gate(by_size[16], plan=plan, settings=settings, sweep=_sweep(), faster=_by_speed).reason \
        == gate.reason
    # With patience 2 one flat doubling is tolerated.
    assert power_gate(by_size[8], plan=plan, settings=settings, sweep=_sweep(power_patience=2),
                      faster=_by_speed).enter


def test_power_stops_a_chain_at_a_failure_but_not_other_chains() -> None:
    plan = _plan(strategy=Strategy.power, micro_batch_sizes=[2], grad_accums=[1, 2], max_micro_batch_size=8)
    spec = {(s.micro_batch_size, s.grad_accum): s for s in plan}
    settings = {spec[1, 1].key: _result(spec[1, 1], tokens_per_s=500),
                spec[2, 1].key: _result(spec[2, 1], tokens_per_s=1000),
                spec[4, 1].key: _result(spec[4, 1], status="oom"),
                spec[2, 2].key: _result(spec[2, 2], tokens_per_s=1000),
                spec[4, 2].key: _result(spec[4, 2], tokens_per_s=2000)}
    assert power_gate(spec[8, 1], plan=plan, settings=settings, sweep=_sweep(), faster=_by_speed).reason == \
        "4x1 ended oom, so larger micro-batches were not tried"
    assert power_gate(spec[8, 2], plan=plan, settings=settings, sweep=_sweep(), faster=_by_speed).enter


def test_with_a_fixed_global_batch_a_chain_is_the_flags_alone() -> None:
    plan = _plan(strategy=Strategy.power, micro_batch_sizes=[1], grad_accums=[1, 2, 4], global_batch_size=8,
                 max_micro_batch_size=4)
    spec = {(s.micro_batch_size, s.grad_accum): s for s in plan}
    assert set(spec) == {(1, 1), (1, 4), (2, 2), (4, 1)}  # baseline 1x1, then the pairs that give 8
    sweep = _sweep(global_batch_size=8)
    assert [(s.micro_batch_size, s.grad_accum) for s in first_entrants(plan, sweep)] == [(1, 1), (1, 4)]
    settings = {spec[1, 1].key: _result(spec[1, 1]), spec[1, 4].key: _result(spec[1, 4], status="nan")}
    gate = power_gate(spec[2, 2], plan=plan, settings=settings, sweep=sweep, faster=_by_speed)
    assert gate.reason is not None and "1x4 ended nan" in gate.reason
