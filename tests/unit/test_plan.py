from __future__ import annotations

import dataclasses

import pytest

from trainer_tune.config.schema import (
    Backend, ConfigError, CountArgs, DistArgs, FaultArgs, FaultKind, Mode, Precision, RecommendArgs, StepArgs,
    Strategy, SweepArgs, TelemetryArgs, ThroughputArgs, ThroughputUnit, TrainArgs, TuneConfig, WandbArgs,
    WatchdogArgs, WindowArgs)
from trainer_tune.config.flags import TrialFlags
from trainer_tune.plan import build_plan, window_of


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


def _key(cfg: TuneConfig, *, device_type: str = "cpu") -> str:
    return build_plan(cfg, world_size=2, base_flags=TrialFlags(), device_type=device_type)[0].key


def _changed(**groups: object) -> TuneConfig:
    cfg = _cfg()
    for name, value in groups.items():
        setattr(cfg, name, value)
    return cfg


MEASURES_ELSE = {
    "a rehearsed oom": _changed(fault=FaultArgs(kind=FaultKind.oom)),
    "the same fault at another step": _changed(fault=FaultArgs(kind=FaultKind.error, step=5)),
    "no gradient-sync split": _changed(window=WindowArgs(comm_split_steps=0)),
    "no noise steps": _changed(window=WindowArgs(noise_steps=0)),
    "no GPU sampling": _changed(telemetry=TelemetryArgs(gpu_sampling=False)),
    "faster GPU sampling": _changed(telemetry=TelemetryArgs(sample_hz=50.0)),
    "another peak for MFU": _changed(telemetry=TelemetryArgs(peak_tflops=100.0)),
    "bf16": _changed(train=TrainArgs(precision=Precision.bf16)),
    "models rebuilt for every window": _changed(window=WindowArgs(keep_models=False)),
    "serving instead of training": _changed(mode=Mode.inference),
    "a step function": _changed(step=StepArgs(_target_="helpers.workloads.pair_step")),
    "the samples unit": _changed(throughput=ThroughputArgs(unit=ThroughputUnit.samples)),
    "a count of your own": _changed(throughput=ThroughputArgs(count=CountArgs(_target_="a.count", unit="frames"))),
}

MEASURES_THE_SAME = {
    "the decision rule": _changed(recommend=RecommendArgs(min_speedup=2.0)),
    "wandb": _changed(wandb=WandbArgs(enabled=False, project="elsewhere", tags=["x"])),
    "stall thresholds": _changed(watchdog=WatchdogArgs(stall_s=5.0, abort_after_s=10.0)),
    "the process-group timeout": _changed(dist=DistArgs(timeout_s=60.0)),
    "backend auto, which is gloo on a CPU": _changed(dist=DistArgs(backend=Backend.gloo)),
    "fault settings without a fault": _changed(fault=FaultArgs(kind=FaultKind.none, rank=1, step=7)),
    "another race": _changed(sweep=SweepArgs(min_rounds=5, max_rounds=12, budget_s=None, race=False, seed=3)),
}


@pytest.mark.parametrize("name", list(MEASURES_ELSE))
def test_a_key_changes_with_every_condition_of_the_measurement(name: str) -> None:
    assert _key(MEASURES_ELSE[name]) != _key(_cfg())


@pytest.mark.parametrize("name", list(MEASURES_THE_SAME))
def test_a_key_ignores_what_does_not_change_the_measurement(name: str) -> None:
    assert _key(MEASURES_THE_SAME[name]) == _key(_cfg())


def test_a_key_names_the_backend_and_device_the_group_runs_on() -> None:
    cuda_nccl, cuda_gloo = _changed(dist=DistArgs(backend=Backend.nccl)), _changed(dist=DistArgs(backend=Backend.gloo))
    keys = {_key(_cfg()), _key(cuda_nccl, device_type="cuda"), _key(cuda_gloo, device_type="cuda")}
    assert len(keys) == 3
    assert _key(_cfg(), device_type="cuda") == _key(cuda_nccl, device_type="cuda")  # auto is nccl on CUDA


