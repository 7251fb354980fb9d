"""Every key of the composed config is a key of the schema (trainer_tune/config/schema.py), or the run stops.

Hydra type-checks what it merges into the structured config, but `+key=value` adds a key even there, and
`OmegaConf.to_object` then drops it without a word: a misspelt `+window.measure_secs=3` would run a whole
sweep as if it were not there. The free-form `kwargs` of a `_target_` (and anything nested in them) are the
user's own and not checked; `hydra.*` is Hydra's.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from functools import cache
from typing import Any, Iterator, Mapping, Optional, Union

from omegaconf import DictConfig, OmegaConf

from trainer_tune.config.schema import ConfigError, TuneConfig

_FREE_FORM = "free-form"
"""A node whose keys are the user's (a Dict[str, Any] field such as model.kwargs)."""
_VALUE = "value"

_Node = Union[type, str]
"""A schema dataclass, or _FREE_FORM, or _VALUE."""

_UNITS = {"s", "mb", "bytes", "pct", "hz", "w", "j"}
"""Unit suffixes of our key names (timeout_s, bucket_cap_mb, ...)."""
_SPELLED_UNITS = {"sec": "s", "secs": "s", "second": "s", "seconds": "s", "mib": "mb", "percent": "pct"}
"""Units as people also write them."""


def check_keys(raw: Union[DictConfig, Mapping[str, Any]], *, schema: type = TuneConfig) -> None:
    """Raise ConfigError naming the first key of `raw` that the schema does not have, and the nearest one."""
    plain = OmegaConf.to_container(raw, resolve=False) if isinstance(raw, DictConfig) else raw
    for path, parent, name in _unknown(plain, schema, prefix=""):
        raise ConfigError(_message(path, parent=parent, name=name, schema=schema))


