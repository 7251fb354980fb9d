"""PNG charts of a sweep, drawn once and shared by report.md and the wandb recommendation run.

A training sweep gets throughput by micro-batch, efficiency and step times; a serving sweep (mode=inference)
throughput against p99 latency with the budget and the Pareto front, and latency percentiles by batch; both get
the rounds and GPU utilization.

Only finished trials are drawn (a failed trial has no figures; the report's table shows it). Every value
drawn is a recorded figure or a per-step time from the journal; box plots summarise those steps as matplotlib
draws them (quartiles, whiskers), which is presentation, not a reported figure. Figures are rendered with the
Agg canvas directly, without pyplot, so no global matplotlib state changes in the caller's process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FixedLocator, FormatStrFormatter, LogLocator, NullFormatter, NullLocator, ScalarFormatter)

from trainer_tune.explain.matrix import SUB_LINEAR, SUPER_LINEAR, Explanations, ScalingPoint, flags_text, varying_flags
from trainer_tune.decide.verdict import Decision
from trainer_tune.explain.report import Report
from trainer_tune.evidence.estimate import SettingEstimate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chart:
    name: str
    """File stem (charts/<name>.png) and the wandb key (charts/<name>)."""
    title: str
    path: Path


@dataclass(frozen=True)
class ChartSet:
    charts: tuple[Chart, ...]
    omitted: tuple[tuple[str, str], ...]
    """(title, why) for each chart that was not drawn."""


def _new_figure(*, width_in: float = 7.5, height_in: float = 4.2) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _log2_axis(ax, values: Sequence[int]) -> None:  # noqa: ANN001 - a matplotlib Axes
    """Batch sizes double from setting to setting: a log2 axis spaces them evenly, labelled with the values."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def throughput_lines(finished: Sequence[SettingEstimate]) -> dict[str, list[SettingEstimate]]:
    """The lines of the throughput chart: one per grad_accum and flags (from result.flags), by micro-batch."""
    differing = varying_flags(finished)
    lines: dict[tuple[int, str], list[SettingEstimate]] = {}
    for r in finished:
        lines.setdefault((r.grad_accum, flags_text(r, differing)), []).append(r)
    return {f"grad_accum={grad_accum} {flags}".strip(): sorted(members, key=lambda r: r.micro_batch_size)
            for (grad_accum, flags), members in sorted(lines.items())}


