"""The test tree itself: pytest imports test modules by basename (rootdir-relative, no packages), so two
modules named alike in different folders stop the collection of the whole suite."""

from __future__ import annotations

from collections import Counter

from conftest import REPO


def test_no_two_test_modules_share_a_basename() -> None:
    names = Counter(path.name for path in (REPO / "tests").rglob("test_*.py"))
    assert [name for name, seen in names.items() if seen > 1] == []
