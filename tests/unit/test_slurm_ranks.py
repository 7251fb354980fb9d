"""SLURM tasks as torch.distributed ranks (trainer_tune.platform.distributed.adopt_slurm_tasks)."""

from __future__ import annotations

import pytest

from trainer_tune.config.schema import ConfigError
from trainer_tune.platform.distributed import RankEnv, adopt_slurm_tasks, first_host, launch_hint

STEP = {"SLURM_JOB_ID": "1234", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
        "SLURM_STEP_NODELIST": "gpu[07-08]"}


@pytest.mark.parametrize("nodelist, host", [("vm", "vm"), ("gpu[07-09,12]", "gpu07"), ("gpu[3],cpu1", "gpu3"),
                                            ("a-1,b-2", "a-1")])
def test_first_host(nodelist: str, host: str) -> None:
    assert first_host(nodelist) == host


def test_first_host_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="SLURM node list"):
        first_host("[1-2]")


def test_tasks_of_a_step_become_ranks() -> None:
    env = dict(STEP)
    assert adopt_slurm_tasks(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], env["GROUP_RANK"]) == \
        ("3", "4", "1", "2", "1")
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(10000 + 1234)
    rank_env = RankEnv.from_environ(env)
    assert rank_env.rank == 3 and rank_env.world_size == 4 and rank_env.num_nodes == 2 and rank_env.from_slurm
    assert not rank_env.under_torchrun
    assert adopt_slurm_tasks(env)  # idempotent: a second call (the next multirun job) changes nothing
    assert env["RANK"] == "3"


def test_a_given_master_address_wins() -> None:
    env = {**STEP, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29999"}
    adopt_slurm_tasks(env)
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.1", "29999")


@pytest.mark.parametrize("change", [
    {"RANK": "0", "WORLD_SIZE": "2"},  # torchrun inside srun (launch/slurm.sbatch): torchrun's ranks win
    {"TORCHELASTIC_RUN_ID": "x"},
    {"SLURM_STEP_ID": None},  # the batch script itself: SLURM_PROCID=0 and SLURM_NTASKS=4, but one process
    {"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"},
])
def test_left_alone(change: dict) -> None:
    env = {k: v for k, v in {**STEP, **change}.items() if v is not None}
    before = dict(env)
    assert not adopt_slurm_tasks(env)
    assert env == before


@pytest.mark.parametrize("environ, hint", [
    ({}, "python -m trainer_tune"),
    ({"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"},
     "torchrun --nproc_per_node=2 -m trainer_tune"),
    ({"TORCHELASTIC_RUN_ID": "x", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"},
     "torchrun --nnodes=2 --nproc_per_node=4 -m trainer_tune"),
    (STEP, "srun --nodes=2 --ntasks-per-node=2 python -m trainer_tune"),
])
def test_the_launch_hint_starts_trainer_tune_as_this_run_was_started(environ: dict[str, str], hint: str) -> None:
    environ = dict(environ)
    adopt_slurm_tasks(environ)
    assert launch_hint(RankEnv.from_environ(environ)) == hint
