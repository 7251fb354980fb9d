"""The whole pipeline on a fake machine (tests/helpers/fake_machine.py): plan -> race -> estimates -> decision ->
report, deterministic per seed, with realistic noise (drift between windows, bursts, little noise within).
A planted best must be found; a known-answer check pins the paired interval the decision rests on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers.fake_machine import FakeMachine
from trainer_tune.config.flags import TrialFlags
from omegaconf import OmegaConf

from trainer_tune.config.schema import TuneConfig
from trainer_tune.decide.race import run_race
from trainer_tune.decide.sequential import INCONCLUSIVE
from trainer_tune.decide.verdict import GO, NO_GO, decide_race
from trainer_tune.evidence.stats import log_t_interval, ratio_estimate
from trainer_tune.explain.report import build_report
from trainer_tune.plan import TrialSpec, build_plan
from trainer_tune.sinks.publish import publish

BASE_TOKENS_PER_S = 20_000.0
TRUE_SPEEDUP = {(2, 1): 1.0, (1, 1): 0.55, (1, 2): 0.75, (2, 2): 1.2, (4, 1): 1.25, (4, 2): 1.35, (8, 1): 1.38,
                (8, 2): 1.6}
"""The default grid's true speed over the baseline 2x1: 8x2 is planted 16% ahead of the runner-up, 8x1."""


def _true_rate(spec: TrialSpec) -> float:
    return BASE_TOKENS_PER_S * TRUE_SPEEDUP[(spec.micro_batch_size, spec.grad_accum)]


def _config(*overrides: str) -> TuneConfig:
    """The schema's defaults with command-line style overrides, resolved as the entry point resolves them."""
    merged = OmegaConf.merge(OmegaConf.structured(TuneConfig), OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _sweep(seed: int, *, budget_s: float = 45.0, **machine: float) -> tuple:
    cfg = _config("sweep.micro_batch_sizes=[1,2,4,8]", "sweep.grad_accums=[1,2]", f"sweep.budget_s={budget_s}",
                  f"sweep.seed={seed}")
    plan = build_plan(cfg, world_size=2, base_flags=TrialFlags(), device_type="cpu")
    fake = FakeMachine(true_rate=_true_rate, seed=seed, **machine)
    race = run_race(fake, cfg, plan, done={}, attempts={}, prefix="", swept=())
    decision = decide_race(race, cfg)
    return fake, race, decision


def test_the_same_seed_gives_the_same_windows_and_the_same_decision() -> None:
    first, second = _sweep(seed=3), _sweep(seed=3)
    assert [w.tokens_per_s for w in first[0].windows] == [w.tokens_per_s for w in second[0].windows]
    assert first[2].verdict == second[2].verdict and first[2].reasons == second[2].reasons


def test_the_fake_machine_has_the_noise_it_claims() -> None:
    """Between-window noise dominates within-window noise, as on our machines (FACTS.md)."""
    machine = FakeMachine(true_rate=lambda spec: BASE_TOKENS_PER_S, seed=11, burst_chance=0.0)
    spec = build_plan(_config(), world_size=2, base_flags=TrialFlags(), device_type="cpu")[0]
    windows = [machine.measure(spec, round_id=f"r{i}", attempts=0, first=i == 0) for i in range(400)]
    logs = [math.log(w.tokens_per_s) for w in windows]  # type: ignore[union-attr,arg-type]
    diffs = [b - a for a, b in zip(logs, logs[1:])]
    neighbour_sd = math.sqrt(sum(d * d for d in diffs) / len(diffs))
    assert 0.07 < neighbour_sd < 0.11
    within_cv = windows[0].step_time_s.stdev / windows[0].step_time_s.mean  # type: ignore[union-attr]
    assert within_cv < 0.04 < neighbour_sd


def test_the_planted_best_is_found_on_a_noisy_machine(tmp_path: Path) -> None:
    """Over 20 seeded sweeps on a shared machine's noise: never a NO-GO (8x2 is truly +60%), every GO is 8x2, and
    an INCONCLUSIVE names 8x2 as its leader in most sweeps (8x1, 14% behind, is the only close one); on a quiet
    machine (half the noise, no bursts) every sweep is a GO for 8x2 within the default budget."""
    noisy = [_sweep(seed)[2] for seed in range(20)]
    assert not [d.verdict for d in noisy if d.decision == NO_GO]
    assert all(d.chosen.label == "8x2" for d in noisy if d.decision == GO)
    leaders = [d.leader.label for d in noisy if d.decision == INCONCLUSIVE]
    assert leaders.count("8x2") >= 0.8 * len(leaders), leaders
    quiet = [_sweep(seed, neighbour_log_sd=0.045, burst_chance=0.0)[2] for seed in range(20)]
    assert [d.decision for d in quiet] == [GO] * 20 and {d.chosen.label for d in quiet} == {"8x2"}
    # And through the sinks: the report and recommendation.json name what was decided.
    _machine, _race, decision = _sweep(seed=0)
    publish(tmp_path, build_report(decision), launch_hint="torchrun --nproc_per_node=2 -m trainer_tune",
            console=None, wandb_sink=None)
    written = json.loads((tmp_path / "recommendation.json").read_text())
    assert written["decision"] == decision.decision and written["verdict"] == decision.verdict
    assert decision.verdict in (tmp_path / "report.md").read_text()


def test_the_paired_interval_is_students_t_on_log_ratios() -> None:
    """Known answer: per-round ratios e^0.1, e^0.2, e^0.3 have mean log 0.2 and sd 0.1; t(0.975, 2) = 4.302653 (any
    t table), so the 95% interval is exp(0.2 +- 4.302653 x 0.1 / sqrt(3)) = [0.95274, 1.56583]."""
    b = {"r0": 100.0, "r1": 100.0, "r2": 100.0}
    a = {r: 100.0 * math.exp(x) for r, x in zip(b, (0.1, 0.2, 0.3))}
    estimate = ratio_estimate(a, b)
    assert estimate.paired and estimate.num_pairs == 3
    assert estimate.ratio == pytest.approx(math.exp(0.2))
    assert estimate.interval == pytest.approx((0.95274, 1.56583), abs=5e-5)
    # The same figures as window rates of one setting: the interval of their geometric mean.
    assert log_t_interval(list(a.values())) == pytest.approx((95.274, 156.583), abs=5e-3)
