"""The race of a serving sweep: a batch over the p99 budget leaves it (it can never be chosen), and only
settings that can be chosen race by throughput; with recommend.objective=latency or energy nothing races by
throughput, since those objectives pick what the throughput race would drop."""

from __future__ import annotations

import dataclasses

from tests.unit.result_factory import make_result
from trainer_tune.config.schema import Mode, Objective, RecommendArgs, SweepArgs, TuneConfig
from trainer_tune.measure.figures import LatencyFigures
from trainer_tune.decide.verdict import GO, decide
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.decide.race import RaceSummary
from trainer_tune.decide.race import after_round


def _served(index: int, batch: int, *, rate: float, p99_ms: float, num_windows: int = 3) -> SettingEstimate:
    """A setting measured in its last `num_windows` of three rounds at exactly `rate` (comparisons are exact),
    with its p99."""
    result = make_result(index=index, key=f"k{batch}", micro_batch_size=batch, is_baseline=index == 0,
                         windows={f"r{i}": rate for i in range(3 - num_windows, 3)})
    latency = LatencyFigures(p50_ms=p99_ms / 2, p90_ms=p99_ms * 0.8, p99_ms=p99_ms, max_ms=p99_ms * 1.1,
                             mean_ms=p99_ms / 2, num_batches=12)
    return dataclasses.replace(result, mode="inference", latency=latency)


def _settings(*, late: bool = False) -> dict[str, SettingEstimate]:
    # The baseline, batch 4, within a 100 ms budget; batch 1 slower and within it; batch 64 the fastest, over it
    # (with `late`, let in for the last round only, as strategy=power lets a doubling in).
    served = [_served(0, 4, rate=1000.0, p99_ms=20.0), _served(1, 1, rate=500.0, p99_ms=8.0),
              _served(2, 64, rate=2000.0, p99_ms=200.0, num_windows=1 if late else 3)]
    return {r.trial_key: r for r in served}


def _cfg(*, max_batch_latency_ms: float | None = 100.0, objective: Objective = Objective.throughput,
         min_rounds: int = 3, race: bool = True) -> TuneConfig:
    cfg = TuneConfig()
    cfg.mode = Mode.inference
    cfg.sweep = SweepArgs(micro_batch_sizes=[1, 4, 64], min_rounds=min_rounds, race=race)
    cfg.recommend = RecommendArgs(max_batch_latency_ms=max_batch_latency_ms, objective=objective)
    return cfg


def _drops(cfg: TuneConfig, *, rounds_done: int = 3, late: bool = False) -> dict[str, str]:
    settings = _settings(late=late)
    drops, _entering, _closed = after_round(cfg, [], settings=settings, contenders=set(settings), entered=[],
                                             rounds_done=rounds_done, swept=())
    return {d.label: d.reason for d in drops}


def test_a_batch_over_the_budget_leaves_and_does_not_lead_the_throughput_race() -> None:
    drops = _drops(_cfg())
    # 64x1 leaves for the budget; 1x1 leaves behind 4x1, the fastest batch that can be chosen (the over-budget
    # 64x1 leading would have dropped 4x1 as well, and left only a batch that can never be chosen).
    assert drops == {"64x1": "over the latency budget: p99 200.0 ms > recommend.max_batch_latency_ms=100 (never chosen)",
                     "1x1": drops["1x1"]}
    assert "against 4x1" in drops["1x1"]


def test_nothing_leaves_before_min_rounds_or_without_the_race() -> None:
    assert _drops(_cfg(min_rounds=4)) == {}  # three windows each
    assert _drops(_cfg(race=False)) == {}


def test_a_late_entrant_over_the_budget_stays_for_its_own_min_rounds_windows() -> None:
    assert set(_drops(_cfg(objective=Objective.latency), late=True)) == set()


def test_the_budget_alone_drops_from_min_rounds_even_when_that_is_one_round() -> None:
    assert set(_drops(_cfg(min_rounds=1), rounds_done=1)) == {"64x1"}  # the throughput race waits for 2 windows


def test_point_objectives_race_only_against_the_budget() -> None:
    assert set(_drops(_cfg(objective=Objective.latency))) == {"64x1"}
    assert _drops(_cfg(objective=Objective.energy, max_batch_latency_ms=None)) == {}


def test_a_latency_objective_may_choose_a_setting_the_throughput_race_dropped() -> None:
    """A journal raced by throughput (1x1 dropped) decided again with recommend.objective=latency."""
    settings = list(_settings().values())
    race = RaceSummary(num_rounds=3, end_reason="sweep.max_rounds=3 reached", drops=(),
                       contenders=("4x1", "64x1"), contender_keys=("k4", "k64"))
    rec = decide(settings, args=RecommendArgs(objective=Objective.latency), race=race)
    assert rec.decision == GO and rec.chosen is not None and rec.chosen.label == "1x1"
