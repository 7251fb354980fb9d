"""model.checkpoint: checked before any process group, loaded into the model a trial builds, keyed in the plan."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_tune
from trainer_tune.config.schema import ConfigError, ModelArgs, TuneConfig
from trainer_tune.config.flags import TrialFlags
from trainer_tune.plan import build_plan
from trainer_tune.workloads.checkpoint import check_checkpoint, checkpoint_fingerprint
from trainer_tune.workloads.model import GPT, build_model, build_trial_model
from trainer_tune.workloads.targets import TargetError

SMALL = dict(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=2)
"""A small built-in GPT: a state dict of a few hundred kB."""
HF_GPT2 = "transformers.GPT2LMHeadModel"


def _gpt(seed: int, **shape: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelArgs(**{**SMALL, **shape}))


def _saved(model: nn.Module, path: Path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_state_dict_round_trips_into_the_built_in_gpt(tmp_path: Path) -> None:
    trained = _gpt(seed=1)
    with torch.no_grad():  # weights no initialisation would give, so loading them cannot be a coincidence
        for p in trained.parameters():
            p.add_(0.5)
    args = ModelArgs(**SMALL, checkpoint=_saved(trained, tmp_path / "gpt.pt"))
    torch.manual_seed(0)
    loaded = build_trial_model(args)
    assert _same_weights(loaded, trained)
    assert not _same_weights(build_model(replace(args, checkpoint=None)), trained)
    # The tied LM head is still the token embedding: one tensor, as built.
    assert loaded.lm_head.weight is loaded.token_emb.weight
    ids = torch.randint(0, 64, (2, 16))
    assert torch.equal(loaded(ids), trained(ids))


@pytest.mark.parametrize("saved_shape,needles", [
    ({"d_model": 64},
     ["model.checkpoint=", "does not fit the model: ", "shape mismatch(es): token_emb.weight [64, 64] in the checkpoint, "
      "[64, 32] in the model, pos_emb.weight [16, 64] in the checkpoint, [16, 32] in the model,", " more"]),
    ({"n_layers": 1},
     ["does not fit the model: 10 missing key(s): 'blocks.1.norm_attn.weight', 'blocks.1.norm_attn.bias', "
      "'blocks.1.attn.qkv.weight' and 7 more"]),
    ({"n_layers": 3}, ["does not fit the model: 10 unexpected key(s): 'blocks.2.norm_attn.weight'"]),
])
def test_a_state_dict_that_does_not_fit_is_a_one_line_error(tmp_path: Path, saved_shape: dict,
                                                            needles: list[str]) -> None:
    args = ModelArgs(**SMALL, checkpoint=_saved(_gpt(seed=1, **saved_shape), tmp_path / "other.pt"))
    with pytest.raises(TargetError) as caught:
        build_trial_model(args)
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_a_state_dict_saved_through_ddp_names_the_prefix(tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in _gpt(seed=1).state_dict().items()}
    path = tmp_path / "ddp.pt"
    torch.save(state, path)
    with pytest.raises(TargetError, match=r"every key starts with 'module\.': save the wrapped model's own "
                                          r"state_dict\(\) \(model\.module for DDP"):
        build_trial_model(ModelArgs(**SMALL, checkpoint=str(path)))


@pytest.mark.parametrize("content,needle", [
    ({"model": "weights", "step": 3}, "holds a dict whose entries are not all tensors ('model', 'step'), not a state "
                                      "dict: save the model's own (torch.save(model.state_dict(), PATH))"),
    ([torch.zeros(2)], "holds a list, not a state dict"),
])
def test_a_file_that_is_not_a_state_dict_says_what_it_holds(tmp_path: Path, content: object, needle: str) -> None:
    path = tmp_path / "not_a_state_dict.pt"
    torch.save(content, path)
    with pytest.raises(TargetError) as caught:
        build_trial_model(ModelArgs(**SMALL, checkpoint=str(path)))
    assert str(caught.value).startswith(f"model.checkpoint={str(path)!r} holds ")
    assert needle in str(caught.value)


def test_a_pickled_module_is_refused_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(_gpt(seed=1), path)  # the module itself, not its state dict: weights_only refuses to unpickle it
    with pytest.raises(TargetError, match=r"could not be read as a state dict by torch\.load\(weights_only=True\)"):
        build_trial_model(ModelArgs(**SMALL, checkpoint=str(path)))


def _hf_args(tmp_path: Path, *, n_layer: int = 2, target: str = HF_GPT2, checkpoint: str | None = None) -> ModelArgs:
    config = {"_target_": "transformers.GPT2Config", "vocab_size": 64, "n_positions": 16, "n_embd": 32,
              "n_layer": n_layer, "n_head": 2, "bos_token_id": None, "eos_token_id": None}
    return ModelArgs(_target_=target, kwargs={"config": config}, vocab_size=64, seq_len=16, checkpoint=checkpoint)


def _hf_saved(tmp_path: Path, *, n_layer: int = 2) -> tuple[nn.Module, str]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=n_layer, n_head=2,
                                     bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config)
    directory = tmp_path / f"hf_{n_layer}"
    model.save_pretrained(directory)
    return model, str(directory)


def test_a_save_pretrained_directory_loads_into_a_hugging_face_target(tmp_path: Path) -> None:
    saved, directory = _hf_saved(tmp_path)
    args = _hf_args(tmp_path, checkpoint=directory)
    check_checkpoint(args)
    torch.manual_seed(0)
    loaded = build_trial_model(args)
    assert type(loaded).__name__ == "GPT2LMHeadModel"
    assert _same_weights(loaded, saved)
    assert loaded.training  # from_pretrained returns eval mode; a trial trains with dropout on, as when built
    assert not _same_weights(build_model(replace(args, checkpoint=None)), saved)


def test_a_bf16_directory_loads_as_float32_as_a_built_model_is(tmp_path: Path) -> None:
    """transformers 5 keeps the saved dtype: a bf16 save would have made a bf16 model, measured as another one."""
    saved, _ = _hf_saved(tmp_path)
    saved.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    loaded = build_trial_model(_hf_args(tmp_path, checkpoint=str(tmp_path / "bf16")))
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert _same_weights(loaded, saved.float())


def test_the_model_preset_hf_gpt2_takes_a_checkpoint_directory(tmp_path: Path) -> None:
    """model=hf_gpt2 model.checkpoint=DIR, composed as a user's command line is."""
    transformers = pytest.importorskip("transformers")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from trainer_tune.config.schema import register_configs
    from trainer_tune.config.schema import config_dir
    torch.manual_seed(4)
    saved = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=256, n_positions=128, n_embd=128, n_layer=2, n_head=4, bos_token_id=None, eos_token_id=None))
    saved.save_pretrained(tmp_path / "hf")
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        raw = compose(config_name="config", overrides=["model=hf_gpt2", f"model.checkpoint={tmp_path / 'hf'}"])
    cfg: TuneConfig = OmegaConf.to_object(raw)  # type: ignore[assignment]
    check_checkpoint(cfg.model)
    assert _same_weights(build_trial_model(cfg.model), saved)


