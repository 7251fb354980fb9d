"""The sweep: plan -> measure each trial -> agree on its outcome -> journal -> recommend -> sinks.

Failure handling, in the order things go wrong:
- a trial that raises on every rank (OOM, an error in model code) or diverges is recorded and the sweep
  goes on: ranks exchange outcomes through the store, never through a collective a failed rank could
  mismatch;
- a trial that raises on some ranks only leaves the others waiting inside a DDP collective: the watchdog
  sees no progress on every rank, dumps stacks, records the trial with the failing rank's error, and
  ends the processes so torchrun restarts the group;
- a stall is recorded the same way, as `stalled`;
- a process killed outright leaves `inflight.json`: after the restart, rank 0 records that trial from
  what the ranks posted to the store (their error, their stall) or, with no evidence, retries it once and
  records it as `crashed` if it dies again.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from trainer_tune.config import ConfigError, ModelArgs, Precision, TuneConfig
from trainer_tune.distributed import DistSession
from trainer_tune.faults import fault_for
from trainer_tune.flags import TrialFlags, exported_flags
from trainer_tune.flops import gpt_flops_per_token, lookup_peak_tflops
from trainer_tune.journal import (
    JOURNAL_NAME, InFlight, append_result, clear_inflight, read_inflight, read_journal, write_inflight)
from trainer_tune.metrics import TrialContext, failed_result, result_from_window
from trainer_tune.model import build_model, count_parameters
from trainer_tune.multirun import MultirunJob
from trainer_tune.plan import (
    TrialSpec, baseline_recheck, build_plan, differing_flag_names, job_plan, swept_flag_names)
from trainer_tune.recommend import Recommendation, decide
from trainer_tune.results import Status, TrialResult, utc_now
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.publish import publish
from trainer_tune.sinks.wandb_sink import WandbSink
from trainer_tune.strategy import BestSoFar, NotMeasured, best_so_far, measurement_order, skip_reason
from trainer_tune.telemetry import RankTelemetry, TelemetryProbe
from trainer_tune.watchdog import Stall, Watchdog
from trainer_tune.window import combine_ranks, measure_local

log = logging.getLogger(__name__)

_RECORDED_GRACE_S = 30.0
"""How long a non-zero rank that gives up on a stall waits for rank 0 to journal it before exiting
(exiting first would make torchrun terminate rank 0 mid-write)."""


@dataclass(frozen=True)
class SweepOutcome:
    results: tuple[TrialResult, ...]
    recommendation: Optional[Recommendation]
    num_measured: int
    num_skipped: int
    """Trials already in the journal from an earlier run, not measured again."""
    not_measured: tuple[NotMeasured, ...] = ()
    """Planned settings the search strategy left out."""
    # recommendation is None for a job of a Hydra multirun: the multirun's callback decides once, at the end.
    recheck: Optional[TrialResult] = None
    """The baseline's second window, after the last trial (sweep.recheck_baseline)."""


def _outcome_of(exc: BaseException, *, host: str) -> dict[str, Any]:
    status = Status.oom if isinstance(exc, torch.OutOfMemoryError) else Status.error
    message = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return {"status": status.name, "message": message, "host": host, "traceback": traceback.format_exc()}


def _who(rank: int, post: dict[str, Any]) -> str:
    """`rank 1 on node07`: errors name the rank and its host, which matters once there are several nodes."""
    host = post.get("host")
    return f"rank {rank} on {host}" if host else f"rank {rank}"


def _outcome_topic(spec: TrialSpec, attempt: int) -> str:
    return f"outcome/{spec.key}/{attempt}"


