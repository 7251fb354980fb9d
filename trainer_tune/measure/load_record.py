"""The journal lines of a serving-under-load sweep: each replica's closed-loop service times, and each measured
(batcher setting, rate) with every replica's requests.

Times are whole microseconds (a request's arrival from the run's start, its latency, each batch's service time):
enough resolution for latencies of tenths of a millisecond, and a line of a few thousand requests stays a few tens
of kilobytes. The lines hold every request, not only figures, so a re-decide (another target, another confidence)
reads the same requests the sweep did. They share trials.jsonl with the journal header (run/journal.py), under
their own keys, so the one resume rule covers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

SERVICE_KEY = "serving_service"
LOAD_KEY = "serving_load"


def _us(seconds: float) -> int:
    return int(round(seconds * 1e6))


@dataclass(frozen=True)
class ReplicaRun:
    """One replica's run at one rate (measure/open_loop.OpenLoopRun, in microseconds)."""

    arrivals_us: tuple[int, ...]
    latencies_us: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    service_us: tuple[int, ...]
    behind_us: int

    @property
    def arrivals_s(self) -> tuple[float, ...]:
        return tuple(a / 1e6 for a in self.arrivals_us)

    @property
    def completions_s(self) -> tuple[float, ...]:
        return tuple((a + lat) / 1e6 for a, lat in zip(self.arrivals_us, self.latencies_us))

    def service_by_batch_size(self) -> dict[int, list[float]]:
        by_size: dict[int, list[float]] = {}
        for size, us in zip(self.batch_sizes, self.service_us):
            by_size.setdefault(size, []).append(us / 1e6)
        return by_size

    @staticmethod
    def of(run: Any) -> "ReplicaRun":
        """From an OpenLoopRun (anything with its fields)."""
        return ReplicaRun(arrivals_us=tuple(_us(a) for a in run.arrivals_s),
                          latencies_us=tuple(_us(c - a) for a, c in zip(run.arrivals_s, run.completions_s)),
                          batch_sizes=tuple(run.batch_sizes), service_us=tuple(_us(s) for s in run.service_s),
                          behind_us=_us(run.behind_s))

    def to_json_dict(self) -> dict[str, Any]:
        return {"arrivals_us": list(self.arrivals_us), "latencies_us": list(self.latencies_us),
                "batch_sizes": list(self.batch_sizes), "service_us": list(self.service_us),
                "behind_us": self.behind_us}

    @staticmethod
    def from_json_dict(data: Mapping[str, Any]) -> "ReplicaRun":
        return ReplicaRun(arrivals_us=tuple(data["arrivals_us"]), latencies_us=tuple(data["latencies_us"]),
                          batch_sizes=tuple(data["batch_sizes"]), service_us=tuple(data["service_us"]),
                          behind_us=int(data["behind_us"]))


@dataclass(frozen=True)
class LoadRecord:
    """One measured (setting, rate): every replica's run, or the error that ended it on some replica."""

    setting: str
    """The batcher setting's label (plan.BatcherSetting.label)."""
    max_batch_size: int
    max_queue_delay_ms: float
    rate_per_s: float
    """The offered rate per replica."""
    replicas: tuple[ReplicaRun, ...]
    """Rank order; empty when the run failed."""
    started_at: str
    finished_at: str
    lifetime: Optional[str] = None
    """The process group that measured it."""
    error: Optional[str] = None
    """Why the run failed on some replica (named), or None."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json_dict(self) -> dict[str, Any]:
        return {LOAD_KEY: {"setting": self.setting, "max_batch_size": self.max_batch_size,
                           "max_queue_delay_ms": self.max_queue_delay_ms, "rate_per_s": self.rate_per_s,
                           "replicas": [r.to_json_dict() for r in self.replicas], "started_at": self.started_at,
                           "finished_at": self.finished_at, "lifetime": self.lifetime, "error": self.error}}

    @staticmethod
    def from_json_dict(data: Mapping[str, Any]) -> "LoadRecord":
        inner = data[LOAD_KEY]
        return LoadRecord(setting=str(inner["setting"]), max_batch_size=int(inner["max_batch_size"]),
                          max_queue_delay_ms=float(inner["max_queue_delay_ms"]),
                          rate_per_s=float(inner["rate_per_s"]),
                          replicas=tuple(ReplicaRun.from_json_dict(r) for r in inner["replicas"]),
                          started_at=str(inner.get("started_at", "")), finished_at=str(inner.get("finished_at", "")),
                          lifetime=inner.get("lifetime"), error=inner.get("error"))


@dataclass(frozen=True)
class ServiceRecord:
    """Each replica's closed-loop service times by batch size (what drives the simulation)."""

    by_replica: tuple[Mapping[int, tuple[int, ...]], ...]
    """Per rank: batch size -> service times in microseconds."""
    measured_at: str
    lifetime: Optional[str] = None

    def pooled_s(self) -> dict[int, list[float]]:
        """Every replica's samples of each batch size, in seconds."""
        pooled: dict[int, list[float]] = {}
        for replica in self.by_replica:
            for size, times in replica.items():
                pooled.setdefault(int(size), []).extend(us / 1e6 for us in times)
        return pooled

    def fastest_single_s(self) -> float:
        """The fastest one-request service time any replica measured: no p99 below it can be met."""
        return min(us for replica in self.by_replica for us in replica.get(1, ())) / 1e6

    def to_json_dict(self) -> dict[str, Any]:
        return {SERVICE_KEY: {"by_replica": [{str(size): list(times) for size, times in sorted(r.items())}
                                             for r in self.by_replica],
                              "measured_at": self.measured_at, "lifetime": self.lifetime}}

    @staticmethod
    def from_json_dict(data: Mapping[str, Any]) -> "ServiceRecord":
        inner = data[SERVICE_KEY]
        return ServiceRecord(by_replica=tuple({int(size): tuple(times) for size, times in r.items()}
                                              for r in inner["by_replica"]),
                             measured_at=str(inner.get("measured_at", "")), lifetime=inner.get("lifetime"))

    @staticmethod
    def of(samples_by_replica: Sequence[Mapping[int, Sequence[float]]], *, measured_at: str,
           lifetime: Optional[str] = None) -> "ServiceRecord":
        return ServiceRecord(by_replica=tuple({size: tuple(_us(s) for s in times) for size, times in r.items()}
                                              for r in samples_by_replica),
                             measured_at=measured_at, lifetime=lifetime)
