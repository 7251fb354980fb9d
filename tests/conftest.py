"""Shared helpers: run trainer_tune as a user would (a subprocess, under torchrun for 2 ranks)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]
_WANDB_HOME = Path(tempfile.mkdtemp(prefix="trainer_tune_tests_wandb_"))


def clean_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The caller's environment without variables that would change what a run measures or where it writes."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NSA_", "TRAINER_TUNE_", "TORCHELASTIC_", "WANDB_"))
           and k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}}
    env["PYTHONUNBUFFERED"] = "1"
    # wandb runs offline in tests (no account here); its caches go to one temporary folder, not $HOME.
    env["WANDB_MODE"] = "offline"
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        env[name] = str(_WANDB_HOME / name.lower())
    # Test helpers (tests/helpers, e.g. model._target_=helpers.models.WrongShape) import in the processes we start.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "tests"), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def use_offline_wandb(mp: pytest.MonkeyPatch, root: Path) -> None:
    """wandb in this test process as in every run the tests start: offline (no account here), silent, its caches
    and artifact staging under `root` instead of $HOME (without WANDB_MODE a later run in the process asks for a key)."""
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        mp.setenv(name, str(root / name.lower()))


def run_tune(args: Sequence[str], *, nproc: Optional[int] = None, env: Optional[dict[str, str]] = None,
             cwd: Optional[Path] = None, timeout_s: float = 240, max_restarts: int = 0) -> subprocess.CompletedProcess:
    """`python -m trainer_tune ARGS`, or `torchrun --standalone --nproc_per_node=N -m trainer_tune ARGS`."""
    if nproc is None:
        cmd = [sys.executable, "-m", "trainer_tune", *args]
    else:
        # --standalone picks a free port, so tests never collide on torchrun's fixed default.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               f"--max-restarts={max_restarts}", "-m", "trainer_tune", *args]
    return subprocess.run(cmd, cwd=cwd or REPO, env=clean_env(env), capture_output=True, text=True,
                          timeout=timeout_s)


def strict_loads(text: str) -> Any:
    """json.loads, refusing the NaN and Infinity tokens Python's json would otherwise accept: what a strict
    reader (jq, a browser, another language) makes of our files."""
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of a file; for a journal, its windows (the header line, run/journal.HEADER_KEY, and the memory
    predictions, read_predictions, left out)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if "journal_header" not in line and "memory_prediction" not in line]


def read_predictions(path: Path) -> dict[str, dict]:
    """A journal's memory predictions (measure/memory_trace.py), by setting label."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {line["memory_prediction"]["label"]: line["memory_prediction"] for line in lines
            if "memory_prediction" in line}


def read_header(path: Path) -> dict:
    """A journal's header (its first line)."""
    return json.loads(path.read_text().splitlines()[0])["journal_header"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """@pytest.mark.gpu tests skip, with the reason, where torch sees no CUDA device (torch is imported only
    when such a test was collected)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA device: torch {torch.__version__} sees none")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _quiet_machine(request: pytest.FixtureRequest) -> Any:
    """Under pytest-xdist (two workers on a 2-core machine), a test marked `quiet` runs with nothing beside it;
    every other test may share the machine with another. A `quiet` test asserts what its measurements decide (a
    verdict, a race drop, a p99 against a budget, a stall threshold), which another test's processes on the same
    cores would change; the rest assert mechanics, which they do not.

    A readers-writer lock on files shared by the workers (flock: released by the kernel if a worker dies): others
    hold it shared, a quiet test exclusive. The turnstile, taken first by everyone and held by a quiet test until
    it has the lock, stops a stream of shared holders from starving it. One process (no xdist): nothing to do."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id is None:
        yield
        return
    quiet = request.node.get_closest_marker("quiet") is not None
    base = Path(tempfile.gettempdir()) / f"trainer_tune_tests_{run_id}"
    with open(f"{base}.turnstile", "a") as turnstile, open(f"{base}.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if quiet else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def read_settings(out: Path) -> dict[str, dict]:
    """Each setting of a finished sweep aggregated over its windows, by label (recommendation.json's `settings`)."""
    rec = json.loads((out / "recommendation.json").read_text())
    return {s["label"]: s for s in rec["settings"]}


def windows_by_label(out: Path) -> dict[str, list[dict]]:
    """The journal's windows, by setting label, in the order they were measured."""
    grouped: dict[str, list[dict]] = {}
    for window in read_jsonl(out / "trials.jsonl"):
        grouped.setdefault(window["label"], []).append(window)
    return grouped


ONE_ROUND = ["sweep.min_rounds=1", "sweep.max_rounds=1"]
"""For tests of mechanics (faults, flags, models) rather than of decisions: every setting in one window."""


def refused_before_any_group(stderr: str, *, nproc: int) -> bool:
    """torchrun's summary of ranks that each refused a command line before any process group: every rank exits 2,
    except that torchrun ends the ranks still running once the first has failed (SIGTERM, -15), which a rank still
    starting up cannot avoid. At least one rank must have refused, and none may have ended any other way."""
    codes = [int(code) for code in re.findall(r"exitcode\s+:\s*(-?\d+) \(pid", stderr)]
    return 2 in codes and len(codes) <= nproc and set(codes) <= {2, -15}
