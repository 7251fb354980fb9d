"""Real 2-rank sweeps under torchrun on gloo: the journal, the recommendation, resume and the flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import ONE_ROUND, read_jsonl, read_settings, run_tune
from trainer_tune.evidence.stats import geometric_mean

pytestmark = pytest.mark.slow

SMALL_SWEEP = ["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2,4]", "sweep.grad_accums=[1,2]",
               "sweep.min_rounds=2", "sweep.max_rounds=2"]
"""Two rounds of 6 settings: the verdict may be GO, NO-GO or INCONCLUSIVE (the test reads whichever it is)."""


def test_two_rank_sweep_then_resume(tmp_path: Path) -> None:
    proc = run_tune(SMALL_SWEEP, nproc=2, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # One output directory for both ranks, chosen without hydra.run.dir.
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    out = runs[0]
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["rank-0.log", "rank-1.log"]
    assert (out / "config.yaml").exists()
    assert not (out / "stacks").exists()  # only a sweep where something stalled has stack files

    lines = read_jsonl(out / "trials.jsonl")
    # Two rounds of the six settings, each window once; round 0 before round 1.
    assert sorted((t["round_id"], t["micro_batch_size"], t["grad_accum"]) for t in lines) == \
        sorted((r, m, a) for r in ("r0", "r1") for m, a in [(2, 1), (1, 1), (1, 2), (2, 2), (4, 1), (4, 2)])
    assert [t["round_id"] for t in lines] == ["r0"] * 6 + ["r1"] * 6
    for t in lines:
        assert t["status"] == "ok", t["error"]
        assert t["is_baseline"] == (t["index"] == 0)
        assert t["world_size"] == 2 and t["backend"] == "gloo"
        assert t["global_batch_size"] == t["micro_batch_size"] * t["grad_accum"] * 2
        assert t["tokens_per_step"] == t["global_batch_size"] * 128
        assert t["tokens_per_s"] > 0
        assert t["tokens_per_s"] == pytest.approx(t["samples_per_s"] * 128)
        # tokens/s is the measured tokens over the slowest rank's wall time from the window's start to its end:
        # about the sum of the per-step slowest times (those add cross-rank jitter; the wall time adds the moments
        # before the first step mark and after the last).
        assert t["tokens_per_s"] == pytest.approx(t["tokens_per_step"] * t["num_measured_steps"] / t["measured_s"])
        steps_s = t["step_time_s"]["mean"] * t["num_measured_steps"]
        assert 0.5 * steps_s <= t["measured_s"] <= 1.05 * steps_s + 0.005
        assert t["step_time_s"]["p90"] >= t["step_time_s"]["median"] > 0
        assert t["num_measured_steps"] == 4 and t["num_warmup_steps"] == 1
        # window=quick: 4 steps at least and at most, whatever the warm-up's pace would fill.
        assert t["window_stop"].startswith("4 steps (window.max_measure_steps)") and t["wall_s"] > 0
        assert t["syncs_in_window"] == 0 and t["lifetime"] == lines[0]["lifetime"]
        # CPU peak memory: the training processes' peak resident memory growth, highest rank, measured in the
        # window that built the trainer (r0); a trainer kept for a later window cannot separate its growth.
        if t["round_id"] == "r0" or t["peak_memory_bytes"] is not None:
            assert t["peak_memory_source"] == "rss_growth" and t["peak_memory_bytes"] > 0
        else:
            assert "kept from an earlier window" in t["peak_memory_note"]
        assert "NSA_DDP_BUCKET_MB" not in t["environment"] and t["flags"]["bucket_cap_mb"] is None
        assert t["extra"]["ddp_applied"] == {"static_graph": False, "find_unused_parameters": False,
                                             "bucket_cap_bytes": 25 * 1024 * 1024, "bucket_cap_is_default": True}
        # The compute vs communication split is measured in a setting's first window only.
        assert (t["comm"] is not None) == (t["round_id"] == "r0")
        # Every window says what measured it: torchrun's one thread per worker, on both ranks.
        fingerprint = t["fingerprint"]
        assert fingerprint["world_size"] == 2 and fingerprint["torch_threads"] == [1, 1]
        assert fingerprint["omp_num_threads"] == "1" and fingerprint["gpu_count"] == 0
        assert fingerprint["cpus_usable"] >= 1 and fingerprint["torch_version"] == t["torch_version"]
    assert len({t["trial_key"] for t in lines}) == 12 and len({t["setting_key"] for t in lines}) == 6
    assert json.loads((out / "recommendation.json").read_text())["fingerprint"] == lines[-1]["fingerprint"]

    # Each setting aggregated over its two windows: the geometric mean, and an interval from the two.
    settings = read_settings(out)
    trials = sorted(settings.values(), key=lambda t: t["index"])
    for t in trials:
        rates = [w["tokens_per_s"] for w in lines if w["setting_key"] == t["trial_key"]]
        assert t["num_windows"] == 2 and sorted(t["window_throughput_per_s"].values()) == sorted(rates)
        assert t["tokens_per_s"] == pytest.approx(geometric_mean(rates))
        low, high = t["throughput_ci95"]
        assert low <= t["tokens_per_s"] <= high
        assert t["num_measured_steps"] == 8

    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["num_trials"] == 6
    # One series (the same flags at every setting): peak memory fitted against micro-batches 1, 2 and 4.
    assert all(t["peak_memory_source"] == "rss_growth" for t in trials)
    fit, = rec["memory_fits"]
    assert fit["series"] == "all settings" and sorted({m for m, _ in fit["points"]}) == [1, 2, 4]
    assert "host memory available" in rec["memory_limit"]["capacity_source"]
    assert [round_id for round_id, _ in rec["drift"]["series"]] == ["r0", "r1"]
    assert any("in each of its 2 rounds" in reason for reason in rec["reasons"])
    # Two rounds, ended by sweep.max_rounds=2 or, when it decided, by the evidence after round 2 (min_rounds=2).
    assert rec["race"]["num_rounds"] == 2 and ("max_rounds=2" in rec["race"]["end_reason"]
                                               or "after 2 rounds the evidence decided" in rec["race"]["end_reason"])
    by_key = {t["trial_key"]: t for t in trials}
    # The best is the fastest of the settings still racing, or tied with it by the comparison rule.
    best = by_key[rec["best"]["trial_key"]]
    racing = [t for t in trials if t["label"] in rec["race"]["contenders"]]
    assert best["tokens_per_s"] == max(t["tokens_per_s"] for t in racing) or best["label"] in rec["tied"]
    assert rec["baseline"]["trial_key"] == trials[0]["trial_key"]
    assert rec["speedup"] == pytest.approx(rec["speedup_by_key"][best["trial_key"]])
    if rec["decision"] == "GO":
        assert rec["speedup_ci95"][0] >= 1.05 and rec["chosen"]["trial_key"] != trials[0]["trial_key"]
    elif rec["decision"] == "NO-GO":
        assert rec["speedup_ci95"] is None or rec["speedup_ci95"][1] < 1.05
    else:  # INCONCLUSIVE: nothing chosen yet, the leader named, and how to continue
        assert rec["chosen"] is None and rec["leader"]["trial_key"] == best["trial_key"]
        assert rec["continue_overrides"] and "Continue this sweep" in (out / "report.md").read_text()
    picked = rec["chosen"] or rec["leader"]
    assert picked["trial_key"] in by_key
    assert rec["verdict"] in proc.stdout
    assert "trainer_tune trials" in proc.stdout and "round 2 " in proc.stdout

    # report.md, rendered by rank 0, links the charts drawn next to it; on CPU there is no utilization chart.
    report = (out / "report.md").read_text()
    assert rec["verdict"] in report and "## Decision matrix" in report
    linked = re.findall(r"\]\((charts/[a-z_]+\.png)\)", report)
    assert sorted(linked) == ["charts/efficiency.png", "charts/rounds.png", "charts/step_times.png",
                              "charts/throughput.png"]
    for link in linked:
        assert (out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "no chart of GPU utilization over time" in report
    assert "## Memory prediction" in report and "memory fit all settings: fit over 1, 2, 4" in proc.stdout
    lead = report[report.index("## Trials"):report.index("### Details")]  # then the same rows with the details
    assert [line.split(" | ")[1] for line in lead.splitlines() if re.match(r"\| \d+ \| ", line)] == \
        [t["label"] + (" (baseline)" if t["is_baseline"] else "")
         + (" **chosen**" if rec["chosen"] and t["trial_key"] == rec["chosen"]["trial_key"] else "") for t in trials]

    as_yaml = yaml.safe_load((out / "recommendation.yaml").read_text())
    assert as_yaml["decision"] == rec["decision"]
    if rec["chosen"] is None:
        return  # INCONCLUSIVE recommends no setting to measure again or train with
    assert f"train.micro_batch_size={rec['chosen']['micro_batch_size']}" in as_yaml["overrides"]
    assert as_yaml["environment"]["NSA_PREFILL_BATCHED"] == "1"

    # Same command, same directory: nothing is measured again and the verdict stands.
    again = run_tune([*SMALL_SWEEP, f"hydra.run.dir={out}"], nproc=2, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "6 settings, measured in rounds, 12 windows already in the journal" in again.stdout
    assert read_jsonl(out / "trials.jsonl") == lines
    assert json.loads((out / "recommendation.json").read_text())["verdict"] == rec["verdict"]

    # The recommendation's overrides re-measure exactly the chosen setting.
    rerun_dir = tmp_path / "rerun"
    rerun = run_tune([*as_yaml["overrides"], "window=quick", f"hydra.run.dir={rerun_dir}"], nproc=2, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rerun_windows = read_jsonl(rerun_dir / "trials.jsonl")
    assert len({w["setting_key"] for w in rerun_windows}) == 1
    for single in rerun_windows:
        assert (single["micro_batch_size"], single["grad_accum"], single["flags"]) == \
            (rec["chosen"]["micro_batch_size"], rec["chosen"]["grad_accum"], rec["chosen"]["flags"])


def test_flags_from_environment_command_line_and_sweep_axis(tmp_path: Path) -> None:
    out = tmp_path / "flags"
    proc = run_tune(["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[2]", "sweep.grad_accums=[1]",
                     "sweep.ddp_bucket_cap_mb=[null,1,25]", "ddp.static_graph=false", *ONE_ROUND,
                     f"hydra.run.dir={out}"],
                    nproc=2, env={"NSA_DDP_STATIC_GRAPH": "1", "NSA_PREFILL_BATCHED": "0",
                                  "NSA_DDP_FIND_UNUSED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = sorted(read_jsonl(out / "trials.jsonl"), key=lambda t: t["index"])
    assert [t["flags"]["bucket_cap_mb"] for t in trials] == [None, 1.0, 25.0]
    for t in trials:
        assert t["flags"]["static_graph"] is False  # the command line beats NSA_DDP_STATIC_GRAPH=1
        assert t["flags"]["prefill_batched"] is False  # from NSA_PREFILL_BATCHED=0
        assert t["flags"]["find_unused_parameters"] is True  # from NSA_DDP_FIND_UNUSED=1
        assert t["environment"]["NSA_DDP_STATIC_GRAPH"] == "0"
        applied = t["extra"]["ddp_applied"]
        assert applied["static_graph"] is False and applied["find_unused_parameters"] is True
        assert applied["bucket_cap_bytes"] == int((t["flags"]["bucket_cap_mb"] or 25) * 1024 * 1024)
        assert applied["bucket_cap_is_default"] is (t["flags"]["bucket_cap_mb"] is None)
    assert [t["label"] for t in trials] == ["2x1 bucket_cap_mb=null", "2x1 bucket_cap_mb=1", "2x1 bucket_cap_mb=25"]
    assert [t["environment"].get("NSA_DDP_BUCKET_MB") for t in trials] == [None, "1", "25"]


def test_bad_input_under_torchrun_fails_every_rank_before_the_process_group(tmp_path: Path) -> None:
    proc = run_tune(["train.micro_batch_size=0", f"hydra.run.dir={tmp_path / 'never'}"], nproc=2, timeout_s=60)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines()
            if line.startswith("trainer_tune: error: train.micro_batch_size=0 is not allowed")]
    assert len(ours) == 1, proc.stderr
    assert not (tmp_path / "never").exists()
    # torchrun's failure summary names our line as the root cause, not "To enable traceback see ...".
    root_cause = proc.stderr.split("Root Cause (first observed failure):")[1]
    assert "traceback : trainer_tune: error: train.micro_batch_size=0 is not allowed" in root_cause, proc.stderr
    assert "To enable traceback" not in proc.stderr


@pytest.mark.quiet  # a NO-GO from two rounds: another test's load could widen it to INCONCLUSIVE
def test_single_process_no_go_gate_exits_3(tmp_path: Path) -> None:
    out = tmp_path / "gate"
    proc = run_tune(["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]",
                     "recommend=ci_gate", "recommend.min_speedup=1000", "sweep.min_rounds=2", "sweep.max_rounds=2",
                     f"hydra.run.dir={out}"])
    assert proc.returncode == 3, proc.stderr[-3000:]
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["decision"] == "NO-GO"
    trials = read_jsonl(out / "trials.jsonl")
    assert len(trials) == 4 and all(t["world_size"] == 1 and t["backend"] is None for t in trials)
    assert all(t["extra"]["ddp_applied"] is None and t["comm"] is None for t in trials)
    # One rank: the report renders all the same, with its throughput chart.
    assert "NO-GO" in (out / "report.md").read_text() and (out / "charts" / "throughput.png").exists()


@pytest.mark.quiet  # a NO-GO from two rounds: another test's load could widen it to INCONCLUSIVE
def test_no_go_gate_under_torchrun_publishes_before_any_rank_exits(tmp_path: Path) -> None:
    # Rank 1 has nothing to publish: were it to exit 3 first, torchrun would kill rank 0 mid-publish. The margin
    # is far out of reach on purpose: two rounds give a paired interval on 1 degree of freedom (t = 12.7), and with
    # 10x a CI run's noisy quick windows left 1x1's upper end above it (INCONCLUSIVE, exit 5, not the NO-GO tested).
    out = tmp_path / "gate"
    proc = run_tune(["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]",
                     "recommend=ci_gate", "recommend.min_speedup=1000", "wandb=off", "sweep.min_rounds=2",
                     "sweep.max_rounds=2", f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert json.loads((out / "recommendation.json").read_text())["decision"] == "NO-GO"
    assert "NO-GO" in proc.stdout and "tokens/s" in proc.stdout, proc.stdout[-3000:]
    assert "NO-GO" in (out / "report.md").read_text()
    assert "traceback : trainer_tune: NO-GO with recommend.fail_on_no_go=true" in proc.stderr, proc.stderr[-3000:]
    # Both ranks end with the gate's code; none was terminated by torchrun.
    assert sorted(re.findall(r"exitcode\s+:\s*(-?\d+) \(pid", proc.stderr)) == ["3", "3"], proc.stderr[-3000:]


def test_a_resume_with_another_thread_count_is_refused_naming_what_differs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    small = ["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[2]", "sweep.grad_accums=[1,2]",
             "sweep.min_rounds=1", "sweep.max_rounds=1", "wandb=off", f"hydra.run.dir={out}"]
    first = run_tune(small, nproc=2, env={"OMP_NUM_THREADS": "1"})  # as torchrun would set it
    assert first.returncode == 0, first.stderr[-3000:]
    journal = (out / "trials.jsonl").read_text()
    # torchrun leaves an OMP_NUM_THREADS it finds alone: two threads per rank now, one then.
    again = run_tune([*small, "sweep.max_rounds=2"], nproc=2, env={"OMP_NUM_THREADS": "2"})
    assert again.returncode != 0
    errors = [line for line in again.stderr.splitlines() if line.startswith("trainer_tune: error:")]
    assert errors and "sweep.allow_fingerprint_change=false is not allowed" in errors[0], again.stderr[-3000:]
    assert "omp_num_threads: 1 -> 2" in errors[0] and "torch_threads: (1, 1) -> (2, 2)" in errors[0]
    assert (out / "trials.jsonl").read_text() == journal  # nothing measured, nothing lost
    # Asked for, it continues (a warning in the log names the change).
    allowed = run_tune([*small, "sweep.max_rounds=2", "sweep.allow_fingerprint_change=true"], nproc=2,
                       env={"OMP_NUM_THREADS": "2"})
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    lines = read_jsonl(out / "trials.jsonl")
    assert [line["fingerprint"]["torch_threads"] for line in lines] == [[1, 1]] * 2 + [[2, 2]] * 2
    # The allowed change measured new rounds: no round holds windows of both process groups.
    assert len({line["lifetime"] for line in lines}) == 2
    assert {line["round_id"] for line in lines[:2]}.isdisjoint({line["round_id"] for line in lines[2:]})
    # Another grid in the same directory is another sweep: refused before any process group, naming the
    # difference, and every file in the directory left as it was.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = run_tune([*[a for a in small if not a.startswith("sweep.micro")], "sweep.micro_batch_sizes=[4]"], nproc=2,
                     env={"OMP_NUM_THREADS": "2"})
    assert other.returncode != 0
    errors = [line for line in other.stderr.splitlines() if line.startswith("trainer_tune: error:")]
    assert errors and "its journal is of another sweep (grid: 4x1, 4x2 added; 2x2 removed" in errors[0], \
        other.stderr[-3000:]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_threads_are_an_axis(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_tune(["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[2]", "sweep.grad_accums=[1]",
                     "sweep.num_threads=[1,2]", *ONE_ROUND, "wandb=off", f"hydra.run.dir={out}"])
    assert proc.returncode in (0, 3, 5), proc.stderr[-3000:]
    windows = read_jsonl(out / "trials.jsonl")
    # The baseline is today's configuration: torch's own thread count (null), beside the axis's two.
    assert sorted((w["label"], w["flags"]["num_threads"]) for w in windows) == \
        [("2x1 num_threads=1", 1), ("2x1 num_threads=2", 2), ("2x1 num_threads=null", None)]
    assert all(w["status"] == "ok" and w["syncs_in_window"] == 0 for w in windows)
    rec = json.loads((out / "recommendation.json").read_text())
    named = rec["chosen"] or rec["leader"]
    assert f"train.num_threads={named['flags']['num_threads']}" in rec["overrides"] or rec["chosen"] is None