def _evidence(session: DistSession, spec: TrialSpec) -> tuple[Optional[Status], list[str], dict[str, str]]:
    """What the ranks posted about a trial in this and earlier attempts of the group: the status to record,
    the messages, and the tracebacks by rank.

    A rank's own failure (error, oom, nan) is the cause; the stalls of ranks left waiting for it are the
    consequence, so a failure wins over a stall, and a stall alone is recorded as `stalled`.
    """
    failure: Optional[Status] = None
    causes: list[str] = []
    stalls: list[str] = []
    tracebacks: dict[str, str] = {}
    for rank in range(session.rank_env.world_size):
        for attempt in range(session.rank_env.restart_count + 1):
            post = session.read_post(f"{_outcome_topic(spec, attempt)}/{rank}")
            if post is not None and post["status"] != Status.ok.name:
                status = Status[post["status"]]
                failure = status if failure is None or status.value > failure.value else failure
                causes.append(f"{_who(rank, post)}: {post['message']}")
                tracebacks[str(rank)] = post.get("traceback", "")
        stall = session.read_post(f"stall/{spec.key}/{rank}")
        if stall is not None:
            stalls.append(f"rank {rank} on {stall['host']}: {stall['description']}")
    if failure is not None:
        return failure, causes + [f"left waiting for it: {stall}" for stall in stalls], tracebacks
    return (Status.stalled if stalls else None), stalls, tracebacks


