"""report.md in the output directory: the verdict and why, every trial, the charts, the explanations and the
decision matrix, in one file a person can read (rank 0, at the end of every sweep, resumed ones included).

Charts go to `charts/` next to the report and are linked relatively, so the directory can be moved or
attached whole. Figures not measured are `n/a` with the reason, never zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from trainer_tune.platform.durable import write_atomically
from trainer_tune.explain.matrix import (
    MAX_GOODPUT, MAX_THROUGHPUT, MIN_ENERGY, MIN_LATENCY, MIN_MEMORY, ObjectiveWinner, ScalingPoint)
from trainer_tune.measure.figures import describe_memory_source
from trainer_tune.decide.verdict import GO, Decision
from trainer_tune.explain.report import Report
from trainer_tune.config.rerun import shell_line
from trainer_tune.sinks.matrix import energy_text, figure_text, memory_text, objective_name, p99_text, rate_text
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.sinks.rows import table_rows
from trainer_tune.sinks.files import confirm_command
from trainer_tune.platform.units import count, format_bytes, format_ms

if TYPE_CHECKING:  # charts imports matplotlib: only write_report loads it, at the end of a sweep
    from trainer_tune.sinks.charts import Chart, ChartSet

REPORT_MD = "report.md"
CHARTS_DIR = "charts"

@dataclass(frozen=True)
class ReportFiles:
    report: Path
    charts: tuple["Chart", ...]
    """The charts drawn, for the wandb sink to log the same images."""


def _cell(value: Any) -> str:
    text = "n/a" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> Optional[str]:
    return None if value is None else format(value, spec) + suffix


def _trial_columns(results: Sequence[SettingEstimate], rec: Decision) -> tuple[list[tuple[str, Callable]], list[str]]:
    """(header, cell function) per column after `#` and `job` (rows.py); a column no trial measured is left out
    and a note says why."""
    # Serving: each replica takes its own batch, so the batch per replica is the setting's size (a "global batch"
    # means nothing there), and the batch latencies replace the step times.
    times: list[tuple[str, Callable[[SettingEstimate], Any]]] = [
        ("p50 ms", lambda r: format_ms(r.latency.p50_ms) if r.latency else None),
        ("p90 ms", lambda r: format_ms(r.latency.p90_ms) if r.latency else None),
        ("p99 ms", lambda r: format_ms(r.latency.p99_ms) if r.latency else None),
        ("max ms", lambda r: format_ms(r.latency.max_ms) if r.latency else None),
        ("batches", lambda r: r.latency.num_batches if r.latency else None),
    ] if rec.serving else [
        ("step p50 s", lambda r: _fmt(r.step_time_s.median if r.step_time_s else None, ".4f")),
        ("step p90 s", lambda r: _fmt(r.step_time_s.p90 if r.step_time_s else None, ".4f")),
    ]
    columns: list[tuple[str, Callable[[SettingEstimate], Any]]] = [
        ("setting", lambda r: r.label + (" (baseline)" if r.is_baseline else "")
         + (" **chosen**" if rec.chosen is not None and r.trial_key == rec.chosen.trial_key else "")
         + (" **over budget**" if r.trial_key in rec.over_budget else "")),
        ("batch per replica", lambda r: r.micro_batch_size) if rec.serving
        else ("global batch", lambda r: r.global_batch_size),
        ("status", lambda r: r.status if r.ok else f"**{r.status}**"),
        ("samples/s", lambda r: _fmt(r.samples_per_s, ",.0f")),
        # The count's rate (tokens/s) only where batches carried one: no column of n/a for images.
        *([(f"{rec.count_unit}/s", lambda r: _fmt(r.tokens_per_s, ",.0f"))] if rec.count_unit else []),
        (f"95% CI of {rec.unit}/s", lambda r: f"{r.throughput_ci95[0]:,.0f} to {r.throughput_ci95[1]:,.0f}"
         if r.throughput_ci95 else None),
        *times,
        ("outliers", lambda r: None if r.num_outlier_steps is None
         else f"{r.num_outlier_steps}/{r.num_measured_steps}"),
    ]
    notes = []
    optional: list[tuple[str, Callable[[SettingEstimate], Any], str]] = [
        ("peak memory", lambda r: format_bytes(r.peak_memory_bytes) if r.ok else None,
         "peak memory: " + "; ".join(sorted({r.peak_memory_note or "not reported" for r in results if r.ok}))),
        ("GPU util %", lambda r: _fmt(r.gpu.util_mean_pct if r.gpu else None, ".0f"),
         "GPU utilization: " + "; ".join(sorted({r.gpu_note or "not sampled" for r in results if r.ok}))),
        # NVML GPM (Hopper and newer); where no GPU was sampled at all, the GPU utilization note says why.
        ("SM active %", lambda r: _fmt(r.gpu.sm_active_mean_pct if r.gpu else None, ".0f"),
         "SM activity (NVML GPM): " + "; ".join(sorted({r.gpu.gpm_note or "not measured" for r in results
                                                         if r.ok and r.gpu})) if any(r.gpu for r in results) else ""),
        ("tensor active %", lambda r: _fmt(r.gpu.tensor_active_mean_pct if r.gpu else None, ".0f"), ""),
        ("TFLOP/s", lambda r: _fmt(r.mfu.achieved_tflops if r.mfu else None, ".3g"),
         "achieved TFLOP/s: the model's FLOPs per token are unknown"),
        ("MFU", lambda r: _fmt(r.mfu.mfu if r.mfu else None, ".1%"),
         "MFU: " + "; ".join(sorted({(r.mfu.warning if r.mfu else None) or "no FLOP count"
                                     for r in results if r.ok}))),
        ("J/sample", lambda r: _fmt(r.energy_j_per_sample, ".3g"),
         "energy per sample: " + "; ".join(sorted({r.energy_note or "no energy reading" for r in results if r.ok}))),
        ("exposed comm", lambda r: _fmt(r.comm.exposed_comm_fraction if r.comm else None, ".0%",
                                        " (noise)" if r.comm and r.comm.within_noise else ""),
         "compute vs communication split: no trial recorded one (it needs more than one rank and "
         "window.comm_split_steps > 0)"),
    ]
    if rec.gradient_noise_scale_note is not None:  # training: goodput beside throughput, or why there is none
        optional += [
            ("statistical efficiency", lambda r: _fmt(r.statistical_efficiency, ".2f"),
             f"statistical efficiency and goodput: gradient noise scale {rec.gradient_noise_scale_note}"),
            (f"goodput {rec.unit}/s", lambda r: _fmt(r.goodput_per_s, ",.0f"), "")]
    for header, cell, why in optional:
        if any(cell(r) not in (None, "n/a") for r in results):
            columns.append((header, cell))
        elif any(r.ok for r in results) and why:  # no why: another column's note says it
            notes.append(f"not measured, so not in the table: {why}")
    sources = sorted({r.peak_memory_source for r in results if r.peak_memory_source})
    if sources:
        notes.append("peak memory: " + "; ".join(describe_memory_source(s) for s in sources))
    columns += [("vs baseline", lambda r: _fmt((rec.speedup_by_key[r.trial_key] - 1) * 100, "+.1f", "%")
                 if r.trial_key in rec.speedup_by_key else None),
                ("windows", lambda r: r.num_windows)]
    return columns, notes


def _trials_section(results: Sequence[SettingEstimate], rec: Decision,
                    jobs: Optional[Mapping[str, str]]) -> list[str]:
    """What decides first (setting, status, the decision's rate with its interval over windows, against the
    baseline, peak memory), then every other figure in a details table, each row named by its `#` and setting:
    one table of 18 columns was a wall on GitHub and in an editor. Errors are listed under the tables, whole."""
    columns, notes = _trial_columns(results, rec)
    lead = {"setting", "status", f"{rec.unit}/s", f"95% CI of {rec.unit}/s", "vs baseline", "peak memory",
            *(["p99 ms"] if rec.serving else [])}
    table = table_rows(results, jobs=jobs)
    first = ["#", *(["job"] if jobs is not None else [])]

    def part(keep: Callable[[str], bool]) -> tuple[list[str], list[list[Any]]]:
        chosen = [(h, cell) for h, cell in columns if keep(h)]
        return ([*first, *(h for h, _ in chosen)],
                [[row.number, *([row.job] if row.job is not None else []), *(cell(row.result) for _, cell in chosen)]
                 for row in table])

    lines = ["## Trials", "", *_table(*part(lambda h: h in lead)), "",
             "### Details", "", *_table(*part(lambda h: h == "setting" or h not in lead)), ""]
    errors = [f"- #{row.number} {row.result.label}: {row.result.error}" for row in table if row.result.error]
    lines += [*errors, *([""] if errors else [])]
    lines += [f"- {note}" for note in notes]
    return lines + ([""] if notes else [])


def _input_pipeline_section(rec: Decision) -> list[str]:
    """Each setting's wait for batches; only when a setting is input-bound or data.num_workers was swept."""
    if not rec.input_waits:
        return []
    threshold = ("" if rec.input_bound_fraction is None
                 else f"; input-bound: above recommend.input_bound_fraction={rec.input_bound_fraction:g}")
    rows = [[w.label, w.num_workers, _fmt(w.data_wait_fraction, ".0%"),
             _fmt(None if w.data_wait_s_median is None else w.data_wait_s_median * 1e3, ".3g"),
             "**yes**" if w.input_bound else "no"] for w in rec.input_waits]
    return ["## Input pipeline", "",
            f"The share of the measured time the slowest rank spent waiting for its next batch{threshold} "
            f"(docs/measurement.md says what the wait includes).", "",
            *_table(["setting", "data.num_workers", "wait share", "median wait ms/step", "input-bound"], rows), ""]


