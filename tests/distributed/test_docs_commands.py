"""The CPU commands of the README, docs/quick-start.md and docs/troubleshooting.md, run as written (plus overrides
that keep them short): each exits with the code the docs promise and writes the recommendation and the files the
docs name. The commands are listed here verbatim and each must still be in the docs, so docs and behaviour cannot
drift apart. GPU, SLURM and multi-node commands are left out (tests/gpu, tests/slurm and test_multinode.py cover
their CPU forms)."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, clean_env

pytestmark = pytest.mark.slow

DOCS = ("README.md", "docs/quick-start.md", "docs/troubleshooting.md")

SHORT = ["window=quick", "sweep.min_rounds=1", "sweep.max_rounds=1", "wandb=off"]
"""One quick window per setting, no wandb: these runs check the commands, not the figures."""

SMALL_GRID = ["sweep.micro_batch_sizes=[1,2]"]
"""The sweeps' grids cut to two micro-batch sizes (the baseline is measured whatever the grid)."""

COMMANDS: list[tuple[str, list[str], int, tuple[str, ...]]] = [
    # (the command as the docs write it, what the test appends, the exit code the docs promise, the files the
    # docs say it writes besides the recommendation's)
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch", SMALL_GRID, 0, ()),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch baseline.micro_batch_size=4 baseline.grad_accum=2",
     SMALL_GRID, 0, ()),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=global_batch", [], 0, ()),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch sweep.ddp_bucket_cap_mb=[5,25,100]",
     ["sweep.micro_batch_sizes=[1]", "sweep.grad_accums=[1]"], 0, ()),
    # One window per setting gives no interval, so no setting can be shown 10% faster: NO-GO, exit 3.
    ("python -m trainer_tune +sweep=batch recommend=ci_gate recommend.min_speedup=1.10", SMALL_GRID, 3, ()),
    ("launch/local.sh +sweep=batch baseline.micro_batch_size=4 baseline.grad_accum=2", SMALL_GRID, 0, ()),
    ("python -m trainer_tune -m train.micro_batch_size=1,2,4 train.grad_accum=1,2", [], 0, ()),
    # troubleshooting.md's stall rehearsal: rank 1 hangs in trial 1, both ranks dump their stacks, the watchdog
    # ends the trial (exit 4), torchrun restarts the group once and the sweep finishes (exit 0). As written it
    # takes 85 s here (the 30 s abort and 8 settings in 3 rounds), so it is shrunk: a 2 s stall threshold, an
    # abort after 6 s, two settings (the baseline and the stalled 1x1).
    ("torchrun --nproc_per_node=2 --max-restarts=1 -m trainer_tune +sweep=batch fault=stall watchdog.stall_s=10 "
     "watchdog.abort_after_s=30",
     ["watchdog.stall_s=2", "watchdog.abort_after_s=6", "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]"],
     0, ("stacks/trial-1-rank-0.txt", "stacks/trial-1-rank-1.txt")),
]


def _docs_code() -> str:
    """The text of every fenced code block of the docs the commands come from, one command per line."""
    blocks = []
    for name in DOCS:
        parts = (REPO / name).read_text().split("```")
        blocks += [block.replace("\\\n", " ") for block in parts[1::2]]
    return "\n".join(blocks)


def test_every_command_is_still_in_the_docs() -> None:
    lines = [line.split(" && ")[-1].split("  #")[0].strip() for line in _docs_code().splitlines()]
    missing = [command for command, _, _, _ in COMMANDS if command not in lines]
    assert not missing, f"no longer in {', '.join(DOCS)} as written: {missing}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command,extra,exit_code,files", COMMANDS, ids=[c for c, _, _, _ in COMMANDS])
def test_docs_command_exits_as_documented(tmp_path: Path, command: str, extra: list[str], exit_code: int,
                                          files: tuple[str, ...]) -> None:
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "torchrun":
        argv[0] = str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "out"
    multirun = "-m" in argv[argv.index("trainer_tune"):] if "trainer_tune" in argv else False
    where = f"hydra.sweep.dir={out}" if multirun else f"hydra.run.dir={out}"
    # torchrun as written rendezvouses on its fixed default port: another run on this machine must not share it.
    env = clean_env({"PET_MASTER_PORT": str(_free_port()), "PYTHON": sys.executable})
    started = time.monotonic()
    proc = subprocess.run([*argv, *SHORT, *extra, where], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    took_s = time.monotonic() - started
    assert proc.returncode == exit_code, f"{command}: exit {proc.returncode} ({took_s:.0f} s)\n{proc.stderr[-3000:]}"
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["verdict"].startswith(("GO", "NO-GO")) and (out / "report.md").exists()
    assert (out / "trials.jsonl").exists() and (out / "recommendation.yaml").exists()
    missing = [name for name in files if not (out / name).exists()]
    assert not missing, f"{command}: no {missing} in {out}\n{proc.stderr[-3000:]}"
