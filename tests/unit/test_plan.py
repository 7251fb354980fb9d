from __future__ import annotations

import dataclasses

import pytest

from trainer_tune.config import ConfigError, SweepArgs, TuneConfig
from trainer_tune.flags import TrialFlags
from trainer_tune.plan import baseline_recheck, build_plan


def _cfg(**sweep: object) -> TuneConfig:
    cfg = TuneConfig()
    cfg.sweep = SweepArgs(**sweep)  # type: ignore[arg-type]
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = 2, 1  # what II("train.*") resolves to
    return cfg


def _pairs(plan) -> list[tuple[int, int]]:
    return [(s.micro_batch_size, s.grad_accum) for s in plan]


def test_no_sweep_measures_the_train_setting_only() -> None:
    plan = build_plan(_cfg(), world_size=2, base_flags=TrialFlags(), device_type="cpu")
    assert _pairs(plan) == [(2, 1)]
    assert plan[0].is_baseline and plan[0].global_batch_size == 4


def test_grid_has_baseline_first_and_once() -> None:
    plan = build_plan(_cfg(micro_batch_sizes=[8, 1, 2], grad_accums=[2, 1]), world_size=2,
                      base_flags=TrialFlags(), device_type="cpu")
    assert _pairs(plan) == [(2, 1), (1, 1), (1, 2), (2, 2), (8, 1), (8, 2)]
    assert [s.is_baseline for s in plan] == [True] + [False] * 5
    assert [s.index for s in plan] == list(range(6))
    assert len({s.key for s in plan}) == 6


def test_baseline_outside_the_grid_is_added() -> None:
    cfg = _cfg(micro_batch_sizes=[4], grad_accums=[1])
    cfg.baseline.micro_batch_size = 3
    plan = build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")
    assert _pairs(plan) == [(3, 1), (4, 1)]


def test_fixed_global_batch_keeps_only_matching_pairs() -> None:
    plan = build_plan(_cfg(micro_batch_sizes=[1, 2, 4, 8, 16], grad_accums=[1, 2, 4, 8, 16], global_batch_size=16),
                      world_size=2, base_flags=TrialFlags(), device_type="cpu")
    assert _pairs(plan)[1:] == [(1, 8), (2, 4), (4, 2), (8, 1)]
    assert all(s.global_batch_size == 16 for s in plan[1:])


def test_unreachable_global_batch_names_what_is_reachable() -> None:
    with pytest.raises(ConfigError, match=r"sweep.global_batch_size=6 is not allowed: .* world size 2; "
                                          r"reachable global batch sizes are \[2, 4, 8\]"):
        build_plan(_cfg(micro_batch_sizes=[1, 2], grad_accums=[1, 2], global_batch_size=6), world_size=2,
                   base_flags=TrialFlags(), device_type="cpu")


def test_flag_axes_multiply_the_grid() -> None:
    plan = build_plan(_cfg(micro_batch_sizes=[1, 2], ddp_bucket_cap_mb=[1, 25], nsa_prefill_batched=[True, False]),
                      world_size=1, base_flags=TrialFlags(), device_type="cpu")
    # The baseline (2x1, DDP's default bucket) plus 2 sizes x 2 buckets x 2 prefill modes.
    assert len(plan) == 9
    assert {(s.flags.bucket_cap_mb, s.flags.prefill_batched) for s in plan[1:]} == \
        {(1.0, True), (1.0, False), (25.0, True), (25.0, False)}
    assert plan[0].flags == TrialFlags() and plan[0].flags.bucket_cap_mb is None
    assert plan[1].label(swept_flags=("prefill_batched", "bucket_cap_mb")) == \
        "1x1 prefill_batched=true bucket_cap_mb=1"


def test_keys_change_with_what_is_measured_and_nothing_else() -> None:
    base = build_plan(_cfg(), world_size=1, base_flags=TrialFlags(), device_type="cpu")[0].key
    assert build_plan(_cfg(), world_size=1, base_flags=TrialFlags(), device_type="cpu")[0].key == base
    other_world = build_plan(_cfg(), world_size=2, base_flags=TrialFlags(), device_type="cpu")[0].key
    other_flags = build_plan(_cfg(), world_size=1, base_flags=TrialFlags(static_graph=True), device_type="cpu")[0].key
    cfg = _cfg()
    cfg.model = dataclasses.replace(cfg.model, d_model=64)
    other_model = build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")[0].key
    cfg = _cfg()
    cfg.loss = dataclasses.replace(cfg.loss, _target_="my_losses.focal")
    other_loss = build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")[0].key
    cfg = _cfg()
    cfg.recommend.min_speedup = 2.0  # the decision rule does not change what a trial measures
    same = build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")[0].key
    assert len({base, other_world, other_flags, other_model, other_loss}) == 5
    assert same == base


def test_the_baseline_recheck_repeats_the_baseline_under_its_own_key_and_index() -> None:
    plan = build_plan(_cfg(micro_batch_sizes=[1, 4], grad_accums=[1]), world_size=2,
                      base_flags=TrialFlags(), device_type="cpu")
    again = baseline_recheck(plan)
    assert (again.micro_batch_size, again.grad_accum, again.flags) == \
        (plan[0].micro_batch_size, plan[0].grad_accum, plan[0].flags)
    assert again.index == len(plan) and again.recheck_of == 0 and not again.is_baseline
    assert again.key not in {s.key for s in plan}
    assert again.label() == "2x1 re-check" and plan[0].label() == "2x1"
