"""Explanations on hand-worked numbers: per-sample time, efficiency and its interval, the facts, the matrix."""

from __future__ import annotations

import dataclasses
import json

import pytest

from result_factory import make_comm, make_gpu, make_result
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.explain.report import build_report
from trainer_tune.explain.matrix import LINEAR, NO_INTERVAL, REFERENCE, SUB_LINEAR, SUPER_LINEAR, explain
from trainer_tune.measure.figures import ALLOCATOR_RESERVED, MEMORY_SOURCES
from trainer_tune.config.flags import TrialFlags
from trainer_tune.evidence.comparison import compare
from trainer_tune.decide.verdict import decide

GIB = 1024 ** 3


def _sweep() -> list:
    """World size 2, 128 tokens per sample, three rounds. The grad_accum=1 series has its reference at 1x1, whose
    rounds run at 1000, 900 and 1100 tokens/s; every other setting moves with those rounds, so the comparisons
    are paired (comparison.compare) and their intervals are what the decision itself would use."""
    rounds = {"r0": 1.0, "r1": 0.9, "r2": 1.1}

    def windows(*per_round: float) -> dict[str, float]:
        return {r: 1000 * f * x for (r, f), x in zip(rounds.items(), per_round)}

    ref = make_result(index=0, key="1x1", micro_batch_size=1, windows=windows(1, 1, 1), is_baseline=True,
                      memory_bytes=GIB)
    ref = dataclasses.replace(ref, gpu=make_gpu(util_mean_pct=100.0), energy_j_per_sample=0.25,
                              energy_source="NVML (counter)")
    slow = make_result(index=2, key="4x1", micro_batch_size=4, windows=windows(0.9, 0.905, 0.895),
                       memory_bytes=2 * GIB)
    slow = dataclasses.replace(slow, gpu=make_gpu(util_mean_pct=35.0), energy_j_per_sample=0.4,
                               energy_source="NVML (counter)", num_outlier_steps=3,
                               comm=make_comm(sync_s=0.05, no_sync_s=0.02))
    return [ref,
            make_result(index=1, key="2x1", micro_batch_size=2, windows=windows(1.5, 1.52, 1.49)),
            slow,
            make_result(index=3, key="8x1", micro_batch_size=8, windows=windows(1.1, 0.95, 1.0)),
            make_result(index=4, key="2x2", micro_batch_size=2, grad_accum=2, windows=windows(1.6, 1.53, 1.55)),
            make_result(index=5, key="16x1", micro_batch_size=16, status="oom")]


def _by_key(results: list) -> dict:
    return {r.trial_key: r for r in results}


def test_per_sample_time_and_efficiency_against_the_smallest_batch() -> None:
    sweep = _by_key(_sweep())
    points = {(p.varies, p.label): p for p in explain(list(sweep.values()), compare=compare).points}
    # grad_accum=2 and micro-batches 1, 4, 8 have one finished setting on the other axis: no series there.
    assert sorted(points) == [("grad_accum", "2x1"), ("grad_accum", "2x2"), ("micro_batch_size", "1x1"),
                              ("micro_batch_size", "2x1"), ("micro_batch_size", "4x1"), ("micro_batch_size", "8x1")]
    ref = points[("micro_batch_size", "1x1")]
    assert ref.scaling == REFERENCE and ref.efficiency == 1.0 and ref.series == "grad_accum=1"
    assert ref.per_sample_time_s == pytest.approx(128 / sweep["1x1"].tokens_per_s)

    fast = points[("micro_batch_size", "2x1")]
    assert fast.efficiency == pytest.approx(1.5, rel=0.01)
    # The efficiency interval is the one comparison rule's interval of tokens/s(2x1) / tokens/s(1x1).
    assert fast.efficiency_ci95 == pytest.approx(compare(sweep["2x1"], sweep["1x1"]).interval)
    assert fast.scaling == SUPER_LINEAR and fast.reference_label == "1x1"

    slow = points[("micro_batch_size", "4x1")]
    assert slow.efficiency == pytest.approx(0.9, rel=0.01)
    assert slow.efficiency_ci95[1] < 1.0 and slow.scaling == SUB_LINEAR  # type: ignore[index]
    assert (slow.gpu_util_mean_pct, slow.memory_bytes, slow.exposed_comm_fraction) == (35.0, 2 * GIB, 0.6)

    noisy = points[("micro_batch_size", "8x1")]
    assert noisy.scaling == LINEAR  # rounds at +10%, -5%, 0%: the interval holds 1

    accum = points[("grad_accum", "2x2")]
    assert accum.series == "micro_batch_size=2" and accum.reference_label == "2x1"
    assert accum.efficiency == pytest.approx(sweep["2x2"].tokens_per_s / sweep["2x1"].tokens_per_s)
    assert accum.scaling == LINEAR


