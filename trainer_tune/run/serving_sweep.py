"""A serving-under-load sweep (`+sweep=serving_load`): plan the batcher settings, measure each replica's service
times, predict every setting's sustainable rate by simulation, confirm the best predicted and the baseline by real
open-loop runs (a rate search each), decide, publish.

Every rank is a replica serving its own Poisson stream. Rank 0 decides what to measure next (the search reads the
pooled load point of every replica) and broadcasts it; each run's requests cross the store to rank 0, which
journals one line per (setting, rate). Ranks learn each run's outcome from the same exchange, so a run that fails
on one replica is recorded as that setting's failure on every rank and the sweep goes on. A resumed sweep replays
its journal: the same service samples, the same predictions and the same searches, so each rate already measured is
read back instead of served again.
"""

from __future__ import annotations

import logging
import math
import traceback
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig

from trainer_tune.config.flags import TrialFlags
from trainer_tune.config.schema import ConfigError, TuneConfig
from trainer_tune.decide.serving_load import (
    CHECK_CONFIDENCE, ServingLoadDecision, decide_from_records, predict_settings, serving_budget, settings_to_confirm)
from trainer_tune.evidence.load_point import load_point
from trainer_tune.evidence.load_search import PredictedRate, real_bounds
from trainer_tune.evidence.serving_load import MIN_SECTIONS, RatePoint, RateSearch, requests_per_section
from trainer_tune.measure.load_record import LoadRecord, ReplicaRun, ServiceRecord
from trainer_tune.measure.load_replica import LoadReplica
from trainer_tune.measure.open_loop import run_open_loop
from trainer_tune.measure.record import utc_now
from trainer_tune.plan import BatcherSetting, batcher_plan, serving_definition
from trainer_tune.platform.distributed import DistSession
from trainer_tune.platform.fingerprint import Fingerprint, agreed_fingerprint
from trainer_tune.platform.units import format_ms
from trainer_tune.run.journal import JOURNAL_NAME, append_serving, start_or_resume
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.serving_load import publish_serving_load
from trainer_tune.sinks.wandb_sink import WandbSink
from trainer_tune.workloads.arrivals import poisson_arrivals_s

log = logging.getLogger(__name__)

STEPS_DOWN = 2
"""A real search whose predicted lower bound did not meet the target halves it this many times at most (the
simulation over-predicts when the machine is slower than its closed-loop samples said)."""
P99_REQUESTS = MIN_SECTIONS * requests_per_section(0.99)
"""Requests over all replicas below which a p99 has no interval (evidence/serving_load.py: 5 sections of 1,000)."""


@dataclass(frozen=True)
class ServingLoadOutcome:
    recommendation: ServingLoadDecision
    num_measured: int
    """Rates served under load by this run."""
    num_skipped: int
    """Rates read back from the journal."""


def _rate_key(label: str, rate_per_s: float) -> tuple[str, float]:
    return label, round(rate_per_s, 6)


def num_requests(rate_per_s: float, cfg: TuneConfig, *, world_size: int) -> int:
    """Requests per replica at one rate: its share of serving.requests_per_rate, or what serving.max_s_per_rate of
    arrivals holds, but never fewer than its share of the P99_REQUESTS a p99 interval needs (a slow model's low rates
    then take longer than serving.max_s_per_rate: an interval that cannot exist would only cost the time)."""
    share = math.ceil(cfg.serving.requests_per_rate / world_size)
    floor = min(share, math.ceil(P99_REQUESTS / world_size))
    return max(min(share, int(rate_per_s * cfg.serving.max_s_per_rate)), floor)


def arrival_seed(seed: int, label: str, rate_per_s: float, rank: int) -> int:
    """Each (setting, rate, replica) its own stream, the same on a resume."""
    return zlib.crc32(f"{seed}/{label}/{rate_per_s:.6f}/{rank}".encode())


