"""Search strategies in real 2-rank sweeps: every rank skips and cuts the same trials, and the verdict says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import read_jsonl, run_tune

pytestmark = pytest.mark.slow


def test_power_stops_a_chain_at_an_oom_and_names_what_it_did_not_measure(tmp_path: Path) -> None:
    out = tmp_path / "power"
    # Ladder 1, 2, 4, 8 (2x1 is the baseline, trial 0); patience 10 so only the injected OOM at trial 2
    # (4x1) can stop the chain, whatever the noise. The OOM hits rank 1 alone, so rank 0 is left in DDP's
    # all-reduce: the watchdog ends the group and torchrun's restart resumes the sweep (see test_torchrun_faults).
    proc = run_tune(["+sweep=batch", "window=quick", "wandb=off", "sweep.strategy=power", "sweep.micro_batch_sizes=[1]",
                     "sweep.grad_accums=[1]", "sweep.max_micro_batch_size=8", "sweep.power_patience=10",
                     "fault=oom", "fault.trial=2", "watchdog.stall_s=3", "watchdog.abort_after_s=8",
                     f"hydra.run.dir={out}"], nproc=2, max_restarts=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = read_jsonl(out / "trials.jsonl")
    assert [(t["label"], t["status"]) for t in trials] == [("2x1", "ok"), ("1x1", "ok"), ("4x1", "oom"),
                                                                ("2x1 re-check", "ok")]
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["not_measured"] == [{"label": "8x1", "reason": "4x1 ended oom, so larger micro-batches were not tried"}]
    assert "8x1: not measured (4x1 ended oom" in proc.stdout


def test_adaptive_measures_every_setting_and_reports_the_windows_it_cut(tmp_path: Path) -> None:
    out = tmp_path / "adaptive"
    proc = run_tune(["+sweep=batch", "wandb=off", "sweep.strategy=adaptive", "sweep.micro_batch_sizes=[1,4]",
                     "sweep.grad_accums=[1]", "window.max_measure_s=1", f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = read_jsonl(out / "trials.jsonl")
    # Baseline first, then the largest step first; the baseline once more at the end (sweep.recheck_baseline).
    assert [t["label"] for t in trials] == ["2x1", "4x1", "1x1", "2x1 re-check"]
    assert all(t["status"] == "ok" for t in trials)
    for t in trials:
        assert t["window_cut_short"] == t["window_stop"].startswith("cut short"), t["window_stop"]
        assert t["num_measured_steps"] >= 10
    assert not trials[0]["window_cut_short"]  # nothing to compare the baseline with yet
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["cut_short"] == [t["label"] for t in sorted(trials, key=lambda t: t["index"]) if t["window_cut_short"]]
    assert rec["not_measured"] == []
