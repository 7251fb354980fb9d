"""The end of a sweep, or of a multirun: one recommendation fanned out to every sink (rank 0 only).

Sinks only present: the recommendation and the results arrive computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

from trainer_tune.decide.verdict import Recommendation
from trainer_tune.measure.record import TrialResult
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.files import write_recommendation
from trainer_tune.sinks.report import write_report
from trainer_tune.sinks.wandb_sink import WandbSink


def publish(output_dir: Path, results: Sequence[TrialResult], recommendation: Recommendation, *,
            launch_hint: str, console: ConsoleSink, wandb_sink: Optional[WandbSink],
            jobs: Optional[Mapping[str, str]] = None) -> None:
    """recommendation.json/.yaml, report.md with its charts, a wandb run per setting and the recommendation run,
    the console table. `jobs`: a multirun's job behind each setting, by trial key (multirun.jobs_by_key)."""
    written = write_recommendation(output_dir, recommendation, launch_hint=launch_hint)
    report = write_report(output_dir, results, recommendation, jobs=jobs)
    if wandb_sink is not None:
        for result in results:
            wandb_sink.trial_finished(result)
        wandb_sink.sweep_finished(results, recommendation, files=[*written, report.report],
                                  chart_pngs=report.charts)
    console.show(results, recommendation, jobs=jobs)