class _ServingSweep:
    def __init__(self, *, cfg: TuneConfig, session: DistSession, output_dir: Path, console: ConsoleSink,
                 fingerprint: Fingerprint, lifetime: str) -> None:
        self.cfg, self.session, self.output_dir, self.console = cfg, session, output_dir, console
        self.rank_env = session.rank_env
        self.journal_path = output_dir / JOURNAL_NAME
        self.fingerprint, self.lifetime = fingerprint, lifetime
        self.num_measured = 0
        self.num_skipped = 0

    def say(self, line: str) -> None:
        if self.console.enabled:
            self.console.console.print(line)

    # --- the journal --------------------------------------------------------------------------------
    def replay(self, definition: dict[str, Any]) -> tuple[Optional[ServiceRecord], dict[tuple[str, float], LoadRecord]]:
        """Rank 0 reads the journal (refusing another sweep's), every rank gets what it holds."""
        payload: tuple[Optional[ServiceRecord], dict[tuple[str, float], LoadRecord], Optional[str]] = (None, {}, None)
        if self.rank_env.is_rank0:
            try:
                contents = start_or_resume(self.journal_path, definition=definition, fingerprint=self.fingerprint,
                                           allow_fingerprint_change=self.cfg.sweep.allow_fingerprint_change)
                service, loads = None, {}
                for line in contents.serving:
                    if "serving_service" in line:
                        service = service or ServiceRecord.from_json_dict(line)
                    else:
                        record = LoadRecord.from_json_dict(line)
                        loads.setdefault(_rate_key(record.setting, record.rate_per_s), record)
                payload = (service, loads, None)
            except ConfigError as exc:
                payload = (None, {}, str(exc))
        service, loads, error = self.session.broadcast_from_rank0(payload)
        if error is not None:
            raise ConfigError(error)
        return service, loads

    def journal(self, record: dict[str, Any]) -> None:
        if self.rank_env.is_rank0:
            append_serving(self.journal_path, record)

    # --- measuring ----------------------------------------------------------------------------------
    def service(self, replica: LoadReplica, cached: Optional[ServiceRecord]) -> ServiceRecord:
        if cached is not None:
            self.say(f"service times: read back from {self.journal_path.name}")
            return cached
        samples = replica.service_samples(self.cfg.serving.service_repeats)
        posts = self.session.exchange(f"serving/{self.lifetime}/service",
                                      {"samples": {str(k): v for k, v in samples.items()}})
        record = ServiceRecord.of([{int(k): v for k, v in p["samples"].items()} for p in posts],
                                  measured_at=utc_now(), lifetime=self.lifetime)
        self.journal(record.to_json_dict())
        return record

    def measure(self, replica: LoadReplica, setting: BatcherSetting, rate_per_s: float,
                cached: dict[tuple[str, float], LoadRecord]) -> LoadRecord:
        """One rate of one setting on every replica (or the journal's line for it)."""
        key = _rate_key(setting.label, rate_per_s)
        if key in cached:
            self.num_skipped += 1
            return cached[key]
        started_at = utc_now()
        n = num_requests(rate_per_s, self.cfg, world_size=self.rank_env.world_size)
        arrivals_s = poisson_arrivals_s(rate_per_s, n, arrival_seed(self.cfg.serving.seed, setting.label, rate_per_s,
                                                                    self.rank_env.rank))
        self.session.barrier()  # the replicas' streams start together, as a load balancer's would
        post: dict[str, Any]
        try:
            run = run_open_loop(replica.serve, arrivals_s, rate_per_s=rate_per_s,
                                max_batch_size=setting.max_batch_size, max_queue_delay_s=setting.max_queue_delay_s)
            post = {"run": ReplicaRun.of(run).to_json_dict()}
        except Exception as exc:  # noqa: BLE001 - a failure of model code is the setting's outcome
            message = traceback.format_exception_only(type(exc), exc)[-1].strip()
            log.warning("%s at %g/s failed on %s: %s", setting.label, rate_per_s, self.rank_env.describe(), message)
            post = {"error": f"rank {self.rank_env.rank} on {self.rank_env.hostname}: {message}"}
        posts = self.session.exchange(f"serving/{self.lifetime}/{setting.label}/{rate_per_s:.6f}", post)
        errors = [p["error"] for p in posts if "error" in p]
        record = LoadRecord(setting=setting.label, max_batch_size=setting.max_batch_size,
                            max_queue_delay_ms=setting.max_queue_delay_ms, rate_per_s=rate_per_s,
                            replicas=() if errors else tuple(ReplicaRun.from_json_dict(p["run"]) for p in posts),
                            started_at=started_at, finished_at=utc_now(), lifetime=self.lifetime,
                            error="; ".join(errors) or None)
        self.journal(record.to_json_dict())
        self.num_measured += 1
        return record

    def searches(self, replica: LoadReplica, confirm: list[BatcherSetting], *,
                 predicted: dict[str, PredictedRate],
                 cached: dict[tuple[str, float], LoadRecord]) -> dict[str, list[LoadRecord]]:
        """The real rates of every confirmed setting, the searches interleaved (one rate of each in turn, the same
        order on every rank): a minute the machine runs slow then touches every setting alike, not the one whose
        search it fell in. A search is a bisection between the rates its prediction brackets (auto), or the listed
        rates in increasing order until one is not sustainable; it ends when it has nothing more to measure, at
        serving.max_rates, or when a run fails."""
        searches = {s.label: _Search(s, self.cfg, predicted.get(s.label)) for s in confirm}
        while True:
            active = [s for s in confirm if not searches[s.label].done]
            if not active:
                break
            for setting in active:
                search = searches[setting.label]
                rate = self.session.broadcast_from_rank0(search.next_rate() if self.rank_env.is_rank0 else None)
                if rate is None:
                    search.done = True
                    continue
                record = self.measure(replica, setting, rate, cached)
                self.say(search.add(record))
        return {label: search.records for label, search in searches.items()}


