"""The sweep: plan -> the race (decide/race.py), which this module hosts: measure each window -> agree on its
outcome -> journal; then decide -> report -> sinks.

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

import dataclasses
import logging
import os
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import psutil
import torch
from hydra.core.hydra_config import HydraConfig

from trainer_tune.config.schema import ConfigError, Mode, ModelArgs, Precision, TuneConfig
from trainer_tune.platform.fingerprint import agreed_fingerprint
from trainer_tune.platform.distributed import DistSession
from trainer_tune.platform.faults import fault_for
from trainer_tune.config.flags import TrialFlags, exported_flags
from trainer_tune.measure.flops import analytic_flops_apply, gpt_flops_per_token, lookup_peak_tflops
from trainer_tune.run.journal import (
    JOURNAL_NAME, InFlight, append_result, clear_inflight, read_inflight, read_journal, start_or_resume,
    write_inflight)
from trainer_tune.measure.memory_trace import MemoryPrediction, predict_setting, with_real_step
from trainer_tune.platform.durable import append_line
from trainer_tune.platform.finite import finite_json
from trainer_tune.evidence.memory_fit import MemoryLimit
from trainer_tune.measure.summarize import TrialContext, failed_result, result_from_window
from trainer_tune.workloads.model import build_model, count_parameters
from trainer_tune.run.multirun import MultirunJob
from trainer_tune.plan import (
    TrialSpec, build_plan, differing_flag_names, job_plan, sweep_definition, swept_flag_names, window_of)
from trainer_tune.decide.verdict import Decision, decide_race
from trainer_tune.explain.report import build_report, machine_notes
from trainer_tune.config.rerun import current_run_overrides
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.measure.record import Status, WindowRecord, utc_now
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.publish import publish
from trainer_tune.sinks.wandb_sink import WandbSink
from trainer_tune.decide.race import SCREEN_WINDOW_SHARE, Drop, RaceSummary, run_race
from trainer_tune.decide.strategy import NotMeasured, fitting_plan
from trainer_tune.measure.telemetry import RankTelemetry, TelemetryProbe
from trainer_tune.run.watchdog import Stall, Watchdog
from trainer_tune.measure.window import TrainerPool, combine_ranks, keep_models_decision, measure_local

log = logging.getLogger(__name__)

_RECORDED_GRACE_S = 30.0
"""How long a non-zero rank that gives up on a stall waits for rank 0 to journal it before exiting
(exiting first would make torchrun terminate rank 0 mid-write)."""


@dataclass(frozen=True)
class SweepOutcome:
    results: tuple[SettingEstimate, ...]
    """Each setting that entered the race, aggregated over its windows."""
    recommendation: Optional[Decision]
    # recommendation is None for a job of a Hydra multirun: the multirun's callback decides once, at the end.
    num_measured: int
    """Windows measured by this run."""
    num_skipped: int
    """Windows already in the journal from an earlier run, not measured again."""
    not_measured: tuple[NotMeasured, ...] = ()
    """Planned settings that never entered the race."""
    race: Optional[RaceSummary] = None


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
                 journal_path: Path, swept: tuple[str, ...], num_settings: int,
                 definition: Optional[dict[str, Any]]) -> None:
        self.cfg, self.session, self.output_dir, self.console = cfg, session, output_dir, console
        self.definition = definition
        """The sweep's definition (plan.sweep_definition) its journal's header records; None in a multirun job."""
        self.rank_env = session.rank_env
        self.journal_path = journal_path
        self.swept = swept
        self.num_settings = num_settings
        self._current: Optional[tuple[TrialSpec, TrialContext, str]] = None
        self.flops_per_token = _flops_per_token(cfg)
        self._peaks: dict[str, tuple[Optional[float], Optional[str]]] = {}
        """Peak TFLOP/s of one device and why there is none, by the setting's precision (each looked up once)."""
        self.run_overrides = current_run_overrides(cfg) if HydraConfig.initialized() else ()
        self.probe = TelemetryProbe(cfg.telemetry, local_rank=self.rank_env.local_rank, device=session.device)
        self.pool = TrainerPool()
        # Every rank takes part (an exchange through the store), once per process group: a restarted group
        # measures its own fingerprint, so windows of different process lifetimes say where they came from.
        self.fingerprint = agreed_fingerprint(session)
        # Names this process group in every window it measures: a resumed sweep never pairs its windows with the
        # dead group's in one round (decide/race.lifetime_slots).
        self.lifetime = session.broadcast_from_rank0(uuid.uuid4().hex[:12])
        self._keep_decided = False
        self.watchdog: Optional[Watchdog] = None
        if cfg.watchdog.enabled:
            self.watchdog = Watchdog(cfg.watchdog, rank=self.rank_env.rank, hostname=self.rank_env.hostname,
                                     stacks_dir=output_dir / "stacks", on_abort=self._on_stall,
                                     peer_failed=self._peer_failed).start()

    def context(self, spec: TrialSpec) -> TrialContext:
        precision = spec.flags.precision
        if precision not in self._peaks:
            self._peaks[precision] = _peak_tflops(self.cfg, self.session.device, precision=Precision(precision))
        peak_tflops, peak_note = self._peaks[precision]
        return TrialContext(model_name=model_name(self.cfg.model), throughput_unit=self.cfg.throughput.unit,
                            count_unit=self.cfg.throughput.count.unit, mode=self.cfg.mode,
                            device=str(self.session.device), backend=self.session.backend,
                            num_warmup_steps=self.cfg.window.warmup_steps,
                            num_measured_steps=self.cfg.window.measure_steps, label=spec.label(swept_flags=self.swept),
                            flops_per_token=self.flops_per_token, peak_tflops_per_device=peak_tflops,
                            peak_note=peak_note, run_overrides=self.run_overrides, fingerprint=self.fingerprint,
                            lifetime=self.lifetime,
                            device_memory_bytes=(torch.cuda.get_device_properties(self.session.device).total_memory
                                                 if self.session.device.type == "cuda" else None))

    # --- resume -------------------------------------------------------------------------------------
    def resume_state(self, plan: list[TrialSpec]) -> tuple[dict[str, WindowRecord], dict[str, int]]:
        """Rank 0 reads the journal (and settles a trial that died in flight); every rank gets the same
        view, so all skip the same trials. A journal rank 0 cannot read is the same error on every rank."""
        payload: tuple[Optional[dict[str, WindowRecord]], dict[str, int], Optional[str]] = (None, {}, None)
        if self.rank_env.is_rank0:
            try:
                payload = (*self._settle_journal(plan), None)
            except ConfigError as exc:
                payload = (None, {}, str(exc))
        done, attempts, error = self.session.broadcast_from_rank0(payload)
        if error is not None:
            raise ConfigError(error)
        return done or {}, attempts

    def _settle_journal(self, plan: list[TrialSpec]) -> tuple[dict[str, WindowRecord], dict[str, int]]:
        contents = start_or_resume(self.journal_path, definition=self.definition, fingerprint=self.fingerprint,
                                   allow_fingerprint_change=self.cfg.sweep.allow_fingerprint_change)
        done = contents.by_key()
        inflight = read_inflight(self.output_dir)
        attempts: dict[str, int] = {}
        setting = next((s for s in plan if inflight is not None and s.key == inflight.setting_key), None)
        spec = (window_of(setting, inflight.round_id)
                if setting is not None and inflight is not None and inflight.round_id is not None else None)
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
                # The window belongs to the group that died measuring it, not to this one (the journal's last
                # window is that group's): a resumed round never mixes lifetimes (decide/race.lifetime_slots).
                dead = next((w.lifetime for w in reversed(contents.results) if w.lifetime is not None), None)
                result = failed_result(spec, dataclasses.replace(self.context(spec), lifetime=dead), status=status,
                                       error=reason, started_at="", finished_at=utc_now(),
                                       extra={"tracebacks": tracebacks})
                append_result(self.journal_path, result)
                done[spec.key] = result
                log.warning("trial %d (%s) recorded as %s: %s", spec.index, inflight.label, status.name, reason)
        if inflight is not None:
            clear_inflight(self.output_dir)
        return done, attempts

    # --- memory before measuring (measure/memory_trace.py) -------------------------------------------------
    def memory_predictions(self, plan: list[TrialSpec]) -> dict[str, MemoryPrediction]:
        """Each planned setting's traced peak by setting key (under fake tensors: nothing is built): rank 0 traces
        what the journal lacks (a resumed sweep reads the rest back); every rank gets the same predictions. Not in a
        multirun's jobs (each builds one setting, whose peak its window measures)."""
        predictions: dict[str, MemoryPrediction] = {}
        if self.rank_env.is_rank0:
            predictions = read_journal(self.journal_path).predictions()
            for spec in plan:
                if spec.key not in predictions:
                    predictions[spec.key] = predict_setting(self.cfg, spec, label=spec.label(swept_flags=self.swept),
                                                            world_size=self.rank_env.world_size)
        return self.session.broadcast_from_rank0(predictions)

    def checked_predictions(self, plan: list[TrialSpec], predictions: dict[str, MemoryPrediction], *,
                            measured: set[str]) -> dict[str, MemoryPrediction]:
        """After the race: on a CPU, each measured setting's real-step tensor bytes beside its prediction (only what
        was built anyway is stepped for real: a setting the race never reached, or predicted not to fit, is not),
        and every prediction journaled once. Rank 0 steps and writes; every rank gets the result."""
        if self.rank_env.is_rank0:
            recorded = read_journal(self.journal_path).predictions()
            for spec in plan:
                prediction = predictions.get(spec.key)
                if prediction is None:
                    continue
                if (spec.key in measured and prediction.tensor_peak_bytes is None
                        and self.session.device.type == "cpu"):
                    prediction = with_real_step(prediction, self.cfg, spec, world_size=self.rank_env.world_size)
                    predictions[spec.key] = prediction
                if spec.key not in recorded or recorded[spec.key] != prediction:
                    append_line(self.journal_path, finite_json(prediction.to_json_dict(), sort_keys=True))
        return self.session.broadcast_from_rank0(predictions)

    # --- the race's host and observer (decide/race.py) -----------------------------------------------
    def broadcast(self, value: Any) -> Any:
        return self.session.broadcast_from_rank0(value)

    def measure(self, spec: TrialSpec, *, round_id: str, attempts: int, first: bool,
                screening: bool = False) -> WindowRecord:
        """One window, measured and journaled."""
        result = self.measure_window(spec, round_id=round_id, attempts=attempts, first=first, screening=screening)
        self.record(result)
        return result

    def round_started(self, *, round_index: int, num_windows: int) -> None:
        self.console.round_started(round_index=round_index, num_windows=num_windows)

    def window_finished(self, result: WindowRecord, *, round_index: int) -> None:
        self.console.window_finished(result, round_index=round_index)

    def dropped(self, drop: Drop) -> None:
        self.console.dropped(drop)

    def release(self, setting_key: str) -> None:
        self.pool.release(setting_key)

    # --- one trial ----------------------------------------------------------------------------------
    def measure_window(self, setting: TrialSpec, *, round_id: str, attempts: int, first: bool,
                       screening: bool = False) -> WindowRecord:
        """One window of `setting` in round `round_id`, agreed by every rank: its journal record. The
        compute vs communication split and the noise steps are measured in a setting's `first` window only; a
        `screening` window (decide/race.py) measures SCREEN_WINDOW_SHARE of window.measure_s."""
        start_s = time.perf_counter()
        result = self._measure_window(window_of(setting, round_id), attempts=attempts, comm_split=first,
                                      screening=screening)
        if not result.ok:
            self.pool.release(setting.key)
        elif not self._keep_decided and result.num_parameters is not None:
            self._decide_keep(num_parameters=result.num_parameters)
        return dataclasses.replace(result, wall_s=time.perf_counter() - start_s)

    def _decide_keep(self, *, num_parameters: int) -> None:
        """Whether trainers stay alive between windows (window.keep_models); rank 0 decides for all, since
        building a trainer is a collective every rank must take part in."""
        keep, reason = self.session.broadcast_from_rank0(
            keep_models_decision(self.cfg.window.keep_models, device=self.session.device,
                                 num_parameters=num_parameters, num_settings=self.num_settings))
        self._keep_decided = True
        self.pool.keep = keep
        if not keep:
            self.pool.clear()
        log.info("models %s between windows: %s", "kept" if keep else "rebuilt", reason)

    def _measure_window(self, spec: TrialSpec, *, attempts: int, comm_split: bool,
                        screening: bool = False) -> WindowRecord:
        cfg, session = self.cfg, self.session
        if screening:
            cfg = dataclasses.replace(cfg, window=dataclasses.replace(
                cfg.window, measure_s=cfg.window.measure_s * SCREEN_WINDOW_SHARE))
        ctx = self.context(spec)
        started_at = utc_now()
        if self.rank_env.is_rank0:
            write_inflight(self.output_dir, InFlight(trial_key=spec.key, index=spec.index, label=ctx.label,
                                                     attempts=attempts + 1, setting_key=spec.setting_key,
                                                     round_id=spec.round_id))
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
                                          pool=self.pool, comm_split=comm_split,
                                          on_step=lambda _step, _measured: self.console.step_done(),
                                          heartbeat=self.watchdog.beat if self.watchdog else _ignore_beat)
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
        measurement = combine_ranks(local, session=session)
        return result_from_window(spec, measurement, ctx, started_at=started_at, finished_at=finished_at,
                                  telemetry=[RankTelemetry.from_json_dict(o["telemetry"]) if o.get("telemetry")
                                             else None for o in outcomes])

    def record(self, result: WindowRecord) -> None:
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
        self.pool.clear()
        if self.watchdog is not None:
            self.watchdog.stop()
        self.probe.close()


