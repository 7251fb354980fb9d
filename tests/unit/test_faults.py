from __future__ import annotations

import math

import pytest
import torch

from trainer_tune.config.schema import FaultArgs, FaultKind
from trainer_tune.platform.faults import NO_FAULT, fault_for


def test_only_the_chosen_rank_trial_and_first_attempt() -> None:
    args = FaultArgs(kind=FaultKind.error, rank=1, trial=2, step=3)
    assert fault_for(args, rank=0, trial_index=2, restart_count=0) == NO_FAULT
    assert fault_for(args, rank=1, trial_index=1, restart_count=0) == NO_FAULT
    assert fault_for(args, rank=1, trial_index=2, restart_count=1) == NO_FAULT
    plan = fault_for(args, rank=1, trial_index=2, restart_count=0)
    plan.before_micro_step(step=2, micro_step=0, device=torch.device("cpu"))
    plan.before_micro_step(step=3, micro_step=1, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="injected fault"):
        plan.before_micro_step(step=3, micro_step=0, device=torch.device("cpu"))


def test_oom_raises_torch_out_of_memory_on_cpu() -> None:
    plan = fault_for(FaultArgs(kind=FaultKind.oom, rank=0, trial=0, step=0), rank=0, trial_index=0, restart_count=0)
    with pytest.raises(torch.OutOfMemoryError):
        plan.before_micro_step(step=0, micro_step=0, device=torch.device("cpu"))


def test_nan_loss_poisons_from_its_step_on() -> None:
    plan = fault_for(FaultArgs(kind=FaultKind.nan_loss, rank=0, trial=0, step=2), rank=0, trial_index=0,
                     restart_count=0)
    assert plan.loss_scale(step=1) == 1.0
    assert math.isnan(plan.loss_scale(step=2)) and math.isnan(plan.loss_scale(step=5))
