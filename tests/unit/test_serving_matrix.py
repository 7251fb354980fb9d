"""The decision matrix of a serving sweep (mode=inference): the latency budget holds for every row, the latency
row names the evidence behind its p99, unmeasured energy is named, and the Pareto front of throughput vs p99."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from result_factory import make_result
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.explain.report import build_report
from trainer_tune.explain.matrix import MAX_THROUGHPUT, MIN_ENERGY, MIN_LATENCY, MIN_MEMORY, explain
from trainer_tune.measure.figures import LatencyFigures
from trainer_tune.evidence.comparison import compare
from trainer_tune.decide.verdict import decide
from trainer_tune.evidence.estimate import SettingEstimate

NO_RAPL = "CPU energy not measured: no powercap interface (/sys/class/powercap does not exist)"


def served(index: int, batch: int, *, rate: float, p99_ms: float, energy: Optional[float] = None,
           num_batches: int = 40) -> SettingEstimate:
    """A serving setting of `batch` per replica: `rate` tokens/s (exact in three rounds) and a p99 of `p99_ms`."""
    result = make_result(index=index, key=f"k{batch}", micro_batch_size=batch, tokens_per_s=rate,
                         is_baseline=index == 0)
    latency = LatencyFigures(p50_ms=p99_ms / 2, p90_ms=p99_ms * 0.8, p99_ms=p99_ms, max_ms=p99_ms * 1.1,
                             mean_ms=p99_ms / 2, num_batches=num_batches)
    return dataclasses.replace(result, mode="inference", latency=latency, energy_j_per_sample=energy,
                               energy_source="RAPL packages (package-0): whole sockets" if energy else None,
                               energy_note=None if energy is not None else NO_RAPL)


def sweep() -> list[SettingEstimate]:
    """Batch 4 the baseline; throughput, p99 and energy efficiency all grow with the batch; batch 8 is worse than
    batch 4 on both throughput and p99 (off the Pareto front)."""
    return [served(0, 4, rate=1000.0, p99_ms=20.0, energy=0.4), served(1, 1, rate=500.0, p99_ms=8.0, energy=0.9),
            served(2, 8, rate=900.0, p99_ms=30.0, energy=0.5), served(3, 16, rate=1600.0, p99_ms=60.0, energy=0.3),
            served(4, 64, rate=2000.0, p99_ms=200.0, energy=0.25, num_batches=120)]


def _rows(results: list[SettingEstimate], max_batch_latency_ms: Optional[float]) -> dict:
    over = [r.trial_key for r in results if r.latency is not None and max_batch_latency_ms is not None
            and r.latency.p99_ms > max_batch_latency_ms]
    matrix = explain(results, compare=compare, max_batch_latency_ms=max_batch_latency_ms, over_budget=over).matrix
    assert [w.objective for w in matrix] == [MAX_THROUGHPUT, MIN_LATENCY, MIN_ENERGY, MIN_MEMORY]
    return {w.objective: w for w in matrix}


def test_no_row_picks_a_setting_over_the_budget() -> None:
    rows = _rows(sweep(), max_batch_latency_ms=100.0)
    # 64x1 is the fastest and the most frugal, but over the budget: 16x1 wins both rows.
    throughput = rows[MAX_THROUGHPUT]
    assert (throughput.label, throughput.value, throughput.latency_p99_ms) == ("16x1", 1600.0, 60.0)
    assert throughput.note == ("every other setting within the budget is slower than the winner beyond noise "
                               "(the paired comparison); within the p99 budget of 100 ms (recommend.max_batch_latency_ms) "
                               "(64x1 over it, never picked)")
    assert (rows[MIN_ENERGY].label, rows[MIN_ENERGY].value) == ("16x1", 0.3)
    assert "runner-up 4x1 (0.4 J)" in rows[MIN_ENERGY].note
    latency = rows[MIN_LATENCY]
    assert (latency.label, latency.value, latency.throughput_per_s) == ("1x1", 8.0, 500.0)
    assert latency.note == ("p99 of 40 batches (the slowest replica at each), fewer than 100, so it interpolates "
                            "towards the slowest batch; a point value with no interval, so the measurements cannot say "
                            "whether it beats the runner-up 4x1 (20 ms) beyond noise")
    assert rows[MIN_MEMORY].note == "not measured: cpu"


def test_without_a_budget_the_fastest_wins_whatever_its_latency() -> None:
    rows = _rows(sweep(), max_batch_latency_ms=None)
    assert rows[MAX_THROUGHPUT].label == "64x1" and rows[MIN_ENERGY].label == "64x1"
    assert "budget" not in rows[MAX_THROUGHPUT].note


def test_nothing_meets_the_budget_only_the_latency_row_has_a_winner() -> None:
    rows = _rows(sweep(), max_batch_latency_ms=5.0)
    for objective in (MAX_THROUGHPUT, MIN_ENERGY, MIN_MEMORY):
        assert rows[objective].label is None and rows[objective].value is None
        assert rows[objective].note == "no batch size meets the p99 budget of 5 ms (recommend.max_batch_latency_ms)"
    assert rows[MIN_LATENCY].label == "1x1"
    assert rows[MIN_LATENCY].note.endswith("; over the p99 budget of 5 ms (recommend.max_batch_latency_ms), as is every "
                                           "batch size")


def test_energy_unmeasured_is_named_never_zero() -> None:
    results = [dataclasses.replace(r, energy_j_per_sample=None, energy_source=None, energy_note=NO_RAPL)
               for r in sweep()]
    energy = _rows(results, max_batch_latency_ms=None)[MIN_ENERGY]
    assert (energy.label, energy.value, energy.note) == (None, None, f"not measured: {NO_RAPL}")


def test_pareto_front_and_the_recommendation_carry_the_budget() -> None:
    rec = decide(sweep(), args=RecommendArgs(max_batch_latency_ms=100.0))
    assert rec.serving and rec.max_batch_latency_ms == 100.0 and rec.over_budget == ("k64",)
    assert build_report(rec).explanations is not None
    # 8x1 is slower than 4x1 and has the higher p99: every other batch is on the front.
    assert build_report(rec).explanations.pareto_keys == ("k1", "k4", "k16", "k64")
    data = json.loads(json.dumps(build_report(rec).to_json_dict()))
    assert data["max_batch_latency_ms"] == 100.0 and data["over_budget"] == ["k64"]
    assert [w["objective"] for w in data["explanations"]["matrix"]] == [MAX_THROUGHPUT, MIN_LATENCY, MIN_ENERGY,
                                                                        MIN_MEMORY]
    training = decide([dataclasses.replace(r, mode="train", latency=None) for r in sweep()], args=RecommendArgs())
    assert not training.serving and build_report(training).explanations.pareto_keys == ()  # type: ignore[union-attr]
