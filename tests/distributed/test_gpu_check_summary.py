"""benchmarks/gpu_check.py's summary, on a real sweep's files (a CPU run here): a step passes or fails by what
the run recorded, a timed-out or skipped step says so, and the figures come from the journal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
                          env=clean_env({"PYTHON": str(stub), "GPU_CHECK_STEPS": "nccl fault_oom"}),
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # nccl failed
    assert sorted(p.name for p in dest.iterdir()) == ["gpu_check.log", "runs.tar.gz", "summary.json", "summary.md"]
    summary = json.loads((dest / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [("nccl", "fail"), ("fault_oom", "pass")]
    assert "gpu_check: nccl world-size-1 FAILED" in (dest / "gpu_check.log").read_text()
    listing = subprocess.run(["tar", "-tzf", str(dest / "runs.tar.gz")], capture_output=True, text=True).stdout
    assert "runs/fault_oom/trials.jsonl" in listing and "runs/fault_oom/recommendation.json" in listing
    assert ".png" not in listing