def _compile_section(results: Sequence[SettingEstimate], rec: Decision) -> list[str]:
    """Each compiled setting's compile time and payback against its eager twin; only when a setting compiled."""
    compiled = [r for r in results if r.flags.compile]
    if not compiled:
        return []
    lines = ["## torch.compile", "",
             "compile_s is the compiled trainer's warm-up beyond as many measured steps, never counted in throughput; "
             "payback is compile_s over the time a compiled step saves against the same setting uncompiled "
             "(docs/measurement.md, \"torch.compile: compile_s and payback\").", ""]
    rows = [[p.compiled_label, p.eager_label, _fmt(p.compile_s, ".1f"), f"{p.step_time_eager_s * 1e3:.3g}",
             f"{p.step_time_compiled_s * 1e3:.3g}", f"{p.saved_s_per_step * 1e3:+.3g}",
             _fmt(p.payback_steps, ",.0f") or ("never" if p.saved_s_per_step <= 0 else None), p.outcome]
            for p in rec.compile_paybacks]
    if rows:
        lines += _table(["compiled", "uncompiled twin", "compile s", "step ms uncompiled", "step ms compiled",
                         "saved ms/step", "pays back after steps", "compiled vs uncompiled"], rows) + [""]
    paired = {p.compiled_label for p in rec.compile_paybacks}
    lines += [f"- {r.label}: " + (f"compile {r.compile_s:.1f} s, " if r.compile_s is not None else "")
              + "no uncompiled twin finished, so no payback" for r in compiled if r.ok and r.label not in paired]
    lines += [f"- {r.label}: compile_s not measured: {r.compile_note}" for r in compiled
              if r.ok and r.compile_s is None and r.compile_note]
    lines += [f"- {r.label}: {r.compile.why_not_compiled()} (not eligible as compiled)" for r in compiled
              if r.compile is not None and r.compile.why_not_compiled()]
    lines += [f"- {r.label}: dynamo reported {r.compile.graph_breaks} graph break(s) while compiling it" for r in compiled
              if r.compile is not None and r.compile.graph_breaks]
    return lines + [""]


