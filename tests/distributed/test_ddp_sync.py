"""How many gradient all-reduces DDP really issues per optimizer step, counted by a comm hook, in a real
2-process gloo group: once per bucket on the last micro-step of a synced step, never in a step without sync
(what window.comm_split_steps times against the synced steps to get the exposed communication)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from trainer_tune.config.schema import TuneConfig
from trainer_tune.platform.distributed import DistSession, RankEnv
from trainer_tune.platform.faults import NO_FAULT
from trainer_tune.config.flags import TrialFlags
from trainer_tune.plan import TrialSpec
from trainer_tune.measure.window import _Trainer

pytestmark = pytest.mark.slow

ACCUMULATIONS = (1, 2, 4)
WORLD_SIZE = 2


class _Counter:
    def __init__(self) -> None:
        self.buckets: list[int] = []
        """The index of the bucket of each all-reduce, in the order DDP issued them."""


def _counting_allreduce(counter, bucket):  # type: ignore[no-untyped-def]
    # Unannotated: DDP checks the annotations, and `from __future__ import annotations` turns them into strings.
    counter.buckets.append(bucket.index())
    return allreduce_hook(None, bucket)  # type: ignore[arg-type] - None: the default group, as DDP itself uses


def _count_allreduces(rank: int, store_path: str, out_dir: str) -> None:
    store = dist.FileStore(store_path, WORLD_SIZE)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    rank_env = RankEnv(rank=rank, local_rank=rank, world_size=WORLD_SIZE, local_world_size=WORLD_SIZE, node_rank=0,
                       hostname="localhost", under_torchrun=False, restart_count=0)
    session = DistSession(rank_env=rank_env, device=torch.device("cpu"), backend="gloo", store=store)
    cfg = TuneConfig()
    cfg.model.seq_len = 16  # small and fast: the count of all-reduces does not depend on the size
    # Small buckets, so a step has several of them and "once per bucket" is told apart from "once".
    flags = TrialFlags(bucket_cap_mb=0.25)
    counts: dict[str, dict[str, list[int]]] = {}
    for accum in ACCUMULATIONS:
        spec = TrialSpec(index=1, micro_batch_size=1, grad_accum=accum, world_size=WORLD_SIZE, flags=flags,
                         is_baseline=False, key="count")
        trainer = _Trainer(cfg=cfg, spec=spec, session=session, fault=NO_FAULT, heartbeat=lambda _s, _m: None)
        counter = _Counter()
        trainer.module.register_comm_hook(counter, _counting_allreduce)  # type: ignore[operator]
        trainer.step(0)  # DDP rebuilds its buckets after the first step: count from the second one on
        counter.buckets = []
        trainer.step(1)
        synced, counter.buckets = counter.buckets, []
        trainer.step(2, sync=False)
        counts[str(accum)] = {"sync": sorted(synced), "no_sync": sorted(counter.buckets)}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(counts))
    dist.destroy_process_group()


def test_a_synced_step_all_reduces_each_bucket_once_and_an_unsynced_step_never(tmp_path: Path) -> None:
    mp.spawn(_count_allreduces, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    for rank in range(WORLD_SIZE):
        counts = json.loads((tmp_path / f"rank{rank}.json").read_text())
        num_buckets = len(set(counts["1"]["sync"]))
        assert num_buckets >= 2, counts
        # At every accumulation: each bucket all-reduced exactly once per synced step (in its last micro-step
        # only), and nothing at all in a step without sync.
        assert counts == {str(accum): {"sync": list(range(num_buckets)), "no_sync": []} for accum in ACCUMULATIONS}