class _Sweep:
    def __init__(self, *, cfg: TuneConfig, session: DistSession, output_dir: Path, console: ConsoleSink,
                 journal_path: Path, swept: tuple[str, ...]) -> None:
        self.cfg, self.session, self.output_dir, self.console = cfg, session, output_dir, console
        self.rank_env = session.rank_env
        self.journal_path = journal_path
        self.swept = swept
        self._current: Optional[tuple[TrialSpec, TrialContext, str]] = None
        self.flops_per_token, self.peak_tflops, self.peak_note = _flops_context(cfg, session.device)
        self.probe = TelemetryProbe(cfg.telemetry, local_rank=self.rank_env.local_rank, device=session.device)
        self.watchdog: Optional[Watchdog] = None
        if cfg.watchdog.enabled:
            self.watchdog = Watchdog(cfg.watchdog, rank=self.rank_env.rank, hostname=self.rank_env.hostname,
                                     stacks_dir=output_dir / "stacks", on_abort=self._on_stall,
                                     peer_failed=self._peer_failed).start()

    def context(self, spec: TrialSpec) -> TrialContext:
        return TrialContext(model_name=model_name(self.cfg.model), seq_len=self.cfg.model.seq_len,
                            device=str(self.session.device), backend=self.session.backend,
                            num_warmup_steps=self.cfg.window.warmup_steps,
                            num_measured_steps=self.cfg.window.measure_steps, label=spec.label(swept_flags=self.swept),
                            flops_per_token=self.flops_per_token, peak_tflops_per_device=self.peak_tflops,
                            peak_note=self.peak_note,
                            device_memory_bytes=(torch.cuda.get_device_properties(self.session.device).total_memory
                                                 if self.session.device.type == "cuda" else None))

    # --- resume -------------------------------------------------------------------------------------
    def resume_state(self, plan: list[TrialSpec]) -> tuple[dict[str, TrialResult], dict[str, int]]:
        """Rank 0 reads the journal (and settles a trial that died in flight); every rank gets the same
        view, so all skip the same trials. A journal rank 0 cannot read is the same error on every rank."""
        payload: tuple[Optional[dict[str, TrialResult]], dict[str, int], Optional[str]] = (None, {}, None)
        if self.rank_env.is_rank0:
            try:
                payload = (*self._settle_journal(plan), None)
            except ConfigError as exc:
                payload = (None, {}, str(exc))
        done, attempts, error = self.session.broadcast_from_rank0(payload)
        if error is not None:
            raise ConfigError(error)
        return done or {}, attempts

    def _settle_journal(self, plan: list[TrialSpec]) -> tuple[dict[str, TrialResult], dict[str, int]]:
        contents = read_journal(self.journal_path)
        for problem in contents.problems:
            log.warning(problem)
        done = contents.by_key()
        inflight = read_inflight(self.output_dir)
        attempts: dict[str, int] = {}
        spec = next((s for s in plan if inflight is not None and s.key == inflight.trial_key), None)
        if inflight is not None and spec is not None and spec.key not in done:
            status, messages, tracebacks = _evidence(self.session, spec)
            if status is None and inflight.attempts < 2:
                log.warning("trial %d (%s) was running when the group died; measuring it once more",
                            spec.index, inflight.label)
                attempts[spec.key] = inflight.attempts
            else:
                status = status or Status.crashed
                reason = "; ".join(messages) or (f"the group died during this trial {inflight.attempts} times "
                                                 f"(a rank was killed or exited); see logs/ and stacks/")
                result = failed_result(spec, self.context(spec), status=status, error=reason,
                                       started_at="", finished_at=utc_now(), extra={"tracebacks": tracebacks})
                append_result(self.journal_path, result)
                done[spec.key] = result
                log.warning("trial %d (%s) recorded as %s: %s", spec.index, inflight.label, status.name, reason)
        if inflight is not None:
            clear_inflight(self.output_dir)
        return done, attempts

    # --- one trial ----------------------------------------------------------------------------------
    def measure(self, spec: TrialSpec, *, attempts: int, best: Optional[BestSoFar] = None) -> TrialResult:
        cfg, session = self.cfg, self.session
        ctx = self.context(spec)
        started_at = utc_now()
        if self.rank_env.is_rank0:
            write_inflight(self.output_dir, InFlight(trial_key=spec.key, index=spec.index, label=ctx.label,
                                                     attempts=attempts + 1))
        self._current = (spec, ctx, started_at)
        if self.watchdog is not None:
            self.watchdog.begin_trial(spec.index)
        self.console.trial_started(label=ctx.label, total_steps=cfg.window.warmup_steps + cfg.window.measure_steps)
        fault = fault_for(cfg.fault, rank=self.rank_env.rank, trial_index=spec.index,
                          restart_count=self.rank_env.restart_count)
        local = None
        outcome: dict[str, Any] = {"status": Status.ok.name}
        try:
            try:
                # User code reads the NSA_* variables at model build time: this trial's values, for this trial only.
                with exported_flags(spec.flags, os.environ):
                    local = measure_local(cfg=cfg, spec=spec, session=session, fault=fault, probe=self.probe,
                                          on_step=lambda _step, _measured: self.console.step_done(),
                                          heartbeat=self.watchdog.beat if self.watchdog else _ignore_beat,
                                          best=best)
            except Exception as exc:  # noqa: BLE001 - any failure of user or model code is a trial outcome
                outcome = _outcome_of(exc, host=self.rank_env.hostname)
                log.warning("trial %d (%s) failed on %s: %s", spec.index, ctx.label, self.rank_env.describe(),
                            outcome["message"])
            if local is not None and local.telemetry is not None:
                outcome["telemetry"] = local.telemetry.to_json_dict()  # a dict only to cross the store
            outcomes = session.exchange(_outcome_topic(spec, self.rank_env.restart_count), outcome)
        finally:
            if self.watchdog is not None:
                self.watchdog.end_trial()
            self._current = None
        finished_at = utc_now()
        failures = [(rank, o) for rank, o in enumerate(outcomes) if o["status"] != Status.ok.name]
        if failures:
            worst = max((Status[o["status"]] for _, o in failures), key=lambda s: s.value)
            return failed_result(spec, ctx, status=worst, started_at=started_at, finished_at=finished_at,
                                 error="; ".join(f"{_who(rank, o)}: {o['message']}" for rank, o in failures),
                                 extra={"tracebacks": {str(rank): o["traceback"] for rank, o in failures}})
        assert local is not None
        measurement = combine_ranks(local, session=session, seq_len=cfg.model.seq_len)
        return result_from_window(spec, measurement, ctx, started_at=started_at, finished_at=finished_at,
                                  telemetry=[RankTelemetry.from_json_dict(o["telemetry"]) if o.get("telemetry")
                                             else None for o in outcomes])

    def record(self, result: TrialResult) -> None:
        if self.rank_env.is_rank0:
            append_result(self.journal_path, result)
            clear_inflight(self.output_dir)

    # --- the watchdog's questions and last act (run on the watchdog thread) ----------------------------
    def _peer_failed(self) -> bool:
        """Whether some rank already posted a failure for the current trial: then a stall is no mystery
        and waiting for watchdog.abort_after_s would only waste the sweep's time."""
        current = self._current
        if current is None:
            return False
        topic = _outcome_topic(current[0], self.rank_env.restart_count)
        posts = (self.session.read_post(f"{topic}/{rank}") for rank in range(self.rank_env.world_size))
        return any(post is not None and post["status"] != Status.ok.name for post in posts)

    def _on_stall(self, stall: Stall) -> None:
        current = self._current
        if current is None:
            return
        spec, ctx, started_at = current
        self.session.post(f"stall/{spec.key}/{self.rank_env.rank}",
                          {"host": self.rank_env.hostname, "description": stall.describe()})
        if not self.rank_env.is_rank0:
            deadline_s = time.monotonic() + _RECORDED_GRACE_S
            while time.monotonic() < deadline_s and self.session.read_post(f"recorded/{spec.key}") is None:
                time.sleep(0.2)
            return
        time.sleep(1.0)  # let peers that stalled at the same moment post theirs
        status, messages, tracebacks = _evidence(self.session, spec)
        stacks = f"stacks in {self.output_dir / 'stacks'}/trial-{spec.index}-rank-*.txt"
        result = failed_result(spec, ctx, status=status or Status.stalled, started_at=started_at,
                               finished_at=utc_now(), error="; ".join(messages or [stall.describe()]) + f"; {stacks}",
                               extra={"tracebacks": tracebacks})
        self.record(result)
        self.session.post(f"recorded/{spec.key}", {"status": result.status})
        log.error("trial %d (%s) recorded as %s; ending this process (exit 4) so torchrun can restart the group",
                  spec.index, ctx.label, result.status)

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        self.probe.close()