def _charts_section(chart_set: "ChartSet") -> list[str]:
    lines = ["## Charts", ""]
    for chart in chart_set.charts:
        lines += [f"### {chart.title}", "", f"![{chart.title}]({CHARTS_DIR}/{chart.path.name})", ""]
    for title, why in chart_set.omitted:
        lines += [f"- no chart of {title}: {why}"]
    return lines + ([""] if chart_set.omitted else [])


def _interval(values: Optional[tuple[float, float]], spec: str, scale: float = 1.0) -> Optional[str]:
    return None if values is None else f"{values[0] * scale:{spec}} to {values[1] * scale:{spec}}"


def _scaling_section(points: Sequence[ScalingPoint], facts: Sequence[str]) -> list[str]:
    lines = ["## Explanations", "",
             "Per-sample time is the whole job's time per sample (step time / global batch). Efficiency is the "
             "per-sample time at the series' smallest batch over this one's: 1 is linear scaling, above 1 a "
             "sample is cheaper, below 1 dearer; *super-linear* and *sub-linear* mean the whole 95% interval is "
             "on that side of 1.", ""]
    if points:
        rows = [[p.series, p.varies, p.label, p.global_batch_size, f"{p.per_sample_time_s * 1e3:.3g}",
                 _interval(p.per_sample_time_s_ci95, ".3g", 1e3), f"{p.efficiency:.2f}",
                 _interval(p.efficiency_ci95, ".2f"), p.scaling, _fmt(p.gpu_util_mean_pct, ".0f"),
                 format_bytes(p.memory_bytes) if p.memory_bytes is not None else None,
                 _fmt(p.exposed_comm_fraction, ".0%", " (noise)" if p.exposed_comm_within_noise else "")]
                for p in points]
        header = ["held fixed", "varies", "setting", "global batch", "ms/sample", "95% CI", "efficiency", "95% CI",
                  "scaling", "GPU util %", "peak memory", "exposed comm"]
        lines += _table(header, rows) + [""]
    lines += [f"- {fact}" for fact in facts] or ["- nothing to explain: no finished setting"]
    return lines + [""]