def throughput_figure(finished: Sequence[SettingEstimate], rec: Decision) -> Figure:
    """The decision's rate (rec.unit per second) of every finished setting, by micro-batch."""
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, members in throughput_lines(finished).items():
        y = [r.throughput_per_s for r in members]
        bounds = [r.throughput_ci95 or [r.throughput_per_s, r.throughput_per_s] for r in members]
        low = [v - b[0] for v, b in zip(y, bounds)]  # type: ignore[operator]
        high = [b[1] - v for v, b in zip(y, bounds)]  # type: ignore[operator]
        ax.errorbar([r.micro_batch_size for r in members], y, yerr=[low, high], marker="o", capsize=4,
                    label=name)
    marks = [(rec.baseline, "*", "baseline", 16), (rec.chosen, "o", "chosen", 14)]
    for trial, marker, name, size in marks:
        if trial is not None and trial.ok and trial.throughput_per_s:
            ax.plot([trial.micro_batch_size], [trial.throughput_per_s], marker=marker, markersize=size,
                    linestyle="none",
                    markerfacecolor="none" if name == "chosen" else "gold", markeredgecolor="black",
                    label=f"{name} ({trial.label})")
    _log2_axis(ax, [r.micro_batch_size for r in finished])
    ax.set_xlabel("micro-batch size per rank")
    ax.set_ylabel(f"{rec.unit}/s (whole job)")
    ax.set_title(f"{rec.unit}/s by micro-batch, one line per grad_accum (bars: 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _efficiency(points: Sequence[ScalingPoint]) -> Figure:
    kinds = [k for k in ("micro_batch_size", "grad_accum") if any(p.varies == k for p in points)]
    fig = _new_figure(width_in=7.5 if len(kinds) == 1 else 11.0)
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1)
        series = sorted({p.series for p in points if p.varies == kind})
        for name in series:
            members = sorted((p for p in points if p.varies == kind and p.series == name),
                             key=lambda p: getattr(p, kind))
            x = [getattr(p, kind) for p in members]
            # max(0, ...): a zero-width interval can sit a rounding error off its point.
            low = [max(0.0, p.efficiency - p.efficiency_ci95[0]) if p.efficiency_ci95 else 0.0 for p in members]
            high = [max(0.0, p.efficiency_ci95[1] - p.efficiency) if p.efficiency_ci95 else 0.0 for p in members]
            (line, *_rest) = ax.errorbar(x, [p.efficiency for p in members], yerr=[low, high], marker="o",
                                         capsize=4, label=name)
            for p in members:
                if p.scaling in (SUPER_LINEAR, SUB_LINEAR):
                    ax.plot([getattr(p, kind)], [p.efficiency], linestyle="none", markersize=11,
                            marker="^" if p.scaling == SUPER_LINEAR else "v", color=line.get_color())
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="linear scaling")
        _log2_axis(ax, [getattr(p, kind) for p in points if p.varies == kind])
        ax.set_xlabel("micro-batch size per rank" if kind == "micro_batch_size" else "grad_accum")
        ax.set_ylabel("efficiency vs smallest batch")
        ax.set_title(f"{kind.replace('_', ' ')} varies (▲ super-, ▼ sub-linear beyond noise)", fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("per-sample efficiency: per-sample time at the smallest batch / per-sample time (bars: 95% CI)",
                 fontsize="medium")
    return fig


def _step_times(finished: Sequence[SettingEstimate]) -> Figure:
    with_steps = [r for r in finished if r.step_times_s]
    fig = _new_figure(width_in=max(7.5, 0.9 * len(with_steps) + 2))
    ax = fig.add_subplot()
    data_ms = [[t * 1e3 for t in r.step_times_s] for r in with_steps]
    ax.boxplot(data_ms, tick_labels=[r.label for r in with_steps], showfliers=False)
    for i, values in enumerate(data_ms, start=1):
        # Every measured step as a dot beside its box: short windows have few steps, and outliers show.
        offsets = [(j % 7 - 3) * 0.04 for j in range(len(values))]
        ax.plot([i + o for o in offsets], values, linestyle="none", marker=".", alpha=0.6, color="tab:blue")
    # Step times span decades across batch sizes: a log axis, labelled in plain milliseconds.
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("step time (ms, log scale)")
    ax.set_title("step time per measured step, per setting (box: quartiles; dots: every step)")
    ax.tick_params(axis="x", labelrotation=30)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _gpu_util(with_series: Sequence[SettingEstimate]) -> Figure:
    fig = _new_figure()
    ax = fig.add_subplot()
    for r in with_series:
        series = r.gpu_utilization_series
        start_s = series[0][0]
        ax.plot([t - start_s for t, _ in series], [u for _, u in series], marker=".", label=r.label)
    ax.set_ylim(0, 105)
    return _finish_lines(fig, ax, xlabel="seconds into the measured steps", ylabel="GPU utilization % (rank 0)",
                         title="GPU utilization over the measured steps")


def rounds_figure(finished: Sequence[SettingEstimate], rec: Decision) -> Figure:
    """The decision's rate of every window by round: the baseline's line is the machine's drift; a setting's
    distance from it in each round is the paired ratio the decision uses."""
    fig = _new_figure()
    ax = fig.add_subplot()
    for r in finished:
        rounds = list(r.window_throughput_per_s.items())
        is_baseline = rec.baseline is not None and r.trial_key == rec.baseline.trial_key
        ax.plot([name for name, _ in rounds], [value for _, value in rounds], marker="o",
                linewidth=2.5 if is_baseline else 1.0, color="black" if is_baseline else None,
                label=r.label + (" (baseline)" if is_baseline else ""))
    return _finish_lines(fig, ax, xlabel="round", ylabel=f"{rec.unit}/s of the window",
                         title="Each window by round: the baseline shows the machine's drift")


def latency_throughput_figure(served: Sequence[SettingEstimate], rec: Decision, pareto_keys: Sequence[str] = ()) -> Figure:
    """mode=inference: each batch size's throughput against its p99 latency, the budget as a vertical line and the
    Pareto front (explain.pareto_front: no other batch is both faster and quicker) joined by a line."""
    fig = _new_figure()
    ax = fig.add_subplot()
    front = set(pareto_keys)
    over = set(rec.over_budget)
    for r in served:
        x, y = r.latency.p99_ms, r.throughput_per_s  # type: ignore[union-attr]
        ax.plot([x], [y], linestyle="none", marker="o", markersize=7,
                color="tab:grey" if r.trial_key in over else "tab:blue",
                markerfacecolor="none" if r.trial_key in over else None)
        ax.annotate(f"{r.micro_batch_size}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize="small")
    on_front = sorted((r for r in served if r.trial_key in front), key=lambda r: r.latency.p99_ms)  # type: ignore
    if on_front:
        ax.plot([r.latency.p99_ms for r in on_front], [r.throughput_per_s for r in on_front],  # type: ignore
                color="tab:green", linewidth=1.5, label="Pareto front (no batch both faster and quicker)")
    for trial, marker, name, size in [(rec.baseline, "*", "baseline", 16), (rec.chosen, "o", "chosen", 14)]:
        if trial is not None and trial.ok and trial.latency is not None and trial.throughput_per_s:
            ax.plot([trial.latency.p99_ms], [trial.throughput_per_s], marker=marker, markersize=size,
                    linestyle="none", markerfacecolor="none" if name == "chosen" else "gold",
                    markeredgecolor="black", label=f"{name} ({trial.label})")
    if rec.max_batch_latency_ms is not None:
        ax.axvline(rec.max_batch_latency_ms, color="tab:red", linestyle="--", linewidth=1,
                   label=f"p99 budget {rec.max_batch_latency_ms:g} ms" + (" (hollow: over it)" if over else ""))
    p99s = [r.latency.p99_ms for r in served] + ([rec.max_batch_latency_ms] if rec.max_batch_latency_ms else [])  # type: ignore
    if max(p99s) > 10 * min(p99s):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("p99 latency per batch, ms (slowest replica)")
    ax.set_ylabel(f"{rec.unit}/s (all replicas)")
    ax.set_title("throughput against p99 latency, labelled by batch per replica (point values)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


LATENCY_PERCENTILES = (("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("max", "max_ms"))


def latency_percentiles_figure(served: Sequence[SettingEstimate], rec: Decision) -> Figure:
    """mode=inference: p50, p90, p99 and max batch latency by batch per replica, with the budget line."""
    fig = _new_figure()
    ax = fig.add_subplot()
    ordered = sorted(served, key=lambda r: r.micro_batch_size)
    batches = [r.micro_batch_size for r in ordered]
    for name, field_name in LATENCY_PERCENTILES:
        ax.plot(batches, [getattr(r.latency, field_name) for r in ordered], marker="o", label=name)
    if rec.max_batch_latency_ms is not None:
        ax.axhline(rec.max_batch_latency_ms, color="tab:red", linestyle="--", linewidth=1,
                   label=f"p99 budget {rec.max_batch_latency_ms:g} ms")
    _log2_axis(ax, batches)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("batch per replica")
    ax.set_ylabel("latency per batch, ms (slowest replica; log scale)")
    fewest = min(r.latency.num_batches for r in ordered)  # type: ignore[union-attr]
    ax.set_title(f"batch latency percentiles (at least {fewest} batches per point)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _finish_lines(fig: Figure, ax, *, xlabel: str, ylabel: str, title: str) -> Figure:  # noqa: ANN001
    """Labels, grid and legend of a chart with one line per setting."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return fig


def _gpu_reason(finished: Sequence[SettingEstimate]) -> str:
    notes = sorted({r.gpu_note for r in finished if r.gpu_note})
    return "no utilization samples were recorded" + (f": {'; '.join(notes)}" if notes else "")


def draw_charts(results: Sequence[SettingEstimate], report: Report, *, charts_dir: Path) -> ChartSet:
    rec = report.decision
    charts_dir.mkdir(parents=True, exist_ok=True)
    # A resumed sweep's directory may hold the throughput chart under its name from before units.
    (charts_dir / "tokens_per_s.png").unlink(missing_ok=True)
    finished = sorted((r for r in results if r.ok and r.throughput_per_s), key=lambda r: r.index)
    explanations: Optional[Explanations] = report.explanations
    points = explanations.points if explanations is not None else ()
    none_finished = "no setting finished cleanly"
    with_series = [r for r in finished if r.gpu_utilization_series]
    served = [r for r in finished if r.latency is not None]
    no_latency = none_finished if not finished else "no setting recorded latency figures"
    serving_plans = [
        ("latency_throughput", f"{rec.unit}/s against p99 latency", None if served else no_latency,
         lambda: latency_throughput_figure(served, rec, report.explanations.pareto_keys)),
        ("latency_percentiles", "batch latency percentiles", None if served else no_latency,
         lambda: latency_percentiles_figure(served, rec)),
    ]
    training_plans = [
        ("throughput", f"{rec.unit}/s by micro-batch", none_finished if not finished else None,
         lambda: throughput_figure(finished, rec)),
        ("efficiency", "per-sample efficiency",
         None if points else (none_finished if not finished else
                              "needs two finished settings that differ only in micro-batch or only in grad_accum"),
         lambda: _efficiency(points)),
        ("step_times", "step-time distribution",
         None if any(r.step_times_s for r in finished) else
         (none_finished if not finished else "the journal holds no per-step times for these trials"),
         lambda: _step_times(finished)),
    ]
    common_plans = [
        ("rounds", f"{rec.unit}/s of each window by round",
         None if any(len(r.window_throughput_per_s) > 1 for r in finished) else
         (none_finished if not finished else "every setting was measured in one round only"),
         lambda: rounds_figure(finished, rec)),
        ("gpu_util", "GPU utilization over time",
         None if with_series else (none_finished if not finished else _gpu_reason(finished)),
         lambda: _gpu_util(with_series)),
    ]
    # Serving has its own charts (latency, the budget); the per-micro-batch and per-step ones are training's.
    plans = (serving_plans if rec.serving else training_plans) + common_plans
    for name, *_ in (training_plans if rec.serving else serving_plans):
        (charts_dir / f"{name}.png").unlink(missing_ok=True)  # the other mode's chart from an earlier report
    charts, omitted = [], []
    for name, title, why_not, draw in plans:
        path = charts_dir / f"{name}.png"
        if why_not is None:
            try:
                draw().savefig(path)
            except Exception as exc:  # noqa: BLE001 - a chart must not cost the report; it says what failed
                log.warning("chart %s could not be drawn: %s", name, exc, exc_info=True)
                omitted.append((title, f"drawing it failed: {exc}"))
                continue
            charts.append(Chart(name=name, title=title, path=path))
        else:
            path.unlink(missing_ok=True)  # a chart from an earlier report in this directory no longer holds
            omitted.append((title, why_not))
    return ChartSet(charts=tuple(charts), omitted=tuple(omitted))
