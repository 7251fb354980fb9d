"""sweep.precision=[fp32,bf16] on the tiny GPT, one process: both settings finish, each recorded with its own
precision, and bf16 trains the same model to nearly the same losses (autocast, not a different model). That bf16
really autocasts is tests/unit/test_trial_precision.py's (the matmuls' output dtype)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ONE_ROUND, run_tune, windows_by_label

pytestmark = pytest.mark.slow


def test_a_precision_sweep_measures_fp32_and_bf16(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_tune(["sweep.precision=[fp32,bf16]", "window=quick", "window.comm_split_steps=0",
                     "window.noise_steps=0", "wandb=off", *ONE_ROUND, f"hydra.run.dir={out}"], timeout_s=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    windows = windows_by_label(out)
    (fp32,), (bf16,) = windows["2x1 precision=fp32"], windows["2x1 precision=bf16"]
    for window, precision in ((fp32, "fp32"), (bf16, "bf16")):
        assert window["status"] == "ok", window["error"]
        assert window["flags"]["precision"] == precision and window["tokens_per_s"] > 0
    # Same seed and batches: bfloat16's rounding moves the losses a little, never far.
    for loss_fp32, loss_bf16 in zip(fp32["losses"], bf16["losses"]):
        assert loss_bf16 == pytest.approx(loss_fp32, rel=0.02)
    assert fp32["losses"] != bf16["losses"]
