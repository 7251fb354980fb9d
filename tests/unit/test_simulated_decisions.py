"""The decision's own error rates, counted over seeded sweeps of the simulated machine (tests/helpers/
fake_machine.py): drift in time order, bursts of other load, calibrated on the recorded sweeps. The decision code
is the real one (decide/race.py, decide/verdict.py); only the windows are drawn.

Known answers: with identical settings any GO is false, and the rule promises at most 2.5% of them (one-sided) at
recommend.min_speedup=1.0. A count over N sweeps is itself noisy, so the check is that the Clopper-Pearson 95%
lower bound of the observed rate (scipy's binomtest) stays at or below 2.5%: a rule whose true rate were higher
would fail it in most seeds."""

from __future__ import annotations

from scipy.stats import binomtest
from omegaconf import OmegaConf

from helpers.fake_machine import FakeMachine
from trainer_tune.config.flags import TrialFlags
from trainer_tune.config.schema import TuneConfig
from trainer_tune.decide.race import run_race
from trainer_tune.decide.sequential import GO
from trainer_tune.decide.verdict import NO_GO, decide_race
from trainer_tune.plan import build_plan

NUM_SWEEPS = 150
PROMISED = 0.025


def _decision(seed: int, true_speedup: dict[int, float], *overrides: str):
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TuneConfig), OmegaConf.from_dotlist(
        ["sweep.micro_batch_sizes=[1,2,3,4,5,6,7,8]", "sweep.grad_accums=[1]", f"sweep.seed={seed}", *overrides])))
    plan = build_plan(cfg, world_size=2, base_flags=TrialFlags(), device_type="cpu")
    machine = FakeMachine(true_rate=lambda spec: 20_000.0 * true_speedup.get(spec.micro_batch_size, 1.0), seed=seed)
    race = run_race(machine, cfg, plan, done={}, attempts={}, prefix="", swept=())
    return decide_race(race, cfg)


def test_identical_settings_give_a_false_go_no_more_often_than_promised() -> None:
    decisions = [_decision(1000 + seed, {}, "recommend.min_speedup=1.0") for seed in range(NUM_SWEEPS)]
    false_go = sum(d.decision == GO for d in decisions)
    lower, _upper = binomtest(false_go, NUM_SWEEPS).proportion_ci(confidence_level=0.95, method="exact")
    assert lower <= PROMISED, f"{false_go} false GOs in {NUM_SWEEPS} sweeps of identical settings"
    # And "cannot tell" is not "do not change": identical settings are not shown slower, so no NO-GO either.
    assert sum(d.decision == NO_GO for d in decisions) <= false_go + 2


def test_a_large_true_gain_is_never_answered_no_go() -> None:
    """8 settings, one truly +50%: a busy machine may answer INCONCLUSIVE, never NO-GO, and a GO is that one."""
    decisions = [_decision(2000 + seed, {8: 1.5}) for seed in range(40)]
    assert not [d for d in decisions if d.decision == NO_GO]
    assert all(d.chosen.micro_batch_size == 8 for d in decisions if d.decision == GO)
    assert sum(d.decision == GO for d in decisions) >= 10
