"""A real 2-rank sweep with wandb offline, read back from wandb's own transaction logs (no mocks)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import pytest

from conftest import read_settings, run_tune
from helpers.wandb_reader import find_offline_run_files, summarize_wandb_run

pytestmark = pytest.mark.slow


def _approx(value: Optional[float]) -> object:
    return None if value is None else pytest.approx(value)


def test_wandb_runs_match_the_journal_and_the_recommendation(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = run_tune(["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2,4]", "sweep.grad_accums=[1]",
                     "sweep.min_rounds=2", "sweep.max_rounds=2", "wandb.project=tt-test", "wandb.tags=[ci]",
                     f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One run per setting (its windows together), after the race; the rounds are in the summary and history.
    trials = {t["index"]: t for t in read_settings(out).values()}
    rec = json.loads((out / "recommendation.json").read_text())

    paths = find_offline_run_files(out / "wandb")
    runs = [summarize_wandb_run(path) for path in paths]
    by_type: dict[str, list] = {}
    for run in runs:
        by_type.setdefault(run.job_type, []).append(run)
    assert sorted(by_type) == ["recommendation", "trial"]
    assert len(by_type["trial"]) == len(trials) == 3 and len(by_type["recommendation"]) == 1
    for run in runs:
        assert run.project == "tt-test" and run.group == out.name and run.tags == ("ci",)
        assert run.exit_code == 0

    for run in by_type["trial"]:
        trial = trials[run.config["trial"]["index"]]
        assert run.summary["tokens_per_s"] == pytest.approx(trial["tokens_per_s"])
        assert run.summary["samples_per_s"] == pytest.approx(trial["samples_per_s"])
        assert run.summary["throughput_unit"] == "tokens" and run.summary["count_unit"] == "tokens"
        assert run.summary["status"] == trial["status"] and run.summary["label"] == trial["label"]
        # Two ranks measure the gradient noise scale: each setting's efficiency and goodput (None only if the
        # sweep's B_noise could not be told from 0 or infinity) are in its summary as in the recommendation.
        assert run.summary["statistical_efficiency"] == _approx(trial["statistical_efficiency"])
        assert run.summary["goodput_per_s"] == _approx(trial["goodput_tokens_per_s"])
        assert run.config["trial"]["micro_batch_size"] == trial["micro_batch_size"]
        assert run.config["tune"]["window"]["measure_steps"] == 4
        steps = [row for row in run.history if "train/step_time_s" in row]
        assert [row["step"] for row in steps] == list(range(8))  # two windows of 4 steps
        assert [row["train/step_time_s"] for row in steps] == pytest.approx(trial["step_times_s"])
        assert run.defined_metrics["train/tokens_per_s"]["stepMetric"] == "step"
        rounds = [row for row in run.history if "round/tokens_per_s" in row]
        assert [row["round/tokens_per_s"] for row in rounds] == pytest.approx(
            list(trial["window_throughput_per_s"].values()))
        assert run.defined_metrics["round/tokens_per_s"]["stepMetric"] == "round"

    (recommendation,) = by_type["recommendation"]
    assert recommendation.summary["decision"] == rec["decision"]
    assert recommendation.summary["verdict"] == rec["verdict"]
    assert recommendation.summary["num_trials"] == 3
    assert recommendation.summary["drift"]["series"] == rec["drift"]["series"]
    assert recommendation.summary["race"]["num_rounds"] == 2
    assert recommendation.summary["gradient_noise_scale"] == _approx(rec["gradient_noise_scale"]["value"])
    assert f"recommendation:recommendation-{out.name}" in recommendation.artifacts
    assert any(name.startswith("run_table:") for name in recommendation.artifacts)

    # The report's PNGs, byte for byte, are images of the recommendation run, with their files kept for upload.
    pngs = sorted((out / "charts").glob("*.png"))
    # No GPU: no utilization chart.
    assert {p.stem for p in pngs} == {"throughput", "efficiency", "step_times", "rounds"}
    (row,) = [row for row in recommendation.history if any(k.startswith("charts/") for k in row)]
    run_dir = paths[runs.index(recommendation)].parent
    for png in pngs:
        key = f"charts/{png.stem}"
        assert row[f"{key}/_type"] == "image-file" and row[f"{key}/format"] == "png"
        assert row[f"{key}/sha256"] == hashlib.sha256(png.read_bytes()).hexdigest()
        assert row[f"{key}/path"] in recommendation.files
        assert (run_dir / "files" / row[f"{key}/path"]).read_bytes() == png.read_bytes()
    matrix = rec["explanations"]["matrix"]
    assert recommendation.summary["objective_winners"]["max_throughput"]["label"] == matrix[0]["label"]
    assert recommendation.summary["facts"] == rec["explanations"]["facts"]
    # The memory fit over 1, 2, 4 (peak RSS growth on CPU) as recommendation.json has it.
    assert len(rec["memory_fits"]) == 1 and [p[0] for p in rec["memory_fits"][0]["points"]] == [1, 2, 4]
    assert recommendation.summary["memory_fits"][0]["slope_bytes"] == \
        pytest.approx(rec["memory_fits"][0]["slope_bytes"])
    assert any(name.startswith("run_table:") and name.endswith("decision_matrix") for name in recommendation.artifacts)

    # Nothing we wrote holds a credential.
    for path in out.rglob("*"):
        if path.is_file() and "wandb" not in path.parts:
            assert "WANDB_API_KEY" not in path.read_text(errors="ignore")


def test_wandb_off(tmp_path: Path) -> None:
    out = tmp_path / "off"
    proc = run_tune(["window=quick", "wandb=off", f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "wandb").exists()
