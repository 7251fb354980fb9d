"""torch.compile's figures on recorded numbers: compile_s from a build window's warm-up, the payback of a compiled
setting against its eager twin (and none against a setting that differs in anything else), and the decision
carrying it to recommendation.json."""

from __future__ import annotations

import dataclasses

import pytest

from result_factory import make_result
from trainer_tune.evidence.compile_payback import compile_paybacks
from trainer_tune.measure.summarize import compile_seconds
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.config.flags import TrialFlags
from trainer_tune.decide.verdict import decide

EAGER = TrialFlags()
COMPILED = TrialFlags(compile=True)


def test_compile_s_is_the_warmup_beyond_as_many_measured_steps() -> None:
    # Two warm-up steps in 30.5 s, measured steps of 0.25 s median: compiling took 30.5 - 2 x 0.25 = 30 s.
    assert compile_seconds(warmup_s=30.5, num_warmup_steps=2, step_times_s=[0.2, 0.25, 0.9]) == pytest.approx(30.0)
    # A warm-up no slower than the steps (a warm cache, noise) is no negative compile time.
    assert compile_seconds(warmup_s=0.1, num_warmup_steps=1, step_times_s=[0.2]) == 0.0
    assert compile_seconds(warmup_s=3.0, num_warmup_steps=1, step_times_s=[]) is None


def _pair(*, eager_tokens_per_s: float, compiled_tokens_per_s: float, compile_s: float | None):
    # world_size 2, micro-batch 2: a global batch of 4 samples of 128 tokens, 512 tokens per step.
    eager = make_result(index=0, key="e", is_baseline=True, tokens_per_s=eager_tokens_per_s, flags=EAGER)
    compiled = dataclasses.replace(
        make_result(index=1, key="c", tokens_per_s=compiled_tokens_per_s, flags=COMPILED), label="2x1 compile=true",
        compile_s=compile_s)
    return eager, compiled


def test_payback_is_compile_time_over_the_time_a_step_saves() -> None:
    # 512 tokens per step: 0.512 s per step eager, 0.256 s compiled, 0.256 s saved; 25.6 s pays back in 100 steps.
    eager, compiled = _pair(eager_tokens_per_s=1000.0, compiled_tokens_per_s=2000.0, compile_s=25.6)
    payback, = compile_paybacks([eager, compiled])
    assert payback.step_time_eager_s == pytest.approx(0.512)
    assert payback.step_time_compiled_s == pytest.approx(0.256)
    assert payback.saved_s_per_step == pytest.approx(0.256)
    assert payback.payback_steps == pytest.approx(100.0)
    assert payback.eager_label == eager.label and payback.compiled_label == compiled.label
    assert "pays back after 100 steps" in payback.describe()


def test_a_compiled_setting_that_is_not_faster_never_pays_back() -> None:
    eager, compiled = _pair(eager_tokens_per_s=2000.0, compiled_tokens_per_s=1000.0, compile_s=25.6)
    payback, = compile_paybacks([eager, compiled])
    assert payback.saved_s_per_step < 0 and payback.payback_steps is None
    assert payback.to_json_dict()["never"] is True and "never pays back" in payback.describe()


def test_only_an_eager_twin_with_the_same_shape_and_flags_is_paired() -> None:
    eager, compiled = _pair(eager_tokens_per_s=1000.0, compiled_tokens_per_s=2000.0, compile_s=10.0)
    other_batch = make_result(index=2, key="b", micro_batch_size=4, tokens_per_s=900.0, flags=EAGER)
    other_flag = make_result(index=3, key="p", tokens_per_s=900.0, flags=TrialFlags(precision="bf16"))
    assert compile_paybacks([compiled, other_batch, other_flag]) == []
    failed_twin = make_result(index=0, key="e", status="error", flags=EAGER)
    assert compile_paybacks([failed_twin, compiled]) == []


def test_the_decision_carries_the_payback_to_recommendation_json() -> None:
    eager, compiled = _pair(eager_tokens_per_s=1000.0, compiled_tokens_per_s=2000.0, compile_s=25.6)
    rec = decide([eager, compiled], args=RecommendArgs())
    payback, = rec.compile_paybacks
    assert payback.outcome == "better"  # three identical windows each: the gain is beyond noise
    written = rec.to_json_dict()["compile_payback"]
    assert written == [payback.to_json_dict()] and written[0]["payback_steps"] == pytest.approx(100.0)
