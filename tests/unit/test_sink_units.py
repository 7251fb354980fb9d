"""A sweep decided in samples/s, on batches that carry no tokens (images): the console, report.md, the charts and
the wandb runs name samples/s, show no tokens/s anywhere, and draw and log the samples/s figures."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from helpers.wandb_reader import find_offline_run_files, summarize_finished_run
from result_factory import in_samples, make_result
from trainer_tune.config.schema import RecommendArgs, WandbArgs
from trainer_tune.explain.report import build_report
from trainer_tune.decide.verdict import Decision, decide
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.sinks.charts import rounds_figure, throughput_figure
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.report import write_report
from trainer_tune.sinks.wandb_sink import WandbSink
from conftest import use_offline_wandb


def _image_sweep() -> list[SettingEstimate]:
    """Four settings of an image model, one failed; 4x1 is clearly fastest in samples/s, round by round."""
    def rounds(samples_per_s: float) -> dict[str, float]:
        """Three windows around `samples_per_s` (the machine drifts; every setting alike), as make_result takes
        them: in its tokens (128 a sample), which in_samples turns back into samples."""
        return {"r0": samples_per_s * 128, "r1": samples_per_s * 128 * 0.95, "r2": samples_per_s * 128 * 1.05}

    results = [make_result(index=0, key="base", micro_batch_size=2, is_baseline=True, windows=rounds(100.0)),
               make_result(index=1, key="1x1", micro_batch_size=1, windows=rounds(60.0)),
               make_result(index=2, key="4x1", micro_batch_size=4, windows=rounds(160.0)),
               make_result(index=3, key="8x1", micro_batch_size=8, status="oom")]
    results = [in_samples(r) for r in results]
    # Steps at the setting's own pace (a global batch per step at its samples/s), and a +-5% interval.
    return [dataclasses.replace(r, step_times_s=(r.global_batch_size / r.samples_per_s,) * 6,
                                throughput_ci95=[r.samples_per_s * 0.95, r.samples_per_s * 1.05])
            if r.ok and r.samples_per_s else r for r in results]


def _decided() -> tuple[list[SettingEstimate], Decision]:
    results = _image_sweep()
    return results, decide(results, args=RecommendArgs(min_speedup=1.05))


def test_the_fixture_is_a_samples_sweep() -> None:
    results, rec = _decided()
    assert rec.unit == "samples" and rec.count_unit is None and rec.decision == "GO"
    assert all(r.tokens_per_s is None for r in results)
    assert rec.chosen is not None and rec.chosen.label == "4x1"


def test_console_names_samples_per_s_and_has_no_tokens_column() -> None:
    results, rec = _decided()
    out = io.StringIO()
    sink = ConsoleSink(enabled=True, console=Console(file=out, width=120))
    sink.window_finished(results[2], round_index=0)
    sink.show(results, build_report(rec))
    text = out.getvalue()
    assert "tokens" not in text
    assert f"round 1 4x1: ok {results[2].samples_per_s:,.0f} samples/s, median step" in text
    table = text[text.index("┏"):text.index("┘") + 1]
    assert max(len(line) for line in table.splitlines()) <= 120 and "…" not in table
    header = " ".join(line for line in table.splitlines() if line.startswith("┃"))
    assert "samples/s" in header
    rows = {line.split("│")[1].strip(): line for line in table.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()}
    for r in results:
        assert f" {r.samples_per_s:,.0f} " in rows[str(r.index)] if r.ok else " n/a " in rows[str(r.index)]
    assert rec.verdict.startswith("GO: micro_batch_size=4 grad_accum=1 (+60.0% samples/s vs baseline 2x1")
    words = " ".join(text.split())
    assert " ".join(rec.verdict.split()) in words
    assert "4x1 reaches 160 samples/s vs 100 for the baseline 2x1" in words


def test_report_and_charts_name_samples_per_s(tmp_path: Path) -> None:
    results, rec = _decided()
    # A directory resumed from before units holds the throughput chart under its old name: it goes.
    (tmp_path / "charts").mkdir()
    (tmp_path / "charts" / "tokens_per_s.png").write_bytes(b"an old chart")
    files = write_report(tmp_path, results, build_report(rec))
    text = files.report.read_text()
    assert "tokens/s" not in text and "tokens_per_s" not in text
    assert f"**{rec.verdict}**" in text
    header = next(line for line in text.splitlines() if line.startswith("| # |"))
    assert "| samples/s | 95% CI of samples/s |" in header
    assert "| 2 | 4x1 **chosen** | ok | 160 | 152 to 168 |" in text
    assert "| max throughput | 4x1 | 4 | **160 samples/s (95% CI 152 to 168)** |" in text
    # Energy is per sample, which images have too: unmeasured here (make_result records no reading), and said so.
    assert "not measured, so not in the table: energy per sample: no energy reading" in text
    assert "| min energy per sample | none | n/a | n/a | - | not measured: no energy reading |" in text
    charts = {c.name: c.title for c in files.charts}
    assert charts["throughput"] == "samples/s by micro-batch" and "rounds" in charts
    assert not (tmp_path / "charts" / "tokens_per_s.png").exists()

    finished = [r for r in results if r.ok]
    (ax,) = throughput_figure(finished, rec).axes
    assert ax.get_ylabel() == "samples/s (whole job)"
    # One line (grad_accum=1): the three settings' samples/s by micro-batch.
    (line,) = ax.containers
    assert list(line.lines[0].get_xdata()) == [1, 2, 4]
    assert list(line.lines[0].get_ydata()) == pytest.approx(
        [r.samples_per_s for r in sorted(finished, key=lambda r: r.micro_batch_size)])
    (ax,) = rounds_figure(finished, rec).axes
    assert ax.get_ylabel() == "samples/s of the window"
    base = next(line for line in ax.get_lines() if line.get_label() == "2x1 (baseline)")
    assert list(base.get_ydata()) == pytest.approx([100.0, 95.0, 105.0])


def test_wandb_runs_log_samples_per_s_and_no_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_offline_wandb(monkeypatch, tmp_path)
    results, rec = _decided()
    sink = WandbSink(WandbArgs(project="tt-units"), enabled=True, output_dir=tmp_path, group="images", config={})
    for result in results:
        sink.trial_finished(result)
    sink.sweep_finished(results, build_report(rec), files=[])
    assert sink.enabled, "a wandb call failed and turned the sink off"
    runs = [summarize_finished_run(path) for path in find_offline_run_files(tmp_path / "wandb")]
    trials = {run.config["trial"]["index"]: run for run in runs if run.job_type == "trial"}
    (recommendation,) = [run for run in runs if run.job_type == "recommendation"]
    assert sorted(trials) == [0, 1, 2, 3]

    for r in results:
        run = trials[r.index]
        assert run.summary["throughput_unit"] == "samples"
        assert "tokens_per_s" not in run.summary and "count_unit" not in run.summary
        assert not any("tokens" in key for row in run.history for key in row)
        assert not any("tokens" in name for name in run.defined_metrics)
        if not r.ok:
            continue
        assert run.summary["samples_per_s"] == run.summary["throughput_per_s"] == pytest.approx(r.samples_per_s)
        assert run.defined_metrics["round/samples_per_s"]["stepMetric"] == "round"
        assert [row["round/samples_per_s"] for row in run.history if "round/samples_per_s" in row] \
            == pytest.approx(list(r.window_throughput_per_s.values()))
        assert [row["train/samples_per_s"] for row in run.history if "train/samples_per_s" in row] \
            == pytest.approx([r.global_batch_size / t for t in r.step_times_s])

    assert recommendation.summary["unit"] == "samples" and recommendation.summary["verdict"] == rec.verdict
    assert recommendation.summary["chosen_throughput_per_s"] == pytest.approx(rec.chosen.samples_per_s)
    # The bar chart of the decision's rate per setting: its table holds samples/s as throughput_per_s, no tokens.
    (logged,) = [row for row in recommendation.history if "throughput_by_setting_table/path" in row]
    (run_file,) = [p for p in find_offline_run_files(tmp_path / "wandb") if p.stem == f"run-{recommendation.run_id}"]
    table = json.loads((run_file.parent / "files" / logged["throughput_by_setting_table/path"]).read_text())
    assert "tokens_per_s" not in table["columns"]
    rates = [row[table["columns"].index("throughput_per_s")] for row in table["data"]]
    assert rates == pytest.approx([r.samples_per_s for r in results])


def test_a_count_of_your_own_is_named_by_its_unit(tmp_path: Path) -> None:
    """throughput.count.unit=frames: the counted figure (recorded as tokens_per_s) is frames/s everywhere, beside
    samples/s."""
    results = [dataclasses.replace(make_result(index=i, key=f"k{i}", micro_batch_size=2 ** i, is_baseline=i == 0,
                                               tokens_per_s=1000.0 * (1 + i)), throughput_unit="frames",
                                   count_unit="frames") for i in range(3)]
    rec = decide(results, args=RecommendArgs())
    assert rec.count_unit == "frames" and rec.unit == "frames"
    out = io.StringIO()
    ConsoleSink(enabled=True, console=Console(file=out, width=120)).show(results, build_report(rec))
    text = out.getvalue()
    assert "tokens" not in text
    header = " ".join(line for line in text.splitlines() if line.startswith("┃"))
    assert "samples/s" in header and "frames/s" in header
    assert rec.verdict.startswith("GO: micro_batch_size=4 grad_accum=1 (+200.0% frames/s vs baseline 1x1")
    report = write_report(tmp_path, results, build_report(rec)).report.read_text()
    assert "tokens" not in report and "| frames/s | 95% CI of frames/s |" in report and "| samples/s |" in report


def test_every_verdict_that_compares_names_the_unit() -> None:
    fast_base = [in_samples(make_result(index=0, key="b", is_baseline=True, tokens_per_s=2000.0)),
                 in_samples(make_result(index=1, key="s", micro_batch_size=4, tokens_per_s=1000.0))]
    assert decide(fast_base, args=RecommendArgs()).verdict == \
        "NO-GO: keep baseline micro_batch_size=2 grad_accum=1 (fastest measured in samples/s)"
    failed_base = [in_samples(make_result(index=0, key="b", is_baseline=True, status="oom")), fast_base[1]]
    assert decide(failed_base, args=RecommendArgs()).verdict == \
        "GO: micro_batch_size=4 grad_accum=1 (fastest in samples/s; baseline 2x1 failed (oom))"
    (alone,) = [in_samples(make_result(index=0, key="b", is_baseline=True, tokens_per_s=1280.0))]
    assert decide([alone], args=RecommendArgs()).verdict.startswith(
        "MEASURED: micro_batch_size=2 grad_accum=1 at 10 samples/s (3 windows")
