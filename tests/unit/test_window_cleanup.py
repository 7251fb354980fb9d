"""A window that fails leaves this process as a window that succeeds does: the telemetry probe stopped,
the model, optimizer and activations freed while the caller still holds the exception, the next window
measuring. One process, no process group: the same code path as every rank of a sweep."""

from __future__ import annotations

import gc

import pytest
import torch

from trainer_tune.config.schema import FaultKind, TelemetryArgs, TuneConfig
from trainer_tune.platform.distributed import DistSession, RankEnv
from trainer_tune.platform.faults import NO_FAULT, FaultPlan
from trainer_tune.config.flags import TrialFlags
from trainer_tune.plan import build_plan
from trainer_tune.measure.telemetry import AllocatorCounts, TelemetryProbe
from trainer_tune.measure.window import _Trainer, measure_local


def _setup() -> tuple[TuneConfig, DistSession, TelemetryProbe]:
    cfg = TuneConfig()
    cfg.model.seq_len = 16
    cfg.window.warmup_steps, cfg.window.measure_steps, cfg.window.max_measure_steps = 1, 3, 3
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = 1, 1
    rank_env = RankEnv(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0, hostname="here",
                       under_torchrun=False, restart_count=0)
    session = DistSession(rank_env=rank_env, device=torch.device("cpu"), backend=None)
    return cfg, session, TelemetryProbe(TelemetryArgs(), local_rank=0, device=session.device)


def _live_trainers() -> int:
    gc.collect()
    return sum(type(o) is _Trainer for o in gc.get_objects())


@pytest.mark.parametrize("fault", [FaultKind.error, FaultKind.oom])
def test_a_window_that_fails_while_measured_undoes_what_it_started(fault: FaultKind) -> None:
    cfg, session, probe = _setup()
    spec = build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")[0]
    # Step 2 is the second measured step (step 0 is the warm-up): the probe is sampling when it fails.
    with pytest.raises((RuntimeError, torch.OutOfMemoryError)) as failure:
        measure_local(cfg=cfg, spec=spec, session=session, fault=FaultPlan(kind=fault, step=2), probe=probe)
    # The caller still holds the exception (run/sweep.py records it), and through it the failed step's frames.
    assert failure.value.__traceback__ is not None and "injected" in str(failure.value)
    assert not probe.running and not probe.cpu.running
    assert _live_trainers() == 0, "the failed trial's model and optimizer outlive it"
    local = measure_local(cfg=cfg, spec=spec, session=session, fault=NO_FAULT, probe=probe)
    assert len(local.step_times_s) == 3 and local.telemetry is not None and local.telemetry.cpu is not None
    assert not probe.running
    probe.close()


def test_the_probe_starts_again_after_an_abandoned_window() -> None:
    _cfg, _session, probe = _setup()
    probe.abandon()  # nothing running: nothing to do
    probe.start()
    with pytest.raises(RuntimeError, match="called twice"):
        probe.start()
    probe.abandon()
    assert not probe.running
    probe.start()
    readings = probe.stop(tokens=100)
    assert readings.cpu.duration_s >= 0 and not probe.running
    probe.close()


def test_allocator_counters_are_the_windows_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's allocator counts OOMs and retries since the process started: an OOM in one trial must not
    show in every later trial's figures. (No GPU here: the counters are played back in order.)"""
    counters = iter([{"num_ooms": 1, "num_alloc_retries": 5}, {"num_ooms": 1, "num_alloc_retries": 7}])
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda _device: next(counters))
    probe = TelemetryProbe(TelemetryArgs(gpu_sampling=False), local_rank=0, device=torch.device("cuda", 0))
    probe.start()
    assert probe.stop(tokens=1).cuda_allocator == AllocatorCounts(num_ooms=0, num_alloc_retries=2)
