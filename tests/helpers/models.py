"""Models given by `model._target_` for the tests: some break the forward contract on purpose (what such a mistake
looks like), some have FLOPs counted by hand or that FlopCounterMode cannot count."""

from __future__ import annotations

import time
from typing import Any, Iterator

import torch
from torch import nn


class WrongShape(nn.Module):
    """Returns [batch, vocab] instead of [batch, seq, vocab]: what a shape error looks like."""

    def __init__(self, *, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids).mean(dim=1)


# --- models whose FLOPs tests/unit/test_flop_count.py counts -------------------------------------------------
def random_features(*, micro_batch_size: int, rank: int, seed: int, in_features: int = 12,
                    num_classes: int = 5) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(features [batch, in_features], class labels [batch]): batches without tokens, for the models below."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    while True:
        yield (torch.randn(micro_batch_size, in_features, generator=generator),
               torch.randint(0, num_classes, (micro_batch_size,), generator=generator))


class PlainMLP(nn.Module):
    """in_features -> hidden (ReLU) -> num_classes: two Linear layers, nothing else that FlopCounterMode counts."""

    num_forwards = 0
    """Forward calls over every instance (a class attribute: a rebuilt model's calls count too)."""

    def __init__(self, *, in_features: int = 12, hidden: int = 32, num_classes: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        PlainMLP.num_forwards += 1
        return self.fc2(torch.relu(self.fc1(features)))


@torch.library.custom_op("trainer_tune_tests::opaque_matmul", mutates_args=())
def opaque_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight as a custom operator: FlopCounterMode sees the operator, not the product inside, and has no
    formula for it (what a fused kernel from an extension looks like to it)."""
    return x @ weight


@opaque_matmul.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[1])


def _opaque_matmul_setup(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _opaque_matmul_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, weight = ctx.saved_tensors
    return opaque_matmul(grad, weight.t().contiguous()), opaque_matmul(x.t().contiguous(), grad)


opaque_matmul.register_autograd(_opaque_matmul_backward, setup_context=_opaque_matmul_setup)


class OpaqueHeadMLP(nn.Module):
    """PlainMLP whose second layer is `opaque_matmul`: the counter sees only the first layer's products."""

    def __init__(self, *, in_features: int = 12, hidden: int = 32, num_classes: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.head = nn.Parameter(torch.randn(hidden, num_classes) / hidden ** 0.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return opaque_matmul(torch.relu(self.fc1(features)), self.head)


class JaggedMLP(nn.Module):
    """Runs its first layer on a nested jagged tensor (one row per sample), as models of variable-length inputs
    do. It trains; FlopCounterMode (torch 2.13) raises on the product instead of counting it. Should a later torch
    count it, tests/unit/test_flop_count.py says so and needs another model the counter cannot count."""

    def __init__(self, *, in_features: int = 12, hidden: int = 32, num_classes: int = 5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_features, hidden) / in_features ** 0.5)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        rows = torch.nested.nested_tensor([row[None] for row in features], layout=torch.jagged)
        hidden = (rows @ self.weight).values()  # [batch, hidden]: every row has length 1
        return self.fc2(torch.relu(hidden))


# --- a served model whose latency the test sets (tests/distributed/test_inference.py) ---------------------------
class PacedServer(nn.Module):
    """Takes `ms_per_sample` ms per sample of a batch, asleep (a load-independent latency, so a p99 budget between
    two batch sizes holds on a busy machine), and runs out of memory above `max_batch_size` samples on every
    rank, as a device that cannot hold a batch does: features [B, in_features] -> logits [B, num_classes]."""

    def __init__(self, *, ms_per_sample: float = 5.0, max_batch_size: int = 32, in_features: int = 12,
                 num_classes: int = 5) -> None:
        super().__init__()
        self.ms_per_sample = ms_per_sample
        self.max_batch_size = max_batch_size
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        if batch > self.max_batch_size:
            raise torch.OutOfMemoryError(f"PacedServer holds at most {self.max_batch_size} samples, got {batch}")
        time.sleep(self.ms_per_sample * batch / 1e3)
        return self.fc(features)


def hand_forward_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """2 FLOPs per multiply-add of every convolution and linear layer in one forward of `inputs`, from the shapes
    their outputs really have (forward hooks), not from any FLOP counter."""
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total


# --- a model a fake-tensor trace cannot run (tests/unit/test_memory_trace.py) -------------------------------------
class DataDependentMLP(PlainMLP):
    """Reads how many hidden units fired as a Python number: a shape or value that depends on the data, which a
    trace under fake tensors cannot know."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(features))
        fired = int((hidden > 0).sum())
        return self.fc2(hidden) * (1.0 if fired >= 0 else 0.0)