def test_a_hugging_face_directory_of_another_shape_is_a_one_line_error(tmp_path: Path) -> None:
    _, directory = _hf_saved(tmp_path, n_layer=1)
    with pytest.raises(TargetError) as caught:
        build_trial_model(_hf_args(tmp_path, n_layer=2, checkpoint=directory))
    message = str(caught.value)
    assert "\n" not in message
    assert (f"model.checkpoint={directory!r} does not fit model._target_='transformers.GPT2LMHeadModel' with "
            f"model.kwargs: 12 missing key(s) of the model: 'transformer.h.1.attn.c_attn.bias'") in message


def test_a_new_task_head_on_a_pretrained_base_is_initialised_with_a_warning(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Hugging Face's own rule: a classifier head the directory lacks starts fresh; the base must be there."""
    saved, directory = _hf_saved(tmp_path)
    args = _hf_args(tmp_path, target="transformers.GPT2ForSequenceClassification", checkpoint=directory)
    args = replace(args, kwargs={"config": {**args.kwargs["config"], "num_labels": 3, "pad_token_id": 0}})
    with caplog.at_level(logging.WARNING, logger="trainer_tune.workloads.checkpoint"):
        model = build_trial_model(args)
    base = {k: v for k, v in saved.state_dict().items() if k.startswith("transformer.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())
    assert "has no 'score.weight': newly initialised" in caplog.text


@pytest.mark.parametrize("case,message", [
    ("missing", "model.checkpoint='{tmp}/nowhere.pt' is not allowed: there is no such file or directory (a relative "
                "path is read from the working directory "),
    ("directory_for_gpt", "model.checkpoint='{tmp}/hf_2' is not allowed: it is a directory, and the built-in GPT loads a "
                          "state dict file (torch.save(model.state_dict(), PATH)); a save_pretrained directory needs a "
                          "Hugging Face model._target_"),
    ("file_for_hf", "model.checkpoint='{tmp}/gpt.pt' is not allowed: it is a file, and model._target_="
                    "'transformers.GPT2LMHeadModel' loads a save_pretrained directory"),
    ("empty_directory_for_hf", "model.checkpoint='{tmp}' is not allowed: the directory holds no weights"),
])
def test_checkable_mistakes_are_config_errors(tmp_path: Path, case: str, message: str) -> None:
    _, directory = _hf_saved(tmp_path)
    gpt_file = _saved(_gpt(seed=1), tmp_path / "gpt.pt")
    args = {"missing": ModelArgs(**SMALL, checkpoint=str(tmp_path / "nowhere.pt")),
            "directory_for_gpt": ModelArgs(**SMALL, checkpoint=directory),
            "file_for_hf": _hf_args(tmp_path, checkpoint=gpt_file),
            "empty_directory_for_hf": _hf_args(tmp_path, checkpoint=str(tmp_path))}[case]
    with pytest.raises(ConfigError) as caught:
        check_checkpoint(args)
    assert str(caught.value).startswith(message.format(tmp=tmp_path))


def test_a_blank_checkpoint_is_refused_by_the_schema() -> None:
    with pytest.raises(ConfigError, match="model.checkpoint=' ' is not allowed"):
        ModelArgs(checkpoint=" ")


def _key(checkpoint: str | None) -> str:
    cfg = TuneConfig(model=ModelArgs(**SMALL, checkpoint=checkpoint))
    return build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")[0].key


def test_trial_keys_follow_the_checkpoint_contents_not_its_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "gpt.pt"
    _saved(_gpt(seed=1), path)
    key = _key(str(path))
    assert key != _key(None)
    os.utime(path, (1_000_000, 1_000_000))  # a copy on another node: same bytes, another modification time
    assert _key(str(path)) == key
    _saved(_gpt(seed=2), path)  # trained further, written in place: same size, other weights
    assert path.stat().st_size == (tmp_path / "gpt.pt").stat().st_size
    assert _key(str(path)) != key


def test_a_large_file_is_fingerprinted_from_a_sample(tmp_path: Path) -> None:
    """16 chunks of 64 KiB, spread over the file: a change anywhere near them changes the key."""
    path = tmp_path / "big.bin"
    data = bytearray(os.urandom(8 * 1024 * 1024))
    path.write_bytes(data)
    args = ModelArgs(_target_=None, checkpoint=str(path))
    first = checkpoint_fingerprint(args)
    assert first is not None and first["size_bytes"] == len(data)
    data[-1] ^= 0xFF  # the last chunk always ends at the file's end
    path.write_bytes(data)
    assert checkpoint_fingerprint(args) != first


@pytest.mark.slow
def test_a_missing_checkpoint_exits_2_before_anything_runs(tmp_path: Path) -> None:
    run_dir = tmp_path / "never"
    proc = run_tune([f"model.checkpoint={tmp_path / 'nowhere.pt'}", "wandb=off", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "model.checkpoint" in line]
    assert lines == [f"trainer_tune: error: model.checkpoint='{tmp_path / 'nowhere.pt'}' is not allowed: there is no "
                     f"such file or directory (a relative path is read from the working directory "
                     f"{Path(__file__).resolve().parents[2]})"], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()
