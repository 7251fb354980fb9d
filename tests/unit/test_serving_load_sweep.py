"""A serving-under-load sweep's pure parts: its config refusals, its plan, its journal lines, and its decision from
records of known service times (known answers, not the code's formulas again)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from trainer_tune.config.schema import (
    BaselineArgs, ConfigError, Mode, Objective, RecommendArgs, ServingArgs, SweepArgs, TuneConfig)
from trainer_tune.decide.serving_load import (
    decide_serving_load, predict_settings, serving_budget, setting_load, settings_to_confirm)
from trainer_tune.evidence.batcher_sim import simulate
from trainer_tune.evidence.serving_load import RateSearch
from trainer_tune.explain.serving_load import build_serving_report
from trainer_tune.measure.load_record import LoadRecord, ReplicaRun, ServiceRecord
from trainer_tune.plan import BatcherSetting, batcher_plan, serving_definition
from trainer_tune.run.journal import JournalHeader, append_serving, read_journal, resume_refusal, write_header
from trainer_tune.workloads.arrivals import poisson_arrivals_s


def _serving_cfg(**serving: object) -> TuneConfig:
    return TuneConfig(mode=Mode.inference, serving=ServingArgs(**{"rate_per_s": "auto", **serving}),
                      recommend=RecommendArgs(max_p99_ms=10.0), baseline=BaselineArgs(micro_batch_size=2))


# --- Refusals, each one line naming the key -------------------------------------------------------------------

@pytest.mark.parametrize("serving,key", [
    (dict(rate_per_s=[0.0, 10.0]), "serving.rate_per_s"),
    (dict(rate_per_s=[-5.0]), "serving.rate_per_s"),
    (dict(rate_per_s="fast"), "serving.rate_per_s"),
    (dict(max_queue_delays_ms=[-1.0]), "serving.max_queue_delays_ms"),
    (dict(max_batch_sizes=[0, 4]), "serving.max_batch_sizes"),
    (dict(requests_per_rate=10), "serving.requests_per_rate"),
    (dict(rate_per_s=[math.inf]), "serving.rate_per_s"),
    (dict(max_queue_delays_ms=[math.inf]), "serving.max_queue_delays_ms"),
    (dict(max_s_per_rate=math.inf), "serving.max_s_per_rate"),
])
def test_bad_serving_values_are_refused_naming_the_key(serving: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}=.* is not allowed: "):
        _serving_cfg(**serving)


def test_an_infinite_target_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^recommend.max_p99_ms=inf is not allowed: finite milliseconds > 0"):
        RecommendArgs(max_p99_ms=math.inf)


def test_auto_rates_need_a_target_and_a_target_needs_rates() -> None:
    with pytest.raises(ConfigError, match=r"^serving.rate_per_s='auto' is not allowed: auto only with "
                                          r"recommend.max_p99_ms"):
        TuneConfig(mode=Mode.inference, serving=ServingArgs(rate_per_s="auto"))
    with pytest.raises(ConfigError, match=r"^recommend.max_p99_ms=5.0 is not allowed: null without serving.rate_per_s"):
        TuneConfig(mode=Mode.inference, recommend=RecommendArgs(max_p99_ms=5.0))
    with pytest.raises(ConfigError, match=r"^serving.max_batch_sizes=\[2\] is not allowed: .* without serving.rate_per_s"):
        TuneConfig(mode=Mode.inference, serving=ServingArgs(max_batch_sizes=[2]))
    # A list of rates without a target is taken: its rates are measured and reported.
    TuneConfig(mode=Mode.inference, serving=ServingArgs(rate_per_s=[200.0, 100.0]))


@pytest.mark.parametrize("args,key", [
    (dict(recommend=RecommendArgs(max_p99_ms=10.0, max_batch_latency_ms=5.0)), "recommend.max_batch_latency_ms"),
    (dict(recommend=RecommendArgs(max_p99_ms=10.0, objective=Objective.latency)), "recommend.objective"),
    (dict(recommend=RecommendArgs(max_p99_ms=10.0), sweep=SweepArgs(micro_batch_sizes=[1, 2])),
     "sweep.micro_batch_sizes"),
])
def test_keys_that_mean_nothing_under_load_are_refused(args: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}=.* is not allowed: .*with serving.rate_per_s"):
        TuneConfig(mode=Mode.inference, serving=ServingArgs(rate_per_s="auto"), **args)


def test_serving_keys_in_training_are_refused_naming_the_mode() -> None:
    with pytest.raises(ConfigError, match=r"^serving.rate_per_s=\[100.0\] is not allowed: .* with mode=train"):
        TuneConfig(serving=ServingArgs(rate_per_s=[100.0]))


def test_rates_are_sorted() -> None:
    assert _serving_cfg(rate_per_s=[300, 100.5]).serving.rate_per_s == [100.5, 300.0]


# --- The plan --------------------------------------------------------------------------------------------------

def test_the_baseline_serves_its_batch_with_no_wait_and_comes_first_once() -> None:
    cfg = TuneConfig(mode=Mode.inference, baseline=BaselineArgs(micro_batch_size=4),
                     serving=ServingArgs(rate_per_s="auto", max_batch_sizes=[8, 4], max_queue_delays_ms=[2.0, 0.0]),
                     recommend=RecommendArgs(max_p99_ms=10.0))
    baseline, settings = batcher_plan(cfg)
    assert baseline == BatcherSetting(4, 0.0) and baseline.label == "4/0ms"
    assert [s.label for s in settings] == ["4/0ms", "4/2ms", "8/0ms", "8/2ms"]
    definition = serving_definition(cfg, settings)
    assert definition["mode"] == "serving_load" and definition["grid"] == ["4/0ms", "4/2ms", "8/0ms", "8/2ms"]


# --- Journal lines ---------------------------------------------------------------------------------------------

def _service_s(size: int) -> float:
    """A server whose batch of k takes 1 ms + 0.5 ms x k: batching pays (8 requests in 5 ms, one in 1.5 ms)."""
    return 1e-3 + 0.5e-3 * size


def _record(setting: BatcherSetting, rate_per_s: float, *, replicas: int = 2, requests: int = 10000,
            seed: int = 0, slow: float = 1.0) -> LoadRecord:
    runs = []
    for rank in range(replicas):
        arrivals = poisson_arrivals_s(rate_per_s, requests, seed * 100 + rank)
        rng = random.Random(seed * 100 + rank)
        sim = simulate(arrivals, lambda k: slow * _service_s(k) * rng.uniform(0.9, 1.1),
                       max_batch_size=setting.max_batch_size, max_queue_delay_s=setting.max_queue_delay_s)
        runs.append(ReplicaRun(arrivals_us=tuple(round(a * 1e6) for a in arrivals),
                               latencies_us=tuple(round(lat * 1e6) for lat in sim.latency_s),
                               batch_sizes=sim.batch_sizes,
                               service_us=tuple(round(slow * _service_s(k) * 1e6) for k in sim.batch_sizes),
                               behind_us=0))
    return LoadRecord(setting=setting.label, max_batch_size=setting.max_batch_size,
                      max_queue_delay_ms=setting.max_queue_delay_ms, rate_per_s=rate_per_s, replicas=tuple(runs),
                      started_at="", finished_at="")


def _service_record(slow: float = 1.0) -> ServiceRecord:
    return ServiceRecord.of([{k: [slow * _service_s(k)] * 10 for k in range(1, 9)}] * 2, measured_at="")


def test_journal_lines_round_trip_and_the_one_resume_rule_covers_them(tmp_path: Path) -> None:
    journal = tmp_path / "trials.jsonl"
    cfg = _serving_cfg(max_batch_sizes=[8])
    _, settings = batcher_plan(cfg)
    definition = serving_definition(cfg, settings)
    write_header(journal, JournalHeader(record_version=6, definition=definition, fingerprint=None, created_at=""))
    record = _record(BatcherSetting(8, 0.0), 500.0, requests=300)
    append_serving(journal, _service_record().to_json_dict())
    append_serving(journal, record.to_json_dict())
    contents = read_journal(journal)
    assert contents.results == () and len(contents.serving) == 2
    assert LoadRecord.from_json_dict(contents.serving[1]) == record
    assert ServiceRecord.from_json_dict(contents.serving[0]).fastest_single_s() == pytest.approx(1.5e-3)
    assert resume_refusal(contents, journal=journal, definition=definition, fingerprint=None,
                          allow_fingerprint_change=False) == (None, None)
    other = serving_definition(_serving_cfg(max_batch_sizes=[16]), batcher_plan(_serving_cfg(max_batch_sizes=[16]))[1])
    refusal, _ = resume_refusal(contents, journal=journal, definition=other, fingerprint=None,
                                allow_fingerprint_change=False)
    assert refusal is not None and "16/0ms" in refusal and "8/0ms" in refusal
    # Microseconds: a request's latency survives to within one.
    line = json.loads(journal.read_text().splitlines()[2])
    assert all(isinstance(v, int) for v in line["serving_load"]["replicas"][0]["latencies_us"])


# --- The decision on known service times -----------------------------------------------------------------------

def _decide(rates: dict[BatcherSetting, list[float]], *, baseline: BatcherSetting, target_ms: float = 20.0,
            slow: dict[str, float] | None = None, service_slow: float = 1.0):
    service = _service_record(service_slow)
    closed_s = service.pooled_s()
    budget = serving_budget(num_confirmed=len(rates) - 1, max_rates=6)
    loads = []
    for setting, measured in rates.items():
        records = [_record(setting, r, seed=i, slow=(slow or {}).get(setting.label, 1.0))
                   for i, r in enumerate(measured)]
        search = RateSearch(target_s=target_ms / 1e3, lo_rate_per_s=min(measured), hi_rate_per_s=2 * max(measured))
        loads.append(setting_load(setting, is_baseline=setting == baseline, records=records, closed_s=closed_s,
                                  predicted=None, target_p99_s=target_ms / 1e3, confidence=budget.confidence,
                                  search=search, seed=0))
    return decide_serving_load(settings=loads, baseline=baseline.label, target_p99_ms=target_ms, min_speedup=1.05,
                               budget=budget, fastest_single_s=service.fastest_single_s())


def test_a_batcher_that_sustains_far_more_than_the_baseline_is_a_go() -> None:
    """Batch 1 serves at most 1/1.5 ms = 667/s: at 800/s its queue grows (missed); batch 8 serves 8 in 5 ms (1,600/s)
    and keeps p99 within 20 ms at 900/s. GO for 8/0ms: 900/s is at least 1.05 x the baseline's upper end, 800/s."""
    base, eight = BatcherSetting(1, 0.0), BatcherSetting(8, 0.0)
    d = _decide({base: [300.0, 800.0], eight: [300.0, 900.0, 2400.0]}, baseline=base)
    assert d.decision == "GO" and d.chosen == "8/0ms", d.reason
    assert d.setting("1/0ms").rate.rate_per_s == 300.0 and d.setting("1/0ms").rate.high_per_s == 800.0
    assert d.setting("8/0ms").rate.rate_per_s == 900.0 and d.setting("8/0ms").rate.high_per_s == 2400.0
    serving = d.setting("8/0ms").serving_json()
    assert serving["sustainable_rate_per_s"] == 900.0 and serving["sustainable_rate_ci95"] == [900.0, 2400.0]
    assert serving["num_requests"] > 5000 and serving["p99_ms_at_rate"] < 20.0
    assert serving["p99_ci95_at_rate"][0] <= serving["p99_ms_at_rate"] <= serving["p99_ci95_at_rate"][1]
    report = build_serving_report(d)
    assert report.verdict.startswith("GO: serve with max batch 8, max queue delay 0 ms")
    assert report.overrides == ("serving.max_batch_sizes=[8]", "serving.max_queue_delays_ms=[0]")
    assert "serving.max_batch_sizes=[8]" in report.confirm_overrides
    assert "recommend.max_p99_ms=20" in report.confirm_overrides


