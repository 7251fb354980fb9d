"""benchmarks/gpu_check.py's summary, on a real sweep's files (a CPU run here): a step passes or fails by what
the run recorded, a timed-out or skipped step says so, and the figures come from the journal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from conftest import ONE_ROUND, REPO, clean_env, run_tune

pytestmark = pytest.mark.slow


def test_summary_judges_each_step_from_what_its_run_recorded(tmp_path: Path) -> None:
    work, dest = tmp_path / "work", tmp_path / "dest"
    run_dir = work / "runs" / "fault_oom"
    # The script's fault_oom step as it runs on a GPU, here on the CPU (where the fault raises the OOM itself).
    proc = run_tune(["model=tiny", "+sweep=batch", "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]",
                     "fault=oom", "fault.rank=0", "fault.trial=1", "wandb=off", f"hydra.run.dir={run_dir}",
                     *ONE_ROUND])
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The same CPU run standing in for the GPU sweep must fail the CUDA checks, not pass them by default.
    shutil.copytree(run_dir, work / "runs" / "gpt_125m_bf16")
    (work / "device.json").write_text(json.dumps({"name": "no GPU (test)", "total_memory_bytes": 0}))
    (work / "steps.tsv").write_text("fault_oom\t0\t9\t50\tpython -m trainer_tune fault=oom\n"
                                    "gpt_125m_bf16\t0\t9\t110\tpython -m trainer_tune model=gpt_125m\n"
                                    "precision\t124\t80\t80\tpython -m trainer_tune sweep.precision=[fp32,bf16,fp16]\n"
                                    "nsa_125m\tskipped\t0\t0\tpython -m trainer_tune model=nsa_125m\n")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "summary", "--work", str(work),
                           "--dest", str(dest), "--wall-s", "99"], env=clean_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stderr  # a step failed
    summary = json.loads((dest / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    checks = {name: {what: (status, detail) for what, status, detail in s["checks"]} for name, s in steps.items()}

    assert steps["fault_oom"]["status"] == "pass", checks["fault_oom"]
    struck = checks["fault_oom"]["fault=oom: trial 1 recorded as oom"]
    assert struck[0] == "pass" and "1x1 oom" in struck[1]
    rows = {r["label"]: r for r in steps["fault_oom"]["settings"]}
    assert rows["1x1"]["status"] == "oom" and rows["2x1"]["status"] == "ok" and rows["2x1"]["tokens_per_s"] > 0

    assert steps["gpt_125m_bf16"]["status"] == "fail"
    assert checks["gpt_125m_bf16"]["ran on CUDA (CUDA event clock)"] == ("fail", "cpu")
    assert checks["gpt_125m_bf16"]["allocator peak, source allocator_reserved"][0] == "fail"
    assert checks["gpt_125m_bf16"]["GPM SM activity"][0] == "n/a"  # the device probe found no GPM

    assert steps["precision"]["status"] == "fail"
    assert checks["precision"]["exit code 0"] == ("fail", "timed out after 80 s")
    assert checks["precision"]["precision=fp16 ok"] == ("fail", "not run")
    assert steps["nsa_125m"]["status"] == "n/a"

    report = (dest / "summary.md").read_text()
    assert "## fault_oom: pass" in report and "| nsa_125m | n/a | 0 (0) |" in report
    assert f"{rows['2x1']['tokens_per_s']:,.0f}" in report


def test_script_runs_the_chosen_steps_and_leaves_the_summary_and_runs(tmp_path: Path) -> None:
    """The whole script on this CPU machine, its device probe standing in for a GPU's: the steps chosen with
    GPU_CHECK_STEPS run (nccl fails for want of CUDA, and the script goes on), and the destination holds the
    summary, the log and the runs."""
    stub = tmp_path / "python-stub"
    stub.write_text("#!/usr/bin/env bash\n"
                    "if [[ \"${2:-}\" == device ]]; then\n"
                    "  echo '{\"ok\": true, \"name\": \"stub GPU\", \"total_memory_bytes\": 85899345920}' >\"$4/device.json\"\n"
                    "  exit 0\n"
                    "fi\n"
                    f"exec {sys.executable} \"$@\"\n")
    stub.chmod(0o755)
    dest = tmp_path / "dest"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(dest)],
                          env=clean_env({"PYTHON": str(stub), "GPU_CHECK_STEPS": "nccl plain_loop fault_oom"}),
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # nccl failed
    assert sorted(p.name for p in dest.iterdir()) == ["gpu_check.log", "runs.tar.gz", "summary.json", "summary.md"]
    summary = json.loads((dest / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [("nccl", "fail"), ("plain_loop", "fail"),
                                                                      ("fault_oom", "pass")]
    log = (dest / "gpu_check.log").read_text()
    assert "gpu_check: nccl world-size-1 FAILED" in log
    # The plain loop, given the GPT sweep's setting, refuses a machine without CUDA in one line (exit 3).
    plain = summary["steps"][1]
    assert "--micro-batch-size 8 --grad-accum 1 --precision bf16" in plain["command"]
    assert ["exit code 0", "fail", "exit 3"] in plain["checks"] and "plain_loop: no CUDA device" in log
    listing = subprocess.run(["tar", "-tzf", str(dest / "runs.tar.gz")], capture_output=True, text=True).stdout
    assert "runs/fault_oom/trials.jsonl" in listing and "runs/fault_oom/recommendation.json" in listing
    assert ".png" not in listing


def _gpt_window(label: str, round_id: str, *, status: str = "ok", syncs: Any = 0, tokens_per_s: float = 1e5,
                drop_syncs: bool = False) -> dict:
    window = {"label": label, "round_id": round_id, "status": status, "micro_batch_size": int(label.split("x")[0]),
              "grad_accum": int(label.split("x")[1]), "flags": {"precision": "bf16"}, "device": "cuda:0",
              "tokens_per_s": tokens_per_s if status == "ok" else None, "num_parameters": 124_475_904,
              "syncs_in_window": syncs if status == "ok" else None}
    if drop_syncs:
        del window["syncs_in_window"]  # a journal line from before the count
    return window


def _summarize(tmp_path: Path, name: str, *, windows: list[dict], settings: list[dict], plain: Optional[dict],
               plain_rc: int = 0) -> tuple[int, dict, dict, str]:
    """The summary of a work folder holding a GPT sweep's journal and recommendation and the plain loop's JSON,
    as gpu_check.sh leaves them: (exit code, the plain_loop step, its checks by name, summary.md)."""
    work, dest = tmp_path / name / "work", tmp_path / name / "dest"
    gpt = work / "runs" / "gpt_125m_bf16"
    gpt.mkdir(parents=True)
    header = {"journal_header": {"record_version": 6, "definition": None, "fingerprint": None, "created_at": ""}}
    (gpt / "trials.jsonl").write_text("".join(json.dumps(line) + "\n" for line in [header, *windows]))
    (gpt / "recommendation.json").write_text(json.dumps({"decision": "test", "settings": settings}))
    if plain is not None:
        (work / "runs" / "plain_loop").mkdir(parents=True)
        (work / "runs" / "plain_loop" / "plain_loop.json").write_text(json.dumps(plain))
    (work / "device.json").write_text(json.dumps({"name": "fake H100 (test)", "total_memory_bytes": 80 * 2 ** 30}))
    (work / "steps.tsv").write_text(f"plain_loop\t{plain_rc}\t12\t60\tpython3 benchmarks/plain_loop.py "
                                    f"--micro-batch-size 8\n")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "summary", "--work", str(work),
                           "--dest", str(dest)], env=clean_env(), capture_output=True, text=True, timeout=60)
    (step,) = json.loads((dest / "summary.json").read_text())["steps"]
    return proc.returncode, step, {what: (status, detail) for what, status, detail in step["checks"]}, \
        (dest / "summary.md").read_text()


PLAIN = {"tokens_per_s": 102_000.0, "steps": 30, "repeats": 3, "micro_batch_size": 8, "grad_accum": 1,
         "seq_len": 1024, "precision": "bf16", "num_parameters": 124_475_904, "syncs_in_loop": 0, "sync_samples": []}
RATIO, SYNCS, WINDOWS = ("plain loop vs trainer_tune", "plain loop: syncs_in_loop 0",
                         "trainer_tune: syncs_in_window 0 in every window of gpt_125m_bf16")


def test_plain_loop_step_passes_at_the_same_rate_without_synchronisation(tmp_path: Path) -> None:
    """trainer_tune's 8x1 bf16 at 100,000 tokens/s against the loop's 102,000 (ratio 0.98), no sync on either side;
    the journal's header line and a window that ran out of memory (no count) are not windows to judge."""
    windows = [_gpt_window("8x1", "r0"), _gpt_window("16x1", "r0"), _gpt_window("16x2", "r0", status="oom"),
               _gpt_window("8x1", "r1")]
    settings = [_gpt_window("8x1", "r1", tokens_per_s=100_000.0), _gpt_window("16x1", "r0", tokens_per_s=150_000.0)]
    rc, step, checks, report = _summarize(tmp_path, "pass", windows=windows, settings=settings, plain=PLAIN)
    assert rc == 0 and step["status"] == "pass", checks
    assert checks[RATIO][0] == "pass" and "ratio 0.980" in checks[RATIO][1] and "100,000" in checks[RATIO][1]
    assert checks[SYNCS][0] == "pass"
    assert checks[WINDOWS] == ("pass", "3 finished window(s) (1 that did not finish not judged), all 0")
    figures = step["plain_loop"]
    assert figures["setting"] == "8x1" and figures["ratio"] == pytest.approx(100_000 / 102_000)
    assert figures["trainer_tune_tokens_per_s"] == 100_000.0 and figures["tokens_per_s"] == 102_000.0
    assert figures["windows_judged"] == 3 and figures["windows_with_syncs"] == {}
    assert "ratio trainer_tune / plain loop: **0.980** (pass at >= 0.95)" in report
    assert "| plain loop (30 steps x 3) | 8x1 bf16, seq 1,024 | 124,475,904 | 102,000 | 0 |" in report
    assert ("| trainer_tune (gpt_125m_bf16 8x1) | 8x1 bf16, seq 1,024 | 124,475,904 | 100,000 | 0 in the sweep's 3 "
            "finished windows |") in report


