"""A setting's flags besides its batch shape: the NSA and DDP switches, the DataLoader's worker count, and the
training knobs after the batch size (torch.compile, activation checkpointing, precision).

Precedence, per flag: a value given in the config (command line or YAML) wins; else the environment
variable if it is set; else the built-in default. The effective values are exported to the process
environment while each trial runs, so user code that reads `NSA_*` sees what was measured, and they are
recorded with every trial. data.num_workers and the train.* knobs have no variable: they only shape what
trainer_tune builds.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Iterator, Mapping, MutableMapping, Optional

from trainer_tune.config.schema import ConfigError, DataArgs, DdpArgs, NsaArgs, Precision, SweepArgs, TrainArgs


@dataclass(frozen=True)
class TrialFlags:
    prefill_batched: bool = True
    disable_aux_stats: bool = False
    static_graph: bool = False
    find_unused_parameters: bool = False
    bucket_cap_mb: Optional[float] = None
    """None: DDP's own default, which is not the same as 25: a 1 MiB first bucket, then 25 MiB buckets."""
    num_workers: int = 0
    """DataLoader worker processes for a Dataset source (data.num_workers); a flag so it can be swept."""
    compile: bool = False
    """torch.compile the model (train.compile, with train.compile_mode), compiled in the warm-up."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward instead of keeping them (train.activation_checkpointing)."""
    precision: str = Precision.fp32.value
    """A Precision value (train.precision): fp32, bf16 or fp16 autocast."""
    num_threads: Optional[int] = None
    """torch threads per rank (train.num_threads); None: torch's own."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class FlagSpec:
    field_name: str
    config_key: str
    env_var: Optional[str]
    """The NSA_* variable that sets it and is exported during a trial; None for a flag with no variable."""
    sweep_key: str
    short_name: str
    """The flag's name in narrow places (the console table), where `find_unused_parameters=false` would not fit."""


FLAG_SPECS: tuple[FlagSpec, ...] = (
    FlagSpec("prefill_batched", "nsa.prefill_batched", "NSA_PREFILL_BATCHED", "nsa_prefill_batched", "prefill"),
    FlagSpec("disable_aux_stats", "nsa.disable_aux_stats", "NSA_DISABLE_AUX_STATS", "nsa_disable_aux_stats", "no_aux"),
    FlagSpec("static_graph", "ddp.static_graph", "NSA_DDP_STATIC_GRAPH", "ddp_static_graph", "static"),
    FlagSpec("find_unused_parameters", "ddp.find_unused_parameters", "NSA_DDP_FIND_UNUSED",
             "ddp_find_unused_parameters", "unused"),
    FlagSpec("bucket_cap_mb", "ddp.bucket_cap_mb", "NSA_DDP_BUCKET_MB", "ddp_bucket_cap_mb", "bucket_mb"),
    FlagSpec("num_workers", "data.num_workers", None, "num_workers", "workers"),
    FlagSpec("compile", "train.compile", None, "compile", "compile"),
    FlagSpec("activation_checkpointing", "train.activation_checkpointing", None, "activation_checkpointing", "ac"),
    FlagSpec("precision", "train.precision", None, "precision", "prec"),
    FlagSpec("num_threads", "train.num_threads", None, "num_threads", "threads"),
)

KEYED_WHEN_SET = {"compile": False, "activation_checkpointing": False, "precision": Precision.fp32.value,
                  "num_threads": None}
