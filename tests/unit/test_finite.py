"""Figures as strict JSON: a non-finite number becomes null with its path recorded, and no write raises on one."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pytest

from conftest import strict_loads
from trainer_tune.platform.finite import finite_json, finite_only, finite_record


@dataclass(frozen=True)
class Stats:
    median: float
    p90: Optional[float]


def test_every_non_finite_number_becomes_none_and_is_named_by_its_path() -> None:
    value = {"loss": math.nan, "ok": 1.5, "steps": [0.1, math.inf, 0.3], "pair": (1.0, -math.inf),
             "aux": [{"gate": 0.5}, {"gate": math.nan, "entropy": 2.0}], "odd key": {"a-b": math.nan},
             "stats": Stats(median=math.nan, p90=0.2), "flag": True, "count": 3, "name": "x", "none": None}
    cleaned, paths = finite_only(value)
    assert cleaned == {"loss": None, "ok": 1.5, "steps": [0.1, None, 0.3], "pair": (1.0, None),
                       "aux": [{"gate": 0.5}, {"gate": None, "entropy": 2.0}], "odd key": {"a-b": None},
                       "stats": Stats(median=None, p90=0.2), "flag": True, "count": 3, "name": "x",  # type: ignore
                       "none": None}
    assert paths == ["loss", "steps[1]", "pair[1]", "aux[1].gate", '["odd key"]["a-b"]', "stats.median"]
    assert math.isnan(value["loss"]), "the input is not changed"


def test_finite_values_come_back_as_they_were() -> None:
    value = {"a": [1.0, 2.0], "b": {"c": (3, 4.5)}, "s": Stats(median=1.0, p90=None)}
    cleaned, paths = finite_only(value)
    assert paths == [] and cleaned is value


def test_a_bare_non_finite_number_has_the_root_path() -> None:
    assert finite_only(math.nan) == (None, ["$"])


def test_numpy_figures_become_python_numbers() -> None:
    cleaned, paths = finite_only({"a": np.float32(1.5), "b": np.float64("nan"), "c": np.int64(7),
                                  "d": np.array([1.0, np.inf]), "e": np.bool_(True)})
    assert cleaned == {"a": 1.5, "b": None, "c": 7, "d": [1.0, None], "e": True}
    assert paths == ["b", "d[1]"]
    assert type(cleaned["c"]) is int and type(cleaned["e"]) is bool


def test_a_record_lists_its_nulled_paths_after_any_it_already_had() -> None:
    record = {"x": math.inf, "non_finite": ["earlier.path"]}
    assert finite_record(record) == {"x": None, "non_finite": ["earlier.path", "x"]}
    assert finite_record({"x": 1.0}) == {"x": 1.0}, "no key added when every figure is finite"


@pytest.mark.parametrize("value", [{"a": math.nan}, [math.inf], math.nan, {"n": {"m": [np.float32("nan")]}}])
def test_finite_json_never_raises_on_a_figure_and_writes_strict_json(value: Any) -> None:
    with pytest.raises(ValueError):
        json.dumps(value, allow_nan=False, default=lambda o: o.tolist())  # what the writers did before
    text = finite_json(value)
    strict_loads(text)