def test_facts_state_measured_figures_side_by_side() -> None:
    sweep = _by_key(_sweep())
    facts = explain(list(sweep.values()), compare=compare).facts
    low, high = compare(sweep["4x1"], sweep["1x1"]).interval  # type: ignore[misc]
    slow = next(f for f in facts if f.startswith("4x1 is sub-linear against 1x1 (grad_accum=1): a sample takes "))
    assert (f"efficiency 0.90 (95% CI {low:.2f} to {high:.2f}), dearer per sample beyond noise; beside it: GPU "
            f"utilization 35% vs 100% at 1x1, peak memory 2.0 GiB vs 1.0 GiB, exposed all-reduce 60% of the "
            f"step") in slow
    assert any(f.startswith("2x1 is super-linear against 1x1 (grad_accum=1)") and "efficiency 1.50" in f
               for f in facts)
    assert ("exposed all-reduce takes 60% of the step at 4x1 (median step 50 ms with gradient sync, 20 ms without: "
            "30 ms)") in facts
    assert any(f.startswith("4x1: 3 of 3 measured steps were outliers") for f in facts)
    assert not any("8x1" in f or "2x2" in f for f in facts)  # within noise: nothing to explain


def test_decision_matrix_by_objective() -> None:
    # Training: no latency row; energy per sample (SettingEstimate.energy_j_per_sample), in training too.
    throughput, energy, memory = explain(_sweep(), compare=compare).matrix
    assert (throughput.objective, throughput.label) == ("max_throughput", "2x2")
    # 2x2 is ahead of 2x1 in every round (+6.7%, +0.7%, +4.0%), but three rounds cannot rule out a tie.
    assert throughput.tied_with == ("2x1",)
    assert (memory.objective, memory.label, memory.value) == ("min_memory_bytes", "1x1", GIB)
    assert memory.note.startswith(f"peak memory {MEMORY_SOURCES[ALLOCATOR_RESERVED]}; measured for 2 of 5 settings")
    assert (energy.objective, energy.label, energy.value) == ("min_energy_j_per_sample", "1x1", 0.25)
    # A point value: the row says the measurements cannot order it against the runner-up.
    assert energy.note == ("whole-job energy over the measured steps per sample (NVML (counter)); one reading per "
                           "window; a point value with no interval, so the measurements cannot say whether it beats "
                           "the runner-up 4x1 (0.4 J) beyond noise; measured for 2 of 5 settings")
    # Each row carries its winner's figures, so a sink shows them without looking anything up.
    assert (throughput.micro_batch_size, throughput.energy_j_per_sample, throughput.memory_bytes) == (2, None, None)
    ref = _by_key(_sweep())["1x1"]
    assert (energy.throughput_per_s, energy.memory_bytes, energy.latency_p99_ms) == (ref.tokens_per_s, GIB, None)


