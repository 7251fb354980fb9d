"""What a person reads about a serving-under-load sweep: the sustainable-rate table, the measured rates, the
overrides that carry the answer, and recommendation.json's content. Built once from the ServingLoadDecision; the
sinks (sinks/serving_load.py) only print and write it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from trainer_tune.decide.sequential import GO
from trainer_tune.decide.serving_load import AGREEMENT_SHARE, NEAR_CAPACITY, ServingLoadDecision, SettingLoad
from trainer_tune.platform.fingerprint import Fingerprint
from trainer_tune.platform.units import format_ms

RATE_COLUMNS = ("setting", "status", "sustainable rate/s", "interval/s", "vs baseline", "p99 ms at rate",
                "p99 interval ms", "requests", "simulated rate/s")
RATE_ESSENTIAL = {"setting", "status", "sustainable rate/s", "interval/s", "vs baseline"}
"""What decides, in the console's first table when one table does not fit."""
POINT_COLUMNS = ("setting", "rate/s", "share of capacity", "p50 ms", "p90 ms", "p99 ms", "p99 interval ms",
                 "check", "kept up", "simulated p99 ms", "requests")
POINT_ESSENTIAL = {"setting", "rate/s", "p99 ms", "p99 interval ms", "check"}


def _rate(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return "unbounded" if math.isinf(value) else f"{value:,.4g}"


def _status(s: SettingLoad, d: ServingLoadDecision) -> str:
    if s.error is not None:
        return "failed"
    if not s.measured:
        return "simulated only"
    tags = ["baseline"] if s.is_baseline else []
    if s.label == d.chosen and d.decision == GO:
        tags.append("chosen")
    elif s.label == d.leader and not s.is_baseline:
        tags.append("leader")
    return ", ".join(tags) or "confirmed"


def _vs_baseline(s: SettingLoad, base: SettingLoad) -> str:
    if s.rate is None or base.rate is None or s.is_baseline or base.rate.rate_per_s <= 0:
        return ""
    return f"{s.rate.rate_per_s / base.rate.rate_per_s:.2f}x"


def rate_rows(d: ServingLoadDecision) -> list[list[str]]:
    """One row per batcher setting: its sustainable rate with its bracket, against the baseline's, and its p99."""
    base = d.setting(d.baseline)
    rows = []
    for s in d.settings:
        at = s.at_rate()
        rate = s.rate
        rows.append([s.label, _status(s, d), _rate(None if rate is None else rate.rate_per_s),
                     "" if rate is None else f"[{_rate(rate.low_per_s)}, {_rate(rate.high_per_s)}]",
                     _vs_baseline(s, base),
                     "" if at is None else format_ms(1e3 * at.point.p99.point_s),
                     "" if at is None else f"[{format_ms(1e3 * at.point.p99.low_s)}, "
                                           f"{format_ms(1e3 * at.point.p99.high_s)}]",
                     "" if at is None else f"{at.point.num_requests:,}",
                     "" if s.predicted is None else _rate(s.predicted.rate.rate_per_s)])
    return rows


def _check(p: Any) -> str:
    more = p.check.more_requests
    return p.check.status + (f" (~{more:,} more requests)" if p.check.status == "unknown" and more else "")


def point_rows(d: ServingLoadDecision) -> list[list[str]]:
    """One row per measured (setting, rate), in the order measured."""
    rows = []
    for s in d.settings:
        for m in s.measured:
            p = m.point
            rows.append([s.label, f"{p.rate_per_s:,.4g}", f"{m.share_of_capacity:.0%}", format_ms(1e3 * p.p50.point_s),
                         format_ms(1e3 * p.p90.point_s), format_ms(1e3 * p.p99.point_s),
                         f"[{format_ms(1e3 * p.p99.low_s)}, {format_ms(1e3 * p.p99.high_s)}]",
                         _check(p) if d.target_p99_ms is not None else "",
                         "yes" if p.sustainability.sustainable else "no", format_ms(1e3 * m.simulated_p99_s),
                         f"{p.num_requests:,}"])
    return rows


def chosen_overrides(d: ServingLoadDecision) -> tuple[str, ...]:
    """The batcher setting to serve with, as this sweep's keys (a one-setting grid measures it again)."""
    s = d.setting(d.chosen)
    return (f"serving.max_batch_sizes=[{s.max_batch_size}]", f"serving.max_queue_delays_ms=[{s.max_queue_delay_ms:g}]")


def confirm_overrides(d: ServingLoadDecision, *, model_overrides: tuple[str, ...]) -> tuple[str, ...]:
    """The leader (the chosen setting after a GO) against the baseline again, with the same target and margin: the
    same sweep with a one-setting grid."""
    s = d.setting(d.leader if d.leader != d.baseline else d.chosen)
    keys = ["+sweep=serving_load", *model_overrides, f"serving.max_batch_sizes=[{s.max_batch_size}]",
            f"serving.max_queue_delays_ms=[{s.max_queue_delay_ms:g}]", "serving.confirm_settings=1"]
    if d.target_p99_ms is not None:
        keys.append(f"recommend.max_p99_ms={d.target_p99_ms:g}")
    return tuple(keys)


@dataclass(frozen=True)
class ServingLoadReport:
    decision: ServingLoadDecision
    verdict: str
    """The one line a person reads first."""
    overrides: tuple[str, ...]
    confirm_overrides: tuple[str, ...]
    fingerprint: Optional[Fingerprint]
    rate_rows: tuple[tuple[str, ...], ...]
    point_rows: tuple[tuple[str, ...], ...]
    agreement: str

    def to_json_dict(self) -> dict[str, Any]:
        d = self.decision
        return {"mode": "serving_load", "decision": d.decision, "verdict": self.verdict, "reason": d.reason,
                "chosen": d.chosen, "leader": d.leader, "baseline": d.baseline, "target_p99_ms": d.target_p99_ms,
                "confidence": d.confidence, "error_budget": d.budget, "fastest_single_request_ms": d.fastest_single_ms,
                "overrides": list(self.overrides), "confirm_overrides": list(self.confirm_overrides),
                "simulation_agreement": self.agreement, "notes": list(d.notes),
                "fingerprint": None if self.fingerprint is None else self.fingerprint.to_json_dict(),
                "settings": [{"label": s.label, "is_baseline": s.is_baseline, "serving": s.serving_json()}
                             for s in d.settings]}


def build_serving_report(d: ServingLoadDecision, *, model_overrides: tuple[str, ...] = (),
                         fingerprint: Optional[Fingerprint] = None) -> ServingLoadReport:
    agree, near = d.agreement
    agreement = (f"simulated p99 within {AGREEMENT_SHARE:.0%} of the measured at {agree} of {near} measured rates at "
                 f">= {NEAR_CAPACITY:.0%} of capacity" if near else
                 f"no rate measured at >= {NEAR_CAPACITY:.0%} of capacity: the simulation was not checked where "
                 f"queueing matters")
    if d.decision is None:
        verdict = f"rates measured, no verdict: {d.reason}"
    else:
        chosen = d.setting(d.chosen)
        verdict = (f"{d.decision}: serve with max batch {chosen.max_batch_size}, max queue delay "
                   f"{chosen.max_queue_delay_ms:g} ms ({d.chosen})" if d.decision == GO
                   else f"{d.decision}: keep the baseline {d.baseline}")
    return ServingLoadReport(decision=d, verdict=verdict, overrides=chosen_overrides(d),
                             confirm_overrides=confirm_overrides(d, model_overrides=model_overrides),
                             fingerprint=fingerprint, rate_rows=tuple(tuple(r) for r in rate_rows(d)),
                             point_rows=tuple(tuple(r) for r in point_rows(d)), agreement=agreement)
