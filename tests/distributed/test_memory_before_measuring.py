"""Memory before measuring, in a real 2-rank sweep: every planned setting's step is traced under fake tensors first;
with a host-memory limit between the predicted peaks, the larger setting is never built (no window, no real step),
the verdict says why with both figures, and each measured setting's prediction matches its real step's tensor bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil

from conftest import ONE_ROUND, read_jsonl, read_predictions, run_tune


def test_a_setting_predicted_over_the_host_limit_is_not_built_and_the_verdict_says_why(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    # The built-in GPT: 1x1 and the baseline 2x1 predict about 8 and 10 MB, 8x1 about 26 MB. A limit of 16 MB per rank
    # (host memory available now, shared by 2 ranks) sits between them with room for the host's memory to move.
    fraction = 16e6 / (psutil.virtual_memory().available / 2)
    proc = run_tune(["+sweep=batch", *ONE_ROUND, "sweep.micro_batch_sizes=[1,8]", "sweep.grad_accums=[1]",
                     f"train.max_memory_fraction={fraction}", f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "not measured: 8x1: predicted peak " in " ".join(proc.stdout.split())
    predictions = read_predictions(out / "trials.jsonl")
    assert sorted(predictions) == ["1x1", "2x1", "8x1"]
    windows = read_jsonl(out / "trials.jsonl")
    assert {w["label"] for w in windows} == {"1x1", "2x1"}  # 8x1 never built
    assert predictions["8x1"]["tensor_peak_bytes"] is None  # nor stepped for real
    rec = json.loads((out / "recommendation.json").read_text())
    (skipped,) = rec["not_measured"]
    assert skipped["label"] == "8x1" and skipped["reason"].startswith("predicted peak ")
    assert "> limit " in skipped["reason"] and "train.max_memory_fraction=" in skipped["reason"]
    for setting in rec["settings"]:
        predicted, tensor = setting["predicted_peak_bytes"], setting["tensor_peak_bytes"]
        assert predicted is not None and tensor is not None and abs(predicted / tensor - 1) <= 0.05
        assert predicted < 16e6 < predictions["8x1"]["predicted_peak_bytes"]
    assert "## Memory from a traced step" in (out / "report.md").read_text()
