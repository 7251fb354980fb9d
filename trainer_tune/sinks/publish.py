"""The end of a sweep, or of a multirun: one Report fanned out to every sink (rank 0 only).

Sinks only present: the decision, its explanations and the settings arrive computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from trainer_tune.explain.report import Report
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.files import write_recommendation
from trainer_tune.sinks.report import write_report
from trainer_tune.sinks.wandb_sink import WandbSink


def publish(output_dir: Path, report: Report, *, launch_hint: str, console: Optional[ConsoleSink],
            wandb_sink: Optional[WandbSink], jobs: Optional[Mapping[str, str]] = None) -> None:
    """recommendation.json/.yaml, report.md with its charts, a wandb run per setting and the recommendation run,
    the console table. `jobs`: a multirun's job behind each setting, by trial key (multirun.jobs_by_key)."""
    results = list(report.decision.settings)
    written = write_recommendation(output_dir, report, launch_hint=launch_hint)
    files = write_report(output_dir, results, report, jobs=jobs, launch_hint=launch_hint)
    if wandb_sink is not None:
        for result in results:
            wandb_sink.trial_finished(result)
        wandb_sink.sweep_finished(results, report, files=[*written, files.report], chart_pngs=files.charts)
    if console is not None:
        console.show(results, report, jobs=jobs)
