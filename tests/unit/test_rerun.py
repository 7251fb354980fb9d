"""The recommendation's "measure again" overrides compose the measured run again (model, data, loss, train...)."""

from __future__ import annotations

import shlex
from typing import Any, Iterator

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO
from result_factory import make_result
from trainer_tune.config.schema import RecommendArgs, TuneConfig, register_configs
from trainer_tune.decide.verdict import MEASURED, decide
from trainer_tune.config.rerun import REPRODUCED_GROUPS, hydra_value, reproducing_overrides, shell_line

SETTING = ["train.micro_batch_size=4", "train.grad_accum=2"]


@pytest.fixture(scope="module")
def hydra_compose() -> Iterator[Any]:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        yield lambda overrides, hydra=False: compose(config_name="config", overrides=overrides,
                                                     return_hydra_config=hydra)


def _run(hydra_compose: Any, overrides: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """What a run with these command-line overrides sees: its typed config and Hydra's choices."""
    choices = {g: str(c) for g, c in hydra_compose(overrides, True).hydra.runtime.choices.items() if c is not None}
    composed = hydra_compose(overrides)
    cfg: TuneConfig = OmegaConf.to_object(composed)  # type: ignore[assignment]
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True), choices  # type: ignore


def _groups(cfg: Any) -> dict[str, Any]:
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if not isinstance(cfg, dict) else cfg
    return {g: plain[g] for g in REPRODUCED_GROUPS}


@pytest.mark.parametrize("overrides,expected", [
    (["model=hf_gpt2"], ["model=hf_gpt2"]),
    (["model=tiny_nsa", "model.n_layers=3"], ["model=tiny_nsa", "model.n_layers=3"]),
    (["model._target_=trainer_tune.examples.models.ConvLM", "+model.kwargs.vocab_size=256",
      "+model.kwargs.d_model=64"],
     ["model._target_=trainer_tune.examples.models.ConvLM", "+model.kwargs.vocab_size=256",
      "+model.kwargs.d_model=64"]),
    (["model=conv_lm", "model.kwargs.d_model=64"], ["model=conv_lm", "model.kwargs.d_model=64"]),
    (["data=bytes"], ["data=bytes"]),
    (["data.seed=7", "train.precision=bf16", "window=quick"], ["data.seed=7", "train.precision=bf16", "window=quick"]),
    (["model=hf_gpt2", "model.seq_len=64"], ["model=hf_gpt2", "model.seq_len=64"]),
    (["step._target_=trainer_tune.examples.contrastive.contrastive_step", "+step.kwargs.temperature=0.05",
      "throughput.unit=samples"],
     ["step._target_=trainer_tune.examples.contrastive.contrastive_step", "+step.kwargs.temperature=0.05",
      "throughput.unit=samples"]),
    ([], []),
])
def test_the_overrides_compose_the_run_again(hydra_compose: Any, overrides: list[str], expected: list[str]) -> None:
    run, choices = _run(hydra_compose, [*overrides, *SETTING])
    found = reproducing_overrides(run, choices=choices, compose=hydra_compose)
    assert sorted(found) == sorted(expected)
    rerun, _ = _run(hydra_compose, [*found, *SETTING])
    assert _groups(rerun) == _groups(run)


@pytest.mark.parametrize("overrides", [["+sweep=serving"], ["mode=inference", "model=resnet_small", "data=images"]])
def test_a_serving_run_is_measured_again_as_serving(hydra_compose: Any, overrides: list[str]) -> None:
    """The sweep is not reproduced (the setting is given instead), but the mode it set is: a recommended serving
    batch measured again as a training step would be another measurement."""
    run, choices = _run(hydra_compose, [*overrides, "train.micro_batch_size=4"])
    found = reproducing_overrides(run, choices=choices, compose=hydra_compose)
    assert "mode=inference" in found
    rerun, _ = _run(hydra_compose, [*found, "train.micro_batch_size=4"])
    assert rerun["mode"] == "inference" and _groups(rerun) == _groups(run)


def test_a_value_hydra_would_misread_is_quoted_and_survives_the_shell(hydra_compose: Any) -> None:
    run, choices = _run(hydra_compose, ["+model.kwargs.note='two words, a comma'", "+model.kwargs.flag='true'",
                                        "model._target_=trainer_tune.examples.models.ConvLM",
                                        "+model.kwargs.vocab_size=256"])
    found = reproducing_overrides(run, choices=choices, compose=hydra_compose)
    pasted = shlex.split(shell_line(found))
    rerun, _ = _run(hydra_compose, pasted)
    assert rerun["model"]["kwargs"] == {"note": "two words, a comma", "flag": "true", "vocab_size": 256}
    assert hydra_value(None) == "null" and hydra_value("true") == "'true'" and hydra_value([1, "a b"]) == "[1, 'a b']"


def test_the_recommendation_leads_with_the_runs_overrides() -> None:
    """The chosen setting's overrides once held only train.*, nsa.*, ddp.*: a model=hf_gpt2 sweep, pasted,
    measured the tiny model."""
    base = make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True)
    base = type(base)(**{**base.__dict__, "run_overrides": ("model=hf_gpt2", "train.precision=bf16")})
    rec = decide([base], args=RecommendArgs())
    assert rec.overrides[:3] == ("model=hf_gpt2", "train.precision=bf16", "train.micro_batch_size=2")


def test_one_setting_measured_is_neither_go_nor_no_go() -> None:
    rec = decide([make_result(index=0, key="base", tokens_per_s=1000, is_baseline=True)],
                 args=RecommendArgs(fail_on_no_go=True))
    assert rec.decision == MEASURED
    assert rec.verdict.startswith("MEASURED: micro_batch_size=2 grad_accum=1 at 1,000 tokens/s")
    assert "nothing to compare" in rec.verdict and "NO-GO" not in rec.verdict