def test_plain_loop_step_fails_on_a_slow_window_a_sync_or_a_missing_count(tmp_path: Path) -> None:
    windows = [_gpt_window("8x1", "r0", syncs=2), _gpt_window("8x1", "r1", drop_syncs=True), _gpt_window("16x1", "r0")]
    settings = [_gpt_window("8x1", "r1", tokens_per_s=90_000.0)]
    plain = {**PLAIN, "syncs_in_loop": 3, "sync_samples": ["loop.py:7: called a synchronizing CUDA operation"]}
    rc, step, checks, report = _summarize(tmp_path, "fail", windows=windows, settings=settings, plain=plain)
    assert rc == 1 and step["status"] == "fail"
    assert checks[RATIO][0] == "fail" and "ratio 0.882 (pass at >= 0.95)" in checks[RATIO][1]
    assert checks[SYNCS][0] == "fail" and "3 synchronisation(s) in 30 x 3" in checks[SYNCS][1]
    assert "loop.py:7" in checks[SYNCS][1]
    status, detail = checks[WINDOWS]
    assert status == "fail" and "1 without syncs_in_window" in detail and "8x1 r1" in detail
    assert "synchronised inside the window: 8x1 r0 2" in detail
    assert step["plain_loop"]["windows_with_syncs"] == {"8x1 r0": 2}
    assert "2 in the sweep's 3 finished windows (1 without the count)" in report

    # Another model (the shape arguments drifted from configs/model/gpt_125m.yaml): no ratio.
    other = {**PLAIN, "num_parameters": 1_000}
    _, _, checks, _ = _summarize(tmp_path, "other", windows=windows, settings=settings, plain=other)
    assert checks[RATIO][0] == "fail" and checks[RATIO][1].startswith("not the same model")
    # No setting of the loop's micro-batch size, accumulation and precision in the sweep.
    _, _, checks, _ = _summarize(tmp_path, "unmatched", windows=windows, settings=settings,
                                 plain={**PLAIN, "precision": "fp16"})
    assert checks[RATIO] == ("fail", "runs/gpt_125m_bf16 has no setting 8x1 fp16 (settings: 8x1)")


