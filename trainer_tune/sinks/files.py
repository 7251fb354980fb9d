"""Files in the output directory besides the journal: the recommendation and the resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainer_tune.platform.durable import write_atomically
from trainer_tune.platform.finite import finite_json
from trainer_tune.explain.report import Report
from trainer_tune.config.rerun import shell_line

RECOMMENDATION_JSON = "recommendation.json"
RECOMMENDATION_YAML = "recommendation.yaml"
CONFIG_YAML = "config.yaml"


def write_recommendation(output_dir: Path, report: Report, *, launch_hint: str) -> list[Path]:
    rec = report.decision
    write_atomically(output_dir / RECOMMENDATION_JSON, finite_json(report.to_json_dict(), indent=2) + "\n")
    header = [f"# {rec.verdict}"]
    if rec.overrides:
        header += ["# Measure again, or train, with the chosen setting:",
                   f"#   {launch_hint} {shell_line(rec.overrides)}"]
    if rec.continue_overrides:
        header += ["# The evidence has not decided yet. Continue this sweep (finished windows are kept):",
                   f"#   {launch_hint} <the same overrides> hydra.run.dir={output_dir} {shell_line(rec.continue_overrides)}"]
    if rec.confirm_overrides:
        header += ["# Confirm it: the same two settings again, in paired rounds, into a new output directory:",
                   f"#   {confirm_command(rec.confirm_overrides, launch_hint=launch_hint, output_dir=output_dir)}"]
    body: dict[str, Any] = {"decision": rec.decision, "overrides": list(rec.overrides),
                            "environment": dict(rec.environment)}
    if rec.continue_overrides:
        body["continue_overrides"] = list(rec.continue_overrides)
    body["confirm_overrides"] = list(rec.confirm_overrides)
    write_atomically(output_dir / RECOMMENDATION_YAML,
                     "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False))
    return [output_dir / RECOMMENDATION_JSON, output_dir / RECOMMENDATION_YAML]


def confirm_command(overrides: tuple[str, ...], *, launch_hint: str, output_dir: Path) -> str:
    """The whole confirm command: the launcher, the overrides and a new output directory beside this one."""
    return f"{launch_hint} {shell_line(overrides)} hydra.run.dir={output_dir}-confirm"


def write_config(output_dir: Path, resolved_yaml: str, *, overrides: list[str]) -> None:
    header = f"# overrides: {' '.join(overrides)}\n" if overrides else ""
    write_atomically(output_dir / CONFIG_YAML, header + resolved_yaml)
