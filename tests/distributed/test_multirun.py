"""Real Hydra multiruns (`-m`) through the shell: one setting per job, raced against the baseline in the job's
own rounds, one shared journal, one recommendation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ONE_ROUND, clean_env, read_jsonl, read_settings, run_tune

ROUNDS = ["sweep.min_rounds=2", "sweep.max_rounds=2"]

pytestmark = pytest.mark.slow


def test_multirun_of_four_jobs_measures_the_baseline_once_and_recommends_once(tmp_path: Path) -> None:
    proc = run_tune(["-m", "train.micro_batch_size=1,4", "train.grad_accum=1,2", "window=quick", *ROUNDS],
                    cwd=tmp_path, timeout_s=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3"]

    windows = read_jsonl(sweep_dir / "trials.jsonl")
    # Every job raced its setting against the baseline (train's own 2x1, pinned when the multirun started) in
    # two rounds of its own: the job's windows pair with its own baseline windows.
    assert sorted((w["round_id"], w["label"]) for w in windows) == sorted(
        (f"job{job}/r{r}", label) for job, own in enumerate(["1x1", "1x2", "4x1", "4x2"]) for r in (0, 1)
        for label in (own, "2x1"))
    assert all(w["status"] == "ok" for w in windows) and len({w["trial_key"] for w in windows}) == 16
    settings = read_settings(sweep_dir)
    assert sorted(settings) == ["1x1", "1x2", "2x1", "4x1", "4x2"] and settings["2x1"]["num_windows"] == 8
    trials = list(settings.values())
    assert json.loads((sweep_dir / "baseline.json").read_text())["baseline"]["micro_batch_size"] == 2
    # No job wrote a recommendation of its own; the callback wrote the multirun's one.
    for job in range(4):
        assert not (sweep_dir / str(job) / "recommendation.json").exists()
        assert (sweep_dir / str(job) / "config.yaml").exists()
    rec = json.loads((sweep_dir / "recommendation.json").read_text())
    assert rec["baseline"]["trial_key"] == settings["2x1"]["trial_key"]
    assert rec["num_trials"] == 5 and (rec["chosen"] or rec["leader"])["trial_key"] in {t["trial_key"] for t in trials}
    # Each setting's ratio to the baseline is paired over its own job's two rounds.
    assert all(len(interval) == 2 for interval in rec["speedup_intervals"].values())
    assert rec["verdict"] in (sweep_dir / "report.md").read_text()
    assert proc.stdout.count("trainer_tune trials") == 1 and rec["verdict"] in proc.stdout
    # wandb: a run per setting and one recommendation run, all under the multirun's directory.
    assert len(list((sweep_dir / "wandb").glob("offline-run-*"))) == 5 + 1

    # The same multirun again in the same directory: nothing is measured again, the verdict stands.
    again = run_tune(["-m", "train.micro_batch_size=1,4", "train.grad_accum=1,2", "window=quick", *ROUNDS,
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, timeout_s=200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_jsonl(sweep_dir / "trials.jsonl") == windows
    assert json.loads((sweep_dir / "recommendation.json").read_text())["verdict"] == rec["verdict"]


def test_multirun_under_torchrun_writes_once(tmp_path: Path) -> None:
    proc = run_tune(["-m", "train.micro_batch_size=1,4", "window=quick", "wandb=off", *ROUNDS], nproc=2,
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    windows = read_jsonl(sweep_dir / "trials.jsonl")
    assert len(windows) == 8 and all(w["world_size"] == 2 for w in windows)
    assert sorted(read_settings(sweep_dir)) == ["1x1", "2x1", "4x1"]
    assert proc.stdout.count("trainer_tune trials") == 1
    assert json.loads((sweep_dir / "recommendation.json").read_text())["num_trials"] == 3


def test_sweep_axes_in_a_multirun_are_refused_before_anything_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "trainer_tune", "-m", "+sweep=batch", "train.grad_accum=1,2"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "trainer_tune: error: sweep.micro_batch_sizes=[1, 2, 4, 8] is not allowed in a Hydra multirun" in proc.stderr


@pytest.mark.quiet  # a NO-GO from two rounds: another test's load could widen it to INCONCLUSIVE
def test_no_go_gate_of_a_multirun_under_torchrun_publishes_then_every_rank_exits_3(tmp_path: Path) -> None:
    # Every rank runs the multirun's end; only rank 0 publishes. Were rank 1 to leave first (0 or 3), the ranks'
    # codes would disagree, or torchrun would end rank 0 mid-publish: no table, no NO-GO line, no report.md. The
    # margin is far out of reach: two rounds give intervals on 1 degree of freedom, wide enough on noisy quick
    # windows to reach 10x (INCONCLUSIVE, not the NO-GO tested).
    out = tmp_path / "gate"
    proc = run_tune(["-m", "ddp.static_graph=true,false", "recommend=ci_gate", "recommend.min_speedup=1000",
                     "window=quick", "wandb=off", "sweep.min_rounds=2", "sweep.max_rounds=2", f"hydra.sweep.dir={out}"],
                    nproc=2, cwd=tmp_path)
    # torchrun itself exits 1 whenever a worker fails; its summary lists each rank's own code.
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert sorted(re.findall(r"exitcode\s+:\s*(-?\d+) \(pid", proc.stderr)) == ["3", "3"], proc.stderr[-3000:]
    assert "traceback : trainer_tune: NO-GO with recommend.fail_on_no_go=true" in proc.stderr, proc.stderr[-3000:]
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["decision"] == "NO-GO" and rec["verdict"] in proc.stdout and "trainer_tune trials" in proc.stdout
    assert rec["verdict"] in (out / "report.md").read_text()
    assert (out / "charts" / "throughput.png").exists()
