"""Fault injection: make one rank stall, run out of memory, diverge, raise or die at a chosen trial and step.

For the reliability tests, and for users who want to see what trainer_tune does when their real job
fails that way before it happens in a sweep that matters. The function names below are what a stack
dump shows, so `injected_stall` in a stack file means the stall was rehearsed, not real.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import torch

from trainer_tune.config.schema import FaultArgs, FaultKind


def injected_stall() -> None:
    while True:  # a hang: only the watchdog (or torchrun) ends it
        time.sleep(3600)


def injected_oom(device: torch.device) -> None:
    if device.type == "cuda":
        # A real allocation past what is free: the caching allocator raises torch.OutOfMemoryError itself.
        free_bytes, _total = torch.cuda.mem_get_info(device)
        torch.empty(int(free_bytes * 2), dtype=torch.uint8, device=device)
    raise torch.OutOfMemoryError("injected out of memory (fault=oom; the CPU allocator cannot run out for real)")


def injected_error() -> None:
    raise RuntimeError("injected fault in model code (fault=error)")


def injected_exit() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class FaultPlan:
    """Whether and how this rank misbehaves during one trial."""

    kind: FaultKind
    step: int

    def before_micro_step(self, *, step: int, micro_step: int, device: torch.device) -> None:
        if step != self.step or micro_step != 0:
            return
        if self.kind == FaultKind.stall:
            injected_stall()
        elif self.kind == FaultKind.oom:
            injected_oom(device)
        elif self.kind == FaultKind.error:
            injected_error()
        elif self.kind == FaultKind.exit:
            injected_exit()

    def loss_scale(self, *, step: int) -> float:
        return float("nan") if self.kind == FaultKind.nan_loss and step >= self.step else 1.0


NO_FAULT = FaultPlan(kind=FaultKind.none, step=-1)


def fault_for(args: FaultArgs, *, rank: int, trial_index: int, restart_count: int) -> FaultPlan:
    if args.kind == FaultKind.none or rank != args.rank or trial_index != args.trial:
        return NO_FAULT
    if args.first_attempt_only and restart_count > 0:
        return NO_FAULT
    return FaultPlan(kind=args.kind, step=args.step)