def _matrix_section(matrix: Sequence[ObjectiveWinner], rate_unit: str, *, serving: bool) -> list[str]:
    """One row per objective: the setting it picks, ignoring the others, and that setting's figures (the one it
    was picked by in bold)."""
    figures: list[tuple[str, str, Callable[[ObjectiveWinner], Optional[str]]]] = [
        (MAX_THROUGHPUT, f"{rate_unit}/s", lambda w: rate_text(w.throughput_per_s, rate_unit)),
        *([(MIN_LATENCY, "p99 latency", lambda w: p99_text(w.latency_p99_ms))] if serving else []),
        (MIN_ENERGY, "energy", lambda w: energy_text(w.energy_j_per_sample)),
        (MIN_MEMORY, "peak memory", lambda w: memory_text(w.memory_bytes)),
        (MAX_GOODPUT, f"goodput {rate_unit}/s", lambda w: rate_text(w.goodput_per_s, rate_unit)),
    ]
    # A figure no winner has (energy or memory on a CPU) is a column of n/a: left out, the rows' notes say why.
    figures = [(objective, name, cell) for objective, name, cell in figures if any(cell(w) for w in matrix)]

    def cell_of(w: ObjectiveWinner, objective: str, cell: Callable[[ObjectiveWinner], Optional[str]]) -> Optional[str]:
        return f"**{figure_text(w, rate_unit)}**" if objective == w.objective and w.value is not None else cell(w)

    rows = [[objective_name(w), w.label or "none", w.micro_batch_size,
             *(cell_of(w, objective, cell) for objective, _, cell in figures), ", ".join(w.tied_with) or "-",
             w.note] for w in matrix]
    header = ["objective", "picks", "batch per replica" if serving else "micro-batch", *(n for _, n, _ in figures),
              "tied", "how it was picked, and whether the measurements can order it"]
    return ["## Decision matrix", "",
            "Each objective alone" + (", within the latency budget" if serving else "") + ": the setting it would "
            "pick and that setting's figures (in bold, the one it was picked by). The verdict above weighs more "
            "(failures, the memory limit, the required gain).", "", *_table(header, rows), ""]


