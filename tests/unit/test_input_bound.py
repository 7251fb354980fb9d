"""Input-bound settings: the threshold, the reasons and the verdict (verdict.decide), the report's section, and
data.num_workers as a flag and a sweep axis (labels, keys, overrides, config checks)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

import pytest
import torch

import trainer_tune.workloads.data as data_module
from result_factory import make_result
from trainer_tune.config.schema import (
    ConfigError, DataArgs, DdpArgs, ModelArgs, NsaArgs, RecommendArgs, SweepArgs, TuneConfig)
from trainer_tune.explain.report import build_report
from trainer_tune.config.flags import TrialFlags, flags_to_environ, flags_to_overrides, resolve_flags
from trainer_tune.plan import build_plan
from trainer_tune.decide.verdict import GO, MEASURED, NO_GO, decide
from trainer_tune.config.rerun import run_overrides
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.sinks.report import write_report
from trainer_tune.workloads.data import build_batches
from trainer_tune.workloads.targets import ignored_settings

ARGS = RecommendArgs(min_speedup=1.05)


def _waiting(result: SettingEstimate, fraction: Optional[float], median_s: Optional[float] = 0.012) -> SettingEstimate:
    return dataclasses.replace(result, data_wait_fraction=fraction, data_wait_s_median=median_s)


def _sweep(*, base_wait: float, fast_wait: float, fast_workers: int = 0) -> list[SettingEstimate]:
    return [_waiting(make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True), base_wait, 0.004),
            _waiting(make_result(index=1, key="fast", tokens_per_s=1300, micro_batch_size=4,
                                 flags=TrialFlags(num_workers=fast_workers)), fast_wait, 0.012)]


def test_an_input_bound_setting_is_named_with_its_wait_and_what_to_try_and_still_goes() -> None:
    rec = decide(_sweep(base_wait=0.02, fast_wait=0.38), args=ARGS)
    assert rec.decision == GO and rec.chosen is not None and rec.chosen.trial_key == "fast"
    assert rec.verdict.endswith("; input-bound: 38% of step time waiting for batches")
    named = [r for r in rec.reasons if "input-bound" in r]
    assert named == ["4x1 is input-bound: 38% of its step time waiting for batches (median 12 ms per step); try "
                     "data.num_workers (now 0), data.pin_memory, data.prefetch_factor, or sweep.num_workers=[0,2,4]"]
    assert [(w.label, w.input_bound) for w in rec.input_waits] == [("2x1", False), ("4x1", True)]
    assert rec.to_json_dict()["input_waits"][1]["data_wait_fraction"] == 0.38


def test_the_hint_starts_from_the_workers_the_setting_had() -> None:
    rec = decide(_sweep(base_wait=0.0, fast_wait=0.5, fast_workers=2), args=ARGS)
    assert any("data.num_workers (now 2)" in r and "sweep.num_workers=[2,4,8]" in r for r in rec.reasons)


def test_a_kept_baseline_that_is_input_bound_says_so_in_the_verdict() -> None:
    results = _sweep(base_wait=0.25, fast_wait=0.0)
    results[1] = dataclasses.replace(results[1], tokens_per_s=1010, window_throughput_per_s={
        f"r{i}": 1010.0 for i in range(3)})
    rec = decide(results, args=ARGS)
    assert rec.decision == NO_GO
    assert rec.verdict.endswith("; input-bound: 25% of step time waiting for batches")
    assert [r.split(":")[0] for r in rec.reasons if "is input-bound" in r] == ["2x1 is input-bound"]


def test_a_single_measured_setting_is_named_too() -> None:
    rec = decide(_sweep(base_wait=0.6, fast_wait=0.0)[:1], args=ARGS)
    assert rec.decision == MEASURED and "input-bound: 60%" in rec.verdict


@pytest.mark.parametrize("threshold,named", [(0.1, False), (0.099, True), (None, False)])
def test_the_threshold_is_a_strict_bound_and_null_names_none(threshold: Optional[float], named: bool) -> None:
    rec = decide(_sweep(base_wait=0.0, fast_wait=0.1), args=RecommendArgs(input_bound_fraction=threshold))
    assert ("input-bound" in rec.verdict) is named
    assert any("is input-bound" in r for r in rec.reasons) is named
    assert bool(rec.input_waits) is named  # nothing to show: no wait above it, one num_workers value


def test_nothing_is_named_without_a_recorded_wait_or_for_a_failed_setting() -> None:
    results = _sweep(base_wait=0.0, fast_wait=0.0)
    results[1] = _waiting(results[1], None, None)
    results.append(_waiting(make_result(index=2, key="oom", micro_batch_size=8, status="oom"), 0.9))
    rec = decide(results, args=ARGS)
    assert not any("input-bound" in r for r in rec.reasons) and "input-bound" not in rec.verdict
    assert rec.input_waits == ()


def test_many_input_bound_settings_share_one_line_past_the_first_few() -> None:
    results = [_waiting(make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True), 0.3)]
    results += [_waiting(make_result(index=i, key=f"k{i}", tokens_per_s=1000 + 100 * i, micro_batch_size=2, grad_accum=i
                                     + 1), 0.3 + 0.01 * i) for i in range(1, 6)]
    rec = decide(results, args=ARGS)
    named = [r for r in rec.reasons if "input-bound" in r]
    assert len(named) == 4 and named[0].startswith("2x6 is input-bound")  # the chosen setting first
    assert named[-1] == "also input-bound (share of step time waiting for batches): 2x3 (32%), 2x4 (33%), 2x5 (34%)"
    assert sum(w.input_bound for w in rec.input_waits) == 6


def test_a_num_workers_sweep_is_shown_even_when_nothing_waits(tmp_path: Path) -> None:
    rec = decide(_sweep(base_wait=0.01, fast_wait=0.0, fast_workers=2), args=ARGS)
    assert [(w.label, w.num_workers, w.input_bound) for w in rec.input_waits] == [("2x1", 0, False), ("4x1", 2, False)]
    report = write_report(tmp_path, rec.settings, build_report(rec)).report.read_text()
    section = report.split("## Input pipeline", 1)[1].split("\n## ", 1)[0]
    assert "| 2x1 | 0 | 1% | 4 | no |" in section and "| 4x1 | 2 | 0% | 12 | no |" in section
    assert "recommend.input_bound_fraction=0.1" in section


def test_the_report_has_no_input_pipeline_section_when_there_is_nothing_to_say(tmp_path: Path) -> None:
    rec = decide(_sweep(base_wait=0.01, fast_wait=0.02), args=ARGS)
    assert "## Input pipeline" not in write_report(tmp_path, rec.settings, build_report(rec)).report.read_text()


def test_num_workers_is_a_flag_with_no_environment_variable() -> None:
    flags = resolve_flags(nsa=NsaArgs(), ddp=DdpArgs(), data=DataArgs(num_workers=3), environ={})
    assert flags == TrialFlags(num_workers=3)
    assert flags_to_environ(flags) == flags_to_environ(TrialFlags())
    assert "data.num_workers=3" in flags_to_overrides(flags)


def _cfg(*, data_workers: int = 0, **sweep: object) -> TuneConfig:
    """sweep.* from `sweep`; data.num_workers from `data_workers`."""
    cfg = TuneConfig(data=DataArgs(num_workers=data_workers), sweep=SweepArgs(**sweep))  # type: ignore[arg-type]
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = 2, 1
    return cfg


def _plan(cfg: TuneConfig) -> list:
    flags = resolve_flags(nsa=cfg.nsa, ddp=cfg.ddp, data=cfg.data, environ={})
    return build_plan(cfg, world_size=2, base_flags=flags, device_type="cpu")


def test_sweep_num_workers_multiplies_the_grid_and_names_each_setting() -> None:
    plan = _plan(_cfg(micro_batch_sizes=[2, 4], num_workers=[0, 2]))
    assert [s.label(swept_flags=("num_workers",)) for s in plan] == \
        ["2x1 num_workers=0", "2x1 num_workers=2", "4x1 num_workers=0", "4x1 num_workers=2"]
    assert len({s.key for s in plan}) == 4


def test_a_setting_with_two_workers_has_one_key_whether_swept_or_set() -> None:
    """data.num_workers is keyed with the flags, not with the data's measurement context: a journal measured with
    sweep.num_workers=[0,2] serves a later run with data.num_workers=2."""
    swept = _plan(_cfg(num_workers=[0, 2]))
    given = _plan(_cfg(data_workers=2))
    assert given[0].key == swept[1].key and given[0].key != swept[0].key


def test_a_rerun_takes_num_workers_from_the_setting_not_from_the_run() -> None:
    run = {"data": {"num_workers": 2, "seed": 1}}
    base = {"data": {"num_workers": 0, "seed": 1}}
    assert run_overrides(run, base, choices={}, default_choices={}) == ()


@pytest.mark.parametrize("values", [[], [-1], [2, 2]])
def test_bad_num_workers_axes_are_rejected(values: list[int]) -> None:
    with pytest.raises(ConfigError, match=r"sweep.num_workers=\["):
        SweepArgs(num_workers=values)


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1])
def test_bad_thresholds_are_rejected(value: float) -> None:
    with pytest.raises(ConfigError, match="recommend.input_bound_fraction"):
        RecommendArgs(input_bound_fraction=value)


def test_workers_with_the_built_in_data_are_named_as_changing_nothing() -> None:
    assert ignored_settings(_cfg(num_workers=[0, 2])) == [
        "sweep.num_workers=[0, 2] multiplies the grid but changes nothing with the built-in data "
        "(data.kind=synthetic, made without a DataLoader): workers only load a Dataset that data._target_ returns"]
    assert ignored_settings(_cfg(data_workers=2)) == [
        "data.num_workers=2 is ignored: the built-in data (data.kind=synthetic) is made without a DataLoader; "
        "workers only load a Dataset that data._target_ returns"]
    with_source = _cfg(num_workers=[0, 2])
    with_source.data._target_ = "helpers.input_pipeline.SlowDataset"
    assert ignored_settings(with_source) == []


def test_workers_for_a_source_that_is_not_a_dataset_are_named_once(caplog: pytest.LogCaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A source that returns its own iterable is used as given: data.num_workers cannot reach it."""
    monkeypatch.setattr(data_module, "_warned_unused_workers", set())
    source = DataArgs(_target_="trainer_tune.examples.batches.counting_batches")
    with caplog.at_level(logging.WARNING, logger=data_module.__name__):
        for _ in range(2):  # two trials of the sweep
            next(build_batches(data=source, model=ModelArgs(), micro_batch_size=2, rank=0, world_size=1,
                               device=torch.device("cpu"), num_workers=2))
    assert [r.getMessage() for r in caplog.records] == [
        "data.num_workers=2 (or sweep.num_workers) changes nothing here: "
        "data._target_='trainer_tune.examples.batches.counting_batches' returned a generator, used as given; "
        "workers only load a Dataset that trainer_tune wraps in its own DataLoader"]
