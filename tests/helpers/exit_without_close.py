"""A 2-rank gloo group through DistSession that exits without DistSession.close (as an exception escaping the sweep
would): `python -m torch.distributed.run --nproc_per_node=2 -m helpers.exit_without_close [--no-hook]`.
--no-hook takes back the exit hook (platform/distributed._destroy_at_exit), to show what it prevents."""

from __future__ import annotations

import atexit
import os
import sys

from trainer_tune.config.schema import DistArgs
from trainer_tune.platform import distributed
from trainer_tune.platform.distributed import DistSession, RankEnv

session = DistSession.start(DistArgs(), RankEnv.from_environ(os.environ))
session.max_over_ranks([1.0])
if "--no-hook" in sys.argv:
    atexit.unregister(distributed._destroy_at_exit)
sys.exit(0)
