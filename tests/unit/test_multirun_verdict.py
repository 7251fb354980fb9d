"""A multirun's verdict says what it rests on: every job races its setting against the baseline in rounds of its
own, so settings of different jobs share no round and were compared unpaired, at different times."""

from __future__ import annotations

from result_factory import make_result
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.decide.verdict import GO, decide
from trainer_tune.evidence.estimate import SettingEstimate


def _settings(*, rounds_a: list[str], rounds_b: list[str]) -> list[SettingEstimate]:
    """The baseline measured beside each setting; A clearly faster than the baseline, B a little less fast."""
    baseline_rounds = sorted(set(rounds_a) | set(rounds_b))
    baseline = make_result(index=0, key="k0", micro_batch_size=2, is_baseline=True,
                           windows={r: 1000.0 * (1 + 0.01 * i) for i, r in enumerate(baseline_rounds)})
    a = make_result(index=1, key="k1", micro_batch_size=4,
                    windows={r: 1500.0 * (1 + 0.01 * baseline_rounds.index(r)) for r in rounds_a})
    b = make_result(index=2, key="k2", micro_batch_size=8,
                    windows={r: 1400.0 * (1 + 0.01 * baseline_rounds.index(r)) for r in rounds_b})
    return [baseline, a, b]


def test_settings_of_different_jobs_are_said_to_be_compared_unpaired() -> None:
    rec = decide(_settings(rounds_a=["job1/r0", "job1/r1", "job1/r2"], rounds_b=["job2/r0", "job2/r1", "job2/r2"]),
                 args=RecommendArgs())
    assert rec.decision == GO and rec.chosen is not None and rec.chosen.label == "4x1"
    apart = [reason for reason in rec.reasons if "measured at different times" in reason]
    assert len(apart) == 1, rec.reasons
    assert apart[0].startswith("4x1 and 8x1 were measured at different times, in rounds with none in common "
                               "(separate jobs of a multirun)")
    assert "chosen over them from unpaired windows" in apart[0]


def test_a_sweep_measures_its_settings_in_the_same_rounds_and_says_nothing() -> None:
    rounds = ["r0", "r1", "r2"]
    rec = decide(_settings(rounds_a=rounds, rounds_b=rounds), args=RecommendArgs())
    assert rec.decision == GO
    assert not any("measured at different times" in reason for reason in rec.reasons), rec.reasons
