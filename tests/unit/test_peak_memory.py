"""Peak memory has one definition (figures.peak_memory), and the decision and every sink use the same figure and
source: results built as a sweep builds them, where the allocator's allocated peak, its reserved peak and NVML's
used memory all differ."""

from __future__ import annotations

import dataclasses

import io
from pathlib import Path

import pytest
from rich.console import Console

from helpers.wandb_reader import find_offline_run_files, summarize_finished_run
from result_factory import GIB, make_measured, as_setting
from trainer_tune.config.schema import RecommendArgs, WandbArgs, WandbMode
from trainer_tune.explain.report import build_report
from trainer_tune.measure.figures import ALLOCATOR_RESERVED, MEMORY_SOURCES, NVML_USED, peak_memory
from trainer_tune.decide.verdict import decide
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.sinks.charts import ChartSet
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.report import render_report
from trainer_tune.sinks.wandb_sink import WandbSink
from conftest import use_offline_wandb

RESERVED = MEMORY_SOURCES[ALLOCATOR_RESERVED]


@pytest.fixture(scope="module")
def results() -> list[SettingEstimate]:
    # allocated < reserved < NVML used, and no figure of one trial equals one of the other's.
    measured = [make_measured(index=0, micro_batch_size=2, step_s=0.10, allocated_gib=3.0, reserved_gib=4.0,
                              nvml_gib=5.0),
                make_measured(index=1, micro_batch_size=4, step_s=0.12, allocated_gib=6.0, reserved_gib=7.0,
                              nvml_gib=7.5)]
    # Three rounds each, moving together: the settings' comparison is exact, so only memory is in question.
    return [as_setting(r, {f"r{i}": r.tokens_per_s * f for i, f in enumerate((1.0, 0.95, 1.05))})  # type: ignore
            for r in measured]


OTHER_FIGURES = ("3.0 GiB", "5.0 GiB", "6.0 GiB", "7.5 GiB")
"""The allocated and NVML figures of the fixture as format_bytes writes them: no sink may show them."""


def test_the_figure_is_the_reserved_peak_and_says_so(results: list[SettingEstimate]) -> None:
    base, big = results
    assert (base.peak_memory_bytes, base.peak_memory_source) == (4 * GIB, ALLOCATOR_RESERVED)
    assert (big.peak_memory_bytes, big.peak_memory_source) == (7 * GIB, ALLOCATOR_RESERVED)
    # The other readings are recorded beside it, under their own names.
    assert base.peak_memory_allocated_bytes == 3 * GIB and base.gpu is not None
    assert base.gpu.memory_used_peak_bytes == 5 * GIB and base.peak_memory_note is None


def test_without_allocator_statistics_nvml_is_the_figure() -> None:
    assert peak_memory(reserved_bytes=None, nvml_used_bytes=5 * GIB) == (5 * GIB, NVML_USED)
    assert peak_memory(reserved_bytes=None, nvml_used_bytes=None) == (None, None)


def test_the_decision_excludes_by_the_same_figure(results: list[SettingEstimate]) -> None:
    # 4x1 is faster per token. Its peak is 70% of the device (allocated: 60%, NVML: 75%).
    assert results[1].tokens_per_s > results[0].tokens_per_s  # type: ignore[operator]
    strict = decide(results, args=RecommendArgs(min_speedup=1.0, max_memory_fraction=0.65))
    assert strict.best is not None and strict.best.trial_key == "k0"
    assert f"4x1 is excluded: its peak memory is 70% of the device ({RESERVED}), above " \
           f"recommend.max_memory_fraction=0.65" in strict.reasons
    loose = decide(results, args=RecommendArgs(min_speedup=1.0, max_memory_fraction=0.72))
    assert loose.best is not None and loose.best.trial_key == "k1"
    assert not any("excluded" in reason for reason in loose.reasons)


def test_explanations_use_the_same_figure(results: list[SettingEstimate]) -> None:
    explanations = build_report(decide(results, args=RecommendArgs())).explanations
    assert explanations is not None
    assert [(p.label, p.memory_bytes) for p in explanations.points] == [("2x1", 4 * GIB), ("4x1", 7 * GIB)]
    memory = explanations.winner("min_memory_bytes")
    assert memory is not None and (memory.objective, memory.label, memory.value) == ("min_memory_bytes", "2x1", 4 * GIB)
    assert memory.note == f"peak memory {RESERVED}"


def test_console_shows_the_same_figure_and_source(results: list[SettingEstimate]) -> None:
    out = io.StringIO()
    ConsoleSink(enabled=True, console=Console(file=out, width=220)).show(results, build_report(decide(results, args=RecommendArgs())))
    text = out.getvalue()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.startswith("│ ")}
    assert "4.0 GiB" in rows["0"] and "7.0 GiB" in rows["1"]
    assert f"peak memory: {RESERVED}" in text
    assert not any(figure in text for figure in OTHER_FIGURES)


def test_report_shows_the_same_figure_and_source(results: list[SettingEstimate]) -> None:
    text = render_report(results, build_report(decide(results, args=RecommendArgs())), ChartSet(charts=(), omitted=()))
    trial_rows = [line for line in text.split("## Trials", 1)[1].splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert "| 4.0 GiB |" in trial_rows[0] and "| 7.0 GiB |" in trial_rows[1]
    assert f"- peak memory: {RESERVED}" in text
    explanations = text.split("## Explanations", 1)[1]
    assert "| 2x1 | 4 |" in explanations and "| 90 | 4.0 GiB |" in explanations
    assert "peak memory 7.0 GiB vs 4.0 GiB" in explanations and "| min peak memory | 2x1 | 2 | 5,076 tokens/s | 6.25 J/sample | **4.0 GiB** |" in explanations
    assert not any(figure in text for figure in OTHER_FIGURES)


def test_wandb_logs_the_same_figure_and_source(results: list[SettingEstimate], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    use_offline_wandb(monkeypatch, tmp_path)
    sink = WandbSink(WandbArgs(mode=WandbMode.offline), enabled=True, output_dir=tmp_path, group="g", config={})
    sink.trial_finished(results[0])
    assert sink.enabled, "the wandb sink turned itself off"
    (path,) = find_offline_run_files(tmp_path / "wandb")
    summary = summarize_finished_run(path).summary
    assert (summary["peak_memory_bytes"], summary["peak_memory_source"]) == (4 * GIB, ALLOCATOR_RESERVED)
