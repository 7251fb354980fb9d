"""throughput.unit=samples end to end: a real 2-rank sweep of the built-in model decides in samples/s, and the
verdict, recommendation.json, report.md and the wandb runs say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ONE_ROUND, read_settings, run_tune
from helpers.wandb_reader import find_offline_run_files, summarize_finished_run

pytestmark = pytest.mark.slow


def test_a_sweep_decided_in_samples_per_s(tmp_path: Path) -> None:
    out = tmp_path / "samples"
    proc = run_tune(["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]",
                     "throughput.unit=samples", *ONE_ROUND, f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["unit"] == "samples"
    verdict = rec["verdict"]
    assert " samples/s" in verdict and "tokens" not in verdict
    assert verdict in proc.stdout and f"**{verdict}**" in (out / "report.md").read_text()
    # The built-in model's batches carry tokens: both rates are recorded, the decision reads samples/s.
    for setting in read_settings(out).values():
        assert setting["throughput_unit"] == "samples" and setting["count_unit"] == "tokens"
        assert setting["tokens_per_s"] == pytest.approx(setting["samples_per_s"] * 128)
        assert list(setting["window_throughput_per_s"].values()) == pytest.approx([setting["samples_per_s"]])
    assert "95% CI of samples/s" in (out / "report.md").read_text()

    runs = [summarize_finished_run(path) for path in find_offline_run_files(out / "wandb")]
    (recommendation,) = [run for run in runs if run.job_type == "recommendation"]
    assert recommendation.summary["unit"] == "samples" and recommendation.summary["verdict"] == verdict
    for run in (run for run in runs if run.job_type == "trial"):
        assert run.defined_metrics["round/samples_per_s"]["stepMetric"] == "round"
        assert [row["round/samples_per_s"] for row in run.history if "round/samples_per_s" in row] \
            == pytest.approx([run.summary["samples_per_s"]])
