"""Real 2-rank serving sweeps (mode=inference) on CPU under torchrun: the built-in GPT with +sweep=serving and the
example CNN, a p99 budget (some batches over it, then none within it), the energy objective where energy cannot be
read, and the machinery as in training: journal and resume, an error on one replica, a stall, an OOM at a large
batch, the race, a multirun, one setting, and training axes refused before any process group.

Each run is as small as proves its point (window=quick, one round unless the race is the point); the decisions
on a budget are rerun from the first run's journal in its directory, which measures nothing again."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import ONE_ROUND, read_jsonl, read_settings, refused_before_any_group, run_tune
from helpers.models import hand_forward_flops
from trainer_tune.config.schema import ModelArgs
from trainer_tune.examples.vision import ResNet
from trainer_tune.measure.flops import gpt_flops_per_token
from trainer_tune.measure.rapl import RaplMeter
from trainer_tune.workloads.model import build_model, count_parameters

pytestmark = pytest.mark.slow

QUICK = ["window=quick", "wandb=off"]
"""window=quick: 1 warm-up batch, then 4 measured batches per window."""
WATCHDOG = ["watchdog.stall_s=3", "watchdog.abort_after_s=8", "watchdog.dump_interval_s=2"]


def _cpu_energy_readable() -> bool:
    meter = RaplMeter()
    meter.start()
    return meter.stop().energy_j is not None


def _check_served(window: dict, *, world_size: int = 2) -> None:
    """What every clean window of a serving sweep records: latencies, throughput summed over the replicas, and
    nothing of training (no loss, no gradient-sync split, no DDP)."""
    assert window["mode"] == "inference" and window["status"] == "ok", window["error"]
    latency = window["latency"]
    assert latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert latency["num_batches"] == window["num_measured_steps"] == len(window["step_times_s"])
    assert latency["max_ms"] == pytest.approx(1e3 * max(window["step_times_s"]))
    # Every replica's samples: batch x measured batches x 2 ranks, over the slowest replica's measured time.
    assert window["samples_per_s"] == pytest.approx(
        window["micro_batch_size"] * window["num_measured_steps"] * world_size / window["measured_s"], rel=1e-9)
    assert window["losses"] == [] and window["loss_first"] is None and window["comm"] is None
    assert window["extra"]["ddp_applied"] is None
    if not _cpu_energy_readable():
        assert window["energy_j_per_sample"] is None and window["energy_note"].startswith("CPU energy not measured")
    mfu = window["mfu"]
    assert mfu["achieved_tflops"] == pytest.approx(mfu["flops_per_sample"] * window["samples_per_s"] / 1e12)


# --- the built-in GPT: +sweep=serving, then decisions on budgets and the energy objective from its journal ------
GPT = ["+sweep=serving", "sweep.micro_batch_sizes=[1,4,16]", "train.micro_batch_size=16", *QUICK, *ONE_ROUND]
"""The baseline is the largest batch, so a budget that rules it out makes the decision change batch size."""


def test_the_gpt_serves_and_budgets_decide_from_its_journal(tmp_path: Path) -> None:
    out = tmp_path / "gpt"
    proc = run_tune([*GPT, f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-8000:]
    windows = read_jsonl(out / "trials.jsonl")
    assert sorted(w["label"] for w in windows) == ["16x1", "1x1", "4x1"]
    args = ModelArgs()  # model=tiny
    with torch.device("meta"):
        training_flops_per_token = gpt_flops_per_token(args, num_parameters=count_parameters(build_model(args)))
    for window in windows:
        _check_served(window)
        # Each served batch ends in a synchronisation of its own, counted (a training window has none).
        assert window["syncs_in_window"] == window["num_measured_steps"]
        assert window["tokens_per_s"] == pytest.approx(window["samples_per_s"] * args.seq_len)
        # The forward only: a third of the training formula (tests/unit/test_serving_trials.py counts it).
        assert window["mfu"]["flops_per_token"] == pytest.approx(training_flops_per_token / 3)
    p99 = {label: s["latency"]["p99_ms"] for label, s in read_settings(out).items()}
    smallest = min(p99, key=p99.__getitem__)

    def rerun(*extra: str) -> dict:
        again = run_tune([*GPT, *extra, f"hydra.run.dir={out}"], nproc=2)
        assert again.returncode == 0, again.stderr[-8000:]
        assert read_jsonl(out / "trials.jsonl") == windows  # resumed: nothing measured again
        return json.loads((out / "recommendation.json").read_text())

    # A budget between the smallest and the largest p99 (the journal's figures, so it holds whatever they are).
    budget = round(math.sqrt(min(p99.values()) * max(p99.values())), 3)
    assert min(p99.values()) < budget < max(p99.values())
    over = {label for label, value in p99.items() if value > budget}
    rec = rerun(f"recommend.max_batch_latency_ms={budget}")
    for label in over:
        assert f"{label} is over the latency budget: p99 {p99[label]:,.1f} ms > recommend.max_batch_latency_ms=" \
               f"{budget:g} (never chosen)" in rec["reasons"]
        assert f"{label} left the race after round 1: over the latency budget" in " ".join(rec["reasons"])
    assert rec["chosen"] is not None and (rec["chosen"] or rec["leader"])["label"] not in over
    assert "mode=inference" in rec["overrides"]  # measuring the chosen batch again serves it
    if "16x1" in over:  # the baseline: it must change
        assert rec["decision"] == "GO" and "the baseline 16x1 is over the p99 budget" in rec["verdict"]

    rec = rerun(f"recommend.max_batch_latency_ms={round(p99[smallest] / 2, 3):g}")
    assert rec["decision"] == "NO-GO"
    assert rec["verdict"].endswith(f"(smallest p99 {p99[smallest]:,.1f} ms at {smallest})"), rec["verdict"]

    if not _cpu_energy_readable():
        rec = rerun("recommend.objective=energy")
        assert rec["verdict"] == "NO-GO: energy per sample not measured (recommend.objective=energy)"
        assert all(s["energy_j_per_sample"] is None and s["energy_note"] for s in rec["settings"])


# --- the example CNN, with one replica failing in one window --------------------------------------------------
def test_the_cnn_serves_and_an_error_on_one_replica_is_recorded(tmp_path: Path) -> None:
    """fault=error: rank 1 raises in the window of trial 1 (4x1); rank 0, waiting for it at the window's end,
    is ended by the watchdog, torchrun restarts the group, and the sweep resumes past the recorded error."""
    out = tmp_path / "cnn"
    proc = run_tune(["+sweep=serving", "model=resnet_small", "data=images", "sweep.micro_batch_sizes=[1,4,8]",
                     "train.micro_batch_size=1", *QUICK, *ONE_ROUND, "fault=error", *WATCHDOG,
                     f"hydra.run.dir={out}"], nproc=2, max_restarts=1)
    assert proc.returncode == 0, proc.stderr[-8000:]
    windows = {w["label"]: w for w in read_jsonl(out / "trials.jsonl")}
    assert {label: w["status"] for label, w in windows.items()} == {"1x1": "ok", "4x1": "error", "8x1": "ok"}
    failed = windows.pop("4x1")
    assert failed["mode"] == "inference" and failed["latency"] is None
    assert failed["error"].startswith("rank 1 on ") and "injected fault in model code" in failed["error"]
    forward = hand_forward_flops(ResNet(num_classes=10, channels=(16, 32)), torch.zeros(1, 3, 32, 32))
    for window in windows.values():
        _check_served(window)
        assert window["tokens_per_s"] is None and window["throughput_unit"] == "samples"
        assert window["mfu"]["flops_source"] == "FlopCounterMode" and window["mfu"]["flops_per_sample"] == forward
    rec = json.loads((out / "recommendation.json").read_text())
    assert (rec["chosen"] or rec["leader"])["label"] != "4x1" and "4x1 (error)" in " ".join(rec["reasons"])


# --- the race with a budget, a stall, an OOM at a large batch -----------------------------------------------------
def test_a_batch_over_budget_leaves_the_race_and_an_oom_or_a_stall_is_an_outcome(tmp_path: Path) -> None:
    """helpers.models.PacedServer sleeps 5 ms per sample (a latency the machine's load hardly moves) and runs out
    of memory above 32 samples on every rank. Budget 100 ms: 1, 2 and 4 (5-20 ms) are well within it, 32 (at
    least 160 ms asleep) over; 64 is an OOM on both replicas, recorded like any outcome. Rank 1 stalls in 2x1's
    window (fault=stall): the watchdog records it and torchrun restarts the group. After round 1
    (sweep.min_rounds=1) 32x1 leaves the race, so round 2 measures 1x1 and 4x1 only."""
    out = tmp_path / "paced"
    proc = run_tune(["+sweep=serving", "model._target_=helpers.models.PacedServer",
                     "data._target_=helpers.models.random_features", "sweep.micro_batch_sizes=[1,2,4,32,64]",
                     "train.micro_batch_size=1", "recommend.max_batch_latency_ms=100", "sweep.min_rounds=1",
                     "sweep.max_rounds=2", *QUICK, "fault=stall", *WATCHDOG, f"hydra.run.dir={out}"],
                    nproc=2, max_restarts=1)
    assert proc.returncode == 0, proc.stderr[-8000:]
    windows = read_jsonl(out / "trials.jsonl")
    # Round 0 was cut short by the restart: what it still lacked is measured as `r0~1`, with a window of the
    # baseline (1x1) of its own (docs/measurement.md, "Resuming"); the baseline may thus have two windows there.
    first_round = sorted((w["label"], w["status"]) for w in windows if w["round_id"].split("~")[0] == "r0")
    assert sorted(set(first_round)) == [("1x1", "ok"), ("2x1", "stalled"), ("32x1", "ok"), ("4x1", "ok"),
                                        ("64x1", "oom")]
    assert len(first_round) - len(set(first_round)) <= 1
    assert sorted((w["label"], w["status"]) for w in windows if w["round_id"] == "r1") == [("1x1", "ok"), ("4x1", "ok")]
    for rid in {w["round_id"] for w in windows}:
        assert len({w["lifetime"] for w in windows if w["round_id"] == rid}) == 1
    assert all(w["mode"] == "inference" for w in windows)
    assert "PacedServer holds at most 32 samples, got 64" in next(w for w in windows if w["status"] == "oom")["error"]
    assert (out / "stacks" / "trial-1-rank-1.txt").exists() and "recorded as stalled" in proc.stderr
    rec = json.loads((out / "recommendation.json").read_text())
    settings = read_settings(out)
    assert settings["32x1"]["latency"]["p99_ms"] > 100  # its figures stand
    reasons = " ".join(rec["reasons"])
    assert "32x1 left the race after round 1: over the latency budget: p99" in reasons
    assert "32x1 is over the latency budget" in reasons and "2x1 (stalled), 64x1 (oom)" in reasons
    assert (rec["chosen"] or rec["leader"])["label"] in {"1x1", "4x1"}


# --- multirun and one setting ---------------------------------------------------------------------------------
def test_a_serving_multirun_pins_the_baseline_and_recommends_once(tmp_path: Path) -> None:
    out = tmp_path / "multi"
    proc = run_tune(["-m", "mode=inference", "train.micro_batch_size=1,4", *QUICK, *ONE_ROUND,
                     f"hydra.sweep.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert json.loads((out / "baseline.json").read_text())["baseline"]["micro_batch_size"] == 2
    windows = read_jsonl(out / "trials.jsonl")
    assert sorted((w["round_id"], w["label"]) for w in windows) == \
        [("job0/r0", "1x1"), ("job0/r0", "2x1"), ("job1/r0", "2x1"), ("job1/r0", "4x1")]
    for window in windows:
        _check_served(window, world_size=1)
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["num_trials"] == 3 and rec["verdict"] in proc.stdout
    assert not any((out / str(job) / "recommendation.json").exists() for job in (0, 1))  # the callback's only


def test_one_served_setting_is_measured(tmp_path: Path) -> None:
    out = tmp_path / "one"
    proc = run_tune(["mode=inference", "model=resnet_small", "data=images", *QUICK, *ONE_ROUND,
                     f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-8000:]
    (window,) = read_jsonl(out / "trials.jsonl")
    _check_served(window)
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["decision"] == "MEASURED" and f"p99 {window['latency']['p99_ms']:,.1f} ms" in rec["verdict"]


# --- training axes refused ------------------------------------------------------------------------------------
@pytest.mark.parametrize("nproc", [None, 2], ids=["python -m", "torchrun"])
def test_grad_accums_in_inference_are_refused_before_any_process_group(nproc: int | None, tmp_path: Path) -> None:
    out = tmp_path / "never"
    proc = run_tune(["+sweep=serving", "sweep.grad_accums=[1,2]", f"hydra.run.dir={out}"], nproc=nproc,
                    timeout_s=120)
    line = ("trainer_tune: error: sweep.grad_accums=[1, 2] is not allowed: null with mode=inference (no gradients, "
            "no DDP: each rank serves on its own); it applies with mode=train")
    if nproc is None:
        assert proc.returncode == 2 and proc.stderr.strip() == line, proc.stderr[-8000:]
    else:
        # Each rank exits 2 (or is ended by torchrun once the first has); torchrun then exits 1, listing the codes.
        assert proc.returncode == 1 and refused_before_any_group(proc.stderr, nproc=2), proc.stderr[-8000:]
        assert line in proc.stderr and "Traceback" not in proc.stderr.split("trainer_tune: error:")[0]
    assert not out.exists()
