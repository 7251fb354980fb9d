"""Memory, predicted: a line through each series' measured peaks against the micro-batch, the largest micro-batch
it puts under the limit, strategy=power skipping a doubling predicted not to fit (with the prediction as the
reason), and every strategy reporting predicted beside measured."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from result_factory import GIB, make_result
from trainer_tune.config.schema import RecommendArgs, Strategy, SweepArgs, TuneConfig
from trainer_tune.explain.report import build_report
from trainer_tune.config.flags import TrialFlags
from trainer_tune.evidence.memory_fit import MemoryLimit, fit_memory, least_squares, predicted_not_to_fit
from trainer_tune.plan import TrialSpec, build_plan
from trainer_tune.decide.verdict import decide
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.sinks.charts import ChartSet
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.report import render_report
from trainer_tune.decide.race import after_round

LIMIT = MemoryLimit(capacity_bytes=80 * GIB, fraction=0.9, fraction_key="recommend.max_memory_fraction",
                    capacity_source="the CUDA device's total memory")
BF16 = TrialFlags(precision="bf16")


def _measured(index: int, micro_batch_size: int, memory_gib: float, *, flags: TrialFlags = TrialFlags(),
              grad_accum: int = 1) -> SettingEstimate:
    return make_result(index=index, key=f"k{index}", micro_batch_size=micro_batch_size, grad_accum=grad_accum,
                       memory_bytes=int(memory_gib * GIB), flags=flags, is_baseline=index == 0)


def test_least_squares_recovers_a_line_and_needs_two_sizes() -> None:
    assert least_squares([(2, 10), (4, 18), (8, 34)]) == pytest.approx((2.0, 4.0))
    with pytest.raises(ValueError, match="two distinct"):
        least_squares([(4, 10), (4, 12)])


def test_each_series_gets_its_own_line_and_largest_micro_batch() -> None:
    # fp32: 2 GiB + 4 GiB per sample (accumulation adds no activations: 4x2 sits on the line);
    # bf16: 2 GiB + 2 GiB per sample. Limit: 80 GiB x 0.9 = 72 GiB.
    results = [_measured(0, 2, 10), _measured(1, 4, 18), _measured(2, 4, 18, grad_accum=2), _measured(3, 8, 34),
               _measured(4, 2, 6, flags=BF16), _measured(5, 4, 10, flags=BF16),
               _measured(6, 16, 99, flags=TrialFlags(compile=True))]  # one size only: no line
    fits = {f.series: f for f in fit_memory(results, limit=LIMIT)}
    assert set(fits) == {"precision=fp32", "precision=bf16"}
    fp32, bf16 = fits["precision=fp32"], fits["precision=bf16"]
    assert (fp32.intercept_bytes / GIB, fp32.slope_bytes / GIB) == pytest.approx((2.0, 4.0))
    assert fp32.largest_micro_batch_size == 17  # (72 - 2) / 4 = 17.5
    assert bf16.largest_micro_batch_size == 35  # (72 - 2) / 2
    assert [(label, m, measured, predicted / GIB) for label, m, measured, predicted in fp32.rows()] == \
        [("2x1", 2, 10 * GIB, 10.0), ("4x1", 4, 18 * GIB, 18.0), ("4x2", 4, 18 * GIB, 18.0), ("8x1", 8, 34 * GIB, 34.0)]
    assert fp32.verdict() == ("precision=fp32: fit over 2, 4, 8: 2.0 GiB + 4.0 GiB x mbs; largest micro-batch "
                              "predicted to fit: 17 (limit 80.0 GiB x 0.9, recommend.max_memory_fraction)")


def test_no_prediction_when_memory_does_not_grow_or_no_limit_is_known() -> None:
    flat = fit_memory([_measured(0, 1, 5), _measured(1, 2, 5)], limit=LIMIT)[0]
    assert flat.largest_micro_batch_size is None and "does not grow" in (flat.note or "")
    assert predicted_not_to_fit(64, flat.flags, [flat]) is None
    unknown = fit_memory([_measured(0, 1, 5), _measured(1, 2, 6)], limit=None)[0]
    assert unknown.largest_micro_batch_size is None and unknown.note == "no memory limit known"
    assert unknown.series == "all settings"


def _power_plan() -> list[TrialSpec]:
    cfg = TuneConfig()
    cfg.sweep = SweepArgs(strategy=Strategy.power, micro_batch_sizes=[1], grad_accums=[1], max_micro_batch_size=32)
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = 1, 1
    return build_plan(cfg, world_size=2, base_flags=TrialFlags(), device_type="cpu")


def _power_round(plan: list[TrialSpec], memory_gib: dict[int, float],
                 limit: MemoryLimit | None) -> tuple[list[str], dict[str, str]]:
    """strategy=power after a round in which the given micro-batches were measured (each twice as fast as the
    one below, so speed alone would let the next doubling in): (labels entering, not measured with reasons)."""
    cfg = TuneConfig()
    cfg.sweep = SweepArgs(strategy=Strategy.power, max_micro_batch_size=32, race=False)
    by_size = {s.micro_batch_size: s for s in plan}
    settings = {}
    for size, gib in memory_gib.items():
        spec = by_size[size]
        settings[spec.key] = make_result(index=spec.index, key=spec.key, micro_batch_size=size,
                                         memory_bytes=int(gib * GIB), is_baseline=spec.is_baseline,
                                         tokens_per_s=1000.0 * size)
    entered = [by_size[size] for size in memory_gib]
    _drops, entering, closed = after_round(cfg, plan, settings=settings, contenders=set(settings),
                                            entered=entered, rounds_done=3, swept=(), limit=limit)
    labels = {s.key: s.label() for s in plan}
    return [labels[k] for k in entering], {n.label: n.reason for n in closed}


def test_power_skips_a_doubling_predicted_not_to_fit_with_the_prediction_as_the_reason() -> None:
    plan = _power_plan()
    # 1 and 2 measured: 4 GiB + 16 GiB per sample. Under 72 GiB: micro-batch 4 (68 GiB) fits, 8 (132 GiB) not.
    # The doublings above, which speed alone would still let in later, are closed by the prediction at once.
    entering, closed = _power_round(plan, {1: 20, 2: 36}, LIMIT)
    assert entering == ["4x1"] and set(closed) == {"8x1", "16x1", "32x1"}
    assert closed["8x1"] == ("predicted peak memory 132.0 GiB > limit 80.0 GiB x 0.9 "
                             "(recommend.max_memory_fraction; fit over 1, 2: 4.0 GiB + 16.0 GiB x mbs)")
    # 4x1 measured on the line: the fit now rests on three sizes, and 8x1 still does not enter.
    entering, closed = _power_round(plan, {1: 20, 2: 36, 4: 68}, LIMIT)
    assert entering == [] and set(closed) == {"8x1", "16x1", "32x1"}
    assert closed["32x1"] == ("predicted peak memory 516.0 GiB > limit 80.0 GiB x 0.9 "
                              "(recommend.max_memory_fraction; fit over 1, 2, 4: 4.0 GiB + 16.0 GiB x mbs)")
    # Without a limit (or with room) speed alone decides, as before: 8x1 enters.
    assert _power_round(plan, {1: 20, 2: 36, 4: 68}, None)[0] == ["8x1"]


def test_grid_reports_predicted_beside_measured() -> None:
    results = [_measured(0, 2, 10), _measured(1, 4, 18), _measured(2, 8, 34)]
    rec = decide(results, args=RecommendArgs(), memory_limit=LIMIT)
    assert [f.largest_micro_batch_size for f in rec.memory_fits] == [17]
    data = rec.to_json_dict()
    assert data["memory_fits"][0]["largest_micro_batch_size"] == 17
    assert data["memory_limit"]["limit_bytes"] == pytest.approx(72 * GIB)
    report = render_report(results, build_report(rec), ChartSet(charts=(), omitted=()))
    assert "## Memory prediction" in report
    assert "| 8x1 | 8 | 34.0 GiB | 34.0 GiB |" in report
    assert "largest micro-batch predicted to fit: 17" in report
    out = io.StringIO()
    ConsoleSink(enabled=True, console=Console(file=out, width=200)).show(results, build_report(rec))
    assert "memory fit all settings: fit over 2, 4, 8: 2.0 GiB + 4.0 GiB x mbs; largest micro-batch predicted to " \
           "fit: 17 (limit 80.0 GiB x 0.9, recommend.max_memory_fraction)" in out.getvalue()