class _Search:
    """One confirmed setting's real search: which rate next, and what each measured rate said."""

    def __init__(self, setting: BatcherSetting, cfg: TuneConfig, predicted: Optional[PredictedRate]) -> None:
        self.setting = setting
        self.target_s = None if cfg.recommend.max_p99_ms is None else cfg.recommend.max_p99_ms / 1e3
        self.listed = None if cfg.serving.rate_per_s == "auto" else list(cfg.serving.rate_per_s)
        self.max_rates = cfg.serving.max_rates if self.listed is None else len(self.listed)
        self.rule: Optional[RateSearch] = None
        if self.listed is None:
            assert predicted is not None and self.target_s is not None
            lo, hi = real_bounds(predicted)
            self.rule = RateSearch(target_s=self.target_s, lo_rate_per_s=lo, hi_rate_per_s=hi, step_down=STEPS_DOWN)
        self.records: list[LoadRecord] = []
        self.points: list[RatePoint] = []
        self.done = False

    def next_rate(self) -> Optional[float]:
        """Rank 0's choice; None when the search is over."""
        if self.done or len(self.records) >= self.max_rates:
            return None
        if self.listed is not None:
            return self.listed[len(self.records)]
        assert self.rule is not None
        return self.rule.next_rate(self.points)

    def add(self, record: LoadRecord) -> str:
        """Take one measured rate; the line the console prints for it."""
        self.records.append(record)
        label, rate = self.setting.label, record.rate_per_s
        if not record.ok:
            self.done = True
            return f"{label} at {rate:,.4g}/s: failed: {record.error}"
        point = load_point(record.replicas, rate_per_s=rate,
                           target_p99_s=self.target_s if self.target_s is not None else math.inf,
                           confidence=CHECK_CONFIDENCE)
        self.points.append(point.rate_point())
        if self.listed is not None and not point.sustainability.sustainable:
            self.done = True  # higher rates only queue more
        status = point.check.status if self.target_s is not None else "measured"
        return (f"{label} at {rate:,.4g}/s per replica: p99 {format_ms(1e3 * point.p99.point_s)} ms "
                f"[{format_ms(1e3 * point.p99.low_s)}, {format_ms(1e3 * point.p99.high_s)}] over "
                f"{point.num_requests:,} requests, {status}; {point.sustainability.reason}")


_CONFIRM_SETS = ("serving.max_batch_sizes", "serving.max_queue_delays_ms", "serving.confirm_settings",
                 "recommend.max_p99_ms", "+sweep", "sweep", "hydra.", "wandb")


