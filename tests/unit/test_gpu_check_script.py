"""benchmarks/gpu_check.sh where there is no GPU: it parses, shellcheck is clean, it stops at once with one
line and exit 3, and the gpu-marked tests it runs skip here with the reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, clean_env

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_gpu_check_parses_and_is_shellcheck_clean() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run(["shellcheck", "--shell=bash", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would run its steps")
def test_without_cuda_it_stops_at_once_with_one_line(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    start_s = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), str(dest)], env=clean_env({"PYTHON": sys.executable}),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    elapsed_s = time.monotonic() - start_s
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device: torch "), proc.stderr
    assert elapsed_s < 30  # an import of torch, nothing more
    assert sorted(p.name for p in dest.iterdir()) == ["gpu_check.log"]  # no summary of steps never run


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the tests would run")
def test_gpu_marked_tests_skip_with_the_reason_without_cuda() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-n", "0", "-p", "no:cacheprovider", "tests/gpu"],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "needs a CUDA device: torch" in proc.stdout and " passed" not in proc.stdout, proc.stdout[-2000:]