def check_override_keys(overrides: list[str], *, schema: type = TuneConfig) -> None:
    """The same check for command-line overrides, before a Hydra multirun composes any job (a swept key,
    `+window.measure_secs=1,2`, is in no config until a job composes its own). A key without a dot may be a
    group choice (`model=tiny_nsa`, `+experiment=x` of your own config groups), which Hydra checks; one that
    is a key shows up in the composed config, which `check_keys` checks."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "." not in key or "/" in key or "@" in key or key.split(".")[0] == "hydra":
            continue
        check_keys(OmegaConf.from_dotlist([f"{key}=null"]), schema=schema)


def _unknown(node: Mapping[str, Any], schema: type, *, prefix: str) -> Iterator[tuple[str, str, str]]:
    """(full path, path of the known parent, unknown name) for each key the schema lacks, depth first."""
    children = _children(schema)
    for key, value in node.items():
        path = f"{prefix}{key}"
        if not prefix and key == "hydra":
            continue
        child = children.get(str(key))
        if child is None:
            yield _first_leaf(path, value), prefix.rstrip("."), str(key)
        elif isinstance(child, type) and isinstance(value, Mapping):
            yield from _unknown(value, child, prefix=f"{path}.")


def _first_leaf(path: str, value: Any) -> str:
    """`+window.foo.bar=1` adds window.foo = {bar: 1}: name the key as it was typed."""
    while isinstance(value, Mapping) and len(value) == 1:
        key, value = next(iter(value.items()))
        path = f"{path}.{key}"
    return path


@cache
def _children(schema: type) -> dict[str, _Node]:
    hints = typing.get_type_hints(schema)
    children: dict[str, _Node] = {}
    for f in dataclasses.fields(schema):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            children[f.name] = hint  # type: ignore[assignment]
        elif typing.get_origin(hint) is dict:
            children[f.name] = _FREE_FORM
        else:
            children[f.name] = _VALUE
    return children


def _all_paths(schema: type, prefix: str = "") -> list[str]:
    paths = []
    for name, child in _children(schema).items():
        paths.append(f"{prefix}{name}")
        if isinstance(child, type):
            paths += _all_paths(child, f"{prefix}{name}.")
    return paths


def _schema_at(schema: type, path: str) -> Optional[type]:
    node: _Node = schema
    for part in filter(None, path.split(".")):
        if not isinstance(node, type):
            return None
        node = _children(node).get(part, _VALUE)
    return node if isinstance(node, type) else None


REMOVED = {
    "window.target_rel_ci": "windows no longer stop on an interval over their own steps, which says nothing of the "
                            "machine's drift between windows; window.measure_s sets how long a window measures and "
                            "every interval is over windows (docs/measurement.md)",
    "window.check_every_steps": "windows no longer check an interval while they measure (each check drained the GPU "
                                "queue); their step count is fixed from the warm-up's timing (window.measure_s)",
    "window.max_measure_s": "use window.measure_s, the time a window's measured steps aim to fill",
    "recommend.max_latency_ms": "renamed recommend.max_batch_latency_ms (the p99 of one batch's time, batches served "
                                "back to back); a p99 of request latency under an arrival rate is "
                                "recommend.max_p99_ms with +sweep=serving_load (docs/inference.md)",
}
"""Keys that existed once, and what took their place: a config or command line that still sets one is told so."""

_CARRIED = {"window.max_measure_s": "window.measure_s", "recommend.max_latency_ms": "recommend.max_batch_latency_ms"}
"""Removed keys whose value a recorded config carries over to the key that replaced them."""


def upgrade_recorded(recorded: dict[str, Any]) -> dict[str, Any]:
    """A config a sweep recorded (its config.yaml) with the keys removed since dropped, or carried over to the key
    that replaced them, so that a re-decide reads it (the windows were measured under the old keys' meaning)."""
    upgraded = {group: dict(values) if isinstance(values, dict) else values for group, values in recorded.items()}
    for path in REMOVED:
        group, _, name = path.partition(".")
        values = upgraded.get(group)
        if not isinstance(values, dict) or name not in values:
            continue
        value = values.pop(name)
        if path in _CARRIED:
            new_group, _, new_name = _CARRIED[path].partition(".")
            upgraded[new_group].setdefault(new_name, value)
    return upgraded


def _message(path: str, *, parent: str, name: str, schema: type) -> str:
    if path in REMOVED:
        return f"{path} was removed: {REMOVED[path]}"
    nearest = _nearest(path, parent=parent, name=name, schema=schema)
    if nearest is not None:
        return f"{path} is not a configuration key; did you mean {nearest}?"
    group = _schema_at(schema, parent)
    assert group is not None, "the parent of an unknown key is a schema group"
    where = f"keys of {parent} are" if parent else "top-level keys are"
    return (f"{path} is not a configuration key; the {where} {', '.join(_children(group))} "
            f"(see docs/configuration.md)")


def _nearest(path: str, *, parent: str, name: str, schema: type) -> Optional[str]:
    """The valid key the user most likely meant: a sibling first (same group), then, for an unknown top-level
    name, the whole path among all paths (a misspelt group), then the name among every key's own name (a key
    put in the wrong group, or without its group)."""
    group = _schema_at(schema, parent)
    prefix = f"{parent}." if parent else ""
    if group is not None:
        sibling = _closest_name(name, list(_children(group)))
        if sibling is not None:
            rest = path[len(prefix) + len(name):]  # what followed the unknown part, e.g. ".bar"
            fixed = f"{prefix}{sibling}{rest}"
            return fixed if fixed in _all_paths(schema) else f"{prefix}{sibling}"
    paths = _all_paths(schema)
    if not parent:
        whole = difflib.get_close_matches(path, paths, n=1, cutoff=0.75)
        if whole:
            return whole[0]
    by_name = {}
    for candidate in paths:
        by_name.setdefault(candidate.rsplit(".", 1)[-1], candidate)  # schema order: train.* before baseline.*
    own = _closest_name(path.rsplit(".", 1)[-1], list(by_name))
    return by_name[own] if own is not None else None


def _closest_name(name: str, candidates: list[str]) -> Optional[str]:
    """difflib's closest name, preferring names with the same unit: `measure_secs` is a time, and the time
    key is measure_s, however close `measure_steps` is in spelling."""
    head, _, last = name.rpartition("_")
    unit = _SPELLED_UNITS.get(last.lower(), last.lower()) if head else ""
    if unit not in _UNITS:
        unit = ""
    wanted = f"{head}_{unit}" if unit else name
    same_unit = [c for c in candidates if unit and c.endswith(f"_{unit}")]
    for pool in (same_unit, candidates):
        match = difflib.get_close_matches(wanted, pool, n=1, cutoff=0.6)
        if match:
            return match[0]
    return None