def _serving_section(results: Sequence[SettingEstimate], rec: Decision) -> list[str]:
    """mode=inference: what the latency figures are, the budget and the batch sizes over it."""
    batches = sorted({r.latency.num_batches for r in results if r.latency is not None})
    lines = ["## Serving", "",
             "Every rank serves as an independent replica; each batch is timed, device-synced, from taking the batch "
             "to its outputs being ready, and the latency of a batch is that of the slowest replica. Throughput sums "
             "the replicas' samples (docs/inference.md)."]
    if batches:
        evidence = f"{batches[0]}" if len(batches) == 1 else f"{batches[0]} to {batches[-1]}"
        lines += ["", f"- batches behind each setting's percentiles: {evidence}"
                  + ("; with fewer than 100 the p99 interpolates towards the slowest batch" if batches[0] < 100
                     else "")]
    if rec.max_batch_latency_ms is None:
        lines += ["- latency budget: none (recommend.max_batch_latency_ms=null): every batch size can be chosen"]
    else:
        over = [f"{r.label} (p99 {format_ms(r.latency.p99_ms)} ms)" for r in results  # type: ignore[union-attr]
                if r.trial_key in rec.over_budget]
        lines += [f"- latency budget: p99 at most {rec.max_batch_latency_ms:g} ms per batch (recommend.max_batch_latency_ms)",
                  "- over the budget, never chosen: " + (", ".join(over) if over else "none")]
    return lines + [""]


def _memory_section(rec: Decision) -> list[str]:
    """Predicted beside measured: each series' line through its peaks (memory_fit.py)."""
    if not rec.memory_fits:
        return []
    lines = ["## Memory prediction", "",
             "Per series of settings that share every flag, the least-squares line peak = a + b x micro-batch "
             "through the measured peaks, and the largest micro-batch it puts under the limit"
             + (f" ({rec.memory_limit.describe()}: {rec.memory_limit.capacity_source}, "
                f"{rec.memory_limit.fraction_key})." if rec.memory_limit else "."), ""]
    for fit in rec.memory_fits:
        lines += [f"- {fit.verdict()}; peak memory {describe_memory_source(fit.source)}", ""]
        lines += _table(["setting", "micro-batch", "measured peak", "predicted peak"],
                        [(label, m, format_bytes(measured), format_bytes(round(predicted)))
                         for label, m, measured, predicted in fit.rows()]) + [""]
    return lines


def _traced_memory_section(rec: Decision) -> list[str]:
    """Each planned setting's traced prediction beside the real step's tensor bytes and the window's measured peak."""
    if not rec.memory_predictions:
        return []
    measured = {s.trial_key: s for s in rec.settings}
    not_built = {n.label for n in rec.not_measured}
    rows = []
    for p in rec.memory_predictions:
        setting = measured.get(p.setting_key)
        status = "not built" if p.label in not_built and setting is None else ("measured" if setting else "")
        rows.append((p.label, status, format_bytes(p.predicted.peak_bytes), format_bytes(p.tensor_peak_bytes),
                     "" if p.error is None else f"{p.error:+.1%}",
                     format_bytes(setting.peak_memory_bytes) if setting is not None else "",
                     "; ".join(p.predicted.notes)))
    limit = (f" The limit: {format_bytes(int(rec.memory_limit.limit_bytes))} ({rec.memory_limit.fraction_key}="
             f"{rec.memory_limit.fraction:g} of {rec.memory_limit.capacity_source})." if rec.memory_limit else "")
    return ["## Memory from a traced step", "",
            "Each setting's optimizer step traced under fake tensors before anything was built (predicted), the "
            "tensor bytes of one real step on the CPU (tensor peak), and the window's own peak (measured: the "
            "allocator's on a GPU, the resident set's growth on a CPU, which also holds the allocator's slack and "
            f"gloo's buffers).{limit}", "",
            *_table(["setting", "status", "predicted", "tensor peak", "error", "measured peak", "left out"], rows), ""]