def test_brackets_that_overlap_are_inconclusive_not_a_no_go() -> None:
    """Both met at 300/s and missed at 900/s: the data cannot order them."""
    base, two = BatcherSetting(1, 0.0), BatcherSetting(2, 0.0)
    d = _decide({base: [300.0, 900.0], two: [300.0, 900.0]}, baseline=base)
    assert d.decision == "INCONCLUSIVE", d.reason


def test_a_target_below_the_fastest_service_time_is_a_no_go_with_that_figure() -> None:
    base = BatcherSetting(1, 0.0)
    d = _decide({base: [100.0]}, baseline=base, target_ms=1.0)
    assert d.decision == "NO-GO"
    assert "recommend.max_p99_ms=1 is below the fastest one-request service time measured, 1.5 ms" in d.reason


def test_the_simulation_disagreeing_with_the_measurement_is_said() -> None:
    """The replicas served twice as slowly as the closed-loop samples say (leave-one-out service times from the
    other real runs correct it when there are some; with one run per setting there are none)."""
    base = BatcherSetting(1, 0.0)
    d = _decide({base: [550.0]}, baseline=base, slow={"1/0ms": 1.15})
    assert any("more than 20% apart, the measurement is what counts" in note for note in d.notes), d.notes


def test_the_simulated_ranking_picks_what_the_real_runs_confirm() -> None:
    cfg = _serving_cfg(max_batch_sizes=[2, 8], max_queue_delays_ms=[0.0])
    baseline, settings = batcher_plan(cfg)
    predicted = predict_settings(_service_record().pooled_s(), settings, target_p99_s=0.02, seed=0)
    # Batch 8 has the most capacity (1,600/s against 2's 1,000/s and the baseline's 2 at 0 ms).
    assert predicted["8/0ms"].rate.rate_per_s > predicted["2/0ms"].rate.rate_per_s
    assert predicted["8/0ms"].capacity_per_s == pytest.approx(1600.0)
    confirm = settings_to_confirm(settings, baseline, predicted=predicted, count=1)
    assert [s.label for s in confirm] == ["2/0ms", "8/0ms"]
    assert not math.isinf(predicted["8/0ms"].rate.high_per_s)


