"""What a setting's precision (TrialFlags.precision, a config.Precision value) does to the step: the autocast
context of the forward pass. Weights, gradients and optimizer state stay float32 in every precision."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch

from trainer_tune.config.schema import Precision

AUTOCAST_DTYPES: dict[str, torch.dtype] = {Precision.bf16.value: torch.bfloat16, Precision.fp16.value: torch.float16}
"""Autocast dtype by precision; fp32 has none (no autocast)."""


def autocast_for(precision: str, device: torch.device) -> Callable[[], ContextManager[object]]:
    """A factory of the forward's autocast context for `precision` on `device` (a new context per call)."""
    dtype = AUTOCAST_DTYPES.get(Precision(precision).value)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)
