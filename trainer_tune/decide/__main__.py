"""`python -m trainer_tune.decide OUTPUT_DIR [recommend.KEY=VALUE ...]`: decide a finished or interrupted sweep
again from its journal, without measuring and without torchrun.

The windows in OUTPUT_DIR/trials.jsonl are replayed through the same race (decide/race.py) and the same verdict
(decide/verdict.py) as the sweep that measured them, with the sweep's own config.yaml and any recommend.* keys
given here; where the replay would need a window the journal lacks (an interrupted sweep, or another objective
that keeps other settings racing), it decides on the windows there are and says so. recommendation.json,
recommendation.yaml and report.md go to OUTPUT_DIR/redecided/ (replaced on each call); the sweep's own files are
never touched. The last line says what changed against the recorded decision. A serving-under-load sweep
(`+sweep=serving_load`) is decided again from its journal's requests: each measured rate read against the target
and margin given (e.g. recommend.max_p99_ms=20), nothing served again.

Exit codes: 0, or 2 for a usage mistake (no journal there, a key outside recommend.*), in one line.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainer_tune.config.keys import check_keys, upgrade_recorded
from trainer_tune.config.schema import ConfigError, TuneConfig
from trainer_tune.decide.race import run_race
from trainer_tune.decide.strategy import fitting_plan
from trainer_tune.decide.serving_load import ServingLoadDecision, decide_from_records
from trainer_tune.decide.verdict import Decision, decide_race
from trainer_tune.evidence.comparison import percent
from trainer_tune.evidence.memory_fit import MemoryLimit
from trainer_tune.explain.report import Report, build_report
from trainer_tune.measure.load_record import LoadRecord, ServiceRecord
from trainer_tune.measure.record import WindowRecord
from trainer_tune.platform.fingerprint import Fingerprint
from trainer_tune.plan import TrialSpec, build_plan, swept_flag_names
from trainer_tune.run.journal import JOURNAL_NAME, read_journal
from trainer_tune.run.multirun import decide_multirun
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.files import CONFIG_YAML, RECOMMENDATION_JSON
from trainer_tune.sinks.publish import publish
from trainer_tune.sinks.serving_load import publish_serving_load

REDECIDED_DIR = "redecided"
USAGE = "usage: python -m trainer_tune.decide OUTPUT_DIR [recommend.KEY=VALUE ...]"


@dataclass(frozen=True)
class Redecided:
    report: Report
    recorded: Optional[dict[str, Any]]
    """The sweep's own recommendation.json, when it wrote one (an interrupted sweep did not)."""
    world_size: int


class _Replay:
    """The race's host over a journal: every window it asks for is read, none is measured."""

    def broadcast(self, value: Any) -> Any:
        return value

    def measure(self, spec: TrialSpec, *, round_id: str, attempts: int, first: bool,
                screening: bool = False) -> Optional[WindowRecord]:
        return None


def _config_file(output_dir: Path) -> Path:
    """The sweep's config.yaml; a multirun's sweep dir has one per job (0/, 1/, ...), which agree on recommend.*."""
    own = output_dir / CONFIG_YAML
    if own.exists():
        return own
    jobs = sorted((p for p in output_dir.glob(f"*/{CONFIG_YAML}") if p.parent.name.isdigit()),
                  key=lambda p: int(p.parent.name))
    if not jobs:
        raise ConfigError(f"OUTPUT_DIR={output_dir} has {JOURNAL_NAME} but no {CONFIG_YAML} (nor a multirun job's): "
                          f"the config the sweep ran with is needed to decide again")
    return jobs[0]


def load_config(output_dir: Path, overrides: Sequence[str]) -> TuneConfig:
    """The sweep's resolved config with `overrides` (recommend.* only) on top, typed and validated."""
    for override in overrides:
        key, sep, _value = override.partition("=")
        if not sep or not key.startswith("recommend.") or key.startswith("+"):
            raise ConfigError(f"{override} is not allowed: only recommend.KEY=VALUE overrides decide again "
                              f"(the windows were measured with the rest); {USAGE}")
    try:
        recorded = yaml.safe_load(_config_file(output_dir).read_text()) or {}
        recorded.pop("hydra", None)
        recorded = upgrade_recorded(recorded)
        merged = OmegaConf.merge(OmegaConf.structured(TuneConfig), recorded)
        given = OmegaConf.from_dotlist(list(overrides))
        check_keys(given)
        merged = OmegaConf.merge(merged, given)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        given = next((o for o in overrides if key and o.startswith(f"{key}=")), None)
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{given} is not allowed: {first}" if given else first) from None


