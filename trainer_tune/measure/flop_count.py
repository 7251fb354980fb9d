"""Training FLOPs of one micro-step of any model, counted by torch's FlopCounterMode: what MFU is computed from
when the FLOPs are not known in closed form (every model but the built-in GPT with its own step; flops.py).

FlopCounterMode counts the matrix products autograd really runs (mm, addmm, bmm, convolutions, the attention
kernels in its table), 2 FLOPs per multiply-add, forward and backward; elementwise work, norms, the loss and the
optimizer count 0. An op it has no formula for also counts 0 and leaves no trace, so the count here remembers
the ops that ran without one: a custom operator, or an ATen matrix-product or attention op missing from its
table. The count is then a lower bound, and says which ops it is missing. Code outside PyTorch's dispatcher (a
custom autograd Function computing in numpy) is invisible to any such counter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

from trainer_tune.workloads.step import StepFn
from trainer_tune.workloads.targets import one_line

__all__ = ["StepFlops", "count_step_flops"]


@dataclass(frozen=True)
class StepFlops:
    """FlopCounterMode's count of one micro-step (forward and backward) of one rank's micro-batch."""

    flops: Optional[int]
    """None when FlopCounterMode could not count the step (it raised); `note` says why."""
    micro_batch_size: int
    """Samples in the counted micro-batch."""
    note: Optional[str] = None
    """Why `flops` is None; or, with `flops`, the ops it ran without a formula (counted as 0: a lower bound)."""

    @property
    def flops_per_sample(self) -> Optional[float]:
        return self.flops / self.micro_batch_size if self.flops is not None else None


# Two corrections to torch 2.13's table, each pinned by tests/unit/test_flop_count.py.
# 1. It lacks the fused CPU attention kernel (SDPA on CPU would count 0): that gets the counter's own formulas for
#    the attention kernels it knows, so a model counts the same on CPU as on CUDA's flash kernels.
def _cpu_flash_forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                        **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# 2. Its convolution backward ignores `groups` for the weight gradient: a depthwise convolution of C channels
#    counted C times its real work. Each gradient a convolution's backward computes (input, weight) takes as many
#    multiply-adds as its forward, whatever the groups; the forward formula is the counter's own.
def _conv_backward(grad_out: Any, x: Any, weight: Any, _bias: Any, _stride: Any, _padding: Any, _dilation: Any,
                   transposed: bool, _output_padding: Any, _groups: Any, output_mask: Any, out_shape: Any = None,
                   **kwargs: Any) -> int:
    return conv_flop_count(x, weight, grad_out, transposed) * (int(output_mask[0]) + int(output_mask[1]))


_EXTRA_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
    torch.ops.aten.convolution_backward: _conv_backward,
}

_PRODUCT_OP = re.compile(r"attention|convolution|conv\dd|^(mv|addmv|dot|vdot|addbmm|addr|_int_mm)$")
"""ATen ops that do matrix-product work: one without a formula makes the count partial. Every other ATen op
without one is elementwise, a reduction or data movement, which MFU leaves out by convention."""

_BUILT_IN_NAMESPACES = frozenset({"aten", "prim", "prims"})


def _missing_work(op: Any) -> Optional[str]:
    """The op's name when FlopCounterMode counting it as 0 leaves out real work; else None."""
    name = str(op)
    namespace, _, short = name.partition(".")
    if namespace not in _BUILT_IN_NAMESPACES or _PRODUCT_OP.search(short):
        return name
    return None


class _Counter(FlopCounterMode):
    """FlopCounterMode that also remembers the ops it ran without a formula."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=_EXTRA_FORMULAS)
        self.without_formula: set[str] = set()

    # FlopCounterMode calls _count_flops (a private method of torch 2.x) for every op it runs, after trying to
    # decompose it into ops it knows; without this hook the count would still be right, only not marked partial
    # (tests/unit/test_flop_count.py catches that).
    def _count_flops(self, func_packet: Any, out: Any, args: Any, kwargs: Any) -> Any:
        if func_packet not in self.flop_registry:
            missing = _missing_work(func_packet)
            if missing is not None:
                self.without_formula.add(missing)
        return super()._count_flops(func_packet, out, args, kwargs)


def count_step_flops(model: nn.Module, batch: Any, step: StepFn, *, micro_batch_size: int,
                     device: torch.device, backward: bool = True) -> StepFlops:
    """Count one forward and backward of `batch` through `step` (the trainer's own step function) on `model`;
    with backward=False (mode=inference), `step` is the replica's forward, counted under inference_mode.

    Gradients the step leaves are dropped (set to None) and the random number generators are restored, so the
    caller's training starts as it would have without the count. What it cannot undo: what the forward itself
    changes (BatchNorm running statistics move once). An out-of-memory error is raised (the step would raise it
    again); any other error becomes `flops=None` with the reason: a model the counter cannot count still trains.
    """
    counter = _Counter()
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices), counter:
            if backward:
                step(model, batch).backward()
            else:
                with torch.inference_mode():
                    step(model, batch)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model the counter cannot count gets no FLOPs, and trains on
        return StepFlops(flops=None, micro_batch_size=micro_batch_size,
                         note=f"FlopCounterMode could not count one micro-step: {one_line(exc)}")
    finally:
        model.zero_grad(set_to_none=True)
    note = None
    if counter.without_formula:
        note = (f"FlopCounterMode has no formula for {', '.join(sorted(counter.without_formula))} and counts it "
                f"as 0 FLOPs: the count is a lower bound")
    return StepFlops(flops=counter.get_total_flops(), micro_batch_size=micro_batch_size, note=note)