def model_name(args: ModelArgs) -> str:
    """What results record as the model: the preset name, or the user's `_target_`."""
    return args.name if args._target_ is None else args._target_


def _flops_per_token(cfg: TuneConfig) -> Optional[float]:
    """The built-in GPT's FLOPs per token (training, or the forward only with mode=inference), for MFU.

    None for every other step: FlopCounterMode counts those when a setting's trainer is built (window.py)."""
    if not analytic_flops_apply(cfg):
        return None
    with torch.device("meta"):
        num_parameters = count_parameters(build_model(cfg.model))
    flops_per_token = gpt_flops_per_token(cfg.model, num_parameters=num_parameters)
    if cfg.mode == Mode.inference:
        flops_per_token /= 3  # the forward pass only: a third of forward plus backward, attention included
    return flops_per_token


_PEAK_DTYPES = {Precision.bf16: "bfloat16", Precision.fp16: "float16"}
"""The peak-table dtype of a setting's precision; fp32 reads the float32 (or TF32, when enabled) peak."""


def _peak_tflops(cfg: TuneConfig, device: torch.device, *,
                 precision: Precision) -> tuple[Optional[float], Optional[str]]:
    """(peak TFLOP/s of one device at a setting's precision, why there is none) for MFU: a swept precision gets
    its own peak (bf16's is several times fp32's on a GPU). telemetry.peak_tflops, when set, is every setting's."""
    if cfg.telemetry.peak_tflops is not None:
        return cfg.telemetry.peak_tflops, None
    if device.type != "cuda":
        return None, f"no peak TFLOP/s for a {device.type} device, so no MFU (telemetry.peak_tflops sets one)"
    peak, reason = lookup_peak_tflops(device_name=torch.cuda.get_device_name(device),
                                      dtype=_PEAK_DTYPES.get(precision, "float32"),
                                      tf32=torch.backends.cuda.matmul.allow_tf32)
    if reason is not None:
        log.warning("MFU not computed: %s (telemetry.peak_tflops sets the peak)", reason)
    return peak, reason


