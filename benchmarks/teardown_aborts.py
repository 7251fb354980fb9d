"""Count rank aborts at exit (`terminate called without an active exception`) over many tiny real sweeps.

    python benchmarks/teardown_aborts.py --runs 30

Each run is a 2-rank `torchrun -m trainer_tune` sweep of two settings in one round of quick windows (about 10 s on
2 cores). Prints the runs, the exit codes seen and how many runs had an aborted rank; not part of CI (it takes
minutes and measures a rate). tests/distributed/test_teardown.py holds the reproduction and the fix.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABORT = "terminate called without an active exception"


def one_run(out: Path) -> tuple[int, bool]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer_tune",
           "+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]",
           "sweep.min_rounds=1", "sweep.max_rounds=1", "wandb=off", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, ABORT in proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    codes: collections.Counter = collections.Counter()
    aborted = 0
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.runs):
            code, abort = one_run(Path(tmp) / f"run{index}")
            codes[code] += 1
            aborted += abort
            print(f"run {index + 1}/{args.runs}: exit {code}{' ABORT' if abort else ''}", flush=True)
    print(f"{args.runs} runs, exit codes {dict(codes)}, {aborted} with an aborted rank")
    return 1 if aborted else 0


if __name__ == "__main__":
    sys.exit(main())
