"""Figures as strict JSON: a number that is not finite (NaN, +-inf) is written as null, and its path recorded.

Strict JSON has no NaN, and a diverged trial produces them (the NSA statistics of a NaN loss, say). Every
writer of figures (the journal, recommendation.json, the posts ranks exchange through the store) goes through
`finite_json`, so one bad figure costs that figure, never the write, the trial or the sweep.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any

NON_FINITE_KEY = "non_finite"
"""In a record (a dict) written with `finite_json`: the JSON paths of the figures that were not finite numbers
and are null instead, e.g. ["extra.nsa_aux_stats[3].gate_entropy"]."""


def finite_only(value: Any, *, path: str = "") -> tuple[Any, list[str]]:
    """`value` with every non-finite number replaced by None, and the paths where that happened.

    Containers keep their type (dict, list, tuple, dataclass); numbers and arrays that are not Python's own
    (NumPy scalars and arrays, tensors) become Python's, so json can write them. Nothing is copied when
    nothing changes.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value, []
    if isinstance(value, numbers.Integral):
        return (value if type(value) is int else int(value)), []
    if isinstance(value, numbers.Real):
        number = float(value)
        return (number, []) if math.isfinite(number) else (None, [path or "$"])
    if isinstance(value, dict):
        cleaned, bad = {}, []
        for key, item in value.items():
            cleaned[key], item_bad = finite_only(item, path=_child(path, key))
            bad += item_bad
        return (cleaned if bad else value), bad
    if isinstance(value, (list, tuple)):
        items, bad = [], []
        for i, item in enumerate(value):
            clean_item, item_bad = finite_only(item, path=f"{path}[{i}]")
            items.append(clean_item)
            bad += item_bad
        return ((type(value)(items) if bad else value), bad)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes, bad = {}, []
        for f in dataclasses.fields(value):
            clean_item, item_bad = finite_only(getattr(value, f.name), path=_child(path, f.name))
            if item_bad:
                changes[f.name], bad = clean_item, bad + item_bad
        return (dataclasses.replace(value, **changes) if changes else value), bad
    if callable(getattr(value, "tolist", None)):
        return finite_only(value.tolist(), path=path)  # a NumPy array or bool, a tensor
    return value, []


def finite_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its non-finite numbers null and their paths added to record["non_finite"]."""
    cleaned, bad = finite_only(record)
    if not bad:
        return record
    already = cleaned.get(NON_FINITE_KEY) or []
    return {**cleaned, NON_FINITE_KEY: [*already, *(p for p in bad if p not in already)]}


def finite_json(value: Any, **dumps_kwargs: Any) -> str:
    """json.dumps that never raises on a figure: a dict is written as `finite_record` writes it, any other
    value with its non-finite numbers null."""
    cleaned = finite_record(value) if isinstance(value, dict) else finite_only(value)[0]
    return json.dumps(cleaned, allow_nan=False, **dumps_kwargs)


def _child(path: str, key: Any) -> str:
    name = str(key)
    if name.isidentifier():
        return f"{path}.{name}" if path else name
    return f"{path}[{json.dumps(name)}]"
