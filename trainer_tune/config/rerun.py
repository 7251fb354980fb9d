"""The overrides that run a result's configuration again: everything that shaped the measurement but the sweep.

A recommendation's "measure again" line is these plus the chosen setting (micro-batch, accumulation, flags).
They are the mode (train or inference) and the config groups that change what is measured (model, data, loss,
train, window, dist, telemetry): each group's preset when it is not the default one (`model=hf_gpt2`), then
every key whose resolved value differs from what that preset alone composes to, so a rerun composes to the same
values. Each override is quoted for a POSIX shell where it needs it.
"""

from __future__ import annotations

import re
import shlex
from typing import Any, Callable, Mapping, Optional

REPRODUCED_GROUPS = ("model", "data", "loss", "step", "throughput", "train", "window", "dist", "telemetry")
"""Config groups a rerun must match. Not here: sweep and baseline (what is compared), nsa and ddp (the
setting's flags, pinned one by one), recommend, watchdog, fault, wandb (they decide, guard or record)."""

REPRODUCED_KEYS = ("mode",)
"""Top-level keys a rerun must match: +sweep=serving sets mode=inference, and the sweep is not reproduced."""

SETTING_KEYS = ("train.micro_batch_size", "train.grad_accum", "data.num_workers")
"""Set by the recommendation from the chosen setting (data.num_workers is one of its flags), so never part of
the run's own overrides."""

_BARE = re.compile(r"[A-Za-z_/][\w./:-]*")
_RESERVED = {"null", "true", "false", "nan", "inf", "-inf"}


def hydra_value(value: Any) -> str:
    """A Python value in Hydra's override grammar: null, true, 3, 0.1, name, 'quoted text', [..], {k: v}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _BARE.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Hydra override syntax for {value!r}")


def _diff(path: str, run: Any, base: Any, *, missing: bool, out: list[str]) -> None:
    if missing:
        out.append(f"+{path}={hydra_value(run)}")
    elif isinstance(run, Mapping) and isinstance(base, Mapping):
        for key, value in run.items():
            _diff(f"{path}.{key}", value, base.get(key), missing=key not in base, out=out)
        out.extend(f"~{path}.{key}" for key in base if key not in run)
    elif run != base or type(run) is not type(base):
        out.append(f"{path}={hydra_value(run)}")


def run_overrides(run: Mapping[str, Any], base: Mapping[str, Any], *, choices: Mapping[str, str],
                  default_choices: Mapping[str, str]) -> tuple[str, ...]:
    """Overrides that turn the default composition into `run` for the reproduced groups.

    run: the run's resolved config (plain containers, enums as names); base: the resolved composition of the
    default config with `group=choice` for each reproduced group whose choice is not the default;
    choices / default_choices: Hydra's runtime choices of the run and of the default config.
    """
    out: list[str] = []
    for key in REPRODUCED_KEYS:
        _diff(key, run.get(key), base.get(key), missing=False, out=out)
    for group in REPRODUCED_GROUPS:
        choice: Optional[str] = choices.get(group)
        if choice is not None and choice != default_choices.get(group):
            out.append(f"{group}={choice}")
        _diff(group, run.get(group, {}), base.get(group, {}), missing=False, out=out)
    return tuple(o for o in out if o.split("=")[0].lstrip("+~") not in SETTING_KEYS)


def shell_line(overrides: tuple[str, ...] | list[str]) -> str:
    """The overrides as one shell-pasteable string."""
    return " ".join(shlex.quote(o) for o in overrides)


def current_run_overrides(cfg: Any) -> tuple[str, ...]:
    """reproducing_overrides of `cfg`, the TuneConfig of the Hydra run in progress (so Hydra's choices are its)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    run = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    choices = {g: str(c) for g, c in hydra_cfg.runtime.choices.items() if c is not None}
    return reproducing_overrides(
        run, choices=choices,  # type: ignore[arg-type]
        compose=lambda overrides, hydra=False: compose(config_name=hydra_cfg.job.config_name, overrides=overrides,
                                                       return_hydra_config=hydra))


def reproducing_overrides(run: Mapping[str, Any], *, choices: Mapping[str, str],
                          compose: Callable[..., Any]) -> tuple[str, ...]:
    """run_overrides, checked: `compose(overrides, hydra=False)` composes the config (Hydra's compose API).

    Keys that are interpolations in a preset (`name: ${...}`, `vocab_size: ${model.vocab_size}`) are left out
    when the other overrides already give them the run's value; a last composition checks the result."""
    from omegaconf import OmegaConf

    default_choices = {g: str(c) for g, c in compose([], True).hydra.runtime.choices.items() if c is not None}
    pinned = [f"{g}={choices[g]}" for g in REPRODUCED_GROUPS
              if g in choices and choices[g] != default_choices.get(g)]

    def differences(base: Any) -> list[str]:
        plain = OmegaConf.to_container(base, resolve=True, enum_to_str=True)
        found = run_overrides(run, plain, choices=choices, default_choices=default_choices)  # type: ignore[arg-type]
        return [o for o in found if o not in pinned]

    base = compose(pinned)
    literal = [o for o in differences(base)
               if o.startswith(("+", "~")) or not _is_interpolation(base, o.split("=")[0])]
    derived = differences(compose(pinned + literal))
    overrides = pinned + literal + derived
    left = differences(compose(overrides))
    assert not left, f"the rerun overrides {overrides} leave {left} different"
    return tuple(overrides)


def _is_interpolation(cfg: Any, path: str) -> bool:
    from omegaconf import OmegaConf

    parent_path, _, key = path.rpartition(".")
    parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    return parent is not None and OmegaConf.is_interpolation(parent, key)