def memory_limit(cfg: TuneConfig, session: DistSession) -> MemoryLimit:
    """What one rank may use, for the memory prediction (memory_fit.py): train.max_memory_fraction (else
    recommend.max_memory_fraction) of a CUDA device's memory, or on CPUs of the host memory available now shared
    by the node's ranks (read once, at the start of the sweep: other processes come and go)."""
    fraction, key = ((cfg.train.max_memory_fraction, "train.max_memory_fraction")
                     if cfg.train.max_memory_fraction is not None
                     else (cfg.recommend.max_memory_fraction, "recommend.max_memory_fraction"))
    if session.device.type == "cuda":
        return MemoryLimit(capacity_bytes=torch.cuda.get_device_properties(session.device).total_memory,
                           fraction=fraction, fraction_key=key, capacity_source="the CUDA device's total memory")
    ranks = max(session.rank_env.local_world_size, 1)
    return MemoryLimit(capacity_bytes=psutil.virtual_memory().available // ranks, fraction=fraction,
                       fraction_key=key,
                       capacity_source=f"host memory available at the start of the sweep / {ranks} local rank(s)")


def _ignore_beat(_step: int, _micro_step: int) -> None:
    pass


def run_sweep(*, cfg: TuneConfig, session: DistSession, output_dir: Path, base_flags: TrialFlags,
              console: ConsoleSink, launch_hint: str, wandb_sink: Optional[WandbSink] = None,
              multirun: Optional[MultirunJob] = None) -> SweepOutcome:
    """Race the plan and publish the recommendation; as a multirun job, race the job's setting against the
    baseline (in the job's own rounds) and leave the recommendation to the multirun's callback."""
    world_size, device_type = session.rank_env.world_size, session.device.type
    if multirun is None:
        plan = build_plan(cfg, world_size=world_size, base_flags=base_flags, device_type=device_type)
        journal_path, swept, prefix = output_dir / JOURNAL_NAME, swept_flag_names(cfg), ""
    else:
        plan = job_plan(cfg, world_size=world_size, flags=base_flags, baseline=multirun.baseline.setting(),
                        index=multirun.trial_index, device_type=device_type)
        journal_path = multirun.journal_path
        swept = differing_flag_names(base_flags, multirun.baseline.flags)
        prefix = f"job{multirun.job_num}/"  # the job's own rounds: its windows pair with its own baseline's
    sweep = _Sweep(cfg=cfg, session=session, output_dir=output_dir, console=console, journal_path=journal_path,
                   swept=swept, num_settings=len(plan),
                   definition=sweep_definition(cfg, plan, swept=swept) if multirun is None else None)
    if session.rank_env.is_rank0:
        # Said before measuring, so a user can stop a sweep whose figures the machine's state would decide.
        most = max((s.flags.num_threads for s in plan if s.flags.num_threads is not None), default=None)
        for note in machine_notes(sweep.fingerprint, most_threads_per_rank=most):
            log.warning("%s", note)
    predictions: dict[str, MemoryPrediction] = {}
    try:
        limit = session.broadcast_from_rank0(memory_limit(cfg, session))  # ranks predict against one figure
        done, attempts = sweep.resume_state(plan)
        not_built: list[NotMeasured] = []
        raced = plan
        if multirun is None:
            predictions = sweep.memory_predictions(plan)
            raced, not_built = fitting_plan(plan, predictions, limit=limit, trust=cfg.sweep.trust_memory_prediction,
                                            swept=swept)
        console.sweep_started(num_settings=len(plan), num_windows_done=len(done),
                              output_dir=str(output_dir if multirun is None else multirun.sweep_dir))
        for skipped in not_built:
            console.note(f"not measured: {skipped.label}: {skipped.reason}")
        race = run_race(sweep, cfg, raced, done=done, attempts=attempts, prefix=prefix, swept=swept, limit=limit,
                        observer=sweep, not_built=not_built)
    finally:
        console.sweep_finished()
        sweep.close()

    settings = sorted(race.settings.values(), key=lambda r: r.index)  # plan order, whatever order measured in
    recommendation = None
    if multirun is None:
        predictions = sweep.checked_predictions(plan, predictions, measured=set(race.settings))
        recommendation = decide_race(race, cfg, memory_limit=limit,
                                     memory_predictions=[predictions[s.key] for s in plan if s.key in predictions])
        settings = list(recommendation.settings)  # the same settings, with their efficiency and goodput
        if session.rank_env.is_rank0:
            publish(output_dir, build_report(recommendation, fingerprint=sweep.fingerprint), launch_hint=launch_hint,
                    console=console,
                    wandb_sink=wandb_sink)
        recommendation = session.from_rank0_when_done(recommendation)
    return SweepOutcome(results=tuple(settings), recommendation=recommendation,
                        num_measured=race.num_windows_measured, num_skipped=len(done),
                        not_measured=tuple(race.not_measured), race=race.summary)
