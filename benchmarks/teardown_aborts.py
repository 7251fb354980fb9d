"""Count rank aborts at exit (`terminate called without an active exception`) over many runs.

    python benchmarks/teardown_aborts.py --runs 30                  # tiny real sweeps (about 10 s each)
    python benchmarks/teardown_aborts.py --runs 30 --last-collective --no-wait   # the cause, without the fix

Each run is a 2-rank `torchrun -m trainer_tune` sweep of two settings in one round of quick windows, or with
--last-collective a 2-rank group whose last act is one all-reduce (tests/helpers/exit_without_close.py, about 4 s;
--no-wait takes back the fix, DistSession._until_released). Prints the runs, the exit codes seen and how many runs had
an aborted rank; not part of CI (it takes minutes and measures a rate). tests/distributed/test_teardown.py holds the
reproduction and the fix.
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


def one_run(out: Path, *, last_collective: bool, no_wait: bool) -> tuple[int, bool]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    if last_collective:
        # No exit hook either: the wait must hold on its own.
        cmd = [*launch, "helpers.exit_without_close", "--no-hook", *(["--no-wait"] if no_wait else [])]
    else:
        cmd = [*launch, "trainer_tune", "+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2]",
               "sweep.grad_accums=[1]", "sweep.min_rounds=1", "sweep.max_rounds=1", "wandb=off",
               f"hydra.run.dir={out}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, ABORT in proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--last-collective", action="store_true",
                        help="a group whose last act is one all-reduce, instead of a sweep")
    parser.add_argument("--no-wait", action="store_true", help="with --last-collective: without the fix")
    args = parser.parse_args()
    if args.no_wait and not args.last_collective:
        parser.error("--no-wait goes with --last-collective")
    codes: collections.Counter = collections.Counter()
    aborted = 0
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.runs):
            code, abort = one_run(Path(tmp) / f"run{index}", last_collective=args.last_collective,
                                  no_wait=args.no_wait)
            codes[code] += 1
            aborted += abort
            print(f"run {index + 1}/{args.runs}: exit {code}{' ABORT' if abort else ''}", flush=True)
    print(f"{args.runs} runs, exit codes {dict(codes)}, {aborted} with an aborted rank")
    return 1 if aborted else 0


if __name__ == "__main__":
    sys.exit(main())
