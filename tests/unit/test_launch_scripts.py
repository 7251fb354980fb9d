"""launch/ and the SLURM test cluster script: bash -n and shellcheck clean; each launch script prints the
command it runs and passes every argument through to Hydra (checked with stub interpreters and srun)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

SCRIPTS = [REPO / "launch" / "local.sh", REPO / "launch" / "multinode.sh", REPO / "launch" / "slurm.sbatch",
           REPO / "tests" / "slurm" / "start_cluster.sh", REPO / ".ci" / "run"]
HYDRA_ARGS = ["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2]"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; .ci/run installs it when it can)")
    proc = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _stub(bin_dir: Path, name: str) -> Path:
    """An executable that prints its arguments one per line, standing in for python, srun or scontrol."""
    path = bin_dir / name
    body = 'echo vm-a; echo vm-b' if name == "scontrol" else 'printf "%s\\n" "$@"'
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)
    return path


def _run(script: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python-stub", "srun", "scontrol"):
        _stub(bin_dir, name)
    full_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python-stub"), **env}
    return subprocess.run(["bash", str(REPO / "launch" / script), *HYDRA_ARGS], env=full_env, capture_output=True,
                          text=True, timeout=30)


def test_local_prints_and_passes_arguments(tmp_path: Path) -> None:
    proc = _run("local.sh", {"NPROC": "3"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert args[:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "--max-restarts=3"]
    assert args[-len(HYDRA_ARGS) - 2:] == ["-m", "trainer_tune", *HYDRA_ARGS]
    assert proc.stderr.startswith("launch/local.sh: ") and "sweep.micro_batch_sizes=[1,2]" in proc.stderr


def test_multinode_needs_its_variables_then_uses_c10d(tmp_path: Path) -> None:
    proc = _run("multinode.sh", {"NNODES": "2"}, tmp_path)
    assert proc.returncode == 2 and "set NODE_RANK MASTER_ADDR" in proc.stderr
    proc = _run("multinode.sh", {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "node01", "MASTER_PORT": "29611",
                                 "NPROC_PER_NODE": "4"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    for expected in ("--nnodes=2", "--node_rank=1", "--nproc_per_node=4", "--rdzv_backend=c10d",
                     "--rdzv_endpoint=node01:29611", "--max-restarts=3"):
        assert expected in args
    assert args[-len(HYDRA_ARGS):] == HYDRA_ARGS
    assert proc.stderr.startswith("launch/multinode.sh: ")


def test_slurm_sbatch_starts_torchrun_per_node_from_slurm_variables(tmp_path: Path) -> None:
    proc = _run("slurm.sbatch", {"SLURM_JOB_NODELIST": "vm-[a-b]", "SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "2",
                                 "SLURM_GPUS_ON_NODE": "8"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()  # what the srun stub received
    assert args[0] == "--ntasks-per-node=1"
    for expected in ("--nnodes=2", "--nproc_per_node=8", "--rdzv_backend=c10d", "--rdzv_endpoint=vm-a:29577",
                     "--rdzv_id=77", "hydra.run.dir=outputs/runs/slurm-77"):
        assert expected in args
    assert args[-len(HYDRA_ARGS):] == HYDRA_ARGS
    assert proc.stderr.startswith("launch/slurm.sbatch: srun ")