def test_a_window_is_keyed_by_its_setting_and_round() -> None:
    plan = build_plan(_cfg(micro_batch_sizes=[1, 4], grad_accums=[1]), world_size=2,
                      base_flags=TrialFlags(), device_type="cpu")
    first, again = window_of(plan[1], "r0"), window_of(plan[1], "r1")
    assert (first.setting_key, first.round_id) == (plan[1].key, "r0")
    assert len({first.key, again.key, plan[1].key, window_of(plan[0], "r0").key}) == 4
    assert (first.micro_batch_size, first.grad_accum, first.flags, first.index) == \
        (plan[1].micro_batch_size, plan[1].grad_accum, plan[1].flags, plan[1].index)
    assert window_of(plan[1], "job2/r0").key != first.key  # a multirun job's rounds are its own



def test_held_global_batch_is_the_baselines() -> None:
    """+sweep=global_batch once fixed 16 while the default baseline's global batch is 4 (2x1 on 2 ranks): every
    setting then changed the optimisation the sweep promised to keep."""
    plan = build_plan(_cfg(micro_batch_sizes=[1, 2, 4, 8, 16], grad_accums=[1, 2, 4, 8, 16], hold_global_batch=True),
                      world_size=2, base_flags=TrialFlags(), device_type="cpu")
    assert _pairs(plan) == [(2, 1), (1, 2)]
    assert {s.global_batch_size for s in plan} == {4}


def test_a_global_batch_size_wins_over_holding_the_baselines() -> None:
    plan = build_plan(_cfg(micro_batch_sizes=[1, 2, 4, 8, 16], grad_accums=[1, 2, 4, 8, 16], hold_global_batch=True,
                           global_batch_size=16), world_size=2, base_flags=TrialFlags(), device_type="cpu")
    assert _pairs(plan)[1:] == [(1, 8), (2, 4), (4, 2), (8, 1)]


def test_an_unreachable_held_global_batch_names_the_baselines() -> None:
    with pytest.raises(ConfigError, match=r"sweep.hold_global_batch=true \(the baseline's global batch 2 x 1 x 2 "
                                          r"ranks = 4\) is not allowed: .* reachable global batch sizes are \[8\]"):
        build_plan(_cfg(micro_batch_sizes=[4], grad_accums=[1], hold_global_batch=True), world_size=2,
                   base_flags=TrialFlags(), device_type="cpu")


def test_the_global_batch_sweep_holds_the_baselines_by_default() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from conftest import REPO
    from trainer_tune.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg: TuneConfig = OmegaConf.to_object(compose(config_name="config", overrides=["+sweep=global_batch"]))  # type: ignore
    plan = build_plan(cfg, world_size=2, base_flags=TrialFlags(), device_type="cpu")
    assert {s.global_batch_size for s in plan} == {plan[0].global_batch_size} == {4}


def test_compile_checkpointing_and_precision_axes_multiply_the_grid_and_key_only_when_set() -> None:
    plan = build_plan(_cfg(micro_batch_sizes=[2], compile=[False, True], activation_checkpointing=[False, True],
                           precision=[Precision.fp32, Precision.bf16]),
                      world_size=1, base_flags=TrialFlags(), device_type="cpu")
    assert len(plan) == 8  # the baseline (2x1, defaults) is one of the 2 x 2 x 2
    assert {(s.flags.compile, s.flags.activation_checkpointing, s.flags.precision) for s in plan} == {
        (c, a, p) for c in (False, True) for a in (False, True) for p in ("fp32", "bf16")}
    assert len({s.key for s in plan}) == 8
    assert plan[1].label(swept_flags=("compile", "precision")) == "2x1 compile=false precision=bf16"
    # A journal written before these flags existed measured their defaults: its keys are the ones still computed.
    defaults = build_plan(_cfg(), world_size=1, base_flags=TrialFlags(), device_type="cpu")[0]
    assert defaults.key == plan[0].key


def test_compile_mode_changes_the_key() -> None:
    cfg = _cfg()
    cfg.train = TrainArgs(compile_mode="max-autotune")  # type: ignore[arg-type]
    assert build_plan(cfg, world_size=1, base_flags=TrialFlags(compile=True), device_type="cpu")[0].key != \
        build_plan(_cfg(), world_size=1, base_flags=TrialFlags(compile=True), device_type="cpu")[0].key
