"""torch.compile for a setting with train.compile: the compiled module, its failures as one line, and the count of
graphs dynamo compiled (to notice recompilation during measured steps).

torch.compile is lazy: `compile_module` only wraps, and dynamo traces and inductor compiles on the first call (the
first warm-up step, whose forward and backward both compile). A failure there is raised as the trainer's own
exception, so `compile_failure` turns it into a `CompileFailed` whose message names torch.compile and the first line
of the real cause (dynamo's messages end in advice about TORCHDYNAMO_VERBOSE, not in the cause).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch
from torch import nn

from trainer_tune.config.schema import CompileMode


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


_COMPILER_DIRS = (f"torch{os.sep}_dynamo{os.sep}", f"torch{os.sep}_inductor{os.sep}", f"torch{os.sep}_functorch{os.sep}")
"""Where torch.compile's tracing and compiling code lives: a failure raised there on the first call is compiling's."""


def _raised_in_compiler(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if any(part in tb.tb_frame.f_code.co_filename for part in _COMPILER_DIRS):
            return True
        tb = tb.tb_next
    return False


def compile_failure(exc: BaseException, mode: CompileMode, *, first_call: bool) -> Optional[CompileFailed]:
    """A CompileFailed for an exception dynamo or inductor raised; None for any other (an OOM, a model error the
    eager model would raise too). dynamo wraps most in its own exception types; a few are raised bare before it does
    (DDPOptimizer's AssertionError when ddp.bucket_cap_mb makes DDP's first bucket larger than the others): those
    count when raised from torch.compile's own code in the `first_call`, where compilation happens. The cause named
    is the innermost exception dynamo wrapped."""
    if isinstance(exc, torch.OutOfMemoryError):
        return None
    if not isinstance(exc, _dynamo_errors()) and not (first_call and _raised_in_compiler(exc)):
        return None
    cause: BaseException = exc
    while True:
        inner = getattr(cause, "inner_exception", None) or cause.__cause__
        if inner is None or inner is cause:
            break
        cause = inner
    return CompileFailed(f"torch.compile (train.compile_mode={mode.value}) failed: {_first_line(cause)}")


@contextlib.contextmanager
def compile_failures_named(compiled: bool, mode: CompileMode, *, first_call: bool) -> Iterator[None]:
    """Around a call of a (maybe) compiled module: a failure of torch.compile leaves as a CompileFailed naming it
    (compile_failure), anything else as it was raised."""
    try:
        yield
    except Exception as exc:
        failure = compile_failure(exc, mode, first_call=first_call) if compiled else None
        if failure is None:
            raise
        raise failure from exc


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (its own counter); the difference over a stretch of steps
    is the (re)compilations in it."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])
