"""The trials table's `#` column counts rows 0, 1, 2, ... in the console and in report.md, whatever the trials'
indices; a multirun's table adds the job that measured each row (issue 18, item 9)."""

from __future__ import annotations

import io

from rich.console import Console

from result_factory import make_result
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.explain.report import build_report
from trainer_tune.run.multirun import jobs_by_key
from trainer_tune.decide.verdict import decide
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.sinks.charts import ChartSet
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.report import render_report


def _multirun_of_three_jobs() -> list[SettingEstimate]:
    """`-m train.micro_batch_size=1,2,4` against the baseline 2x1: job 1's setting is the baseline itself, so
    its trial (index 2) never exists; jobs 0 and 2 measured trials 1 and 3."""
    return [make_result(index=0, key="2x1", micro_batch_size=2, is_baseline=True, tokens_per_s=1000.0),
            make_result(index=3, key="4x1", micro_batch_size=4, tokens_per_s=1500.0),
            make_result(index=1, key="1x1", micro_batch_size=1, tokens_per_s=600.0)]


def _console_rows(results: list[SettingEstimate], **kwargs) -> list[list[str]]:
    out = io.StringIO()
    ConsoleSink(enabled=True, console=Console(file=out, width=150)).show(
        results, build_report(decide(results, args=RecommendArgs())), **kwargs)
    return [_first_words(line.split("│")[1:-1]) for line in out.getvalue().splitlines() if line.startswith("│")]


def _report_rows(results: list[SettingEstimate], **kwargs) -> list[list[str]]:
    text = render_report(results, build_report(decide(results, args=RecommendArgs())), ChartSet(charts=(), omitted=()), **kwargs)
    lines = text.split("## Trials", 1)[1].strip().split("\n\n", 1)[0].splitlines()
    return [_first_words(line.strip("|").split("|")) for line in lines]


def _first_words(cells: list[str]) -> list[str]:
    """Each cell's first word: the setting without its marks (baseline, chosen)."""
    return [(cell.split() or [""])[0] for cell in cells]


def test_a_multirun_table_numbers_rows_without_gaps_and_names_each_rows_job() -> None:
    results = _multirun_of_three_jobs()
    jobs = jobs_by_key(results)
    assert jobs == {"2x1": "all", "1x1": "0", "4x1": "2"}

    console = _console_rows(results, jobs=jobs)
    assert [row[:3] for row in console] == [["0", "all", "2x1"], ["1", "0", "1x1"], ["2", "2", "4x1"]]

    header, _, *report = _report_rows(results, jobs=jobs)
    assert header[:3] == ["#", "job", "setting"]
    assert [row[:3] for row in report] == [["0", "all", "2x1"], ["1", "0", "1x1"], ["2", "2", "4x1"]]


def test_a_single_runs_table_numbers_rows_without_gaps_and_has_no_job_column() -> None:
    # strategy=power: settings that never entered the race have no row, so indices 0, 2, 5 remain.
    results = [make_result(index=0, key="2x1", micro_batch_size=2, is_baseline=True),
               make_result(index=5, key="8x1", micro_batch_size=8),
               make_result(index=2, key="4x1", micro_batch_size=4)]
    assert [row[:2] for row in _console_rows(results)] == [["0", "2x1"], ["1", "4x1"], ["2", "8x1"]]
    header, _, *report = _report_rows(results)
    assert header[:2] == ["#", "setting"]
    assert [row[:2] for row in report] == [["0", "2x1"], ["1", "4x1"], ["2", "8x1"]]
