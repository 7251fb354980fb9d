"""Whether gloo still holds a collective's tensor when DistSession's collective returns: the cause of the rank abort at
exit (platform/distributed.DistSession._until_released). Under torchrun, 2 ranks:

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m helpers.collective_release [--calls N]

Each rank makes N calls of each of DistSession's tensor collectives twice, first with the wait taken back
(`_RELEASE_WAIT_S = 0`, the code before the fix), then as shipped, and prints one JSON line: per phase, how many
calls returned while the backend still held the tensor (its C++ use count above the one reference Python holds)."""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from trainer_tune.config.schema import DistArgs
from trainer_tune.platform import distributed
from trainer_tune.platform.distributed import DistSession, RankEnv

_seen: list[torch.Tensor] = []
_all_reduce, _broadcast = dist.all_reduce, dist.broadcast


def _recording(collective):
    def call(tensor, *args, **kwargs):
        _seen.append(tensor)
        return collective(tensor, *args, **kwargs)
    return call


def _held_after_return(session: DistSession, calls: int) -> int:
    held = 0
    for index in range(calls):
        for collective in (lambda: session.max_over_ranks([float(index)]),
                           lambda: session.mean_tensor_over_ranks(torch.ones(3)),
                           lambda: session.broadcast_from_rank0({"index": index})):
            _seen.clear()
            collective()
            held += any(tensor._use_count() > 1 for tensor in _seen)
    _seen.clear()
    return held


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    session = DistSession.start(DistArgs(), RankEnv.from_environ(os.environ))
    dist.all_reduce, dist.broadcast = _recording(_all_reduce), _recording(_broadcast)
    shipped = distributed._RELEASE_WAIT_S
    distributed._RELEASE_WAIT_S = 0.0
    without_wait = _held_after_return(session, args.calls)
    distributed._RELEASE_WAIT_S = shipped
    with_wait = _held_after_return(session, args.calls)
    print(json.dumps({"rank": session.rank_env.rank, "calls": 3 * args.calls, "held_without_wait": without_wait,
                      "held_with_wait": with_wait}), flush=True)
    session.close()


if __name__ == "__main__":
    main()
