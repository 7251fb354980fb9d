"""Weights & Biases: one run per setting and one recommendation run per sweep, all in one group.

Rank 0 only, after the race has ended (never inside a measurement), with figures already combined over ranks
and windows. With no credentials configured the runs are written offline under
`<output dir>/wandb/` for `wandb sync` to upload later. A wandb failure is logged and turns this sink off;
it never costs the sweep. No credential is ever written by us: wandb reads its own.
"""

from __future__ import annotations

import logging
import netrc
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from trainer_tune.config.schema import WandbArgs, WandbMode
from trainer_tune.explain.report import Report
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.measure.gpm import GPM_FIELDS

if TYPE_CHECKING:
    from trainer_tune.explain.matrix import Explanations
    from trainer_tune.explain.serving_load import ServingLoadReport
    from trainer_tune.sinks.charts import Chart

log = logging.getLogger(__name__)


def _has_netrc_login(environ: Mapping[str, str]) -> bool:
    path = Path(environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return any("wandb" in host for host in netrc.netrc(path).hosts)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(args: WandbArgs, environ: Mapping[str, str]) -> str:
    """online | offline: the config says, else WANDB_MODE, else online only when credentials exist."""
    if args.mode != WandbMode.auto:
        return args.mode.value
    if environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return environ["WANDB_MODE"]
    return "online" if environ.get("WANDB_API_KEY") or _has_netrc_login(environ) else "offline"


class WandbSink:
    def __init__(self, args: WandbArgs, *, enabled: bool, output_dir: Path, group: str,
                 config: dict[str, Any]) -> None:
        self.args, self.output_dir, self.group, self.config = args, output_dir, group, config
        self.enabled = enabled and args.enabled
        self.mode = resolve_mode(args, os.environ)
        self._wandb: Any = None
        if self.enabled:
            try:
                import wandb  # imported here: a run with wandb off never pays for the import
                self._wandb = wandb
            except ImportError as exc:
                self._disable(f"wandb cannot be imported ({exc})")

    def _disable(self, why: str) -> None:
        log.warning("wandb logging off for the rest of the sweep: %s", why)
        self.enabled = False

    def _init(self, *, job_type: str, name: str, config: dict[str, Any]) -> Any:
        return self._wandb.init(
            project=self.args.project, entity=self.args.entity, group=self.group, job_type=job_type, name=name,
            tags=list(self.args.tags), config=config, dir=str(self.output_dir), mode=self.mode,
            reinit="create_new", settings=self._wandb.Settings(console="off", silent=True))

    def trial_finished(self, result: SettingEstimate) -> None:
        if not self.enabled:
            return
        try:
            run = self._init(job_type="trial", name=f"trial-{result.index} {result.label}",
                             config={"trial": {"index": result.index, "label": result.label,
                                               "micro_batch_size": result.micro_batch_size,
                                               "grad_accum": result.grad_accum,
                                               "global_batch_size": result.global_batch_size,
                                               "world_size": result.world_size, "flags": result.flags.as_dict(),
                                               "is_baseline": result.is_baseline},
                                     "tune": self.config})
            # Step-indexed history for the per-step charts; GPU samples on their own time axis.
            run.define_metric("step")
            run.define_metric("train/*", step_metric="step")
            run.define_metric("gpu_time_s")
            run.define_metric("gpu/*", step_metric="gpu_time_s")
            # The round axis carries the decision's rate, named by its unit as wandb_sink.step_history logs it.
            run.define_metric("round")
            run.define_metric(f"round/{result.throughput_unit}_per_s", step_metric="round", summary="mean")
            run.define_metric("train/samples_per_s", step_metric="step", summary="mean")
            if result.tokens_per_step is not None:
                run.define_metric("train/tokens_per_s", step_metric="step", summary="mean")
            for row in step_history(result):
                run.log(row)
            run.summary.update(summary_figures(result))
            run.finish()
        except Exception as exc:  # noqa: BLE001 - wandb must never end a sweep
            self._disable(f"logging trial {result.index} failed: {exc}")

    def sweep_finished(self, results: Sequence[SettingEstimate], report: Report, *,
                       files: Sequence[Path], chart_pngs: Sequence[Chart] = ()) -> None:
        if not self.enabled:
            return
        rec = report.decision
        wandb = self._wandb
        try:
            run = self._init(job_type="recommendation", name="recommendation", config={"tune": self.config})
            rows = [summary_figures(r) | {"speedup_vs_baseline": rec.speedup_by_key.get(r.trial_key)}
                    for r in sorted(results, key=lambda r: r.index)]
            columns = sorted({key for row in rows for key in row})
            table = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
            charts = {"trials": table,
                      "throughput_by_setting": wandb.plot.bar(table, "label", "throughput_per_s",
                                                              title=f"{rec.unit}/s per setting")}
            if rec.serving and any(row.get("latency_p99_ms") is not None for row in rows):
                # Interactive beside the report's PNG (charts/latency_throughput): each setting a point.
                charts["throughput_vs_p99"] = wandb.plot.scatter(
                    table, "latency_p99_ms", "throughput_per_s", title=f"{rec.unit}/s against p99 latency (ms)")
            if any(row.get("gpu_util_mean_pct") is not None for row in rows):
                charts["gpu_util_by_setting"] = wandb.plot.bar(table, "label", "gpu_util_mean_pct",
                                                               title="GPU utilization % per setting")
            # The report's own PNGs, so the run shows exactly what report.md shows.
            charts.update({f"charts/{chart.name}": wandb.Image(str(chart.path), caption=chart.title)
                           for chart in chart_pngs})
            summary = {}
            if report.explanations is not None:
                charts.update(_explanation_tables(wandb, report.explanations))
                summary = {"facts": list(report.explanations.facts),
                           "objective_winners": {w.objective: {"label": w.label, "value": w.value, "note": w.note,
                                                               "micro_batch_size": w.micro_batch_size,
                                                               "tied_with": list(w.tied_with)}
                                                 for w in report.explanations.matrix}}
            if rec.serving:
                labels = {r.trial_key: r.label for r in results}
                summary |= {"max_batch_latency_ms": rec.max_batch_latency_ms,
                            "over_budget": [labels.get(key, key) for key in rec.over_budget]}
            run.log(charts)
            run.summary.update(summary | {"not_measured": [f"{n.label}: {n.reason}" for n in rec.not_measured],
                                   "race": rec.race.to_json_dict() if rec.race else None,
                                   "drift": rec.drift.to_json_dict() if rec.drift else None})
            run.summary.update({"decision": rec.decision, "verdict": rec.verdict, "speedup": rec.speedup,
                                "min_speedup": rec.min_speedup, "reasons": list(rec.reasons),
                                "chosen": rec.chosen.label if rec.chosen else None,
                                "unit": rec.unit,
                                "chosen_throughput_per_s": rec.chosen.throughput_per_s if rec.chosen else None,
                                "chosen_goodput_per_s": rec.chosen.goodput_per_s if rec.chosen else None,
                                "objective": rec.objective,
                                "gradient_noise_scale": rec.gradient_noise_scale.value
                                if rec.gradient_noise_scale else None,
                                "gradient_noise_scale_ci95": rec.gradient_noise_scale.ci95
                                if rec.gradient_noise_scale else None,
                                "lr": asdict(rec.lr_change) if rec.lr_change else None,
                                "compile_payback": [p.to_json_dict() for p in rec.compile_paybacks],
                                "memory_fits": [f.to_json_dict() for f in rec.memory_fits],
                                "num_trials": rec.num_trials, "num_failed": rec.num_failed})
            self._finish_with_files(run, files)
        except Exception as exc:  # noqa: BLE001 - wandb must never end a sweep
            self._disable(f"logging the recommendation failed: {exc}")

    def _finish_with_files(self, run: Any, files: Sequence[Path]) -> None:
        """The recommendation's files as one artifact of the run, then the run's end."""
        artifact = self._wandb.Artifact(f"recommendation-{self.group}", type="recommendation")
        for path in files:
            artifact.add_file(str(path))
        run.log_artifact(artifact)
        run.finish()

    def serving_load_finished(self, report: "ServingLoadReport", *, files: Sequence[Path],
                              chart: Optional[Path]) -> None:
        """A serving-under-load sweep's recommendation run: the sustainable-rate and measured-rate tables, p99
        against rate as an interactive line per setting beside the report's PNG, the verdict in the summary."""
        if not self.enabled:
            return
        from trainer_tune.explain.serving_load import POINT_COLUMNS, RATE_COLUMNS

        wandb = self._wandb
        d = report.decision
        try:
            run = self._init(job_type="recommendation", name="recommendation", config={"tune": self.config})
            logged: dict[str, Any] = {"sustainable_rates": wandb.Table(columns=list(RATE_COLUMNS),
                                                                       data=[list(r) for r in report.rate_rows])}
            if report.point_rows:
                logged["measured_rates"] = wandb.Table(columns=list(POINT_COLUMNS),
                                                       data=[list(r) for r in report.point_rows])
            measured = [s for s in d.settings if s.measured]
            if measured:
                ordered = [sorted(s.measured, key=lambda m: m.point.rate_per_s) for s in measured]
                logged["p99_vs_rate"] = wandb.plot.line_series(
                    xs=[[m.point.rate_per_s for m in points] for points in ordered],
                    ys=[[1e3 * m.point.p99.point_s for m in points] for points in ordered],
                    keys=[s.label for s in measured], title="p99 request latency (ms) against rate per replica",
                    xname="requests/s per replica")
            if chart is not None:
                logged["charts/p99_vs_rate"] = wandb.Image(str(chart), caption="p99 request latency against rate")
            run.log(logged)
            run.summary.update(report.to_json_dict() | {"settings": None, "fingerprint": None})
            # A label holds a "/" ("4/2ms"), which wandb would read as nesting.
            run.summary.update({f"sustainable_rate_per_s/{s.label.replace('/', '_')}": s.rate.rate_per_s
                                for s in d.settings if s.rate is not None})
            self._finish_with_files(run, files)
        except Exception as exc:  # noqa: BLE001 - wandb must never end a sweep
            self._disable(f"logging the serving recommendation failed: {exc}")


def _explanation_tables(wandb: Any, explanations: "Explanations") -> dict[str, Any]:
    """The scaling points and the decision matrix as wandb tables (one row per point / objective)."""
    tables = {}
    for key, rows in (("scaling", explanations.points), ("decision_matrix", explanations.matrix)):
        dicts = [asdict(row) for row in rows]
        if dicts:
            columns = list(dicts[0])
            tables[key] = wandb.Table(columns=columns, data=[[_cell(d[c]) for c in columns] for d in dicts])
    return tables


def _cell(value: Any) -> Any:
    """wandb tables take scalars: intervals and lists become text."""
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
        if isinstance(value, (tuple, list)) else value


def step_history(result: SettingEstimate) -> list[dict[str, Any]]:
    """Per measured step (slowest rank, the setting's windows one after the other): step time, the samples/s (and
    tokens/s, where batches carry tokens) that step sustained, the loss and, when the model collected them, the
    NSA auxiliary statistics (averaged over ranks in the step); then each window's rate in the decision's unit by
    round (`round/<unit>_per_s`), and the GPU utilization samples of rank 0, each on its own axis."""
    losses, aux_stats = result.losses, result.nsa_aux_stats
    rows: list[dict[str, Any]] = []
    for step, time_s in enumerate(result.step_times_s):
        row: dict[str, Any] = {"step": step, "train/step_time_s": time_s,
                               "train/samples_per_s": result.global_batch_size / time_s}
        if result.tokens_per_step is not None:
            row["train/tokens_per_s"] = result.tokens_per_step / time_s
        if step < len(losses) and losses[step] is not None:
            row["train/loss"] = losses[step]
        if step < len(aux_stats):
            row.update({f"nsa/{name}": value for name, value in aux_stats[step].items()})
        rows.append(row)
    for number, rate in enumerate(result.window_throughput_per_s.values()):
        rows.append({"round": number, f"round/{result.throughput_unit}_per_s": rate})
    for t_s, util_pct in result.gpu_utilization_series:
        rows.append({"gpu_time_s": t_s, "gpu/util_pct": util_pct})
    return rows


def summary_figures(result: SettingEstimate) -> dict[str, Any]:
    """The flat figures of one trial, as dashboards and tables show them (None where not measured).
    tokens_per_s (named by count_unit) only where there is one: batches without tokens have no such figure."""
    gpu, mfu_info, cpu, steps = result.gpu, result.mfu, result.cpu, result.step_time_s
    counted = {} if result.tokens_per_s is None else {"tokens_per_s": result.tokens_per_s,
                                                      "count_unit": result.count_unit}
    # mode=inference: the batch latency percentiles, and how many batches stand behind them.
    served = result.latency
    latency = {} if served is None else {
        "latency_p50_ms": served.p50_ms, "latency_p90_ms": served.p90_ms, "latency_p99_ms": served.p99_ms,
        "latency_max_ms": served.max_ms, "latency_mean_ms": served.mean_ms, "latency_num_batches": served.num_batches}
    return {
        "index": result.index, "label": result.label, "status": result.status, "is_baseline": result.is_baseline,
        "micro_batch_size": result.micro_batch_size, "grad_accum": result.grad_accum,
        "global_batch_size": result.global_batch_size, "world_size": result.world_size,
        "mode": result.mode, "samples_per_s": result.samples_per_s, **counted, **latency,
        "throughput_unit": result.throughput_unit, "throughput_per_s": result.throughput_per_s,
        "data_wait_fraction": result.data_wait_fraction,
        "step_time_s_median": steps.median if steps else None, "step_time_s_p90": steps.p90 if steps else None,
        "peak_memory_bytes": result.peak_memory_bytes, "peak_memory_source": result.peak_memory_source,
        "gpu_util_mean_pct": gpu.util_mean_pct if gpu else None,
        "gpu_memory_used_peak_bytes": gpu.memory_used_peak_bytes if gpu else None,
        "gpu_power_mean_w": gpu.power_mean_w if gpu else None,
        **{f"gpu_{name}": getattr(gpu, name) if gpu else None for name in GPM_FIELDS},
        "energy_j_per_token": gpu.energy_j_per_token if gpu else None,
        "energy_j_per_sample": result.energy_j_per_sample, "energy_source": result.energy_source,
        "mfu": mfu_info.mfu if mfu_info else None,
        "achieved_tflops": mfu_info.achieved_tflops if mfu_info else None,
        "cpu_process_pct_mean": cpu.process_pct_mean if cpu else None,
        "gradient_noise_scale": result.noise_scale.value if result.noise_scale else None,
        "statistical_efficiency": result.statistical_efficiency, "goodput_per_s": result.goodput_per_s,
        "compile_s": result.compile_s,
        "error": result.error,
    }
