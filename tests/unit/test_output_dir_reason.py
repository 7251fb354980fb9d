"""An output directory that cannot be made is named with the OS's reason, before Hydra would raise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer_tune.run.output_dir import unusable_reason


def test_a_path_under_a_regular_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    reason = unusable_reason(tmp_path / "notes.txt" / "run" / "deeper")
    assert reason == f"it cannot be created: {tmp_path / 'notes.txt'} is a file"


def test_a_path_that_is_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("x")
    assert unusable_reason(tmp_path / "run") == f"it cannot be created: {tmp_path / 'run'} is a file"


def test_a_new_directory_under_a_writable_one_is_fine_and_not_made_yet(tmp_path: Path) -> None:
    assert unusable_reason(tmp_path / "a" / "b") is None
    assert not (tmp_path / "a").exists()  # a run that stops for a config error leaves nothing behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a directory without write permission")
def test_a_read_only_parent_is_refused(tmp_path: Path) -> None:
    (tmp_path / "locked").mkdir(mode=0o555)
    assert unusable_reason(tmp_path / "locked" / "run") == \
        f"it cannot be created: {tmp_path / 'locked'} is not writable (permission denied)"