"""Flags that join a trial's key only away from these values: journals written before they existed measured
exactly these, so their keys stay the same (plan._trial_key)."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_env(spec: FlagSpec, raw: str, default: object) -> object:
    text = raw.strip().lower()
    if isinstance(default, bool):
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"environment {spec.env_var}={raw!r} (for {spec.config_key}) is not allowed: "
                          f"one of 1/0, true/false, yes/no, on/off")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ConfigError(f"environment {spec.env_var}={raw!r} (for {spec.config_key}) is not allowed: "
                          f"a number of MiB > 0")
    return value


def resolve_flags(*, nsa: NsaArgs, ddp: DdpArgs, data: DataArgs, environ: Mapping[str, str],
                  train: Optional[TrainArgs] = None) -> TrialFlags:
    """The effective flags for trials that do not sweep them (train=None: train.*'s defaults)."""
    defaults = TrialFlags()
    groups = {"nsa": nsa, "ddp": ddp, "data": data, "train": train if train is not None else TrainArgs()}
    values: dict[str, object] = {}
    for spec in FLAG_SPECS:
        default = getattr(defaults, spec.field_name)
        group, name = spec.config_key.split(".")
        given = getattr(groups[group], name)
        if given is not None:
            values[spec.field_name] = given.value if isinstance(given, Enum) else given
        elif spec.env_var is not None and environ.get(spec.env_var, "").strip():
            values[spec.field_name] = _parse_env(spec, environ[spec.env_var], default)
        else:
            values[spec.field_name] = default
    if values["bucket_cap_mb"] is not None:
        values["bucket_cap_mb"] = float(values["bucket_cap_mb"])  # type: ignore[arg-type]
    return TrialFlags(**values)  # type: ignore[arg-type]


def swept_flag_values(sweep: SweepArgs) -> dict[str, list[object]]:
    """Flag field name -> the values the sweep tries, for the flags that are sweep axes."""
    axes: dict[str, list[object]] = {}
    for spec in FLAG_SPECS:
        values = getattr(sweep, spec.sweep_key)
        if values is not None:
            axes[spec.field_name] = [v.value if isinstance(v, Enum) else v for v in values]
    return axes


def with_flag(flags: TrialFlags, field_name: str, value: object) -> TrialFlags:
    if field_name == "bucket_cap_mb" and value is not None:
        value = float(value)  # type: ignore[arg-type]
    if isinstance(value, Enum):
        value = value.value
    return replace(flags, **{field_name: value})


def format_flag(value: object) -> str:
    """A flag value as written in overrides and labels: true/false, 12.5, bf16, or null for DDP's default."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    return f"{value:g}"


def flags_to_environ(flags: TrialFlags) -> dict[str, str]:
    """The NSA_* variables as user code expects to read them (booleans as 1/0). A flag left at DDP's
    default has no variable: a value there would claim a setting that was not made."""
    out: dict[str, str] = {}
    for spec in FLAG_SPECS:
        value = getattr(flags, spec.field_name)
        if value is None or spec.env_var is None:
            continue
        out[spec.env_var] = ("1" if value else "0") if isinstance(value, bool) else f"{value:g}"
    return out


def export_flags(flags: TrialFlags, environ: MutableMapping[str, str]) -> None:
    """Make `environ` show exactly this trial's flags, removing what an earlier trial set."""
    exported = flags_to_environ(flags)
    for spec in FLAG_SPECS:
        if spec.env_var is None:
            continue
        if spec.env_var in exported:
            environ[spec.env_var] = exported[spec.env_var]
        else:
            environ.pop(spec.env_var, None)


@contextlib.contextmanager
def exported_flags(flags: TrialFlags, environ: MutableMapping[str, str]) -> Iterator[None]:
    """`export_flags` for one trial, then every variable as it was before, however the trial ends: what a
    trial exported never reaches what runs after it (the next job of a multirun resolves its flags from
    the environment)."""
    before = {spec.env_var: environ.get(spec.env_var) for spec in FLAG_SPECS if spec.env_var is not None}
    export_flags(flags, environ)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value


def flags_to_overrides(flags: TrialFlags) -> list[str]:
    """Hydra overrides that pin every flag to its value; train.num_threads only when a setting sets it (null leaves
    the threads to how the job is launched, which the override could not pin anyway)."""
    return [f"{spec.config_key}={format_flag(getattr(flags, spec.field_name))}" for spec in FLAG_SPECS
            if not (spec.field_name == "num_threads" and flags.num_threads is None)]
