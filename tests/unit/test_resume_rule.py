"""The one resume rule (run/journal.resume_refusal) and the rounds a resumed sweep measures (decide/race.
lifetime_slots): known answers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from test_fingerprint import _fingerprint

from trainer_tune.decide.race import lifetime_slots
from trainer_tune.measure.record import RECORD_VERSION
from trainer_tune.run.journal import JournalHeader, read_journal, resume_refusal, write_header

DEFINITION = {"model": {"d_model": 128, "name": "tiny"}, "workload": {"loss": {"_target_": None}}, "mode": "train",
              "grid": ["1x1", "2x1", "4x1"]}


def _journal(tmp_path: Path, definition: dict = DEFINITION) -> Path:
    path = tmp_path / "trials.jsonl"
    header = JournalHeader(record_version=RECORD_VERSION, definition=definition, fingerprint=_fingerprint(),
                           created_at="2026-12-07T20:00:00.000+00:00")
    assert write_header(path, header)
    assert not write_header(path, header)  # once: a resume finds it there
    return path


def test_the_header_round_trips_and_is_no_window(tmp_path: Path) -> None:
    contents = read_journal(_journal(tmp_path))
    assert contents.results == () and contents.problems == ()
    assert contents.header is not None and contents.header.definition == DEFINITION
    assert contents.header.fingerprint == _fingerprint() and contents.header.record_version == RECORD_VERSION


def test_another_definition_is_refused_naming_what_differs(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    other = {**DEFINITION, "model": {"d_model": 256, "name": "tiny"}, "grid": ["1x1", "2x1", "8x1"]}
    refusal, warning = resume_refusal(read_journal(path), journal=path, definition=other, fingerprint=_fingerprint(),
                                      allow_fingerprint_change=False)
    assert refusal == (f"hydra.run.dir={tmp_path} is not allowed: its journal is of another sweep (grid: 8x1 added; "
                       f"4x1 removed; model.d_model: 128 -> 256); use a new hydra.run.dir for this one")
    assert warning is None
    same = resume_refusal(read_journal(path), journal=path, definition=dict(DEFINITION), fingerprint=_fingerprint(),
                          allow_fingerprint_change=False)
    assert same == (None, None)


def test_a_speed_deciding_fingerprint_change_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    threads = _fingerprint(omp_num_threads="2", torch_threads=(2, 2))
    refusal, _ = resume_refusal(read_journal(path), journal=path, definition=DEFINITION, fingerprint=threads,
                                allow_fingerprint_change=False)
    assert refusal is not None and "(omp_num_threads: 1 -> 2; torch_threads: (1, 1) -> (2, 2))" in refusal
    assert refusal.startswith("sweep.allow_fingerprint_change=false is not allowed to resume")
    refusal, warning = resume_refusal(read_journal(path), journal=path, definition=DEFINITION, fingerprint=threads,
                                      allow_fingerprint_change=True)
    assert refusal is None and "start new rounds and never pair with those" in warning
    # A requeue on a like node (another host name only) continues without a word.
    assert resume_refusal(read_journal(path), journal=path, definition=DEFINITION,
                          fingerprint=dataclasses.replace(_fingerprint(), host="node-7"),
                          allow_fingerprint_change=False) == (None, None)


def test_a_round_cut_short_measures_its_missing_windows_under_a_new_id_with_their_own_baseline() -> None:
    slots = [("b", "r3"), ("x", "r3"), ("y", "r3")]
    assert lifetime_slots(slots, is_done=lambda key, sid: False, baseline_key="b") == \
        [("b", "r3", ()), ("x", "r3", ()), ("y", "r3", ())]
    done = {("b", "r3"), ("x", "r3")}
    assert lifetime_slots(slots, is_done=lambda key, sid: (key, sid) in done, baseline_key="b") == \
        [("b", "r3", ()), ("x", "r3", ()), ("b", "r3~1", ("r3",)), ("y", "r3~1", ("r3",))]
    # Cut short again after the baseline's window of r3~1: y moves on once more, with another baseline window.
    done |= {("b", "r3~1")}
    assert lifetime_slots(slots, is_done=lambda key, sid: (key, sid) in done, baseline_key="b") == \
        [("b", "r3", ()), ("x", "r3", ()), ("b", "r3~1", ("r3",)), ("b", "r3~2", ("r3", "r3~1")),
         ("y", "r3~2", ("r3", "r3~1"))]
    # A complete round, and a screening round's blocks each on their own.
    every = {(k, s) for k, s in slots}
    assert lifetime_slots(slots, is_done=lambda key, sid: (key, sid) in every, baseline_key="b") == \
        [(k, s, ()) for k, s in slots]
    blocks = [("x", "r0.0"), ("b", "r0.0"), ("y", "r0.1"), ("b", "r0.1")]
    done = {("x", "r0.0"), ("b", "r0.0"), ("b", "r0.1")}
    assert lifetime_slots(blocks, is_done=lambda key, sid: (key, sid) in done, baseline_key="b") == \
        [("x", "r0.0", ()), ("b", "r0.0", ()), ("b", "r0.1", ()), ("b", "r0.1~1", ("r0.1",)),
         ("y", "r0.1~1", ("r0.1",))]
