"""A 2-rank gloo group through DistSession whose last act is a collective, exiting without DistSession.close (as an
exception escaping the sweep would): `python -m torch.distributed.run --nproc_per_node=2 -m helpers.exit_without_close
[--no-hook] [--no-wait]`. --no-hook takes back the exit hook that destroys the group (_destroy_at_exit); --no-wait
takes back the wait for gloo to release the collective's tensor (DistSession._until_released), the fix of the abort
at exit: with both, about 3 runs in 10 end in `terminate called without an active exception` on this machine."""

from __future__ import annotations

import atexit
import os
import sys

from trainer_tune.config.schema import DistArgs
from trainer_tune.platform import distributed
from trainer_tune.platform.distributed import DistSession, RankEnv

if "--no-wait" in sys.argv:
    distributed._RELEASE_WAIT_S = 0.0
session = DistSession.start(DistArgs(), RankEnv.from_environ(os.environ))
session.max_over_ranks([1.0])
if "--no-hook" in sys.argv:
    atexit.unregister(distributed._destroy_at_exit)
sys.exit(0)
