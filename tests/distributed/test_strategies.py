"""Search strategies and the race in real 2-rank sweeps: every rank lets in, drops and skips the same settings,
and the verdict says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import read_settings, run_tune, windows_by_label

# quiet: its assertions read what the measurements decide (tests/conftest.py, _quiet_machine).
pytestmark = [pytest.mark.slow, pytest.mark.quiet]


def test_power_stops_a_chain_at_an_oom_and_names_what_it_did_not_measure(tmp_path: Path) -> None:
    out = tmp_path / "power"
    # Ladder 1, 2, 4, 8 (2x1 is the baseline, trial 0, and part of the chain); patience 10 so only the injected
    # OOM at trial 2 (4x1) can stop the chain, whatever the noise. 1x1 enters with the baseline in round 0; 4x1
    # once 2x1 has been compared with 1x1 (two windows each), in round 2. The OOM hits rank 1 alone, so rank 0
    # is left in DDP's all-reduce: the watchdog ends the group and torchrun's restart resumes the sweep in the
    # same round (see test_torchrun_faults).
    proc = run_tune(["+sweep=batch", "window=quick", "wandb=off", "sweep.strategy=power", "sweep.micro_batch_sizes=[1]",
                     "sweep.grad_accums=[1]", "sweep.max_micro_batch_size=8", "sweep.power_patience=10",
                     "sweep.min_rounds=2", "sweep.max_rounds=3", "sweep.budget_s=null",
                     "fault=oom", "fault.trial=2", "watchdog.stall_s=3", "watchdog.abort_after_s=8",
                     f"hydra.run.dir={out}"], nproc=2, max_restarts=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    windows = windows_by_label(out)
    assert sorted(windows) == ["1x1", "2x1", "4x1"]
    assert [w["round_id"] for w in windows["2x1"]] == ["r0", "r1", "r2"]
    assert [(w["round_id"], w["status"]) for w in windows["4x1"]] == [("r2", "oom")]
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["not_measured"] == [{"label": "8x1", "reason": "4x1 ended oom, so larger micro-batches were not tried"}]
    assert "8x1: 4x1 ended oom" in proc.stdout


def test_the_race_drops_a_setting_that_cannot_win(tmp_path: Path) -> None:
    out = tmp_path / "race"
    # A drop that is certain, not left to noise: 16-token sequences make a step mostly fixed cost (DDP's
    # all-reduce, the optimizer), so 1x1 carries 1/32 of the baseline 32x1's tokens in a step of similar length
    # (measured on 2 cores: 1,573 against 10,631 tokens/s). Nothing leaves before sweep.min_rounds=3.
    proc = run_tune(["+sweep=batch", "wandb=off", "baseline.micro_batch_size=32", "sweep.micro_batch_sizes=[1,32]",
                     "sweep.grad_accums=[1]", "model.seq_len=16", "window=quick", "sweep.min_rounds=3",
                     "sweep.max_rounds=4", "sweep.budget_s=null", f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    settings = read_settings(out)
    assert settings["1x1"]["tokens_per_s"] < settings["32x1"]["tokens_per_s"] / 3
    rec = json.loads((out / "recommendation.json").read_text())
    drop = next(d for d in rec["race"]["drops"] if d["label"] == "1x1")
    assert drop["after_round"] == 3 and "against 32x1" in drop["reason"] and "paired over 3 rounds" in drop["reason"]
    assert [w["round_id"] for w in windows_by_label(out)["1x1"]] == ["r0", "r1", "r2"]
    assert "race: 1x1 leaves after round 3" in proc.stdout
    assert rec["race"]["end_reason"].startswith("after 3 rounds the evidence decided: NO-GO")
    assert rec["chosen"]["label"] == "32x1" and rec["decision"] == "NO-GO"


def test_screening_measures_short_windows_in_blocks_then_drops_what_is_far_behind(tmp_path: Path) -> None:
    out = tmp_path / "screen"
    # The certain drop of the test above, screened: two short rounds (r0.0, r1.0: one block, the baseline in it)
    # without the extras, then 1x1 leaves; the survivors' first full window (r2) measures the comm split. 16x1 is
    # there for the pooled noise's degrees of freedom.
    proc = run_tune(["+sweep=batch", "wandb=off", "baseline.micro_batch_size=32", "sweep.micro_batch_sizes=[1,16,32]",
                     "sweep.grad_accums=[1]", "model.seq_len=16", "window.measure_steps=4", "window.measure_s=0.4",
                     "window.max_measure_steps=40", "sweep.screen=true",
                     "sweep.min_rounds=3", "sweep.max_rounds=3", "sweep.budget_s=null", f"hydra.run.dir={out}"],
                    nproc=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    windows = windows_by_label(out)
    assert [w["round_id"] for w in windows["1x1"]] == ["r0.0", "r1.0"]
    assert [w["round_id"] for w in windows["32x1"]] == ["r0.0", "r1.0", "r2"]
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["race"]["screening_rounds"] == 2
    drop = next(d for d in rec["race"]["drops"] if d["label"] == "1x1")
    assert drop["after_round"] == 2 and drop["reason"].startswith("screened out after 2 short rounds")
    # Screening windows carry no extras and are sized to fill a quarter of window.measure_s (0.1 s) at the warm-up's
    # pace (window.measure_steps at least).
    for w in windows["1x1"] + windows["32x1"][:2]:
        assert w["comm"] is None and w["noise_scale"] is None
        assert "fill window.measure_s=0.1 s at" in w["window_stop"] or "fill 0.1 s at" in w["window_stop"], w["window_stop"]
    assert windows["32x1"][2]["comm"] is not None
