from __future__ import annotations

import contextlib

import pytest

from trainer_tune.config.schema import ConfigError, DataArgs, DdpArgs, NsaArgs
from trainer_tune.config.flags import (
    TrialFlags, export_flags, exported_flags, flags_to_environ, flags_to_overrides, resolve_flags)


def test_builtin_defaults_without_environment() -> None:
    assert resolve_flags(nsa=NsaArgs(), ddp=DdpArgs(), data=DataArgs(), environ={}) == TrialFlags()


def test_environment_is_the_default_and_config_wins() -> None:
    environ = {"NSA_PREFILL_BATCHED": "0", "NSA_DISABLE_AUX_STATS": "yes", "NSA_DDP_STATIC_GRAPH": "true",
               "NSA_DDP_FIND_UNUSED": "1", "NSA_DDP_BUCKET_MB": "100"}
    from_env = resolve_flags(nsa=NsaArgs(), ddp=DdpArgs(), data=DataArgs(), environ=environ)
    assert from_env == TrialFlags(prefill_batched=False, disable_aux_stats=True, static_graph=True,
                                  find_unused_parameters=True, bucket_cap_mb=100.0)
    given = resolve_flags(nsa=NsaArgs(prefill_batched=True), ddp=DdpArgs(bucket_cap_mb=10.0), data=DataArgs(), environ=environ)
    assert given.prefill_batched is True and given.bucket_cap_mb == 10.0
    assert given.static_graph is True  # not given on the command line: the environment's value


def test_empty_environment_variable_counts_as_unset() -> None:
    assert resolve_flags(nsa=NsaArgs(), ddp=DdpArgs(), data=DataArgs(), environ={"NSA_DDP_BUCKET_MB": " "}).bucket_cap_mb is None


@pytest.mark.parametrize("name,value", [("NSA_PREFILL_BATCHED", "maybe"), ("NSA_DDP_BUCKET_MB", "-5"),
                                        ("NSA_DDP_BUCKET_MB", "nan")])
def test_bad_environment_values_are_rejected(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"environment {name}='{value}'"):
        resolve_flags(nsa=NsaArgs(), ddp=DdpArgs(), data=DataArgs(), environ={name: value})


def test_ddp_default_bucket_exports_no_variable_and_clears_an_earlier_one() -> None:
    environ = {"NSA_DDP_BUCKET_MB": "100", "PATH": "/bin"}
    export_flags(TrialFlags(), environ)
    assert "NSA_DDP_BUCKET_MB" not in environ and environ["PATH"] == "/bin"
    assert environ["NSA_PREFILL_BATCHED"] == "1"
    assert "ddp.bucket_cap_mb=null" in flags_to_overrides(TrialFlags())


def test_exported_environment_and_overrides_round_trip() -> None:
    flags = TrialFlags(prefill_batched=False, bucket_cap_mb=12.5)
    environ = flags_to_environ(flags)
    assert environ == {"NSA_PREFILL_BATCHED": "0", "NSA_DISABLE_AUX_STATS": "0", "NSA_DDP_STATIC_GRAPH": "0",
                       "NSA_DDP_FIND_UNUSED": "0", "NSA_DDP_BUCKET_MB": "12.5"}
    assert resolve_flags(nsa=NsaArgs(), ddp=DdpArgs(), data=DataArgs(), environ=environ) == flags
    assert "nsa.prefill_batched=false" in flags_to_overrides(flags)
    assert "ddp.bucket_cap_mb=12.5" in flags_to_overrides(flags)


@pytest.mark.parametrize("fails", [False, True])
def test_a_trial_exports_its_flags_only_while_it_runs(fails: bool) -> None:
    environ = {"NSA_DDP_BUCKET_MB": "100", "NSA_PREFILL_BATCHED": "1", "PATH": "/bin"}
    before = dict(environ)
    with pytest.raises(RuntimeError) if fails else contextlib.nullcontext():
        with exported_flags(TrialFlags(prefill_batched=False), environ):
            assert environ["NSA_PREFILL_BATCHED"] == "0" and "NSA_DDP_BUCKET_MB" not in environ
            if fails:
                raise RuntimeError("the trial failed")
    assert environ == before  # the next job of a multirun resolves its flags from what the user set


def test_train_knobs_are_flags_resolved_from_train() -> None:
    from trainer_tune.config.schema import Precision, TrainArgs
    flags = resolve_flags(nsa=NsaArgs(), ddp=DdpArgs(), data=DataArgs(), environ={},
                          train=TrainArgs(compile=True, activation_checkpointing=True, precision=Precision.bf16))
    assert (flags.compile, flags.activation_checkpointing, flags.precision) == (True, True, "bf16")
    assert {"train.compile=true", "train.activation_checkpointing=true", "train.precision=bf16"} <= \
        set(flags_to_overrides(flags))
    assert flags_to_environ(flags) == flags_to_environ(TrialFlags())  # no NSA_* variable for them