def model_name(args: ModelArgs) -> str:
    """What results record as the model: the preset name, or the user's `_target_`."""
    return args.name if args._target_ is None else args._target_


def _flops_context(cfg: TuneConfig, device: torch.device) -> tuple[Optional[float], Optional[float], Optional[str]]:
    """(training FLOPs per token, peak TFLOP/s of one device, why there is no MFU) for MFU."""
    if cfg.model._target_ is not None:
        # The shape of a user's model is unknown here (and building it twice could have side effects).
        return None, None, (f"no FLOPs per token for model._target_={cfg.model._target_!r} (its shape is not "
                            f"known to trainer_tune), so no MFU")
    with torch.device("meta"):
        num_parameters = count_parameters(build_model(cfg.model))
    flops_per_token = gpt_flops_per_token(cfg.model, num_parameters=num_parameters)
    if cfg.telemetry.peak_tflops is not None:
        return flops_per_token, cfg.telemetry.peak_tflops, None
    if device.type != "cuda":
        return flops_per_token, None, (f"no peak TFLOP/s for a {device.type} device, so no MFU "
                                       f"(telemetry.peak_tflops sets one)")
    dtype = "bfloat16" if cfg.train.precision == Precision.bf16 else "float32"
    peak, reason = lookup_peak_tflops(device_name=torch.cuda.get_device_name(device), dtype=dtype,
                                      tf32=torch.backends.cuda.matmul.allow_tf32)
    if reason is not None:
        log.warning("MFU not computed: %s (telemetry.peak_tflops sets the peak)", reason)
    return flops_per_token, peak, reason


def _ignore_beat(_step: int, _micro_step: int) -> None:
    pass


