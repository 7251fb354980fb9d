"""torch.compile for a setting with train.compile: the compiled module, its failures as one line, and the count of
graphs dynamo compiled (to notice recompilation during measured steps).

torch.compile is lazy: `compile_module` only wraps, and dynamo traces and inductor compiles on the first call (the
first warm-up step, whose forward and backward both compile). A failure there is raised as the trainer's own
exception, so `compile_failure` turns it into a `CompileFailed` whose message names torch.compile and the first line
of the real cause (dynamo's messages end in advice about TORCHDYNAMO_VERBOSE, not in the cause).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from trainer_tune.config import CompileMode


class CompileFailed(RuntimeError):
    """torch.compile could not trace or compile the model: the trial's outcome (status error)."""


def compile_module(module: nn.Module, mode: CompileMode) -> nn.Module:
    """The module wrapped by torch.compile (nothing compiles until its first call). Called on the DDP-wrapped
    module where there is one, as PyTorch recommends: dynamo's DDPOptimizer then splits the graph at DDP's bucket
    boundaries, so the all-reduce of a bucket still overlaps the backward of the next."""
    return torch.compile(module, mode=mode.value)


def _dynamo_errors() -> tuple[type[BaseException], ...]:
    import torch._dynamo.exc as dynamo_exc  # imported on use: only compiled trainers need it
    return (dynamo_exc.TorchDynamoException,)


def _first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, skipping wrapper lines such as "backend='inductor' raised:"."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.endswith("raised:")]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def compile_failure(exc: BaseException, mode: CompileMode) -> Optional[CompileFailed]:
    """A CompileFailed for an exception dynamo or inductor raised; None for any other (an OOM, a model error the
    eager model would raise too). The cause is the innermost exception dynamo wrapped."""
    if not isinstance(exc, _dynamo_errors()):
        return None
    cause: BaseException = exc
    while True:
        inner = getattr(cause, "inner_exception", None) or cause.__cause__
        if inner is None or inner is cause:
            break
        cause = inner
    return CompileFailed(f"torch.compile (train.compile_mode={mode.value}) failed: {_first_line(cause)}")


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (its own counter); the difference over a stretch of steps
    is the (re)compilations in it."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])
