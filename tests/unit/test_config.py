"""Every config composes, defaults agree with the schema, and bad input fails early with one clear line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO, run_tune
from trainer_tune.config.schema import ConfigError, TuneConfig, register_configs

CONFIGS = REPO / "configs"
GROUPS_IN_DEFAULTS = ["model", "data", "loss", "train", "window", "nsa", "ddp", "baseline", "recommend", "dist", "watchdog",
                      "fault", "telemetry", "wandb"]


def _compose(overrides: list[str]) -> TuneConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        raw = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_object(raw)  # type: ignore[return-value]


def _options() -> list[tuple[str, str]]:
    return sorted((p.parent.name, p.stem) for p in CONFIGS.glob("*/*.yaml"))


def test_every_group_is_present() -> None:
    groups = {group for group, _ in _options()}
    assert groups >= {"model", "data", "train", "sweep", "window", "nsa", "ddp", "baseline", "recommend"}


@pytest.mark.parametrize("group,option", _options())
def test_every_option_composes_into_the_schema(group: str, option: str) -> None:
    prefix = "+" if group not in GROUPS_IN_DEFAULTS else ""
    cfg = _compose([f"{prefix}{group}={option}"])
    assert isinstance(cfg, TuneConfig)


DEFAULT_OPTIONS = {"model": "tiny", "data": "synthetic", "loss": "cross_entropy", "train": "default", "window": "default", "nsa": "default",
                   "ddp": "default", "baseline": "default", "recommend": "default", "dist": "default",
                   "watchdog": "default", "fault": "none", "telemetry": "default", "wandb": "default"}


def test_config_yaml_picks_the_default_options() -> None:
    defaults = yaml.safe_load((CONFIGS / "config.yaml").read_text())["defaults"]
    chosen = {k: v for entry in defaults if isinstance(entry, dict) for k, v in entry.items() if "hydra" not in k}
    assert chosen == DEFAULT_OPTIONS


@pytest.mark.parametrize("group,option", sorted(DEFAULT_OPTIONS.items()))
def test_default_option_matches_the_schema(group: str, option: str) -> None:
    """The default YAML of each group restates the schema defaults for readers; it must not drift."""
    from_yaml = yaml.safe_load((CONFIGS / group / f"{option}.yaml").read_text())
    schema = OmegaConf.to_container(OmegaConf.structured(TuneConfig)[group], enum_to_str=True)
    assert from_yaml == schema


def test_sweep_batch_expands_micro_batch_and_accumulation() -> None:
    cfg = _compose(["+sweep=batch"])
    assert cfg.sweep.micro_batch_sizes == [1, 2, 4, 8]
    assert cfg.sweep.grad_accums == [1, 2]


def test_baseline_follows_train_unless_set() -> None:
    assert dataclasses.astuple(_compose(["train.micro_batch_size=4"]).baseline) == (4, 1)
    assert dataclasses.astuple(_compose(["train.micro_batch_size=4", "baseline.grad_accum=2"]).baseline) == (4, 2)


@pytest.mark.parametrize("overrides,message", [
    (["train.micro_batch_size=0"], "train.micro_batch_size=0 is not allowed: an integer >= 1"),
    (["train.micro_batch_size=-3"], "train.micro_batch_size=-3 is not allowed"),
    (["train.grad_accum=0"], "train.grad_accum=0 is not allowed: an integer >= 1"),
    (["+sweep=batch", "sweep.micro_batch_sizes=[]"], "sweep.micro_batch_sizes=[] is not allowed: a non-empty list"),
    (["+sweep=batch", "sweep.grad_accums=[]"], "sweep.grad_accums=[] is not allowed"),
    (["window.measure_steps=1"], "window.measure_steps=1 is not allowed: an integer >= 2"),
    (["ddp.bucket_cap_mb=0"], "ddp.bucket_cap_mb=0.0 is not allowed"),
    (["recommend.min_speedup=0"], "recommend.min_speedup=0.0 is not allowed"),
    (["watchdog.abort_after_s=900"], "watchdog.abort_after_s=900.0 is not allowed: less than dist.timeout_s=600"),
    (["watchdog.stall_s=10", "watchdog.abort_after_s=5"], "watchdog.abort_after_s=5.0 is not allowed: at least"),
    (["train.max_memory_fraction=1.5"], "train.max_memory_fraction=1.5 is not allowed"),
    (["fault=stall", "fault.rank=-1"], "fault.rank=-1 is not allowed"),
    (["+sweep=batch", "sweep.screen=true", "sweep.strategy=power"],
     "sweep.screen=True is not allowed: null or false, or true only with sweep.strategy=grid"),
    (["+sweep=batch", "sweep.screen=true", "recommend.objective=goodput"], "sweep.screen=True is not allowed"),
])
def test_range_errors_name_key_value_and_allowed(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _compose(overrides)


@pytest.mark.slow
@pytest.mark.parametrize("overrides,needle,code", [
    (["train.micro_batch_size=0"], "trainer_tune: error: train.micro_batch_size=0 is not allowed: an integer >= 1", 2),
    (["train.grad_accum=0"], "trainer_tune: error: train.grad_accum=0 is not allowed", 2),
    (["+sweep=batch", "sweep.micro_batch_sizes=[]"], "sweep.micro_batch_sizes=[] is not allowed", 2),
    (["+sweep=batch", "sweep.global_batch_size=7"],
     "sweep.global_batch_size=7 is not allowed: no micro_batch_size x grad_accum pair of the sweep reaches it at "
     "world size 1; reachable global batch sizes are [1, 2, 4, 8, 16]", 2),
    (["train.no_such_key=1"], "train.no_such_key is not a configuration key; the keys of train are", 2),
    (["train.micro_batch_size=abc"], "Value 'abc' of type 'str' could not be converted to Integer", 1),
])
def test_bad_input_exits_before_anything_runs(overrides: list[str], needle: str, code: int, tmp_path: Path) -> None:
    run_dir = tmp_path / "never"
    proc = run_tune([*overrides, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


@pytest.mark.slow
def test_bad_environment_flag_names_the_variable(tmp_path: Path) -> None:
    proc = run_tune([f"hydra.run.dir={tmp_path / 'never'}"], env={"NSA_DDP_BUCKET_MB": "lots"})
    assert proc.returncode == 2
    assert "environment NSA_DDP_BUCKET_MB='lots' (for ddp.bucket_cap_mb) is not allowed" in proc.stderr


@pytest.mark.slow
def test_cfg_job_shows_the_resolved_config() -> None:
    proc = run_tune(["--cfg", "job", "--resolve", "+sweep=batch"])
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["sweep"]["micro_batch_sizes"] == [1, 2, 4, 8]
    assert shown["model"]["name"] == "tiny"


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["model=conv_lm"], ["model._target_=trainer_tune.examples.models.ConvLM"]])
def test_a_model_given_by_its_target_is_named_by_it(overrides: list[str]) -> None:
    """config.yaml once said `name: tiny` for a model given by a config file or by model._target_."""
    proc = run_tune(["--cfg", "job", "--resolve", *overrides])
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["model"]["name"] == "trainer_tune.examples.models.ConvLM"
