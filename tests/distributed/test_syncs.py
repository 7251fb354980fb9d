"""The measured steps of a window run uninterrupted: no synchronisation, collective or read of a device tensor by the
tuner between the window's two synchronisations (docs/measurement.md, "One synchronisation per window")."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import ONE_ROUND, REPO, clean_env, read_jsonl

pytestmark = pytest.mark.slow


def test_a_real_sweep_makes_no_synchronising_call_inside_its_windows(tmp_path: Path) -> None:
    """Two ranks, the NSA model with its aux statistics on (once all-reduced and read every step) and gradient
    accumulation (no_sync micro-steps): torch's own entry points are trapped (helpers/sync_trap.py), so a call that
    bypasses platform/syncs.py is caught too. The trap's count outside the windows proves it was armed."""
    import subprocess

    out, trap = tmp_path / "out", tmp_path / "trap"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "helpers.sync_trap", "+sweep=batch", "model=tiny_nsa", "model.seq_len=32", "window=quick",
           "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1,2]", "window.noise_steps=1", "wandb=off",
           f"hydra.run.dir={out}", *ONE_ROUND]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env({"SYNC_TRAP_DIR": str(trap)}), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    windows = read_jsonl(out / "trials.jsonl")
    assert len(windows) == 4 and all(w["status"] == "ok" for w in windows)
    assert [w["syncs_in_window"] for w in windows] == [0] * 4
    assert all(w["nsa_aux_stats"] and len(w["nsa_aux_stats"]) == w["num_measured_steps"] for w in windows)
    for rank in (0, 1):
        counts = json.loads((trap / f"rank-{rank}.json").read_text())
        assert counts["in_window"] == {}, counts["in_window"]
        # Armed: the window's ends and the outcome agreement make such calls, outside the measured steps.
        assert counts["outside"].get("dist.all_reduce", 0) > 0 and counts["outside"].get("Tensor.tolist", 0) > 0
