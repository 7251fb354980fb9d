"""Activation checkpointing (train.activation_checkpointing): a block's activations are recomputed in the
backward instead of kept from the forward, trading compute for memory.

One hook for every model: a method `activation_checkpointing_enable()`, Hugging Face's name since transformers 5
(`gradient_checkpointing_enable()`, its older name, is used where the newer one is missing). The built-in GPT
defines it (each block checkpointed), and so can a `_target_` model of your own, most simply by calling
`checkpoint_blocks` on its repeated layers (docs/your-model.md). A model without the hook is refused with one line
naming what to define: the setting's error, while the sweep goes on.

Checkpointing here is always torch's non-reentrant kind (`use_reentrant=False`, which torch recommends): it
records the recomputation in the ordinary autograd graph, so DDP's hooks see each parameter's gradient once, and
every DDP flag works with it (the four combinations of ddp.static_graph and ddp.find_unused_parameters, 2 ranks on
gloo, torch 2.13: same losses step for step). The reentrant kind recomputes inside a custom autograd Function that
DDP cannot see into: with ddp.find_unused_parameters=true it fails ("Expected to mark a variable ready only once").
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from trainer_tune.workloads.targets import TargetError

HOOKS: tuple[tuple[str, str], ...] = (
    ("activation_checkpointing_enable", "activation_checkpointing_kwargs"),
    ("gradient_checkpointing_enable", "gradient_checkpointing_kwargs"),
)
"""The methods a model may define to turn its activation checkpointing on, the first found is called; each with
the keyword through which Hugging Face passes arguments on to torch.utils.checkpoint.checkpoint. transformers 5
deprecates the second name (a FutureWarning), which older versions and models that copy them still have."""

_MARK = "_trainer_tune_checkpointed"


def _checkpointed_forward(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # Without gradients there is no backward to recompute for: run the block as it is (evaluation, no_grad).
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(blocks: Iterable[nn.Module]) -> int:
    """Checkpoint each module of `blocks` (e.g. a model's `nn.ModuleList` of layers): its forward keeps only
    its inputs and recomputes the rest in the backward. Returns how many modules were checkpointed.

    The modules stay where they are (parameter names and state_dict keys do not change, so model.checkpoint
    still loads); their `forward` is replaced on the instance. Calling it again on the same modules does nothing
    more. Checkpoint modules whose output is all that the rest of the model needs: a block of a residual stack,
    not a module whose internals another module reads."""
    count = 0
    for block in blocks:
        if not getattr(block, _MARK, False):
            # A partial of the bound method, not a closure: deepcopy (an EMA copy, say) then rebinds it to the copy.
            block.forward = functools.partial(_checkpointed_forward, block.forward)  # type: ignore[method-assign]
            setattr(block, _MARK, True)
        count += 1
    return count


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Turn on `model`'s activation checkpointing through its hook (HOOKS), asking for the non-reentrant kind
    where the hook takes Hugging Face's keyword for it; raise TargetError with one line when the model has no
    hook, or when the hook fails."""
    name = type(model).__qualname__
    for hook_name, kwargs_name in HOOKS:
        enable = getattr(model, hook_name, None)
        if callable(enable):
            break
    else:
        raise TargetError(
            f"train.activation_checkpointing=true needs the model to define {HOOKS[0][0]}(); {name} has none: "
            f"define it, e.g. calling trainer_tune.workloads.checkpointing.checkpoint_blocks(self.layers) "
            f"(docs/your-model.md, 'Activation checkpointing')")
    kwargs: dict[str, Any] = {}
    if kwargs_name in _parameter_names(enable):
        kwargs[kwargs_name] = {"use_reentrant": False}
    try:
        enable(**kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever the model's own method raises (HF: "does not support")
        text = " ".join(str(exc).split())
        raise TargetError(f"train.activation_checkpointing=true: {name}.{hook_name}() raised "
                          f"{type(exc).__name__}: {text}") from exc


def _parameter_names(function: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()