def test_plain_loop_step_without_its_json_fails_each_check_with_the_reason(tmp_path: Path) -> None:
    """No CUDA (exit 3), so no plain_loop.json; and a dry run's JSON (CPU, detector off) counts no syncs."""
    windows = [_gpt_window("8x1", "r0")]
    rc, step, checks, _ = _summarize(tmp_path, "none", windows=windows, settings=windows, plain=None, plain_rc=3)
    assert rc == 1 and checks["exit code 0"] == ("fail", "exit 3")
    assert checks[RATIO] == ("fail", "no plain_loop.json: the loop did not finish")
    assert checks[SYNCS] == ("fail", "no plain_loop.json")
    assert checks[WINDOWS][0] == "pass"  # the sweep's own count does not need the loop

    out = tmp_path / "dry" / "plain_loop.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plain_loop.py"), "--dry-run", "--out", str(out)],
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dry = json.loads(out.read_text())
    settings = [{**_gpt_window("8x1", "r0", tokens_per_s=dry["tokens_per_s"]), "num_parameters": dry["num_parameters"]}]
    _, step, checks, _ = _summarize(tmp_path, "dry", windows=windows, settings=settings, plain=dry)
    assert checks[RATIO][0] == "pass" and step["plain_loop"]["ratio"] == pytest.approx(1.0)
    assert checks[SYNCS][0] == "fail" and "not counted (a dry run" in checks[SYNCS][1]
