"""What a batch may be, and the two things trainer_tune does to every one: move it to the device and count it.

A batch is a tensor, a tuple or list, or a mapping (a dict, a Hugging Face `BatchEncoding`) of tensors, nested
as deep as the user likes; anything else inside (strings, numbers, None) rides along untouched.

Counting decides the units every figure is in (docs/your-model.md, "Units"):
- samples: the first dimension of the batch's first tensor (the model's inputs come first by convention);
- tokens: with an `attention_mask`, its sum (the non-padding tokens); else the element count of the token ids,
  meaning `input_ids` in a mapping, the inputs of a bare integer batch (the language-model path: `seq_len` of
  each sample's `seq_len + 1` ids, see step.py), or the first element of a tuple when it is an integer tensor of
  rank 2 or more; else none (images, audio, tabular rows): `tokens_per_s` is then null, never zero;
- `throughput.count._target_`, when set, counts the batch instead of the token rule.

A count read from a tensor on the device is kept as a tensor and added up on the device, so counting never
waits for the device inside a timed step; the window reads the total once, after its measured steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

import torch

from trainer_tune.config.schema import CountArgs
from trainer_tune.workloads.targets import TargetError, instantiate_target

Count = Union[int, torch.Tensor]
"""A count of samples or tokens: an int, or a 0-d integer tensor still on the device."""

BatchCounter = Callable[[Any], int]


def move_to_device(batch: Any, device: torch.device, *, non_blocking: bool) -> Any:
    """The same nested structure with every tensor on `device` (a mapping type is kept when it can be
    rebuilt from a dict, as BatchEncoding can; else a plain dict)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        moved = {key: move_to_device(value, device, non_blocking=non_blocking) for key, value in batch.items()}
        if type(batch) is dict:
            return moved
        try:
            return type(batch)(moved)
        except Exception:  # noqa: BLE001 - a mapping type that cannot be rebuilt from a dict: a dict serves
            return moved
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(move_to_device(v, device, non_blocking=non_blocking) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to_device(v, device, non_blocking=non_blocking) for v in batch)
    return batch


def first_tensor(batch: Any) -> Optional[torch.Tensor]:
    """The first tensor in the batch, depth first in insertion order; None when it holds none."""
    if isinstance(batch, torch.Tensor):
        return batch
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def count_samples(batch: Any) -> Optional[int]:
    """Samples in the batch: the first dimension of its first tensor; None when it has no tensor of rank >= 1."""
    tensor = first_tensor(batch)
    if tensor is None or tensor.dim() == 0:
        return None
    return int(tensor.shape[0])


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 2 and not value.is_floating_point() \
        and not value.is_complex() and value.dtype != torch.bool


def count_tokens(batch: Any) -> Optional[Count]:
    """Tokens in the batch by the rule in this module's docstring; None for a batch without tokens."""
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            return mask.sum() if mask.device.type != "cpu" else int(mask.sum())
        ids = batch.get("input_ids")
        return ids.numel() if isinstance(ids, torch.Tensor) else None
    if isinstance(batch, torch.Tensor):
        # The language-model path: [batch, seq_len + 1], of which the model reads (and is scored on) seq_len.
        return batch[:, :-1].numel() if _is_token_ids(batch) else None
    if isinstance(batch, (tuple, list)) and batch:
        inputs = batch[0]
        if isinstance(inputs, Mapping):
            return count_tokens(inputs)
        return inputs.numel() if _is_token_ids(inputs) else None
    return None


def describe(batch: Any) -> str:
    """A batch's structure in a few words, for error messages: `dict(input_ids: int64[8, 64], labels: ...)`."""
    if isinstance(batch, torch.Tensor):
        return f"{str(batch.dtype).removeprefix('torch.')}{list(batch.shape)}"
    if isinstance(batch, Mapping):
        inner = ", ".join(f"{key}: {describe(value)}" for key, value in list(batch.items())[:6])
        return f"{type(batch).__name__}({inner}{', ...' if len(batch) > 6 else ''})"
    if isinstance(batch, (tuple, list)):
        inner = ", ".join(describe(value) for value in list(batch)[:6])
        return f"{type(batch).__name__}({inner}{', ...' if len(batch) > 6 else ''})"
    return type(batch).__name__


def token_counter(args: CountArgs) -> Callable[[Any], Optional[Count]]:
    """throughput.count._target_ (checked to return an int >= 0), else the token rule of workloads/batch.py."""
    target = args._target_
    if target is None:
        return count_tokens
    fn = instantiate_target("throughput.count._target_", target, args.kwargs, partial=True)

    def count(batch: Any) -> Count:
        value = fn(batch)
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
                and value.dtype != torch.bool:
            # Kept as a tensor and summed on the device: reading it here would wait for the device inside the
            # measured steps. (Its sign is not checked: that would be a read too.)
            return value.reshape(()) if value.device.type != "cpu" else int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TargetError(f"throughput.count._target_={target!r} returned {value!r}; expected an int >= 0 "
                              f"(the {args.unit} in the batch)")
        return value
    return count