def test_a_verdict_only_the_corrected_level_gives_is_not_one() -> None:
    """A stricter level can move a bracket up: at 95% the leader missed at 1,200/s (so its met 1,500/s counts for
    nothing), at the corrected level 1,200/s is unknown and 1,500/s counts. GO at the corrected level alone is not
    evidence: INCONCLUSIVE."""
    from trainer_tune.decide.serving_load import MeasuredRate, SettingLoad
    from trainer_tune.evidence.load_point import LoadPoint
    from trainer_tune.evidence.serving_load import QuantileEstimate, RatePoint, Sustainability, TargetCheck

    def measured(rate: float, at_95: str, strict: str) -> MeasuredRate:
        estimate = QuantileEstimate(q=0.99, point_s=0.005, low_s=0.004, high_s=0.006, num_requests=10_000,
                                    sections=10, method="sectioning")
        check = TargetCheck(at_95, None, at_95)
        point = LoadPoint(rate_per_s=rate, num_requests=10_000, dropped_requests=0, p50=estimate, p90=estimate,
                          p99=estimate, check=check, sustainability=Sustainability(True, "kept up"))
        return MeasuredRate(point=point, strict=RatePoint(rate, TargetCheck(strict, None, strict), True),
                            simulated_p99_s=0.005, behind_s=0.0, share_of_capacity=0.5)

    def load(label: str, points: list[MeasuredRate], baseline: bool) -> SettingLoad:
        search = RateSearch(target_s=0.01, lo_rate_per_s=100.0, hi_rate_per_s=5000.0)
        return SettingLoad(label=label, max_batch_size=8, max_queue_delay_ms=0.0, is_baseline=baseline,
                           capacity_per_s=2000.0, predicted=None, measured=tuple(points),
                           rate=search.result([m.point.rate_point() for m in points]),
                           rate_corrected=search.result([m.strict for m in points]))

    base = load("2/0ms", [measured(500.0, "met", "met"), measured(700.0, "missed", "missed")], True)
    lead = load("8/0ms", [measured(1000.0, "met", "met"), measured(1200.0, "missed", "unknown"),
                          measured(1500.0, "met", "met")], False)
    d = decide_serving_load(settings=[base, lead], baseline="2/0ms", target_p99_ms=10.0, min_speedup=1.5,
                            budget=serving_budget(num_confirmed=1, max_rates=6), fastest_single_s=0.001)
    assert lead.rate_corrected.rate_per_s == 1500.0 and lead.rate.rate_per_s == 1000.0
    assert d.decision == "INCONCLUSIVE", d.reason
