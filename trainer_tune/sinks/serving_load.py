"""The end of a serving-under-load sweep: recommendation.json/.yaml, report.md with the chart of p99 request latency
against rate, the console's tables, the wandb recommendation run. Everything arrives computed
(explain/serving_load.ServingLoadReport); this module prints and writes."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from matplotlib.ticker import FormatStrFormatter

from trainer_tune.config.rerun import shell_line
from trainer_tune.decide.serving_load import CHECK_CONFIDENCE, ServingLoadDecision
from trainer_tune.explain.serving_load import (
    POINT_COLUMNS, POINT_ESSENTIAL, RATE_COLUMNS, RATE_ESSENTIAL, ServingLoadReport, build_serving_report)
from trainer_tune.platform.durable import write_atomically
from trainer_tune.platform.fingerprint import Fingerprint
from trainer_tune.platform.finite import finite_json
from trainer_tune.sinks.charts import _new_figure
from trainer_tune.sinks.console import ConsoleSink, _tables
from trainer_tune.sinks.files import RECOMMENDATION_JSON, RECOMMENDATION_YAML, confirm_command
from trainer_tune.sinks.report import REPORT_MD
from trainer_tune.sinks.wandb_sink import WandbSink

log = logging.getLogger(__name__)

CHART_NAME = "p99_vs_rate"


def p99_rate_figure(d: ServingLoadDecision) -> Any:
    """p99 request latency against the offered rate per replica: each confirmed setting's measured rates with their
    intervals (solid), its simulated search (dashed, the same colour), and the target as a horizontal line."""
    fig = _new_figure(width_in=8.0, height_in=4.6)
    ax = fig.add_subplot()
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    shown = [s for s in d.settings if s.measured]
    for index, s in enumerate(shown):
        colour = colours[index % len(colours)]
        points = sorted(s.measured, key=lambda m: m.point.rate_per_s)
        rates = [m.point.rate_per_s for m in points]
        p99 = [1e3 * m.point.p99.point_s for m in points]
        low = [1e3 * (m.point.p99.point_s - m.point.p99.low_s) for m in points]
        high = [1e3 * (m.point.p99.high_s - m.point.p99.point_s) if math.isfinite(m.point.p99.high_s) else 0.0
                for m in points]
        ax.errorbar(rates, p99, yerr=[low, high], color=colour, marker="o", capsize=3,
                    label=f"{s.label}{' (baseline)' if s.is_baseline else ''} measured")
        if s.predicted is not None and s.predicted.points:
            sim = sorted(s.predicted.points)
            ax.plot([r for r, _ in sim], [1e3 * p for _, p in sim], color=colour, linestyle="--", linewidth=1,
                    alpha=0.7, label=f"{s.label} simulated")
    if d.target_p99_ms is not None:
        ax.axhline(d.target_p99_ms, color="black", linestyle=":", linewidth=1.2,
                   label=f"p99 target {d.target_p99_ms:g} ms")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("offered rate per replica, requests/s")
    ax.set_ylabel("p99 request latency, ms (log scale)")
    ax.set_title(f"p99 request latency against rate ({CHECK_CONFIDENCE:.0%} intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    return fig


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def render_markdown(report: ServingLoadReport, *, launch_hint: str, output_dir: Path, chart: Optional[str]) -> str:
    d = report.decision
    lines = ["# trainer_tune: serving under load", "", f"**{report.verdict}**", "", d.reason, ""]
    if d.target_p99_ms is not None:
        lines += [f"p99 target: {d.target_p99_ms:g} ms per request (arrival to outputs). Each rate's p99 interval "
                  f"and target check: {CHECK_CONFIDENCE:.0%}; GO and NO-GO need the same at the corrected level, "
                  f"{d.budget}. Fastest one-request service time measured: {d.fastest_single_ms:.3g} ms.", ""]
    lines += ["## Highest sustainable rate per batcher setting", "",
              "Setting: largest batch / longest queue delay. Rates are requests per second per replica; the interval "
              "runs from the highest rate whose p99 met the target to the lowest that missed it. \"simulated only\": "
              "not confirmed by a real run, never chosen.", "",
              *_md_table(RATE_COLUMNS, report.rate_rows), ""]
    if chart is not None:
        lines += ["## p99 against rate", "", f"![p99 request latency against rate]({chart})", ""]
    if report.point_rows:
        lines += ["## Measured rates", "", *_md_table(POINT_COLUMNS, report.point_rows), "",
                  f"Simulation check: {report.agreement}.", ""]
    if d.notes:
        lines += ["## Notes", "", *[f"- {note}" for note in d.notes], ""]
    lines += ["## Next", "", "Serve with (this sweep's keys for the chosen setting):", "",
              f"    {shell_line(report.overrides)}", "",
              "Confirm it (the leader and the baseline again, into a new output directory):", "",
              f"    {confirm_command(report.confirm_overrides, launch_hint=launch_hint, output_dir=output_dir)}", ""]
    return "\n".join(lines)


def _console_parts(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *, essential: set[str],
                   width: int) -> list[Any]:
    """The console's tables at its width, every figure whole (console._tables: split in two, or blocks)."""
    justified = [(name, "left" if name in ("setting", "status", "check", "kept up") else "right") for name in columns]
    return _tables(justified, rows, setting="setting", essential=essential, width=width, title=title)