def run_sweep(*, cfg: TuneConfig, session: DistSession, output_dir: Path, base_flags: TrialFlags,
              console: ConsoleSink, launch_hint: str, wandb_sink: Optional[WandbSink] = None,
              multirun: Optional[MultirunJob] = None) -> SweepOutcome:
    """Measure the plan and publish the recommendation; as a multirun job, measure the job's setting (and the
    baseline if the shared journal lacks it) and leave the recommendation to the multirun's callback."""
    world_size, device_type = session.rank_env.world_size, session.device.type
    if multirun is None:
        plan = build_plan(cfg, world_size=world_size, base_flags=base_flags, device_type=device_type)
        journal_path, swept = output_dir / JOURNAL_NAME, swept_flag_names(cfg)
    else:
        plan = job_plan(cfg, world_size=world_size, flags=base_flags, baseline=multirun.baseline.setting(),
                        index=multirun.trial_index, device_type=device_type)
        journal_path = multirun.journal_path
        swept = differing_flag_names(base_flags, multirun.baseline.flags)
    sweep = _Sweep(cfg=cfg, session=session, output_dir=output_dir, console=console, journal_path=journal_path,
                   swept=swept)

    def position(spec: TrialSpec) -> str:
        # A multirun job does not know how many jobs there are; its trial's index in the shared journal is stable.
        return f"{spec.index + 1}/{len(plan)}" if multirun is None else f"{spec.index} (job {multirun.job_num})"
    results: list[TrialResult] = []
    not_measured: list[NotMeasured] = []
    try:
        done, attempts = sweep.resume_state(plan)
        num_skipped = sum(spec.key in done for spec in plan)
        console.sweep_started(num_trials=len(plan), num_skipped=num_skipped,
                              output_dir=str(output_dir if multirun is None else multirun.sweep_dir))
        if num_skipped:
            log.info("%d of %d trials are already in %s and are not measured again", num_skipped, len(plan),
                     sweep.journal_path)
        strategy = cfg.sweep.strategy
        for spec in measurement_order(plan, strategy):
            if spec.key in done:
                results.append(done[spec.key])
                continue
            # Rank 0's answer for everyone: the inputs are identical on every rank, but a skip that one rank
            # takes alone would leave the others waiting in the next trial's collectives.
            skip, best = session.broadcast_from_rank0(
                (skip_reason(spec, plan=plan, results={r.trial_key: r for r in results}, sweep=cfg.sweep),
                 best_so_far(results, strategy)))
            if skip is not None:
                label = spec.label(swept_flags=sweep.swept)
                not_measured.append(NotMeasured(label=label, reason=skip))
                log.info("trial %d (%s) not measured: %s", spec.index, label, skip)
                console.trial_not_measured(label=label, reason=skip, position=position(spec))
                continue
            result = sweep.measure(spec, attempts=attempts.get(spec.key, 0), best=best)
            sweep.record(result)
            results.append(result)
            console.trial_finished(result, position=position(spec))
            if wandb_sink is not None:
                wandb_sink.trial_finished(result)
        # A multirun job measures one setting; the multirun as a whole has no "last trial" to re-check after.
        recheck = (_recheck_baseline(sweep, plan, results=results, done=done, attempts=attempts)
                   if multirun is None else None)
    finally:
        console.sweep_finished()
        sweep.close()

    results.sort(key=lambda r: r.index)  # report in plan order, whatever order the strategy measured in
    recommendation = None
    if multirun is None:
        recommendation = decide(results, args=cfg.recommend, not_measured=not_measured,
                                recheck=recheck)
        if session.rank_env.is_rank0:
            publish(output_dir, results, recommendation, launch_hint=launch_hint, console=console,
                    wandb_sink=wandb_sink)
    return SweepOutcome(results=tuple(results), recommendation=recommendation,
                        num_measured=len(results) - num_skipped, num_skipped=num_skipped,
                        not_measured=tuple(not_measured), recheck=recheck)


def _recheck_baseline(sweep: _Sweep, plan: list[TrialSpec], *, results: list[TrialResult],
                      done: dict[str, TrialResult], attempts: dict[str, int]) -> Optional[TrialResult]:
    """Measure the baseline once more, last, so the verdict can tell a steady machine from a drifting one.

    Every rank decides from the same agreed results, so all measure it or none does."""
    baseline = next((r for r in results if r.is_baseline), None)
    if not sweep.cfg.sweep.recheck_baseline or len(plan) < 2 or baseline is None or not baseline.ok:
        return None
    spec = baseline_recheck(plan)
    if spec.key in done:
        return done[spec.key]
    result = sweep.measure(spec, attempts=attempts.get(spec.key, 0))
    sweep.record(result)
    sweep.console.trial_finished(result, position="last")
    return result
