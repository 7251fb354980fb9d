"""An output directory that cannot be made ends the run with one line and exit 2, not Hydra's traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import run_tune

pytestmark = pytest.mark.slow


def _our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("trainer_tune: error:")]


def test_run_dir_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    run_dir = tmp_path / "notes.txt" / "run"
    proc = run_tune([f"hydra.run.dir={run_dir}"], timeout_s=60)
    assert proc.returncode == 2, proc.stderr
    assert _our_lines(proc.stderr) == [
        f"trainer_tune: error: hydra.run.dir={run_dir} is not allowed: it cannot be created: "
        f"{tmp_path / 'notes.txt'} is a file; an output directory you can write"]
    assert "Traceback" not in proc.stderr


def test_multirun_sweep_dir_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    proc = run_tune(["-m", "train.micro_batch_size=1,2", f"hydra.sweep.dir={tmp_path / 'notes.txt' / 'sweep'}"],
                    timeout_s=60)
    assert proc.returncode == 2, proc.stderr
    assert [line.split(" is not allowed")[0] for line in _our_lines(proc.stderr)] == [
        f"trainer_tune: error: hydra.sweep.dir={tmp_path / 'notes.txt' / 'sweep'}"]
    assert "Traceback" not in proc.stderr


def test_run_dir_that_is_a_regular_file_under_torchrun(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.write_text("x")
    proc = run_tune([f"hydra.run.dir={run_dir}"], nproc=2, timeout_s=60)
    assert proc.returncode != 0
    line = (f"trainer_tune: error: hydra.run.dir={run_dir} is not allowed: it cannot be created: "
            f"{run_dir} is a file; an output directory you can write")
    assert _our_lines(proc.stderr) == [line], proc.stderr
    assert "FileExistsError" not in proc.stderr  # torchrun's own traceback of its ChildFailedError stays
    # Every rank exits 2, and torchrun's summary shows our line as the root cause.
    assert sorted(re.findall(r"exitcode\s+:\s*(-?\d+) \(pid", proc.stderr)) == ["2", "2"], proc.stderr
    assert f"traceback : {line}" in proc.stderr.split("Root Cause (first observed failure):")[1]
