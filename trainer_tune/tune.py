"""The sweep: plan -> measure each trial -> agree on its outcome -> journal -> recommend -> sinks."""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from trainer_tune.config import ConfigError, TuneConfig
from trainer_tune.distributed import DistSession
from trainer_tune.flags import TrialFlags, export_flags
from trainer_tune.journal import JOURNAL_NAME, append_result, read_journal
from trainer_tune.metrics import TrialContext, failed_result, result_from_window
from trainer_tune.plan import TrialSpec, build_plan, swept_flag_names
from trainer_tune.recommend import Recommendation, decide
from trainer_tune.results import Status, TrialResult, utc_now
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.files import write_recommendation
from trainer_tune.window import combine_ranks, measure_local

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepOutcome:
    results: tuple[TrialResult, ...]
    recommendation: Recommendation
    num_measured: int
    num_skipped: int


def _outcome_of(exc: BaseException) -> tuple[Status, str]:
    if isinstance(exc, torch.OutOfMemoryError):
        return Status.oom, str(exc).splitlines()[0] if str(exc) else "out of memory"
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return Status.error, last


def _journal_state(session: DistSession, journal_path: Path) -> dict[str, TrialResult]:
    """Rank 0 reads the journal and every rank gets the same view, so all skip the same trials.

    A journal rank 0 cannot read becomes the same ConfigError on every rank instead of a hang.
    """
    payload: tuple[Optional[dict[str, TrialResult]], Optional[str]] = (None, None)
    if session.rank_env.is_rank0:
        try:
            contents = read_journal(journal_path)
            for problem in contents.problems:
                log.warning(problem)
            payload = (contents.by_key(), None)
        except ConfigError as exc:
            payload = (None, str(exc))
    done, error = session.broadcast_from_rank0(payload)
    if error is not None:
        raise ConfigError(error)
    return done or {}


def _measure(spec: TrialSpec, *, cfg: TuneConfig, session: DistSession, ctx: TrialContext,
             console: ConsoleSink) -> TrialResult:
    started_at = utc_now()
    console.trial_started(label=ctx.label, total_steps=cfg.window.warmup_steps + cfg.window.measure_steps)
    local = None
    outcome: tuple[Status, Optional[str]] = (Status.ok, None)
    try:
        local = measure_local(cfg=cfg, spec=spec, session=session, on_step=lambda _step, _measured: console.step_done())
    except Exception as exc:  # noqa: BLE001 - any failure of user or model code is a trial outcome
        status, message = _outcome_of(exc)
        log.warning("trial %d (%s) failed on %s: %s", spec.index, ctx.label, session.rank_env.describe(), message)
        outcome = (status, message)
    outcomes = session.gather_from_all((outcome[0].value, outcome[1]))
    worst = Status(max(code for code, _ in outcomes))
    finished_at = utc_now()
    if worst != Status.ok:
        errors = "; ".join(f"rank {rank}: {msg}" for rank, (code, msg) in enumerate(outcomes) if code)
        return failed_result(spec, ctx, status=worst, error=errors, started_at=started_at, finished_at=finished_at)
    assert local is not None
    measurement = combine_ranks(local, session=session, seq_len=cfg.model.seq_len)
    return result_from_window(spec, measurement, ctx, started_at=started_at, finished_at=finished_at)


def run_sweep(*, cfg: TuneConfig, session: DistSession, output_dir: Path, base_flags: TrialFlags,
              console: ConsoleSink, launch_hint: str) -> SweepOutcome:
    rank_env = session.rank_env
    plan = build_plan(cfg, world_size=rank_env.world_size, base_flags=base_flags, device_type=session.device.type)
    swept = swept_flag_names(cfg)
    journal_path = output_dir / JOURNAL_NAME
    done = _journal_state(session, journal_path)
    num_skipped = sum(spec.key in done for spec in plan)
    console.sweep_started(num_trials=len(plan), num_skipped=num_skipped, output_dir=str(output_dir))
    if num_skipped:
        log.info("%d of %d trials are already in %s and are not measured again", num_skipped, len(plan), journal_path)

    results: list[TrialResult] = []
    try:
        for spec in plan:
            if spec.key in done:
                results.append(done[spec.key])
                continue
            # User code reads the NSA_* variables at model build time: export this trial's values first.
            export_flags(spec.flags, os.environ)
            ctx = TrialContext(model_name=cfg.model.name, seq_len=cfg.model.seq_len, device=str(session.device),
                               backend=session.backend, num_warmup_steps=cfg.window.warmup_steps,
                               num_measured_steps=cfg.window.measure_steps, label=spec.label(swept_flags=swept))
            result = _measure(spec, cfg=cfg, session=session, ctx=ctx, console=console)
            if rank_env.is_rank0:
                append_result(journal_path, result)
            results.append(result)
            console.trial_finished(result, position=f"{spec.index + 1}/{len(plan)}")
    finally:
        console.sweep_finished()

    recommendation = decide(results, args=cfg.recommend)
    if rank_env.is_rank0:
        write_recommendation(output_dir, recommendation, launch_hint=launch_hint)
    console.show(results, recommendation)
    return SweepOutcome(results=tuple(results), recommendation=recommendation,
                        num_measured=len(plan) - num_skipped, num_skipped=num_skipped)
