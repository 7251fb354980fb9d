"""The multirun pieces that need no process: the launcher config, the callback's place, the job plan."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO, clean_env
from result_factory import make_window
from trainer_tune.config.schema import TuneConfig, register_configs
from trainer_tune.config.flags import TrialFlags
from trainer_tune.run.journal import JOURNAL_NAME, append_result
from trainer_tune.run.multirun import BaselinePin, rank_env_here, publish_multirun
from trainer_tune.plan import build_plan, differing_flag_names, job_plan


def _hydra_config(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True).hydra


def test_slurm_launcher_config_composes_onto_submitit() -> None:
    launcher = _hydra_config(["hydra/launcher=slurm"]).launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.tasks_per_node, launcher.nodes, launcher.array_parallelism) == (2, 1, 1)
    assert launcher.submitit_folder.endswith("/.submitit/%j")  # inside hydra.sweep.dir


def test_the_callback_is_configured() -> None:
    callbacks = _hydra_config([]).callbacks
    assert callbacks.trainer_tune._target_ == "trainer_tune.run.multirun.MultirunCallback"


def test_job_plan_shares_the_baseline_key_with_a_single_run() -> None:
    cfg = TuneConfig()
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = 2, 1  # as composition resolves them
    flags = TrialFlags()
    single = build_plan(cfg, world_size=2, base_flags=flags, device_type="cpu")
    cfg.train.micro_batch_size = 4
    plan = job_plan(cfg, world_size=2, flags=flags, baseline=(2, 1, flags), index=3, device_type="cpu")
    assert [(s.index, s.micro_batch_size, s.is_baseline) for s in plan] == [(0, 2, True), (3, 4, False)]
    assert plan[0].key == single[0].key  # every job, and a plain run, name the baseline alike
    cfg.train.micro_batch_size = 2
    assert len(job_plan(cfg, world_size=2, flags=flags, baseline=(2, 1, flags), index=3, device_type="cpu")) == 1


def test_a_job_with_other_flags_is_its_own_setting() -> None:
    cfg = TuneConfig()
    base, static = TrialFlags(), TrialFlags(static_graph=True)
    plan = job_plan(cfg, world_size=1, flags=static, baseline=(2, 1, base), index=1, device_type="cpu")
    assert len(plan) == 2 and plan[0].key != plan[1].key
    assert differing_flag_names(static, base) == ("static_graph",)
    assert plan[1].label(swept_flags=("static_graph",)) == "2x1 static_graph=true"


def test_baseline_pin_round_trip() -> None:
    pin = BaselinePin(micro_batch_size=4, grad_accum=2, flags=TrialFlags(bucket_cap_mb=25.0))
    assert BaselinePin.from_json_dict(pin.to_json_dict()) == pin


# The environment of task 0 of `srun --nodes=2 --ntasks-per-node=2 python -m trainer_tune -m ...`.
SLURM_TASK_0 = {"SLURM_STEP_ID": "0", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                "SLURM_NODEID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
                "SLURM_STEP_NODELIST": "gpu[07-08]"}


def test_a_multirun_under_srun_recommends_an_srun_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The multirun's recommendation.yaml says how to launch as a single run's does (one launch_hint)."""
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        config = compose(config_name="config", overrides=["wandb=off", f"hydra.sweep.dir={tmp_path}"],
                         return_hydra_config=True)

    def steps(base_s: float) -> list[float]:
        return [base_s * (1 + 0.03 * ((i * 7) % 5)) for i in range(12)]
    for i in range(3):  # the job's rounds: each setting's window beside the baseline's
        append_result(tmp_path / JOURNAL_NAME, make_window(index=0, key=f"b/r{i}", setting_key="b", round_id=f"job1/r{i}",
                                                           micro_batch_size=2, is_baseline=True, world_size=4,
                                                           step_times=steps(0.08)))
        append_result(tmp_path / JOURNAL_NAME, make_window(index=1, key=f"4x1/r{i}", setting_key="4x1",
                                                           round_id=f"job1/r{i}", micro_batch_size=4, world_size=4,
                                                           step_times=steps(0.08)))
    # The callback adopts SLURM's task variables into the process environment, as every job does: a copy of it
    # here, so nothing leaks into other tests.
    monkeypatch.setattr(os, "environ", {**{k: v for k, v in clean_env().items() if not k.startswith("SLURM_")},
                                        **SLURM_TASK_0})
    publish_multirun(config, rank_env=rank_env_here())  # what the callback publishes on rank 0
    hint = [line for line in (tmp_path / "recommendation.yaml").read_text().splitlines() if line.startswith("#   ")
            and "-confirm" not in line]  # the confirm command (tests/distributed/test_measure_again.py) aside
    assert hint == ["#   srun --nodes=2 --ntasks-per-node=2 python -m trainer_tune train.micro_batch_size=4 "
                    "train.grad_accum=1 nsa.prefill_batched=true nsa.disable_aux_stats=false ddp.static_graph=false "
                    "ddp.find_unused_parameters=false ddp.bucket_cap_mb=null data.num_workers=0 train.compile=false "
                    "train.activation_checkpointing=false train.precision=fp32 "
                    # The global batch doubles: train.lr (3e-4) times sqrt(2), recommend.lr_scaling's default.
                    "train.lr=0.000424264"]