def _kept_overrides() -> tuple[str, ...]:
    """The command line's overrides a confirm command keeps (the model, the data, the rates...): not the grid, the
    target or the sweep, which it sets itself, nor the output directory or wandb, which the user adds."""
    if not HydraConfig.initialized():
        return ()
    return tuple(o for o in HydraConfig.get().overrides.task
                 if not o.lstrip("~").split("=")[0].startswith(_CONFIRM_SETS))


def run_serving_sweep(*, cfg: TuneConfig, session: DistSession, output_dir: Path, base_flags: TrialFlags,
                      console: ConsoleSink, launch_hint: str,
                      wandb_sink: Optional[WandbSink] = None) -> ServingLoadOutcome:
    baseline, settings = batcher_plan(cfg)
    definition = serving_definition(cfg, settings)
    fingerprint = agreed_fingerprint(session)
    lifetime = session.broadcast_from_rank0(uuid.uuid4().hex[:12])
    sweep = _ServingSweep(cfg=cfg, session=session, output_dir=output_dir, console=console, fingerprint=fingerprint,
                          lifetime=lifetime)
    cached_service, cached = sweep.replay(definition)
    sweep.say(f"trainer_tune: serving under load, {len(settings)} batcher settings (max batch/max queue delay), "
              f"baseline {baseline.label}; results in {output_dir}"
              + (f"; {len(cached)} rate(s) already in the journal" if cached else ""))
    largest = max(s.max_batch_size for s in settings)
    replica = LoadReplica(cfg=cfg, session=session, flags=base_flags, largest_batch=largest)
    replica.warm_up()
    service = sweep.service(replica, cached_service)
    closed_s = service.pooled_s()
    target_s = None if cfg.recommend.max_p99_ms is None else cfg.recommend.max_p99_ms / 1e3
    predicted: dict[str, PredictedRate] = {}
    if target_s is not None and session.rank_env.is_rank0:
        predicted = predict_settings(closed_s, settings, target_p99_s=target_s, seed=cfg.serving.seed)
        for s in settings:
            p = predicted[s.label]
            sweep.say(f"simulated {s.label}: sustainable {p.rate.rate_per_s:,.4g}/s per replica "
                      f"(capacity {p.capacity_per_s:,.4g}/s)")
    predicted = session.broadcast_from_rank0(predicted)
    fastest_s = service.fastest_single_s()
    if target_s is not None:
        confirm = settings_to_confirm(settings, baseline, predicted=predicted, count=cfg.serving.confirm_settings)
    else:
        confirm = list(settings)  # no target to rank by: every setting at every listed rate
    budget = serving_budget(num_confirmed=len(confirm) - 1,
                            max_rates=cfg.serving.max_rates if cfg.serving.rate_per_s == "auto"
                            else len(cfg.serving.rate_per_s))
    records: dict[str, list[LoadRecord]] = {}
    if target_s is not None and target_s < fastest_s:
        sweep.say(f"recommend.max_p99_ms={cfg.recommend.max_p99_ms:g} is below the fastest one-request service "
                  f"time, {format_ms(1e3 * fastest_s)} ms: nothing to search")
    else:
        sweep.say(f"confirming by real open-loop runs: {', '.join(s.label for s in confirm)} (each rate's p99 checked "
                  f"at {CHECK_CONFIDENCE:.0%}; GO and NO-GO need {budget.describe(look='rate')})")
        records = sweep.searches(replica, confirm, predicted=predicted, cached=cached)
    decision: Optional[ServingLoadDecision] = None
    if session.rank_env.is_rank0:
        decision = decide_from_records(cfg, service, [r for s in confirm for r in records.get(s.label, [])],
                                       predicted=predicted)
        publish_serving_load(output_dir, decision, fingerprint=fingerprint, launch_hint=launch_hint,
                             console=console, wandb_sink=wandb_sink, model_overrides=_kept_overrides())
    decision = session.from_rank0_when_done(decision)
    return ServingLoadOutcome(recommendation=decision, num_measured=sweep.num_measured, num_skipped=sweep.num_skipped)
