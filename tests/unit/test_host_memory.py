"""Peak memory on a CPU: the training process's peak resident memory growth over the window that built its
trainer (host_memory.py), recorded as THE peak memory figure with its source, and None with the reason where it
cannot be read."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest
import torch

from trainer_tune.config.schema import TuneConfig
from trainer_tune.platform.distributed import DistSession, RankEnv
from trainer_tune.measure.figures import MEMORY_SOURCES, RSS_GROWTH
from trainer_tune.config.flags import TrialFlags
from trainer_tune.measure.host_memory import RssWatch
from trainer_tune.measure.summarize import TrialContext, result_from_window
from trainer_tune.plan import build_plan
from trainer_tune.measure.window import TrainerPool, combine_ranks, measure_local

MIB = 1024 ** 2
SLACK_BYTES = 2 * MIB
"""How far the kernel's resident-set counters may lag: per thread up to 64 pages not yet folded in."""
linux_only = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


@linux_only
def test_memory_held_at_once_inside_the_region_counts_even_when_freed_before_the_reading() -> None:
    watch = RssWatch().start()
    block = torch.ones(64 * MIB // 4)  # 64 MiB, every page written
    del block
    growth = watch.read().growth_bytes
    # The kernel's resident-set counters are batched per thread (up to 64 pages each, a few threads here).
    assert growth is not None and 64 * MIB - SLACK_BYTES <= growth < 96 * MIB


@linux_only
def test_a_region_that_allocates_little_reads_little() -> None:
    # Freed before the region (and handed back by the trim): not the region's.
    before = torch.ones(64 * MIB // 4)
    del before
    watch = RssWatch().start()
    small = torch.ones(MIB // 4)
    del small
    growth = watch.read().growth_bytes
    assert growth is not None and growth < 16 * MIB


@linux_only
def test_file_pages_read_inside_the_region_are_not_counted(tmp_path: Path) -> None:
    # Code and files paged in for the first time (the first trial of a process pages in torch's kernels) stay
    # resident: they are not what the setting's micro-batch costs.
    path = tmp_path / "blob"
    path.write_bytes(b"\1" * (64 * MIB))
    watch = RssWatch().start()
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert sum(mapped[i] for i in range(0, len(mapped), 4096)) == 64 * MIB // 4096
        growth = watch.read().growth_bytes
    assert growth is not None and growth < 16 * MIB


def test_no_proc_gives_no_figure_and_says_why(tmp_path: Path) -> None:
    reading = RssWatch(proc=tmp_path / "missing").start().read()
    assert reading.growth_bytes is None and reading.note is not None
    assert reading.note.startswith("peak resident memory not readable here") and "clear_refs" in reading.note


def _session() -> DistSession:
    rank_env = RankEnv(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0, hostname="here",
                       under_torchrun=False, restart_count=0)
    return DistSession(rank_env=rank_env, device=torch.device("cpu"), backend=None)


@linux_only
def test_a_cpu_window_records_its_growth_as_the_peak_memory_and_a_kept_trainer_says_why_not() -> None:
    cfg = TuneConfig()
    cfg.model.seq_len = 64
    cfg.window.warmup_steps, cfg.window.measure_steps, cfg.window.max_measure_steps = 1, 2, 2
    cfg.window.noise_steps = 0
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = 8, 1
    session = _session()
    spec = build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")[0]
    pool = TrainerPool()
    ctx = TrialContext(model_name="tiny", device="cpu", backend=None, num_warmup_steps=1, num_measured_steps=2,
                       label=spec.label())

    built = combine_ranks(measure_local(cfg=cfg, spec=spec, session=session, pool=pool), session=session)
    first = result_from_window(spec, built, ctx, started_at="t0", finished_at="t1", telemetry=[None])
    # The trainer's weights, gradients and AdamW moments alone: 4 copies of the parameters.
    state_bytes = 4 * 4 * first.num_parameters  # type: ignore[operator]
    assert first.peak_memory_source == RSS_GROWTH and first.peak_memory_note is None
    assert first.peak_memory_bytes is not None and first.peak_memory_bytes >= state_bytes
    assert "resident memory" in MEMORY_SOURCES[RSS_GROWTH]

    kept = combine_ranks(measure_local(cfg=cfg, spec=spec, session=session, pool=pool), session=session)
    second = result_from_window(spec, kept, ctx, started_at="t2", finished_at="t3", telemetry=[None])
    assert second.peak_memory_bytes is None and second.peak_memory_source is None
    assert second.peak_memory_note is not None and "kept from an earlier window" in second.peak_memory_note
    pool.clear()
