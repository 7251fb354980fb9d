"""A setting's memory from one traced optimizer step (measure/memory_trace.py): the prediction under fake tensors
against the same step's real tensor bytes, the parts against what they must be by hand, and a model the trace
cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from trainer_tune.config.flags import TrialFlags
from trainer_tune.config.schema import TuneConfig, config_dir, register_configs
from trainer_tune.decide.strategy import fitting_plan
from trainer_tune.evidence.memory_fit import MemoryLimit
from trainer_tune.measure.memory_trace import MemoryPrediction, MemoryTrace, predict_setting, trace_step_memory, with_real_step
from trainer_tune.run.journal import read_journal
from trainer_tune.plan import TrialSpec, build_plan
from trainer_tune.workloads.model import build_trial_model


def _plan(*overrides: str, swept: tuple[str, ...] = ()) -> tuple[TuneConfig, dict[str, TrialSpec]]:
    """The config and its plan's settings by label (the baseline 2x1 among them)."""
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg: TuneConfig = OmegaConf.to_object(compose(config_name="config", overrides=["wandb=off", *overrides]))
    plan = build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")
    return cfg, {spec.label(swept_flags=swept): spec for spec in plan}


@pytest.mark.parametrize("overrides", [
    ("sweep.micro_batch_sizes=[2,8]", "sweep.grad_accums=[1,2]"),
    ("model=resnet_small", "data=images", "sweep.micro_batch_sizes=[4,16]"),
    ("model=tiny_nsa", "sweep.micro_batch_sizes=[2]"),
    ("sweep.micro_batch_sizes=[4]", "sweep.activation_checkpointing=[false,true]"),
])
def test_the_fake_trace_predicts_the_real_steps_tensor_bytes(overrides: tuple[str, ...]) -> None:
    """The built-in GPT (with accumulation), the CNN, the NSA model and activation checkpointing: the prediction
    equals the real step's tensor peak (torch 2.13 on a CPU: to the byte; the issue's target is 5%)."""
    cfg, specs = _plan(*overrides)
    for label, spec in specs.items():
        predicted = trace_step_memory(cfg, spec, fake=True)
        real = trace_step_memory(cfg, spec, fake=False)
        assert predicted.peak_bytes is not None and real.peak_bytes is not None, (label, predicted.notes, real.notes)
        assert abs(predicted.peak_bytes / real.peak_bytes - 1) <= 0.05, (label, predicted.peak_bytes, real.peak_bytes)
        assert predicted.parts_bytes == real.parts_bytes, label
        assert predicted.fake and not real.fake and predicted.notes == ()


def test_the_parts_are_what_they_must_be_by_hand() -> None:
    """Parameters: 4 bytes each (fp32); AdamW's state: two moments of every parameter and a 4-byte step count per
    parameter tensor; accumulation keeps a whole gradient alive at the peak; larger batches hold more activations;
    checkpointing holds fewer."""
    cfg, specs = _plan("sweep.micro_batch_sizes=[2,8]", "sweep.grad_accums=[1,2]")
    model = build_trial_model(cfg.model, TrialFlags())
    tensors = list(model.parameters())
    param_bytes = sum(4 * p.numel() for p in tensors)
    traces = {label: trace_step_memory(cfg, spec) for label, spec in specs.items()}
    for trace in traces.values():
        assert trace.parts_bytes["parameters"] == param_bytes
        assert trace.parts_bytes["optimizer_state"] == 2 * param_bytes + 4 * len(tensors)
        assert trace.peak_bytes == sum(trace.parts_bytes.values())
    assert traces["8x2"].parts_bytes["gradients"] == param_bytes
    assert traces["8x1"].parts_bytes["activations"] > 3 * traces["2x1"].parts_bytes["activations"]
    cfg, specs = _plan("sweep.micro_batch_sizes=[4]", "sweep.activation_checkpointing=[false,true]",
                       swept=("activation_checkpointing",))
    eager, checkpointed = (trace_step_memory(cfg, specs[label]) for label in
                           ("4x1 activation_checkpointing=false", "4x1 activation_checkpointing=true"))
    assert checkpointed.parts_bytes["activations"] < 0.8 * eager.parts_bytes["activations"]


def test_a_model_the_trace_cannot_run_gives_no_prediction_and_names_why() -> None:
    cfg, specs = _plan("model._target_=helpers.models.DataDependentMLP", "data._target_=helpers.models.random_features",
                       "sweep.micro_batch_sizes=[4]")
    spec = specs["4x1"]
    predicted = trace_step_memory(cfg, spec)
    assert predicted.peak_bytes is None and predicted.parts_bytes == {}
    assert predicted.notes[0].startswith("the step could not be traced under fake tensors (")
    real = trace_step_memory(cfg, spec, fake=False)
    assert real.peak_bytes is not None and real.peak_bytes > 0


def _prediction(spec: TrialSpec, peak_bytes: int | None) -> MemoryPrediction:
    return MemoryPrediction(setting_key=spec.key, label=spec.label(swept_flags=()),
                            predicted=MemoryTrace(peak_bytes=peak_bytes, parts_bytes={}), tensor_peak_bytes=None)


def test_settings_predicted_over_the_limit_are_not_built_but_the_baseline_always_is() -> None:
    cfg, specs = _plan("sweep.micro_batch_sizes=[1,8]", "sweep.grad_accums=[1]")
    plan = list(specs.values())
    limit = MemoryLimit(capacity_bytes=1000, fraction=0.5, fraction_key="train.max_memory_fraction",
                        capacity_source="a test's host")  # 500 bytes
    predictions = {specs["2x1"].key: _prediction(specs["2x1"], 900),  # the baseline, over: raced anyway
                   specs["1x1"].key: _prediction(specs["1x1"], 400),
                   specs["8x1"].key: _prediction(specs["8x1"], 501)}
    raced, not_built = fitting_plan(plan, predictions, limit=limit, trust=True, swept=())
    assert [s.label(swept_flags=()) for s in raced] == ["2x1", "1x1"]
    assert [(n.label, n.reason) for n in not_built] == [(
        "8x1", "predicted peak 501 B > limit 500 B (train.max_memory_fraction=0.5 of a test's host); "
               "sweep.trust_memory_prediction=false measures it anyway")]
    assert fitting_plan(plan, predictions, limit=limit, trust=False, swept=()) == (plan, [])
    # No prediction (the trace failed) or no limit: built, as before predictions existed.
    assert fitting_plan(plan, {specs["8x1"].key: _prediction(specs["8x1"], None)}, limit=limit, trust=True,
                        swept=())[1] == []
    assert fitting_plan(plan, predictions, limit=None, trust=True, swept=())[1] == []


def test_a_prediction_is_one_journal_line_read_back_whole(tmp_path: Path) -> None:
    cfg, specs = _plan("sweep.micro_batch_sizes=[2]")
    spec = specs["2x1"]
    skipped = predict_setting(cfg, spec, label="2x1", world_size=1)
    assert skipped.tensor_peak_bytes is None and skipped.error is None  # not built yet: no real step either
    prediction = with_real_step(skipped, cfg, spec, world_size=1)
    assert prediction.tensor_peak_bytes == prediction.predicted.peak_bytes and prediction.error == 0.0
    journal = tmp_path / "trials.jsonl"
    journal.write_text(json.dumps(prediction.to_json_dict()) + "\n")
    assert read_journal(journal).predictions() == {spec.key: prediction}