def publish_serving_load(output_dir: Path, d: ServingLoadDecision, *, fingerprint: Optional[Fingerprint], launch_hint: str, console: Optional[ConsoleSink],
                         wandb_sink: Optional[WandbSink], model_overrides: tuple[str, ...] = ()) -> ServingLoadReport:
    report = build_serving_report(d, model_overrides=model_overrides, fingerprint=fingerprint)
    write_atomically(output_dir / RECOMMENDATION_JSON, finite_json(report.to_json_dict(), indent=2) + "\n")
    header = [f"# {report.verdict}", "# Serve with this batcher setting (this sweep's keys):",
              f"#   {shell_line(report.overrides)}",
              "# Confirm it: the leader and the baseline again, into a new output directory:",
              f"#   {confirm_command(report.confirm_overrides, launch_hint=launch_hint, output_dir=output_dir)}"]
    chosen = d.setting(d.chosen)
    body = {"decision": d.decision, "serving": {"max_batch_size": chosen.max_batch_size,
                                                "max_queue_delay_ms": chosen.max_queue_delay_ms},
            "overrides": list(report.overrides), "confirm_overrides": list(report.confirm_overrides)}
    write_atomically(output_dir / RECOMMENDATION_YAML, "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False))
    chart_path: Optional[Path] = None
    try:
        charts_dir = output_dir / "charts"
        charts_dir.mkdir(parents=True, exist_ok=True)
        chart_path = charts_dir / f"{CHART_NAME}.png"
        p99_rate_figure(d).savefig(chart_path)
    except Exception as exc:  # noqa: BLE001 - a chart must never cost the results
        log.warning("the p99-against-rate chart was not drawn: %s", exc)
        chart_path = None
    write_atomically(output_dir / REPORT_MD, render_markdown(
        report, launch_hint=launch_hint, output_dir=output_dir,
        chart=None if chart_path is None else f"charts/{chart_path.name}"))
    if wandb_sink is not None:
        wandb_sink.serving_load_finished(report, files=[output_dir / RECOMMENDATION_JSON,
                                                        output_dir / RECOMMENDATION_YAML, output_dir / REPORT_MD],
                                         chart=chart_path)
    if console is not None and console.enabled:
        out = console.console
        for part in _console_parts("sustainable rate per batcher setting (requests/s per replica)", RATE_COLUMNS,
                                   report.rate_rows, essential=RATE_ESSENTIAL, width=out.width):
            out.print(part)
        if report.point_rows:
            for part in _console_parts("measured rates", POINT_COLUMNS, report.point_rows, essential=POINT_ESSENTIAL,
                                       width=out.width):
                out.print(part)
            out.print(f"simulation check: {report.agreement}")
        for note in d.notes:
            out.print(f"note: {note}")
        out.print(f"[bold]{report.verdict}[/bold]")
        out.print(d.reason)
        out.print(f"report: {output_dir / REPORT_MD}")
    return report