def render_report(results: Sequence[SettingEstimate], report: Report, chart_set: "ChartSet", *,
                  jobs: Optional[Mapping[str, str]] = None, confirm: Optional[str] = None) -> str:
    """`jobs`: in a multirun, the job that measured each setting, by trial key (a column of the trials table).
    `confirm`: the whole confirm command (sinks/files.confirm_command)."""
    rec = report.decision
    lines = ["# trainer_tune report", "", f"**{rec.verdict}**", ""]
    if rec.continue_overrides:
        lines += ["The evidence has not decided yet. Continue this sweep (its finished windows are kept) with the same "
                  "command, the same `hydra.run.dir`, and:", "", "```", shell_line(rec.continue_overrides), "```", ""]
    if rec.overrides:
        lines += [f"{'Serve' if rec.serving else 'Train'} with:", "", "```", shell_line(rec.overrides), "```", ""]
    if confirm is not None:
        named = rec.chosen if rec.decision == GO else rec.leader
        lines += [f"Confirm it: {named.label if named else 'the named setting'} against the baseline again, in "
                  f"paired rounds, into a new output directory (its verdict says whether this one holds):", "",
                  "```", confirm, "```", ""]
    lines += ["## Why", ""] + [f"- {reason}" for reason in rec.reasons] + [""]
    if report.machine_notes:
        lines += ["## The machine", ""] + [f"- **{note}**" for note in report.machine_notes] + [""]
    lines += _trials_section(results, rec, jobs)
    if rec.serving:
        lines += _serving_section(results, rec)
    lines += _input_pipeline_section(rec)
    lines += _compile_section(results, rec)
    lines += _charts_section(chart_set)
    lines += _scaling_section(report.explanations.points, report.explanations.facts)
    lines += _matrix_section(report.explanations.matrix, rec.unit, serving=rec.serving)
    lines += _traced_memory_section(rec)
    lines += _memory_section(rec)
    if rec.not_measured:
        lines += ["## Settings not measured", ""] + [f"- {n.label}: {n.reason}" for n in rec.not_measured] + [""]
    if rec.race is not None:
        screened = (f" The first {count(rec.race.screening_rounds, 'round')} screened: short windows without the comm "
                    f"split and noise steps, in blocks of settings that each held a window of the baseline."
                    if rec.race.screening_rounds else "")
        lines += ["## The race", "",
                  f"{count(rec.race.num_rounds, 'round')}, each measuring every setting still in the race and the baseline "
                  f"in a shuffled order; it ended: {rec.race.end_reason}.{screened}", ""]
        lines += [f"- {d.label} left after round {d.after_round}: {d.reason}" for d in rec.race.drops]
        lines += [""]
    return "\n".join(lines)


def write_report(output_dir: Path, results: Sequence[SettingEstimate], report: Report, *,
                 jobs: Optional[Mapping[str, str]] = None, launch_hint: str = "python -m trainer_tune") -> ReportFiles:
    # matplotlib is imported here, on rank 0 at the end, so no rank pays for it at start-up.
    from trainer_tune.sinks.charts import draw_charts

    chart_set = draw_charts(results, report, charts_dir=output_dir / CHARTS_DIR)
    path = output_dir / REPORT_MD
    confirm = (confirm_command(report.decision.confirm_overrides, launch_hint=launch_hint, output_dir=output_dir)
               if report.decision.confirm_overrides else None)
    write_atomically(path, render_report(results, report, chart_set, jobs=jobs, confirm=confirm))
    return ReportFiles(report=path, charts=chart_set.charts)
