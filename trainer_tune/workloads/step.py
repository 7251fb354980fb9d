"""One micro-step's loss from one batch: `step._target_`, or the default rule for the batch's type.

- `step._target_` names a function `step(model, batch, **step.kwargs) -> loss` (a scalar tensor): the way for
  anything the rules below do not cover (several forward passes, a custom output, a model with two inputs). It
  receives the DDP-wrapped model, so gradient sync works as in real training; trainer_tune runs backward.
- A mapping batch (a dict, a Hugging Face BatchEncoding) calls `model(**batch)`; the output's `loss` is used when
  the model computed one (Hugging Face models given `labels`), else `loss._target_(outputs, batch)`, else
  cross-entropy against `batch["labels"]`.
- A pair `(inputs, targets)` computes `loss(model(inputs), targets)`: `loss._target_`, cross-entropy by default
  (inputs that are a tuple are unpacked into the model's positional arguments, a mapping into its keywords).
- A single integer tensor `[batch, seq_len + 1]` is the language-model path: the model reads positions
  0..seq_len-1 and predicts 1..seq_len; its logits are checked to be `[batch, seq_len, vocab_size]`.

Autocast (train.precision) covers the model's forward; the default loss computes in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn

from trainer_tune.workloads.batch import Count, _is_token_ids, describe
from trainer_tune.workloads.loss import cross_entropy
from trainer_tune.workloads.targets import TargetError, logits_of

StepFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class StepOutcome:
    """What one step of a measurement window fed and produced (a training step, or one served batch)."""

    loss: Optional[torch.Tensor]
    """The mean micro-step loss, on the device (reading it would wait for the device); None in inference."""
    samples: int
    tokens: Optional[Count]
    """Tokens fed (an int, or a device tensor when counted from a mask on the device); None without tokens."""
    data_wait_s: float
    aux_stats: Optional[dict[str, float]]
    """The NSA auxiliary statistics of the step averaged over ranks; None when they are off."""


@dataclass(frozen=True)
class StepRules:
    """What the default step needs to know besides the batch."""

    loss_fn: Optional[Callable[..., torch.Tensor]]
    """loss._target_ (partial with loss.kwargs); None: cross-entropy."""
    loss_target: Optional[str]
    model_target: Optional[str]
    vocab_size: int
    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext


def _output_loss(outputs: Any) -> Optional[torch.Tensor]:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def call_model(module: nn.Module, inputs: Any) -> Any:
    """The model on a batch's inputs: a mapping as keywords, a tuple or list as positional arguments."""
    if isinstance(inputs, Mapping):
        return module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    return module(inputs)


def checked_loss(value: object, *, source: str, what: str = "tensor") -> torch.Tensor:
    """A loss must be a scalar tensor to call backward() on; say so in one line, naming its source (the key) and
    what of it was the loss (a tensor, a `.loss`), when not."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = f"a {what} of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else \
            f"a {type(value).__name__}"
        raise TargetError(f"{source} returned {shape}; expected a scalar tensor (the loss to call backward on)")
    if not (value.is_floating_point() or value.is_complex()):
        raise TargetError(f"{source} returned a {value.dtype} {what}; expected a floating-point scalar loss")
    return value.reshape(())


def _loss_source(rules: StepRules) -> str:
    return f"loss._target_={rules.loss_target!r}" if rules.loss_target else "the default cross-entropy"


def default_step(module: nn.Module, batch: Any, rules: StepRules) -> torch.Tensor:
    """The loss of one micro-step by the rules in this module's docstring."""
    if isinstance(batch, Mapping):
        with rules.autocast():
            outputs = module(**batch)
        loss = _output_loss(outputs)
        if loss is not None:
            source = f"model._target_={rules.model_target!r}" if rules.model_target else "the model"
            return checked_loss(loss, source=source, what=".loss")
        if rules.loss_fn is not None:
            return checked_loss(rules.loss_fn(outputs, batch), source=_loss_source(rules))
        labels = batch.get("labels")
        if not isinstance(labels, torch.Tensor):
            raise TargetError(f"model(**batch) returned no .loss for a batch {describe(batch)} with no 'labels': "
                              f"add labels to the batches, set loss._target_ (called as loss(outputs, batch)), "
                              f"or set step._target_")
        return checked_loss(cross_entropy(outputs, labels), source=_loss_source(rules))
    if isinstance(batch, (tuple, list)) and not isinstance(batch, torch.Tensor):
        if len(batch) != 2:
            raise TargetError(f"the default step takes a pair (inputs, targets), got {describe(batch)}: set "
                              f"step._target_ to a function step(model, batch) -> loss for this batch")
        inputs, targets = batch
        with rules.autocast():
            outputs = call_model(module, inputs)
        loss_fn = rules.loss_fn or cross_entropy
        return checked_loss(loss_fn(outputs, targets), source=_loss_source(rules))
    if _is_token_ids(batch) and batch.dim() == 2:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        with rules.autocast():
            logits = logits_of(module(inputs), input_ids=inputs, vocab_size=rules.vocab_size,
                               target=rules.model_target)
        loss_fn = rules.loss_fn or cross_entropy
        return checked_loss(loss_fn(logits, targets), source=_loss_source(rules))
    raise TargetError(f"the default step cannot use a batch {describe(batch)}: it takes integer token ids "
                      f"[batch, seq_len + 1], a dict of model inputs, or a pair (inputs, targets); set "
                      f"step._target_ to a function step(model, batch) -> loss for other batches")


def user_step(fn: Callable[..., Any], *, target: str, autocast: Callable[[], ContextManager[Any]]) -> StepFn:
    """step._target_ with its output checked; autocast covers the whole call (the user's forward is inside)."""
    def step(module: nn.Module, batch: Any) -> torch.Tensor:
        with autocast():
            value = fn(module, batch)
        return checked_loss(value, source=f"step._target_={target!r}")
    return step
