"""Figures travel typed: what the decision and the sinks read are fields of SettingEstimate, telemetry is frozen
dataclasses that become dicts only to cross the store or the journal, and labels are never parsed back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from result_factory import GIB, as_setting, make_gpu, make_measured, make_rank_telemetry, make_result, make_window
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.measure.cpu_usage import CpuUtilization
from trainer_tune.measure.figures import (
    ALLOCATOR_RESERVED, ANALYTIC, FLOP_COUNTER, CommSplit, CpuFigures, GpuFigures, MfuFigures)
from trainer_tune.config.flags import TrialFlags
from trainer_tune.measure.gpu_sampler import GpuSummary
from trainer_tune.run.journal import append_result, read_journal
from trainer_tune.sinks.wandb_sink import step_history
from trainer_tune.decide.verdict import decide
from trainer_tune.measure.record import RECORD_VERSION
from trainer_tune.evidence.estimate import SettingEstimate, estimate_of_window
from trainer_tune.measure.record import WindowRecord
from trainer_tune.sinks.charts import throughput_lines
from trainer_tune.measure.telemetry import RankTelemetry

OLD_JOURNAL = Path(__file__).parent / "data" / "trials_before_typed_fields.jsonl"
"""Written by trainer_tune at commit 6e910f1, before the typed fields: lines 1-3 by a real 2-rank CPU sweep
(`torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch window=quick sweep.micro_batch_sizes=[1,2]
sweep.grad_accums=[1] wandb=off`), line 4 by that commit's summarize.result_from_window from a CUDA-like window
(allocated 3 GiB, reserved 4 GiB, NVML 5 GiB used, two ranks with GPU readings, NSA statistics)."""


def test_a_measured_result_survives_the_journal_typed(tmp_path: Path) -> None:
    result = make_measured(index=0, micro_batch_size=2, step_s=0.1, allocated_gib=3, reserved_gib=4, nvml_gib=5,
                           flags=TrialFlags(bucket_cap_mb=1.0))
    assert isinstance(result.gpu, GpuFigures) and isinstance(result.gpu.per_rank[0], GpuSummary)
    assert isinstance(result.cpu, CpuFigures) and isinstance(result.cpu.per_rank[0], CpuUtilization)
    assert isinstance(result.comm, CommSplit) and result.mfu is None
    assert len(result.step_times_s) == len(result.losses) == len(result.nsa_aux_stats) == 8
    assert result.gpu_utilization_series == ((0.0, 90.0), (0.1, 91.0))
    assert result.device_memory_bytes == 10 * GIB and result.extra == {"ddp_applied": None}
    path = tmp_path / "trials.jsonl"
    append_result(path, result)
    assert len(path.read_text().splitlines()) == 1  # still one JSON line per trial
    assert read_journal(path).results == (result,)  # nested dataclasses and tuples, equal field by field


def test_mfu_figures_survive_the_journal(tmp_path: Path) -> None:
    mfu = MfuFigures(flops_per_token=2e6, achieved_tflops=0.5, achieved_tflops_per_device=0.25,
                     peak_tflops_per_device=None, mfu=None, mfu_raw=None, warning="no peak")
    result = dataclasses.replace(make_window(round_id="r0", index=0, key="a", step_times=[0.1, 0.2]), mfu=mfu)
    counted = MfuFigures(flops_per_token=None, flops_per_sample=3e6, flops_source=FLOP_COUNTER,
                         count_note="FlopCounterMode has no formula for x.y", achieved_tflops=0.5,
                         achieved_tflops_per_device=0.25, peak_tflops_per_device=1.0, mfu=None, mfu_raw=0.25,
                         warning="FlopCounterMode has no formula for x.y; MFU not reported")
    images = dataclasses.replace(make_window(round_id="r0", index=1, key="b", step_times=[0.1, 0.2]), mfu=counted,
                                 gpu=dataclasses.replace(make_gpu(), energy_j=8.0, energy_j_per_sample=0.5))
    uncounted = dataclasses.replace(make_window(round_id="r0", index=2, key="c"), mfu=None,
                                    mfu_note="FlopCounterMode could not count one micro-step: TypeError: x")
    for record in (result, images, uncounted):
        append_result(tmp_path / "trials.jsonl", record)
    assert read_journal(tmp_path / "trials.jsonl").results == (result, images, uncounted)


def test_a_record_from_before_counted_flops_and_energy_per_sample_reads_back() -> None:
    mfu = MfuFigures(flops_per_token=2e6, flops_per_sample=2e6 * 128, achieved_tflops=0.5,
                     achieved_tflops_per_device=0.25, peak_tflops_per_device=None, mfu=None, mfu_raw=None,
                     warning="no peak")
    record = dataclasses.replace(make_window(round_id="r0", index=0, key="a"), mfu=mfu,
                                 gpu=dataclasses.replace(make_gpu(), energy_j=8.0, energy_j_per_sample=0.5))
    line = json.loads(json.dumps(record.to_json_dict()))
    for name in ("flops_per_sample", "flops_source", "count_note"):
        del line["mfu"][name]
    del line["gpu"]["energy_j_per_sample"], line["mfu_note"]
    old = WindowRecord.from_json_dict(line)  # a line written before these fields
    assert old.mfu == dataclasses.replace(mfu, flops_per_sample=None)  # it was the formula's: flops_source analytic
    assert old.mfu is not None and old.mfu.flops_source == ANALYTIC and old.mfu_note is None
    assert old.gpu is not None and old.gpu.energy_j == 8.0 and old.gpu.energy_j_per_sample is None


def test_rank_telemetry_crosses_the_store_as_a_dict_and_comes_back_equal() -> None:
    readings = make_rank_telemetry(nvml_used_bytes=5 * GIB)
    posted = json.loads(json.dumps(readings.to_json_dict()))  # what DistSession.exchange stores and returns
    assert RankTelemetry.from_json_dict(posted) == readings
    cpu_only = RankTelemetry(cpu=readings.cpu, gpu=None)
    assert RankTelemetry.from_json_dict(json.loads(json.dumps(cpu_only.to_json_dict()))) == cpu_only


def test_a_journal_from_before_the_typed_fields_reads_into_them() -> None:
    lines = [json.loads(line) for line in OLD_JOURNAL.read_text().splitlines()]
    assert all("record_version" not in line for line in lines)
    results = read_journal(OLD_JOURNAL).results
    assert len(results) == len(lines) == 4
    for line, result in zip(lines, results):
        old = line["extra"]
        assert result.record_version == RECORD_VERSION
        assert result.step_times_s == tuple(old["step_times_s"]) and result.losses == tuple(old["losses"])
        assert result.gpu_utilization_series == tuple(tuple(p) for p in old["gpu_utilization_series"])
        assert result.device_memory_bytes == old["device_memory_bytes"]
        assert result.extra == {"ddp_applied": old["ddp_applied"]}  # only diagnostics are left there
        assert result.comm == CommSplit(**line["comm"]) and result.mfu == MfuFigures(**line["mfu"])
        assert result.cpu is not None and result.cpu.process_pct_mean == line["cpu"]["process_pct_mean"]
    cpu_trial, gpu_trial = results[0], results[3]
    # On the CPU there was no memory figure, and there still is none.
    assert (cpu_trial.peak_memory_bytes, cpu_trial.peak_memory_source, cpu_trial.peak_memory_allocated_bytes) == \
        (None, None, None)
    assert cpu_trial.peak_memory_note == "the cpu device does not report allocator peaks"
    # The old `peak_memory_bytes` was the allocated peak: it keeps that name now, and the figure is today's rule.
    assert gpu_trial.peak_memory_allocated_bytes == 3 * GIB
    assert (gpu_trial.peak_memory_bytes, gpu_trial.peak_memory_source) == (4 * GIB, ALLOCATOR_RESERVED)
    assert gpu_trial.gpu is not None and gpu_trial.gpu.memory_used_peak_bytes == 5 * GIB
    assert gpu_trial.gpu.per_rank[1].util_mean_pct == 80.0 and gpu_trial.gpu.num_alloc_retries == 2
    assert gpu_trial.nsa_aux_stats == tuple(lines[3]["extra"]["nsa_aux_stats"])
    # A line from before rounds is one window: it is compared, but with no interval (and so no GO on it).
    slow_base = dataclasses.replace(results[1], is_baseline=True)
    rec = decide([estimate_of_window(dataclasses.replace(results[0], is_baseline=False)),
                  estimate_of_window(slow_base)], args=RecommendArgs())
    assert rec.best is not None and rec.best.trial_key == results[0].trial_key and rec.speedup_ci95 is None
    assert rec.speedup is not None and "one window only" in rec.reasons[0]


def test_the_speedup_interval_comes_from_the_window_rates_field() -> None:
    base = make_result(index=0, key="base", is_baseline=True, windows={"r0": 1000, "r1": 950, "r2": 1040})
    fast = make_result(index=1, key="fast", micro_batch_size=4, windows={"r0": 1700, "r1": 1640, "r2": 1790})
    assert fast.extra == {} and len(fast.window_throughput_per_s) == 3
    rec = decide([base, fast], args=RecommendArgs(min_speedup=1.05))
    assert rec.best is fast and rec.speedup_ci95 is not None
    low, high = rec.speedup_ci95
    assert low < rec.speedup < high  # type: ignore[operator]
    settings = json.loads(json.dumps(rec.to_json_dict()))["settings"]
    assert settings[1]["window_throughput_per_s"] == fast.window_throughput_per_s

def test_step_history_reads_the_typed_fields() -> None:
    result = make_measured(index=0, micro_batch_size=2, step_s=0.1, allocated_gib=3, reserved_gib=4, nvml_gib=5)
    rows = step_history(as_setting(result))
    steps = [row for row in rows if "step" in row]
    assert [row["train/step_time_s"] for row in steps] == list(result.step_times_s)
    assert [row["nsa/selection_entropy"] for row in steps] == [s["selection_entropy"] for s in result.nsa_aux_stats]
    assert [(row["gpu_time_s"], row["gpu/util_pct"]) for row in rows if "gpu_time_s" in row] == \
        list(result.gpu_utilization_series)


def test_chart_lines_come_from_the_flags_never_the_label() -> None:
    plain = [make_result(index=i, key=f"p{m}", micro_batch_size=m) for i, m in enumerate((1, 2))]
    small_buckets = [make_result(index=2 + i, key=f"b{m}", micro_batch_size=m, flags=TrialFlags(bucket_cap_mb=1.0))
                     for i, m in enumerate((1, 2))]
    # Labels are for people: a multirun job names only what it changed, and anyone may rename a setting.
    renamed = dataclasses.replace(small_buckets[1], label="2x1 (small buckets)")
    lines = throughput_lines([*plain, small_buckets[0], renamed])
    assert {name: [r.trial_key for r in members] for name, members in lines.items()} == {
        "grad_accum=1 bucket_cap_mb=1": ["b1", "b2"], "grad_accum=1 bucket_cap_mb=null": ["p1", "p2"]}
    assert list(throughput_lines(plain)) == ["grad_accum=1"]  # a flag no setting varies is not named