def test_not_measured_objectives_say_why() -> None:
    results = [dataclasses.replace(make_result(index=i, key=str(i), micro_batch_size=m, windows={"r0": 1000.0}),
                                   gpu_note="GPU sampling was off (telemetry.gpu_sampling=false)")
               for i, m in enumerate((1, 2))]
    explained = explain(results, compare=compare)
    throughput, energy, memory = explained.matrix
    # Equal tokens/s, one window each (no interval): the first measured wins, the other is tied with it.
    assert (throughput.label, throughput.tied_with, throughput.value_ci95) == ("1x1", ("2x1",), None)
    assert memory.value is None and memory.note == "not measured: cpu"  # make_result's peak_memory_note
    assert energy.value is None and energy.note == "not measured: no energy reading"
    assert [p.scaling for p in explained.points] == [REFERENCE, NO_INTERVAL]


def test_all_failed_and_baseline_only() -> None:
    failed = explain(compare=compare, results=[make_result(index=0, key="a", status="oom", is_baseline=True),
                      make_result(index=1, key="b", status="error", micro_batch_size=4)])
    assert failed.points == () and failed.facts == ()
    assert [w.value for w in failed.matrix] == [None, None, None]
    assert [w.objective for w in failed.matrix] == ["max_throughput", "min_energy_j_per_sample", "min_memory_bytes"]
    assert all("no setting finished cleanly" in w.note for w in failed.matrix)

    alone = explain(compare=compare, results=[make_result(index=0, key="a", is_baseline=True, ci=[900, 1100])])
    assert alone.points == ()
    assert alone.facts[0].startswith("no scaling to compare")
    assert alone.matrix[0].label == "2x1" and alone.matrix[0].tied_with == ()


def test_settings_that_differ_in_a_flag_are_not_one_series() -> None:
    """Series come from result.flags, never from the label (labels are for people: a multirun job's label names
    only the flags it changed, a re-check's says so)."""
    a = make_result(index=0, key="a", micro_batch_size=1, ci=[900, 1100])
    b = make_result(index=1, key="b", micro_batch_size=2, ci=[900, 1100], flags=TrialFlags(bucket_cap_mb=1.0))
    assert b.label == "2x1"  # the flag is not in the label
    assert explain([a, b], compare=compare).points == ()
    c = make_result(index=2, key="c", micro_batch_size=4, ci=[900, 1100], flags=TrialFlags(bucket_cap_mb=1.0))
    c = dataclasses.replace(c, label="4x1 (the user's favourite)")
    points = explain([a, b, c], compare=compare).points
    assert [(p.label, p.series) for p in points] == [("2x1", "grad_accum=1 bucket_cap_mb=1"),
                                                    ("4x1 (the user's favourite)", "grad_accum=1 bucket_cap_mb=1")]


def test_recommendation_json_carries_the_explanations() -> None:
    rec = decide(_sweep(), args=RecommendArgs(min_speedup=1.05))
    data = json.loads(json.dumps(build_report(rec).to_json_dict()))
    assert data["verdict"] == rec.verdict
    assert [w["objective"] for w in data["explanations"]["matrix"]] == \
        ["max_throughput", "min_energy_j_per_sample", "min_memory_bytes"]
    assert data["explanations"]["facts"] == list(build_report(rec).explanations.facts)  # type: ignore[union-attr]
    assert data["not_measured"] == []


def test_energy_without_a_reading_is_named_unmeasured_never_zero() -> None:
    """No energy figure (a CPU without readable RAPL counters): the row has no winner and gives the trials' own
    reason, never 0 J."""
    why = "CPU energy not measured: no powercap interface (/sys/class/powercap does not exist)"
    results = [dataclasses.replace(make_result(index=i, key=str(i), micro_batch_size=2 ** i), energy_note=why)
               for i in range(2)]
    energy = explain(results, compare=compare).winner("min_energy_j_per_sample")
    assert energy is not None
    assert (energy.label, energy.value, energy.note) == (None, None, f"not measured: {why}")


def test_an_exposed_share_within_noise_is_said_to_be() -> None:
    comm = make_comm(sync_s=0.1, no_sync_s=0.098, within_noise=True)
    result = dataclasses.replace(make_result(index=0, key="a", micro_batch_size=8), comm=comm)
    assert explain([result], compare=compare).facts[1] == (
        "the exposed all-reduce share is within the synced steps' noise, so not distinguishable from 0, at 8x1 (2%)")
