"""A window that fails in its measured steps on every rank is recorded, and leaves nothing behind: every later
window, in that round and the next, measures as if it had succeeded (the telemetry probe, its sampler thread
and the model were once left running and made every later trial an error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import read_jsonl, read_settings, run_tune

pytestmark = pytest.mark.slow

# window=quick: warm-up step 0, measured steps 1-4. The plan: 2x1 (baseline), 1x1 (fails), 4x1; two rounds.
SWEEP = ["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,4]", "sweep.grad_accums=[1]", "wandb=off",
         "sweep.min_rounds=2", "sweep.max_rounds=2"]

FAILURES = {
    # The reproducer: one process, an error raised in model code at measured step 2.
    "error in one rank": (None, ["fault=error", "fault.rank=0", "fault.trial=1", "fault.step=2"],
                          "RuntimeError: injected fault in model code (fault=error)"),
    # Every rank of two runs out of data at measured step 3 of the 1x1 trial (3 batches: steps 0-2).
    "data runs out on every rank": (2, ["data._target_=tests.distributed.finite_batches.batches_that_run_out",
                                        "+data.kwargs.short_micro_batch_size=1", "+data.kwargs.num_batches=3"],
                                    "ran out of batches"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_trial_that_fails_while_measured_leaves_every_later_trial_measuring(failure: str, tmp_path: Path) -> None:
    nproc, args, message = FAILURES[failure]
    out = tmp_path / "run"
    proc = run_tune([*SWEEP, *args, f"hydra.run.dir={out}"], nproc=nproc, timeout_s=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    windows = read_jsonl(out / "trials.jsonl")
    # Round 0 has the three settings (1x1 fails there and leaves the race); round 1 the other two.
    assert sorted((w["round_id"], w["label"], w["status"]) for w in windows) == \
        [("r0", "1x1", "error"), ("r0", "2x1", "ok"), ("r0", "4x1", "ok"), ("r1", "2x1", "ok"), ("r1", "4x1", "ok")], \
        [w["error"] for w in windows]
    failed = next(w for w in windows if w["status"] != "ok")
    error = failed["error"]
    assert error.count(message) == (nproc or 1) and all(f"rank {rank} on " in error for rank in range(nproc or 1))
    for later in windows[windows.index(failed) + 1:]:
        assert later["tokens_per_s"] > 0 and later["cpu"] is not None  # measured, telemetry included
    settings = read_settings(out)
    assert settings["1x1"]["status"] == "error" and settings["4x1"]["num_windows"] == 2
