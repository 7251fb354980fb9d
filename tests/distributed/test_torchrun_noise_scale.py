"""A real 2-rank sweep measures the gradient noise scale in its noise steps (noise_steps.py): three batch sizes with
grad_accum 2 (a micro-batch, a rank's accumulated batch, the global batch), a finite positive B_noise per window and
for the sweep, and every setting's statistical efficiency against the baseline's global batch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ONE_ROUND, read_jsonl, read_settings, run_tune

pytestmark = pytest.mark.slow


def test_two_ranks_measure_a_finite_positive_noise_scale(out_dir: Path) -> None:
    proc = run_tune(["+sweep=batch", "sweep.micro_batch_sizes=[2,4]", "sweep.grad_accums=[2]", "train.grad_accum=2",
                     "data=bytes", "window=quick", "window.noise_steps=6", "wandb=off", *ONE_ROUND,
                     f"hydra.run.dir={out_dir}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]

    windows = read_jsonl(out_dir / "trials.jsonl")
    assert len(windows) == 2
    for window in windows:
        noise = window["noise_scale"]
        micro = window["micro_batch_size"]
        # Three batch sizes read in each of the 6 noise steps: micro-batch, a rank's 2 micro-batches, both ranks'.
        assert noise["batch_sizes"] == [micro, 2 * micro, 4 * micro] and noise["num_steps"] == 6
        assert len(noise["step_g2"]) == len(noise["step_trace_sigma"]) == 6
        # Untimed: the measured steps are the window's 4, nothing more.
        assert window["num_measured_steps"] == 4 and len(window["step_times_s"]) == 4

    rec = json.loads((out_dir / "recommendation.json").read_text())
    pooled = rec["gradient_noise_scale"]
    assert pooled["num_steps"] == 12, pooled
    assert pooled["value"] is not None and math.isfinite(pooled["value"]) and pooled["value"] > 0, pooled
    assert pooled["ci95"][0] <= pooled["value"]
    assert pooled["ci95"][1] is None or pooled["value"] <= pooled["ci95"][1]

    settings = read_settings(out_dir)
    baseline, bigger = settings["2x2"], settings["4x2"]
    assert baseline["statistical_efficiency"] == pytest.approx(1.0)
    b_noise = pooled["value"]
    assert bigger["statistical_efficiency"] == pytest.approx((b_noise + 8) / (b_noise + 16))
    assert bigger["statistical_efficiency"] < 1
    assert bigger["goodput_tokens_per_s"] == pytest.approx(bigger["tokens_per_s"] * bigger["statistical_efficiency"])
    assert any(r.startswith("gradient noise scale B_noise = ") for r in rec["reasons"])
    report = (out_dir / "report.md").read_text()
    assert "| statistical efficiency |" in report and "goodput tokens/s" in report
