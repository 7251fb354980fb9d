"""How a serving sweep (mode=inference) is presented: the console table and report.md show the batch per replica
and the batch latencies instead of the global batch and step times, mark the settings over the latency budget and
print the decision matrix; the charts draw throughput against p99 with the budget and the Pareto front, and the
latency percentiles; the wandb runs carry the latency figures, the matrix and the chart (read back from wandb's
own files)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from helpers.wandb_reader import find_offline_run_files, summarize_finished_run
from result_factory import make_gpu, make_result
from test_serving_matrix import NO_RAPL, served, sweep
from trainer_tune.config.schema import RecommendArgs, WandbArgs
from trainer_tune.explain.report import build_report
from trainer_tune.decide.verdict import Decision, decide
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.sinks.charts import latency_percentiles_figure, latency_throughput_figure
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.report import write_report
from trainer_tune.sinks.wandb_sink import WandbSink
from conftest import use_offline_wandb

BUDGET_MS = 100.0


def _decided(max_batch_latency_ms: float | None = BUDGET_MS) -> tuple[list[SettingEstimate], Decision]:
    oom = dataclasses.replace(served(5, 128, rate=0.0, p99_ms=1.0), status="oom", error="OutOfMemoryError on rank 1",
                              tokens_per_s=None, samples_per_s=None, latency=None, window_throughput_per_s={})
    results = sweep() + [oom]
    return results, decide(results, args=RecommendArgs(max_batch_latency_ms=max_batch_latency_ms))


def _console(results: list[SettingEstimate], rec: Decision) -> str:
    out = io.StringIO()
    ConsoleSink(enabled=True, console=Console(file=out, width=120)).show(results, build_report(rec))
    return out.getvalue()


def _table_rows(text: str) -> dict[str, list[str]]:
    """Each row's cells by its `#` (a wrapped row's continuation lines joined into its cells)."""
    rows: dict[str, list[str]] = {}
    current = ""
    for line in text[text.index("┏"):text.index("┘")].splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells[0]:
            current = cells[0]
            rows[current] = cells
        else:
            rows[current] = [f"{a} {b}".strip() for a, b in zip(rows[current], cells)]
    return rows


def test_console_shows_latencies_the_budget_and_the_matrix() -> None:
    results, rec = _decided()
    text = _console(results, rec)
    table = text[text.index("┏"):text.index("┘") + 1]
    assert max(len(line) for line in table.splitlines()) <= 120 and "…" not in table
    header = " ".join(" ".join(line.split("┃")) for line in table.splitlines() if line.startswith("┃"))
    header = " ".join(header.split())
    for name in ("batch", "replica", "p50", "p99", "max", "ms", "J/sample"):
        assert name in header.split(), name
    assert "global" not in header and "step" not in header
    rows = _table_rows(text)
    assert rows["3"][1] == "16 *" and rows["4"][1] == "64 (over budget)" and rows["0"][1] == "4 (baseline)"
    assert not any("over budget" in rows[n][1] for n in ("0", "1", "2", "3", "5"))
    # The 64-batch row: p50, p99, max of its latency figures, and its energy per sample.
    assert rows["4"][6:10] == ["100", "200", "220", "0.25"]
    assert rows["1"][6:9] == ["4", "8", "8.8"]
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "latency budget: p99 at most 100 ms (recommend.max_batch_latency_ms); over it, never chosen: 64x1" in lines
    assert ("latency: per batch, of the slowest replica; 40 to 120 batches per setting (under 100: the p99 "
            "interpolates towards the slowest batch)") in " ".join(lines)
    # The matrix: after the reasons, one line per objective, before the verdict.
    words = " ".join(text.split())
    matrix = words[words.index("decision matrix (each objective alone):"):words.index(rec.verdict)]
    assert words.index(rec.reasons[-1]) < words.index("decision matrix")
    assert "- max throughput: 16x1 at 1,600 tokens/s, with p99 60 ms, 0.3 J/sample: every other setting" in matrix
    assert "- min p99 latency: 1x1 at p99 8 ms, with 500 tokens/s, 0.9 J/sample: p99 of 40 batches" in matrix
    assert "- min energy per sample: 16x1 at 0.3 J/sample" in matrix
    assert "- min peak memory: none (not measured: cpu)" in matrix


def test_console_of_a_training_sweep_prints_the_matrix_and_energy_per_sample() -> None:
    results = [make_result(index=0, key="b", is_baseline=True, tokens_per_s=1000.0),
               make_result(index=1, key="4x1", micro_batch_size=4, tokens_per_s=1500.0)]
    results = [dataclasses.replace(r, gpu=make_gpu(energy_j_per_token=0.01), energy_j_per_sample=1.28,
                                   energy_source="NVML (counter)") for r in results]
    rec = decide(results, args=RecommendArgs())
    text = _console(results, rec)
    header = " ".join(line for line in text.splitlines() if line.startswith("┃"))
    assert "J/sample" in header and "J/token" not in header and "global" in header and "p99" not in header
    assert "decision matrix (each objective alone):" in text
    words = " ".join(text.split())
    assert "- max throughput: 4x1 at 1,500 tokens/s, with 1.28 J/sample: " in words
    # Equal energy per sample: the faster one, and the row says why.
    assert "- min energy per sample: 4x1 at 1.28 J/sample, with 1,500 tokens/s: whole-job energy" in words
    assert "2x1 measured the same, so the higher throughput won the tie" in words
    assert "min p99 latency" not in words  # no latency in training


def test_console_reports_each_window_by_its_batch_latency() -> None:
    results, _ = _decided()
    out = io.StringIO()
    sink = ConsoleSink(enabled=True, console=Console(file=out, width=120))
    sink.window_finished(results[1], round_index=0)
    sink.window_finished(results[-1], round_index=0)
    assert out.getvalue().splitlines() == ["round 1 1x1: ok 500 tokens/s, batch latency p50 4 ms, p99 8 ms",
                                           "round 1 128x1: oom OutOfMemoryError on rank 1"]


def test_console_names_unmeasured_energy() -> None:
    results, rec = _decided()
    results = [dataclasses.replace(r, energy_j_per_sample=None, energy_note=NO_RAPL) for r in results]
    rec = decide(results, args=RecommendArgs(max_batch_latency_ms=BUDGET_MS))
    text = " ".join(_console(results, rec).split())
    assert f"energy per sample n/a: {NO_RAPL}" in text
    assert f"- min energy per sample: none (not measured: {NO_RAPL})" in text
    assert "J/sample" not in text.split("┘")[0]  # no column of n/a


def test_report_has_the_serving_columns_section_and_matrix(tmp_path: Path) -> None:
    results, rec = _decided()
    files = write_report(tmp_path, results, build_report(rec))
    text = files.report.read_text()
    lead, details = [line for line in text.splitlines() if line.startswith("| # |")][:2]
    assert lead == "| # | setting | status | tokens/s | 95% CI of tokens/s | p99 ms | vs baseline |"
    assert details.startswith("| # | setting | batch per replica | samples/s | p50 ms | p90 ms | max ms | batches |")
    assert "global batch" not in details and "step p50" not in details and "| J/sample |" in details
    assert "| 4 | 64x1 **over budget** | ok | 2,000 | n/a | 200 | +100.0% |" in text
    assert "| 3 | 16x1 **chosen** | 16 | 12 | 30 | 48 | 66 | 40 |" in text
    serving = text[text.index("## Serving"):text.index("## Charts")]
    assert "- latency budget: p99 at most 100 ms per batch (recommend.max_batch_latency_ms)" in serving
    assert "- over the budget, never chosen: 64x1 (p99 200 ms)" in serving
    assert "- batches behind each setting's percentiles: 40 to 120; with fewer than 100 the p99 interpolates" in serving
    matrix = text[text.index("## Decision matrix"):]
    assert ("| objective | picks | batch per replica | tokens/s | p99 latency | energy | tied | how it was picked, and "
            "whether the measurements can order it |") in matrix
    assert "| max throughput | 16x1 | 16 | **1,600 tokens/s** | p99 60 ms | 0.3 J/sample | - | every other" in matrix
    assert "| min p99 latency | 1x1 | 1 | 500 tokens/s | **p99 8 ms** | 0.9 J/sample | - | p99 of 40 " in matrix
    assert "| min peak memory | none | n/a | n/a | n/a | n/a | - | not measured: cpu |" in matrix
    assert text.startswith(f"# trainer_tune report\n\n**{rec.verdict}**\n\nServe with:")
    assert sorted(c.name for c in files.charts) == ["latency_percentiles", "latency_throughput", "rounds"]
    assert not (tmp_path / "charts" / "step_times.png").exists()


def test_report_without_a_budget_and_with_none_met(tmp_path: Path) -> None:
    results, rec = _decided(max_batch_latency_ms=None)
    text = write_report(tmp_path, results, build_report(rec)).report.read_text()
    assert "- latency budget: none (recommend.max_batch_latency_ms=null): every batch size can be chosen" in text
    assert "over budget" not in text
    results, rec = _decided(max_batch_latency_ms=5.0)
    text = write_report(tmp_path, results, build_report(rec)).report.read_text()
    assert rec.verdict.startswith("NO-GO: no batch size meets the p99 budget of 5 ms") and rec.verdict in text
    assert "- over the budget, never chosen: 4x1 (p99 20 ms), 1x1 (p99 8 ms), 8x1 (p99 30 ms)" in text
    assert "| max throughput | none | n/a |" in text and "no batch size meets the p99 budget of 5 ms" in text


def test_charts_draw_the_recorded_figures() -> None:
    results, rec = _decided()
    finished = [r for r in results if r.ok]
    (ax,) = latency_throughput_figure(finished, rec, build_report(rec).explanations.pareto_keys).axes
    points = {(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines()
              if len(line.get_xdata()) == 1 and not line.get_label().startswith(("baseline", "chosen"))}
    assert points == {(r.latency.p99_ms, r.throughput_per_s) for r in finished}  # type: ignore[union-attr]
    (front,) = [line for line in ax.get_lines() if line.get_label().startswith("Pareto front")]
    # Every batch but 8 (slower than 4 and with a higher p99), by p99.
    assert list(front.get_xdata()) == [8.0, 20.0, 60.0, 200.0]
    assert list(front.get_ydata()) == [500.0, 1000.0, 1600.0, 2000.0]
    (budget,) = [line for line in ax.get_lines() if line.get_label().startswith("p99 budget")]
    assert list(budget.get_xdata()) == [BUDGET_MS, BUDGET_MS]
    # The batch sizes label the points.
    assert sorted(int(t.get_text()) for t in ax.texts) == [1, 4, 8, 16, 64]

    (ax,) = latency_percentiles_figure(finished, rec).axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    ordered = sorted(finished, key=lambda r: r.micro_batch_size)
    assert list(lines["p99"].get_xdata()) == [1, 4, 8, 16, 64]
    assert list(lines["p99"].get_ydata()) == [r.latency.p99_ms for r in ordered]  # type: ignore[union-attr]
    assert list(lines["max"].get_ydata()) == pytest.approx([r.latency.max_ms for r in ordered])  # type: ignore
    assert list(lines["p99 budget 100 ms"].get_ydata()) == [BUDGET_MS, BUDGET_MS]


def test_wandb_runs_carry_latencies_the_matrix_and_the_chart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_offline_wandb(monkeypatch, tmp_path)
    results, rec = _decided()
    charts = write_report(tmp_path, results, build_report(rec)).charts
    sink = WandbSink(WandbArgs(project="tt-serving"), enabled=True, output_dir=tmp_path, group="serving", config={})
    for result in results:
        sink.trial_finished(result)
    sink.sweep_finished(results, build_report(rec), files=[], chart_pngs=charts)
    assert sink.enabled, "a wandb call failed and turned the sink off"
    paths = find_offline_run_files(tmp_path / "wandb")
    runs = [summarize_finished_run(path) for path in paths]
    trials = {run.config["trial"]["index"]: run for run in runs if run.job_type == "trial"}
    (recommendation,) = [run for run in runs if run.job_type == "recommendation"]

    for r in results:
        summary = trials[r.index].summary
        assert summary["mode"] == "inference"
        if r.latency is None:
            assert not any(key.startswith("latency_") for key in summary)
            continue
        assert (summary["latency_p50_ms"], summary["latency_p90_ms"], summary["latency_p99_ms"],
                summary["latency_max_ms"], summary["latency_num_batches"]) == pytest.approx(
            (r.latency.p50_ms, r.latency.p90_ms, r.latency.p99_ms, r.latency.max_ms, r.latency.num_batches))
        assert summary["energy_j_per_sample"] == pytest.approx(r.energy_j_per_sample)

    summary = recommendation.summary
    assert summary["max_batch_latency_ms"] == BUDGET_MS and summary["over_budget"] == ["64x1"]
    assert summary["objective_winners"]["min_latency_p99_ms"]["label"] == "1x1"
    run_dir = paths[runs.index(recommendation)].parent

    def logged_table(key: str) -> dict:
        (row,) = [row for row in recommendation.history if f"{key}/path" in row]
        return json.loads((run_dir / "files" / row[f"{key}/path"]).read_text())

    matrix = logged_table("decision_matrix")
    column = matrix["columns"].index
    assert [(row[column("objective")], row[column("label")], row[column("micro_batch_size")])
            for row in matrix["data"]] == [("max_throughput", "16x1", 16), ("min_latency_p99_ms", "1x1", 1),
                                           ("min_energy_j_per_sample", "16x1", 16), ("min_memory_bytes", None, None)]
    scatter = logged_table("throughput_vs_p99_table")
    points = {(row[scatter["columns"].index("latency_p99_ms")], row[scatter["columns"].index("throughput_per_s")])
              for row in scatter["data"]}
    assert {(r.latency.p99_ms, r.throughput_per_s) for r in results if r.ok} <= points  # type: ignore[union-attr]
    (row,) = [row for row in recommendation.history if "charts/latency_throughput/path" in row]
    png = tmp_path / "charts" / "latency_throughput.png"
    assert (run_dir / "files" / row["charts/latency_throughput/path"]).read_bytes() == png.read_bytes()
