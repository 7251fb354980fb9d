"""A diverging model must cost one trial, not the sweep: its NaN figures are journaled as null, with reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_tune
from conftest import strict_loads

pytestmark = pytest.mark.slow


def test_a_diverging_nsa_model_is_recorded_as_nan_and_the_sweep_still_recommends(tmp_path: Path) -> None:
    """Rank 1's loss turns NaN in trial 1, so do the NSA statistics all-reduced over both ranks; strict JSON
    has no NaN, and rank 0 (the journal's only writer) used to raise on that line, ending the group."""
    out = tmp_path / "nsa_nan"
    proc = run_tune(["model=tiny_nsa", "fault=nan_loss", "nsa.disable_aux_stats=false", "+sweep=batch",
                     "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]", "sweep.min_rounds=1", "sweep.max_rounds=1",
                     "window=quick", "wandb=off", f"hydra.run.dir={out}"], nproc=2, timeout_s=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = sorted((strict_loads(line) for line in (out / "trials.jsonl").read_text().splitlines()
                     if "journal_header" not in line and "memory_prediction" not in line),
                    key=lambda t: t["index"])
    assert [(t["index"], t["label"], t["status"]) for t in trials] == [(0, "2x1", "ok"), (1, "1x1", "nan")]
    baseline, diverged = trials
    assert baseline["non_finite"] == []
    assert diverged["error"].startswith("loss was not finite at measured step(s)")
    # Every nulled figure is named, and each named one is null in the record.
    assert diverged["non_finite"], "the aux statistics of a NaN loss were expected to be NaN"
    for path in diverged["non_finite"]:
        if path.startswith("noise_scale."):  # the noise steps after a NaN loss read NaN gradients too
            node = diverged
            for part in path.replace("[", ".").replace("]", "").split("."):
                node = node[int(part)] if part.isdigit() else node[part]
            assert node is None
            continue
        assert path.startswith("nsa_aux_stats[")
        step, name = path.removeprefix("nsa_aux_stats[").split("].")
        assert diverged["nsa_aux_stats"][int(step)][name] is None
    rec = json.loads((out / "recommendation.json").read_text())
    assert (rec["chosen"] or rec["leader"])["index"] == 0
    assert any("1x1 (nan)" in reason for reason in rec["reasons"])
