"""Real Hydra multiruns (`-m`) through the shell: one trial per job, one shared journal, one recommendation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env, read_jsonl, run_tune

pytestmark = pytest.mark.slow


def test_multirun_of_four_jobs_measures_the_baseline_once_and_recommends_once(tmp_path: Path) -> None:
    proc = run_tune(["-m", "train.micro_batch_size=1,4", "train.grad_accum=1,2", "window=quick"], cwd=tmp_path,
                    timeout_s=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3"]

    trials = read_jsonl(sweep_dir / "trials.jsonl")
    # The baseline (train's own 2x1, pinned when the multirun started) once, then each job's setting.
    assert [(t["index"], t["label"], t["is_baseline"]) for t in trials] == \
        [(0, "2x1", True), (1, "1x1", False), (2, "1x2", False), (3, "4x1", False), (4, "4x2", False)]
    assert len({t["trial_key"] for t in trials}) == 5 and all(t["status"] == "ok" for t in trials)
    assert json.loads((sweep_dir / "baseline.json").read_text())["baseline"]["micro_batch_size"] == 2
    # No job wrote a recommendation of its own; the callback wrote the multirun's one.
    for job in range(4):
        assert not (sweep_dir / str(job) / "recommendation.json").exists()
        assert (sweep_dir / str(job) / "config.yaml").exists()
    rec = json.loads((sweep_dir / "recommendation.json").read_text())
    assert rec["baseline"]["trial_key"] == trials[0]["trial_key"]
    assert rec["num_trials"] == 5 and rec["chosen"]["trial_key"] in {t["trial_key"] for t in trials}
    assert rec["verdict"] in (sweep_dir / "report.md").read_text()
    assert proc.stdout.count("trainer_tune trials") == 1 and rec["verdict"] in proc.stdout
    # wandb: a run per measured trial and one recommendation run, all under the multirun's directory.
    assert len(list((sweep_dir / "wandb").glob("offline-run-*"))) == 5 + 1

    # The same multirun again in the same directory: nothing is measured again, the verdict stands.
    again = run_tune(["-m", "train.micro_batch_size=1,4", "train.grad_accum=1,2", "window=quick",
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, timeout_s=200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_jsonl(sweep_dir / "trials.jsonl") == trials
    assert json.loads((sweep_dir / "recommendation.json").read_text())["verdict"] == rec["verdict"]


def test_multirun_under_torchrun_writes_once(tmp_path: Path) -> None:
    proc = run_tune(["-m", "train.micro_batch_size=1,4", "window=quick", "wandb=off"], nproc=2, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    trials = read_jsonl(sweep_dir / "trials.jsonl")
    assert [(t["label"], t["world_size"]) for t in trials] == [("2x1", 2), ("1x1", 2), ("4x1", 2)]
    assert proc.stdout.count("trainer_tune trials") == 1
    assert json.loads((sweep_dir / "recommendation.json").read_text())["num_trials"] == 3


def test_sweep_axes_in_a_multirun_are_refused_before_anything_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "trainer_tune", "-m", "+sweep=batch", "train.grad_accum=1,2"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "trainer_tune: error: sweep.micro_batch_sizes=[1, 2, 4, 8] is not allowed in a Hydra multirun" in proc.stderr
