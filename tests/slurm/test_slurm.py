"""A real SLURM cluster on this machine (tests/slurm/start_cluster.sh): launch/slurm.sbatch submitted with
sbatch, and a Hydra multirun through the submitit SLURM launcher (configs/hydra/launcher/slurm.yaml).

The cluster is started by .ci/run or by the fixture below; slurm-wlm and munge are installed only as root and
in CI or with TRAINER_TUNE_SLURM_INSTALL=1. Everything here is skipped, with the reason, where SLURM
cannot start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clean_env, read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

START = REPO / "tests" / "slurm" / "start_cluster.sh"


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """The environment for SLURM commands and jobs (SLURM_CONF of the test cluster); skips without one."""
    args = ["--install"] if os.environ.get("TRAINER_TUNE_SLURM_INSTALL") == "1" else []
    try:
        proc = subprocess.run(["bash", str(START), *args], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("SLURM did not start within 300 s (tests/slurm/start_cluster.sh)")
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        pytest.skip(f"no SLURM cluster: {reason}")
    conf = proc.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
    return clean_env({"SLURM_CONF": conf})


def test_sbatch_runs_the_launch_script(slurm_env: dict[str, str], tmp_path: Path) -> None:
    cmd = ["sbatch", "--wait", "--parsable", "--nodes=1", f"--export=ALL,NPROC_PER_NODE=2,PYTHON={sys.executable}",
           str(REPO / "launch" / "slurm.sbatch"), "+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2]",
           "sweep.grad_accums=[1]", "sweep.min_rounds=2", "sweep.max_rounds=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=280)
    job_id = proc.stdout.strip().split(";")[0]
    log = next(tmp_path.glob("trainer_tune-*.out"), None)
    assert proc.returncode == 0, (proc.stderr, log.read_text()[-3000:] if log else "no job output")
    out = tmp_path / "outputs" / "runs" / f"slurm-{job_id}"
    trials = read_jsonl(out / "trials.jsonl")
    assert sorted((t["round_id"], t["label"], t["world_size"], t["status"]) for t in trials) == \
        [(r, label, 2, "ok") for r in ("r0", "r1") for label in ("1x1", "2x1")]
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["baseline"]["trial_key"] == next(t["setting_key"] for t in trials if t["label"] == "2x1")
    text = (tmp_path / f"trainer_tune-{job_id}.out").read_text()
    assert "launch/slurm.sbatch: srun " in text and rec["verdict"] in text


def test_hydra_multirun_with_the_submitit_slurm_launcher(slurm_env: dict[str, str], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "trainer_tune", "-m", "hydra/launcher=slurm", "train.micro_batch_size=1,4",
           "window=quick", "wandb=off", "sweep.min_rounds=2", "sweep.max_rounds=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    trials = read_jsonl(sweep_dir / "trials.jsonl")
    # Each SLURM job's two tasks were the two ranks of its group; each job raced its setting against the
    # baseline in two rounds of its own.
    assert sorted((t["round_id"], t["label"], t["world_size"], t["status"]) for t in trials) == sorted(
        (f"job{job}/r{r}", label, 2, "ok") for job, own in enumerate(["1x1", "4x1"]) for r in (0, 1)
        for label in (own, "2x1"))
    assert sorted(p.name for p in (sweep_dir / "0" / "logs").iterdir()) == ["rank-0.log", "rank-1.log"]
    rec = json.loads((sweep_dir / "recommendation.json").read_text())
    assert rec["num_trials"] == 3 and rec["verdict"] in proc.stdout
