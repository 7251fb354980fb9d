"""report.md and its charts rendered from result fixtures: a mixed sweep, every trial failed, the baseline only."""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path

from result_factory import make_comm, make_gpu, make_result
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.explain.report import build_report
from trainer_tune.decide.verdict import decide
from trainer_tune.sinks.report import write_report
from trainer_tune.decide.race import Drop, RaceSummary
from trainer_tune.decide.strategy import NotMeasured

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", path
    assert len(data) > 10_000, f"{path} is {len(data)} bytes: too small to hold a drawn chart"
    return struct.unpack(">II", data[16:24])


def _linked_charts(report: str) -> list[str]:
    return re.findall(r"!\[[^]]*\]\((charts/[^)]+\.png)\)", report)


def _mixed_sweep() -> list:
    def steps(base_s: float) -> list[float]:
        return [base_s * (1 + 0.03 * ((i * 7) % 5)) for i in range(12)]

    results = [make_result(index=0, key="b", micro_batch_size=2, is_baseline=True, step_times=steps(0.04)),
               make_result(index=1, key="1x1", micro_batch_size=1, step_times=steps(0.03)),
               make_result(index=2, key="4x1", micro_batch_size=4, step_times=steps(0.06)),
               make_result(index=3, key="2x2", micro_batch_size=2, grad_accum=2, step_times=steps(0.075)),
               make_result(index=4, key="8x1", micro_batch_size=8, status="oom")]
    series = tuple((0.1 * i, 40.0 + 5 * (i % 3)) for i in range(20))
    comm = make_comm(sync_s=0.07, no_sync_s=0.03)
    return [dataclasses.replace(r, gpu=make_gpu(util_mean_pct=42.0, energy_j_per_token=0.001 * (r.index + 1)),
                                throughput_ci95=[r.tokens_per_s * 0.97, r.tokens_per_s * 1.03],
                                gpu_utilization_series=series,
                                comm=comm if r.trial_key == "4x1" else None)
            if r.ok else r for r in results]


def test_report_of_a_mixed_sweep_has_every_section_and_valid_charts(tmp_path: Path) -> None:
    results = _mixed_sweep()
    rec = decide(results, args=RecommendArgs(min_speedup=1.05))
    race = RaceSummary(num_rounds=3, end_reason="sweep.max_rounds=3 reached with 2 settings still in the race",
                       drops=(Drop(label="1x1", trial_key="a", after_round=3, reason="-40.0% against 4x1"),),
                       contenders=("4x1", "2x1"))
    rec = dataclasses.replace(rec, not_measured=(NotMeasured("16x1", "8x1 ended oom, so larger micro-batches were not tried"),),
                              race=race)
    files = write_report(tmp_path, results, build_report(rec))
    text = files.report.read_text()
    assert files.report == tmp_path / "report.md"
    assert rec.verdict in text
    for heading in ("## Why", "## Trials", "## Charts", "## Explanations", "## Decision matrix",
                    "## Settings not measured", "## The race"):
        assert heading in text
    assert "16x1: 8x1 ended oom, so larger micro-batches were not tried" in text
    assert "- 1x1 left after round 3: -40.0% against 4x1" in text
    assert sorted(c.name for c in files.charts) == ["efficiency", "gpu_util", "rounds", "step_times", "throughput"]
    assert sorted(_linked_charts(text)) == sorted(f"charts/{c.name}.png" for c in files.charts)
    for chart in files.charts:
        width, height = _png_size(chart.path)
        assert width > 400 and height > 300
    # The failed trial is a table row with its status and error; the charts draw finished trials only.
    oom_row = next(line for line in text.splitlines() if line.startswith("| 4 |"))
    assert "**oom**" in oom_row and "- #4 8x1: oom on rank 1" in text
    assert "exposed all-reduce takes 57% of the step at 4x1" in text
    assert "| max throughput | 4x1 |" in text
    assert "not measured, so not in the table: peak memory: cpu" in text


def test_report_when_every_trial_failed(tmp_path: Path) -> None:
    results = [make_result(index=0, key="b", status="oom", is_baseline=True),
               make_result(index=1, key="x", status="error", micro_batch_size=4)]
    files = write_report(tmp_path, results, build_report(decide(results, args=RecommendArgs())))
    text = files.report.read_text()
    assert files.charts == () and _linked_charts(text) == []
    assert not any((tmp_path / "charts").glob("*.png"))
    assert "NO-GO: no setting finished cleanly" in text
    assert text.count("no setting finished cleanly") >= 4  # the verdict, charts left out, the matrix
    assert "| 0 | 2x1 (baseline) |" in text and "oom on rank 1" in text and "error on rank 1" in text


def test_report_when_only_the_baseline_ran_on_one_rank(tmp_path: Path) -> None:
    (base,) = [make_result(index=0, key="b", is_baseline=True, world_size=1, step_times=[0.05, 0.06, 0.05],
                           ci=[4_000, 5_500])]
    base = dataclasses.replace(base, gpu_note="no NVIDIA driver")
    files = write_report(tmp_path, [base], build_report(decide([base], args=RecommendArgs())))
    text = files.report.read_text()
    assert sorted(c.name for c in files.charts) == ["rounds", "step_times", "throughput"]
    for chart in files.charts:
        _png_size(chart.path)
    assert "no chart of per-sample efficiency: needs two finished settings" in text
    assert "no chart of GPU utilization over time: no utilization samples were recorded: no NVIDIA driver" in text
    assert "compute vs communication split: no trial recorded one (it needs more than one rank" in text


def test_a_later_report_removes_charts_that_no_longer_hold(tmp_path: Path) -> None:
    results = _mixed_sweep()
    write_report(tmp_path, results, build_report(decide(results, args=RecommendArgs())))
    assert (tmp_path / "charts" / "gpu_util.png").exists()
    failed = [make_result(index=0, key="b", status="oom", is_baseline=True)]
    write_report(tmp_path, failed, build_report(decide(failed, args=RecommendArgs())))
    assert not any((tmp_path / "charts").glob("*.png"))
