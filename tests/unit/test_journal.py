from __future__ import annotations

import json
from pathlib import Path

import pytest

from result_factory import make_result
from trainer_tune.config import ConfigError
from trainer_tune.journal import append_result, read_journal


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    first, second = make_result(index=0, key="a", is_baseline=True), make_result(index=1, key="b", status="oom")
    append_result(path, first)
    append_result(path, second)
    contents = read_journal(path)
    assert contents.results == (first, second)
    assert contents.problems == ()
    assert all(line.endswith("}") for line in path.read_text().splitlines())


def test_missing_journal_is_empty(tmp_path: Path) -> None:
    assert read_journal(tmp_path / "trials.jsonl").results == ()


def test_torn_last_line_is_reported_and_the_next_append_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    append_result(path, make_result(index=0, key="a"))
    whole = json.dumps(make_result(index=1, key="b").to_json_dict())
    with open(path, "a") as handle:
        handle.write(whole[: len(whole) // 2])  # a writer killed mid-line
    contents = read_journal(path)
    assert [r.trial_key for r in contents.results] == ["a"]
    assert "line 2 is incomplete" in contents.problems[0]
    append_result(path, make_result(index=1, key="b"))
    assert [r.trial_key for r in read_journal(path).results] == ["a", "b"]


def test_a_foreign_line_in_the_middle_stops_the_run(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    path.write_text('{"hello": "world"}\n')
    append_result(path, make_result(index=0, key="a"))
    with pytest.raises(ConfigError, match="line 1 is not a trainer_tune trial record"):
        read_journal(path)
