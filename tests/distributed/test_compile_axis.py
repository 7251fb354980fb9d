"""sweep.compile=[false,true] x two micro-batch sizes on a one-layer GPT, one process (compiling is ~20-50 s on 2
cores: the suite's real compiles): each compiled setting compiles in a forced warm-up step with static shapes, and
the second micro-batch size neither recompiles the first's graphs nor makes dynamo fall back to eager; dynamo
compiles nothing while the steps are measured, compile_s is recorded for the window that built the trainer, and the payback against the eager twin
reaches recommendation.json and report.md. A compile that fails is the compiled setting's outcome; the sweep goes
on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ONE_ROUND, read_settings, run_tune, windows_by_label

pytestmark = pytest.mark.slow

# The smallest GPT and window: one compiled graph (forward and backward), no comm split or noise steps to run.
# window.warmup_steps=0: the compiled setting's first build must still compile in a warm-up step of its own.
TINY = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.seq_len=32", "window=quick",
        "window.warmup_steps=0", "window.comm_split_steps=0", "window.noise_steps=0", "wandb=off",
        "sweep.compile=[false,true]"]


def test_compile_is_measured_in_the_warmup_and_its_payback_reported(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # No budget: the test reads both rounds, which a compile on a loaded machine can push past the default budget.
    proc = run_tune([*TINY, "sweep.micro_batch_sizes=[2,4]", "sweep.min_rounds=2", "sweep.max_rounds=2", "sweep.budget_s=null",
                     f"hydra.run.dir={out}"], timeout_s=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    windows = windows_by_label(out)
    eager, compiled = windows["2x1 compile=false"], windows["2x1 compile=true"]
    other = windows["4x1 compile=true"]
    everything = [w for group in windows.values() for w in group]
    assert [w["status"] for w in everything] == ["ok"] * 8, [w["error"] for w in everything]
    build, kept = compiled  # CPU keeps trainers between windows: round 1 reuses round 0's compiled trainer
    assert build["num_warmup_steps"] == 1 and build["compile_s"] > 0 and build["compile_note"] is None
    # Nothing compiled while the clock ran, for either micro-batch size, in either round; nothing ran eager.
    for window in compiled + other:
        assert window["compile"] == {"recompiles_measured": 0, "graph_breaks": 0, "fell_back_to_eager": False}
    assert all(w["compile"] is None for w in eager)
    assert max(build["step_times_s"]) < build["compile_s"] <= build["warmup_s"]
    assert kept["compile_s"] is None and "earlier window" in kept["compile_note"]
    assert all(w["compile_s"] is None and w["num_warmup_steps"] == 0 for w in eager)

    settings = read_settings(out)
    assert settings["2x1 compile=true"]["compile_s"] == build["compile_s"]
    assert settings["4x1 compile=true"]["compile"]["recompiles_measured"] == 0
    rec = json.loads((out / "recommendation.json").read_text())
    payback = next(p for p in rec["compile_payback"] if p["compiled"] == "2x1 compile=true")
    assert payback["compiled"] == "2x1 compile=true" and payback["eager"] == "2x1 compile=false"
    assert payback["compile_s"] == build["compile_s"]
    # Either it pays back after some steps, or (slower on this shared machine) never: never both, never neither.
    assert (payback["payback_steps"] is not None) != payback["never"]
    if payback["payback_steps"] is not None:
        assert payback["payback_steps"] == pytest.approx(payback["compile_s"] / payback["saved_s_per_step"])
    report = (out / "report.md").read_text()
    assert "## torch.compile" in report and "| 2x1 compile=true | 2x1 compile=false |" in report
    assert "not eligible as compiled" not in report
    assert "torch.compile: 2x1 compile=true: compile" in proc.stdout


def test_a_compile_that_fails_is_the_settings_outcome(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # A real inductor failure, in about a second: no working C++ compiler. A fresh inductor cache, so no cached
    # kernel lets inductor skip the compiler.
    env = {"CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    proc = run_tune([*TINY, *ONE_ROUND, f"hydra.run.dir={out}"], env=env, timeout_s=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    windows = windows_by_label(out)
    (eager,), (compiled,) = windows["2x1 compile=false"], windows["2x1 compile=true"]
    assert eager["status"] == "ok" and compiled["status"] == "error"
    error = compiled["error"]
    assert "torch.compile (train.compile_mode=default) failed: " in error and "InvalidCxxCompiler" in error
    assert "\n" not in error and "TORCHDYNAMO_VERBOSE" not in error  # the cause's first line, not dynamo's advice
    assert compiled["tokens_per_s"] is None and compiled["compile_s"] is None
