"""Every benchmark script runs, in its smallest mode, so none can rot unnoticed (overhead.py once crashed on main
for weeks: nothing ran it). These check that each runs and prints its table, never a timing: the figures are the
benchmarks' own business (benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import REPO, clean_env

pytestmark = pytest.mark.slow


def _run(*args: str, timeout_s: float = 240.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=clean_env({"WANDB_MODE": "offline"}),
                          capture_output=True, text=True, timeout=timeout_s)


def test_decisions_simulates_a_few_sweeps_and_prints_the_table() -> None:
    proc = _run("benchmarks/decisions.py", "simulate", "--sweeps", "3", "--settings", "8,20", "--effects", "0.5",
                "--budget-s", "45", "--others", "spread")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 8 |") or line.startswith("| 20 |")]
    assert len(rows) == 2 and all(line.count("|") == 13 for line in rows), proc.stdout


def test_decisions_runs_one_real_sweep(tmp_path: Path) -> None:
    proc = _run("benchmarks/decisions.py", "--out", str(tmp_path), "repeat", "--runs", "1", "--",
                "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]", "window=quick", "sweep.min_rounds=2",
                "sweep.max_rounds=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| 0 |" in proc.stdout and (tmp_path / "run-0-load0" / "recommendation.json").exists()


def test_overhead_compares_the_window_with_a_bare_loop() -> None:
    proc = _run("benchmarks/overhead.py", "--steps", "4", "--repeats", "2", "--micro-batch-size", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio reported/bare" in proc.stdout and "ratio wall/bare" in proc.stdout


def test_goodput_validation_runs_end_to_end_at_its_smallest(tmp_path: Path) -> None:
    proc = _run("benchmarks/goodput_validation.py", "--out", str(tmp_path), "--no-sweep", "--pretrain-steps", "3",
                "--pretrain-batch", "4", "--batches", "4,8", "--tokens", str(8 * 128 * 4), "--seeds", "1",
                "--evals", "2", "--eval-samples", "8", "--noise-groups", "3", "--max-micro-batch", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final losses rank" in proc.stdout


def test_plain_loop_dry_run_trains_the_gpt_on_the_cpu_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "step" / "plain_loop.json"
    proc = _run("benchmarks/plain_loop.py", "--dry-run", "--micro-batch-size", "2", "--grad-accum", "2",
                "--out", str(out), timeout_s=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result
    assert result["tokens_per_s"] > 0 and len(result["tokens_per_s_by_repeat"]) == result["repeats"]
    assert (result["micro_batch_size"], result["grad_accum"], result["precision"]) == (2, 2, "bf16")
    assert result["seq_len"] == 32 and result["num_parameters"] > 0 and result["dry_run"] is True
    assert result["syncs_in_loop"] is None and result["sync_debug"].startswith("off")  # no detector on the CPU
    assert result["loss_last"] is not None and result["loss_last"] > 0


def test_plain_loop_refuses_a_machine_without_cuda_in_one_line() -> None:
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = _run("benchmarks/plain_loop.py", "--steps", "1", timeout_s=120)
    assert proc.returncode == 3 and proc.stderr == "plain_loop: no CUDA device\n" and proc.stdout == ""


def test_plain_loop_counts_only_torch_synchronisation_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The count the loop reports on a GPU, from the warnings torch's sync debug mode raises (here raised by hand,
    the detector left off): each one, repeats from the same line included; other warnings apart."""
    spec = importlib.util.spec_from_file_location("plain_loop", REPO / "benchmarks" / "plain_loop.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "plain_loop", module)  # its dataclass looks its module up while built
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    with module.counting_syncs(arm=False) as tally:
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("something else")
    assert (tally.syncs, tally.other_warnings, len(tally.samples)) == (3, 1, 3)
    assert "called a synchronizing CUDA operation" in tally.samples[0]


def test_teardown_aborts_runs_one_sweep_and_counts() -> None:
    proc = _run("benchmarks/teardown_aborts.py", "--runs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "1 runs, exit codes {0: 1}, 0 with an aborted rank"


def test_serving_load_compares_the_simulation_with_a_real_open_loop_run() -> None:
    proc = _run("benchmarks/serving_load.py", "--max-batch-size", "2", "--loads", "0.5", "--requests", "300",
                "--sim-requests", "2000", "--service-repeats", "3", timeout_s=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "p99 sim/real" in proc.stdout and "largest p99 disagreement" in proc.stdout
