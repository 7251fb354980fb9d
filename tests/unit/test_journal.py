from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from conftest import strict_loads
from result_factory import make_window
from trainer_tune.config.schema import ConfigError
from trainer_tune.run.journal import append_result, read_journal


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    first, second = make_window(round_id="r0", index=0, key="a", is_baseline=True), make_window(round_id="r0", index=1, key="b", status="oom")
    append_result(path, first)
    append_result(path, second)
    contents = read_journal(path)
    assert contents.results == (first, second)
    assert contents.problems == ()
    assert all(line.endswith("}") for line in path.read_text().splitlines())


def test_a_record_with_nan_and_inf_is_written_with_nulls_and_their_paths(tmp_path: Path) -> None:
    """A diverged trial (its NSA statistics NaN) is journaled, strict JSON, and reads back the same."""
    path = tmp_path / "trials.jsonl"
    diverged = make_window(round_id="r0", index=1, key="a", status="nan")
    diverged = dataclasses.replace(diverged, extra={
        **diverged.extra, "nsa_aux_stats": [{"gate": 0.5}, {"gate": math.nan, "entropy": math.inf}],
        "nested": {"deeper": [1.0, [-math.inf, 2.0]]}})
    assert append_result(path, diverged)
    line = path.read_text().splitlines()[0]
    record = strict_loads(line)
    expected_paths = ["extra.nsa_aux_stats[1].gate", "extra.nsa_aux_stats[1].entropy", "extra.nested.deeper[1][0]"]
    assert record["non_finite"] == expected_paths
    assert record["extra"]["nsa_aux_stats"] == [{"gate": 0.5}, {"gate": None, "entropy": None}]
    assert record["extra"]["nested"] == {"deeper": [1.0, [None, 2.0]]}
    assert record["status"] == "nan"
    # What the sinks hold in memory is what the journal says (fresh or resumed, the same record).
    assert diverged.non_finite == expected_paths and diverged.extra["nsa_aux_stats"][1]["gate"] is None
    assert read_journal(path).results == (diverged,)


def test_a_figure_made_non_finite_after_the_record_was_built_is_still_written(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    result = make_window(round_id="r0", index=0, key="a", is_baseline=True)
    result.extra["late"] = math.nan  # extra is a plain dict: nothing stops a writer from adding to it
    assert append_result(path, result)
    record = strict_loads(path.read_text())
    assert record["extra"]["late"] is None and record["non_finite"] == ["extra.late"]


def test_missing_journal_is_empty(tmp_path: Path) -> None:
    assert read_journal(tmp_path / "trials.jsonl").results == ()


def test_torn_last_line_is_reported_and_the_next_append_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    append_result(path, make_window(round_id="r0", index=0, key="a"))
    whole = json.dumps(make_window(round_id="r0", index=1, key="b").to_json_dict())
    with open(path, "a") as handle:
        handle.write(whole[: len(whole) // 2])  # a writer killed mid-line
    contents = read_journal(path)
    assert [r.trial_key for r in contents.results] == ["a"]
    assert "line 2 is incomplete" in contents.problems[0]
    append_result(path, make_window(round_id="r0", index=1, key="b"))
    assert [r.trial_key for r in read_journal(path).results] == ["a", "b"]


def test_a_foreign_line_in_the_middle_stops_the_run(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    path.write_text('{"hello": "world"}\n')
    append_result(path, make_window(round_id="r0", index=0, key="a"))
    with pytest.raises(ConfigError, match="line 1 is a JSON object without .*, not a trainer_tune trial record"):
        read_journal(path)


@pytest.mark.parametrize("line,what", [
    ("hello world", "line 1 is not JSON, not a trainer_tune trial record"),
    ("[1, 2]", "line 1 is JSON, but a list where a record is an object, not a trainer_tune trial record"),
    ('{"trial_key": "x", "status": "ok", "label": "1x1", "micro_batch_size": 1, "grad_accum": 1, '
     '"tokens_per_s": 1}', "line 1 is a JSON object whose fields are not a trial record's"),
])
def test_a_foreign_journal_is_one_line_in_the_documented_form(tmp_path: Path, line: str, what: str) -> None:
    """Once Python's own text: "('NoneType' object has no attribute 'get')", "(missing fields [...30 names])"."""
    path = tmp_path / "trials.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError) as raised:
        read_journal(path)
    message = str(raised.value)
    assert message.startswith(f"journal={path} is not allowed: {what}")
    assert "\n" not in message and "object has no attribute" not in message and "missing fields" not in message


def test_a_trial_recorded_twice_keeps_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    first = make_window(round_id="r0", index=0, key="a", is_baseline=True)
    second = make_window(round_id="r0", index=0, key="a", is_baseline=True, status="oom")
    append_result(path, first)
    with open(path, "a") as handle:  # as a writer that did not check would leave it
        handle.write(json.dumps(second.to_json_dict()) + "\n")
    contents = read_journal(path)
    assert contents.results == (first,)
    assert "line 2 records trial" in contents.problems[0] and "the first is kept" in contents.problems[0]


def test_an_already_recorded_trial_is_not_appended_again(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"
    assert append_result(path, make_window(round_id="r0", index=0, key="a", is_baseline=True))
    assert not append_result(path, make_window(round_id="r0", index=0, key="a", is_baseline=True, status="oom"))
    assert append_result(path, make_window(round_id="r0", index=1, key="b"))
    assert len(path.read_text().splitlines()) == 2


def _append_many(path: str, writer: int, count: int) -> None:
    for i in range(count):
        append_result(Path(path), make_window(round_id="r0", index=i, key=f"w{writer}-{i}"))
        # every writer also tries the shared baseline: exactly one line of it may land
        append_result(Path(path), make_window(round_id="r0", index=0, key="baseline", is_baseline=True))


def test_concurrent_writers_leave_whole_lines_and_one_baseline(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "trials.jsonl"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append_many, args=(str(path), w, 20)) for w in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    contents = read_journal(path)
    assert contents.problems == ()
    keys = [r.trial_key for r in contents.results]
    assert len(keys) == 4 * 20 + 1 and keys.count("baseline") == 1
    assert all(line.startswith("{") and line.endswith("}") for line in path.read_text().splitlines())


def test_a_budget_the_journal_proves_too_small_is_refused_before_anything_runs(tmp_path: Path) -> None:
    import dataclasses

    import pytest

    from trainer_tune.config.flags import TrialFlags
    from trainer_tune.config.schema import ConfigError
    from trainer_tune.plan import TrialSpec
    from trainer_tune.run.journal import check_budget

    plan = [TrialSpec(index=i, micro_batch_size=m, grad_accum=1, world_size=2, flags=TrialFlags(), is_baseline=i == 0,
                      key=f"s{m}") for i, m in enumerate((1, 2, 4))]
    path = tmp_path / "trials.jsonl"
    check_budget(5.0, plan=plan, journal=path)  # no journal: nothing to prove
    for m, wall_s in ((1, 2.0), (2, 4.0)):  # 4x1 not measured yet: it counts as the mean window, 3 s
        append_result(path, dataclasses.replace(make_window(round_id="r0", index=0, key=f"s{m}/r0", setting_key=f"s{m}"),
                                                wall_s=wall_s))
    with pytest.raises(ConfigError, match=r"sweep.budget_s=8 is not allowed: .* about 9 s; the smallest budget "
                                          r"that fits one round is 9"):
        check_budget(8.0, plan=plan, journal=path)
    check_budget(9.0, plan=plan, journal=path)
    check_budget(None, plan=plan, journal=path)
