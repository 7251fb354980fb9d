"""Exit codes, and how a rank leaves with the verdict every rank agreed on."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from trainer_tune.config.schema import ConfigError
from trainer_tune.platform.distributed import RankEnv, adopt_slurm_tasks, leave_with_agreed_code, tell_launcher

EXIT_FAILED = 1
"""An unexpected error (a traceback), as Python itself exits; also Hydra's code for a bad command line."""
EXIT_USAGE = 2
"""A user mistake: bad config, bad environment, unreadable journal. Nothing was measured."""
EXIT_NO_GO = 3
"""The sweep finished with NO-GO and recommend.fail_on_no_go=true."""
EXIT_INCONCLUSIVE = 5
"""The sweep finished with INCONCLUSIVE and recommend.fail_on_no_go=true (4 is the watchdog's)."""

_GATE_CODES = {"NO-GO": EXIT_NO_GO, "INCONCLUSIVE": EXIT_INCONCLUSIVE}


def gate_code(decision: str, *, fail_on_no_go: bool) -> int:
    """The exit code of a finished sweep: 0, or with recommend.fail_on_no_go 3 for NO-GO and 5 for INCONCLUSIVE."""
    return _GATE_CODES.get(decision, 0) if fail_on_no_go else 0


def leave_no_go(report: Path, rank_env: RankEnv, code: int = EXIT_NO_GO) -> int:
    """`code` (EXIT_NO_GO or EXIT_INCONCLUSIVE), for a rank about to exit with the gate's verdict that every rank
    agreed on after rank 0 published it (a sweep's end, a multirun's end); torchrun's failure summary names the
    report."""
    verdict = next(name for name, value in _GATE_CODES.items() if value == code)
    tell_launcher(f"trainer_tune: {verdict} with recommend.fail_on_no_go=true (exit {code}): see {report}")
    if rank_env.world_size > 1:
        leave_with_agreed_code()
    return code


def fail_usage(message: str, rank_env: RankEnv | None) -> NoReturn:
    line = f"trainer_tune: error: {message}"
    # One copy per node is enough: every rank got the same arguments and fails the same way.
    if rank_env is None or rank_env.local_rank == 0:
        print(line, file=sys.stderr, flush=True)
    tell_launcher(line)  # every rank: torchrun's summary names whichever failed first
    leave_with_agreed_code()
    sys.exit(EXIT_USAGE)


def rank_env_or_fail() -> RankEnv:
    try:
        adopt_slurm_tasks(os.environ)
        return RankEnv.from_environ(os.environ)
    except ConfigError as exc:
        fail_usage(str(exc), None)
