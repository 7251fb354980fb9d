"""Every key of the composed config is in the schema: a misspelt key added with `+` stops the run, naming the
nearest valid key, instead of being dropped in silence."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from conftest import REPO, run_tune
from trainer_tune.config.schema import ConfigError, TuneConfig, register_configs
from trainer_tune.config.keys import check_keys, check_override_keys

CONFIGS = REPO / "configs"
IN_DEFAULTS = {"model", "data", "loss", "train", "window", "nsa", "ddp", "baseline", "recommend", "dist", "watchdog",
               "fault", "telemetry", "wandb"}


def _raw(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        check_keys(_raw(overrides))
    return str(info.value)


def test_a_misspelt_key_added_with_plus_composes_and_is_then_dropped_in_silence() -> None:
    """Why the check exists: Hydra accepts the key and to_object drops it."""
    raw = _raw(["+window.measure_secs=3"])
    assert raw.window.measure_secs == 3
    assert isinstance(OmegaConf.to_object(raw), TuneConfig)


def test_a_nested_unknown_key_names_the_nearest_key_of_its_group() -> None:
    # measure_secs is a time: the time key of the window, though measure_steps is spelt closer.
    assert _error(["+window.measure_secs=3"]) == \
        "window.measure_secs is not a configuration key; did you mean window.measure_s?"


def test_an_unknown_top_level_key_without_a_near_one_lists_the_valid_ones() -> None:
    assert _error(["+no_such_key=1"]) == (
        "no_such_key is not a configuration key; the top-level keys are mode, model, data, loss, step, throughput, "
        "train, sweep, window, nsa, ddp, baseline, recommend, dist, watchdog, fault, telemetry, wandb, serving (see "
        "docs/configuration.md)")


def test_an_unknown_key_deeper_down_is_named_as_typed() -> None:
    assert _error(["+window.foo.bar=2"]).startswith(
        "window.foo.bar is not a configuration key; the keys of window are warmup_steps, measure_steps,")


@pytest.mark.parametrize("override,nearest", [
    ("+train.grad_accums=[1]", "train.grad_accum"),          # a sibling, by spelling
    ("+dist.timeout=5", "dist.timeout_s"),
    ("+watchdog.stall_secs=3", "watchdog.stall_s"),          # a unit spelt out
    ("+ddp.bucket_cap_mib=3", "ddp.bucket_cap_mb"),
    ("+windw.measure_steps=3", "window.measure_steps"),      # a misspelt group
    ("+measure_steps=3", "window.measure_steps"),            # a key without its group
    ("+lr=0.1", "train.lr"),
    ("+window.lr=0.1", "train.lr"),                          # a key in the wrong group
])
def test_suggestions(override: str, nearest: str) -> None:
    assert _error([override]).endswith(f"; did you mean {nearest}?")


@pytest.mark.parametrize("override", ["+model.kwargs.hidden=64", "+model.kwargs.config._target_=pkg.Config",
                                      "+model.kwargs.config.n_layer=2", "+data.kwargs.path=/x", "+loss.kwargs.w=1"])
def test_the_free_form_kwargs_of_a_target_are_not_checked(override: str) -> None:
    check_keys(_raw([override]))


def test_the_sweep_group_is_part_of_the_schema() -> None:
    check_keys(_raw(["+sweep=batch"]))
    assert _error(["+sweep=batch", "+sweep.grad_accum=[1]"]).endswith("; did you mean sweep.grad_accums?")


def test_hydra_keys_are_hydras() -> None:
    check_keys({"hydra": {"anything": 1}, "train": {"lr": 0.1}})
    with pytest.raises(ConfigError, match="^train.hydra is not a configuration key"):
        check_keys({"train": {"hydra": 1}})


@pytest.mark.parametrize("group,option", sorted((p.parent.name, p.stem) for p in CONFIGS.glob("*/*.yaml")))
def test_every_shipped_option_passes(group: str, option: str) -> None:
    check_keys(_raw([f"{'' if group in IN_DEFAULTS else '+'}{group}={option}"]))


def test_overrides_are_checked_before_a_multirun_composes_them() -> None:
    check_override_keys(["model=tiny_nsa", "+sweep=batch", "+experiment=fast", "hydra/launcher=slurm",
                         "hydra.sweep.dir=x", "train.micro_batch_size=1,2", "+model.kwargs.a.b=1",
                         "~window.comm_split_steps"])
    with pytest.raises(ConfigError, match=r"^window.measure_secs is not a configuration key; did you mean window"):
        check_override_keys(["train.micro_batch_size=1,2", "+window.measure_secs=1,2"])


@pytest.mark.slow
def test_the_cli_exits_2_with_one_line_and_leaves_no_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "never"
    proc = run_tune(["+window.measure_secs=3", "wandb=off", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("trainer_tune: error: window.measure_secs is not a configuration key; "
                                   "did you mean window.measure_s?")
    assert not run_dir.exists()


@pytest.mark.slow
def test_a_multirun_stops_before_its_first_job(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "never"
    proc = run_tune(["-m", "+no_such_key=1", "train.micro_batch_size=1,2", "wandb=off",
                     f"hydra.sweep.dir={sweep_dir}"])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("trainer_tune: error: no_such_key is not a configuration key;")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not sweep_dir.exists()


def test_the_old_latency_budget_names_the_keys_that_replaced_it() -> None:
    # The per-batch budget kept its meaning under its true name; a request's latency under load has its own key.
    with pytest.raises(ConfigError) as info:
        check_override_keys(["recommend.max_latency_ms=50"])
    assert str(info.value).startswith("recommend.max_latency_ms was removed: renamed recommend.max_batch_latency_ms")
    assert "recommend.max_p99_ms" in str(info.value) and "\n" not in str(info.value)
    # A sweep recorded under the old name is re-decided with its budget (tests/fixtures/sweeps/serving).
    from trainer_tune.config.keys import upgrade_recorded
    upgraded = upgrade_recorded({"recommend": {"max_latency_ms": 20.0, "min_speedup": 1.05}})
    assert upgraded["recommend"] == {"max_batch_latency_ms": 20.0, "min_speedup": 1.05}
