"""`terminate called without an active exception` (SIGABRT) at a rank's exit, seen in 3 suite runs: reproduced by a
gloo group left alive at interpreter exit (its threads are torn down by C++ static destructors while joinable).
DistSession.start registers an exit hook that destroys the group first (platform/distributed._destroy_at_exit).
benchmarks/teardown_aborts.py counts aborts over many real sweeps."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, clean_env

pytestmark = pytest.mark.slow

ABORT = "terminate called without an active exception"


def _run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "helpers.exit_without_close", *args]
    return subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60)


def test_a_group_left_alive_at_exit_no_longer_aborts_the_rank() -> None:
    # Without the hook the abort comes in about half of the runs here: the reproduction, stopped at the first.
    aborted = next((i for i in range(12) if ABORT in _run("--no-hook").stderr), None)
    assert aborted is not None, "no abort in 12 runs without the hook: the reproduction no longer reproduces"
    for _ in range(5):
        proc = _run()
        assert proc.returncode == 0 and ABORT not in proc.stderr, proc.stderr[-2000:]
