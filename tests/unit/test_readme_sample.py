"""README.md's "What you see" is today's output (docs/sample_output.py regenerates it from a real run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("sample_output", REPO / "docs" / "sample_output.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_readme_sample_has_todays_columns_and_lines() -> None:
    tool = _tool()
    assert tool.problems((REPO / "README.md").read_text()) == []


def test_the_check_catches_a_stale_sample() -> None:
    tool = _tool()
    readme = (REPO / "README.md").read_text()
    stale = readme.replace("decision matrix (each objective alone):", "decision matrix:")
    assert any("decision matrix" in p for p in tool.problems(stale))
    old_table = stale.replace("95% CI of", "95% interval of")
    assert any("95% CI of tokens/s (windows)" in p for p in tool.problems(old_table))