def _memory_limit(recorded: Optional[dict[str, Any]]) -> Optional[MemoryLimit]:
    """The limit the sweep predicted memory against (host memory free at its start cannot be read again later)."""
    data = (recorded or {}).get("memory_limit")
    if not data:
        return None
    return MemoryLimit(capacity_bytes=int(data["capacity_bytes"]), fraction=float(data["fraction"]),
                       fraction_key=str(data["fraction_key"]), capacity_source=str(data["capacity_source"]))


def redecide(output_dir: Path, overrides: Sequence[str] = ()) -> Redecided:
    """Decide the sweep in `output_dir` again from its journal (see the module docstring)."""
    journal = output_dir / JOURNAL_NAME
    if not journal.exists():
        raise ConfigError(f"OUTPUT_DIR={output_dir} has no {JOURNAL_NAME}: not the output directory of a sweep "
                          f"(hydra.run.dir of a run, hydra.sweep.dir of a multirun)")
    cfg = load_config(output_dir, overrides)
    contents = read_journal(journal)
    windows = list(contents.results)
    if not windows:
        raise ConfigError(f"{journal} holds no window: nothing was measured, so there is nothing to decide")
    recorded_path = output_dir / RECOMMENDATION_JSON
    recorded = json.loads(recorded_path.read_text()) if recorded_path.exists() else None
    world_size = windows[0].world_size
    if any(w.round_id is not None and "/" in w.round_id for w in windows):  # a multirun's job-prefixed rounds
        decision = decide_multirun(windows, args=cfg.recommend, lr=cfg.train.lr, journal=journal)
        return Redecided(report=build_report(decision, fingerprint=_last_fingerprint(windows)), recorded=recorded,
                         world_size=world_size)
    baseline = next((w for w in windows if w.is_baseline), None)
    if baseline is None:
        raise ConfigError(f"{journal} has no window of the baseline: it is not a sweep's journal")
    plan = _journal_keyed(build_plan(cfg, world_size=world_size, base_flags=baseline.flags,
                                     device_type=baseline.device.split(":")[0]), windows)
    if not {s.key for s in plan} & {w.setting_key for w in windows}:
        raise ConfigError(f"{journal} has no window of any setting that {output_dir / CONFIG_YAML} plans: the "
                          f"journal and the config are not of one sweep")
    limit = _memory_limit(recorded)
    # A replay measures nothing, so sweep.budget_s (a bound on measuring) cuts none of the windows there are: the
    # race goes on while the journal has them, up to sweep.max_rounds or until the evidence decides.
    replayed = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, budget_s=None))
    # The settings the sweep did not build (predicted over the memory limit) are left out again, by the same rule.
    predictions = contents.predictions()
    raced, not_built = fitting_plan(plan, predictions, limit=limit, trust=cfg.sweep.trust_memory_prediction,
                                    swept=swept_flag_names(cfg))
    race = run_race(_Replay(), replayed, raced, done={w.trial_key: w for w in windows}, attempts={}, prefix="",
                    swept=swept_flag_names(cfg), limit=limit, not_built=not_built)
    decision = decide_race(race, cfg, memory_limit=limit,
                           memory_predictions=[predictions[s.key] for s in plan if s.key in predictions])
    return Redecided(report=build_report(decision, fingerprint=_last_fingerprint(windows)), recorded=recorded,
                     world_size=world_size)


def redecide_serving_load(output_dir: Path, overrides: Sequence[str] = ()) -> Optional[
        tuple[ServingLoadDecision, Optional[dict[str, Any]], int]]:
    """A serving-under-load sweep decided again from its journal lines (None when `output_dir` holds another kind of
    sweep): the same settings, their measured rates read at the target and margin given (recommend.*)."""
    journal = output_dir / JOURNAL_NAME
    if not journal.exists():
        return None
    contents = read_journal(journal)
    if contents.header is None or (contents.header.definition or {}).get("mode") != "serving_load":
        return None
    cfg = load_config(output_dir, overrides)
    service = next((ServiceRecord.from_json_dict(line) for line in contents.serving if "serving_service" in line),
                   None)
    if service is None:
        raise ConfigError(f"{journal} holds no service times: the sweep ended before measuring, nothing to decide")
    records = [LoadRecord.from_json_dict(line) for line in contents.serving if "serving_load" in line]
    recorded_path = output_dir / RECOMMENDATION_JSON
    recorded = json.loads(recorded_path.read_text()) if recorded_path.exists() else None
    world_size = max((len(r.replicas) for r in records), default=len(service.by_replica))
    return decide_from_records(cfg, service, records), recorded, world_size


def _journal_keyed(plan: list[TrialSpec], windows: Sequence[WindowRecord]) -> list[TrialSpec]:
    """The plan with each setting keyed as the journal keys it. A setting's key hashes the measurement context,
    which a later version may spell differently (window.target_rel_ci and window.max_measure_s gave way to
    window.measure_s): the recorded windows are what they were, found by their setting (micro-batch, accumulation,
    flags)."""
    recorded = {(w.micro_batch_size, w.grad_accum, w.flags): w.setting_key for w in windows if w.setting_key}
    return [dataclasses.replace(spec, key=recorded.get((spec.micro_batch_size, spec.grad_accum, spec.flags), spec.key))
            for spec in plan]


def _last_fingerprint(windows: Sequence[WindowRecord]) -> Optional[Fingerprint]:
    """The fingerprint of the journal's last window that has one (None for lines from before record version 5)."""
    return next((w.fingerprint for w in reversed(windows) if w.fingerprint is not None), None)


def _summary(decision: str, chosen: Optional[str], speedup: Optional[float],
             interval: Optional[Sequence[float]]) -> str:
    text = f"{decision} {chosen or 'nothing'}"
    if speedup is not None:
        text += f" {percent(speedup)}"
        if interval:
            text += f" [{percent(interval[0])}, {percent(interval[1])}]"
    return text


def what_changed(decision: Decision, recorded: Optional[dict[str, Any]]) -> str:
    """One line: the new verdict against the recorded one."""
    named = decision.chosen or decision.leader
    now = _summary(decision.decision, named.label if named else None, decision.speedup, decision.speedup_ci95)
    if recorded is None:
        return f"decided again: {now} (the sweep wrote no recommendation to compare with)"
    chosen = recorded.get("chosen") or recorded.get("leader") or {}
    before = _summary(recorded["decision"], chosen.get("label"), recorded.get("speedup"), recorded.get("speedup_ci95"))
    if before == now and list(decision.reasons) == list(recorded.get("reasons", [])):
        return f"decided again: unchanged ({now})"
    if before == now:
        return f"decided again: {now}, as recorded; the reasons changed (see report.md)"
    return f"decided again: {before} -> {now}"


def _launch_hint(world_size: int) -> str:
    return "python -m trainer_tune" if world_size == 1 else f"torchrun --nproc_per_node={world_size} -m trainer_tune"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip() if args else USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    output_dir, overrides = Path(args[0]), args[1:]
    try:
        serving = redecide_serving_load(output_dir, overrides)
        result = redecide(output_dir, overrides) if serving is None else None
    except ConfigError as exc:
        print(f"trainer_tune.decide: error: {exc}", file=sys.stderr)
        return 2
    target = output_dir / REDECIDED_DIR
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    if serving is not None:
        decision, recorded, world_size = serving
        publish_serving_load(target, decision, fingerprint=None, launch_hint=_launch_hint(world_size),
                             console=ConsoleSink(enabled=True), wandb_sink=None)
        now = f"{decision.decision} {decision.chosen}"
        before = None if recorded is None else f"{recorded['decision']} {recorded['chosen']}"
        print(f"decided again: {now}" + ("" if before is None else
                                         " (unchanged)" if before == now else f" (recorded: {before})"))
        return 0
    assert result is not None
    publish(target, result.report, launch_hint=_launch_hint(result.world_size), console=ConsoleSink(enabled=True),
            wandb_sink=None)
    print(what_changed(result.report.decision, result.recorded))
    return 0


if __name__ == "__main__":
    sys.exit(main())
