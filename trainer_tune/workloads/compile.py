"""torch.compile for a setting with train.compile: the compiled module, its failures as one line, and dynamo's own
counters read around a stretch of steps (`DynamoCounts`): graphs compiled (a recompilation during measured steps),
graph breaks, and frames dynamo gave up on (its recompile limit, after which the model runs eager without a word).

Every setting is compiled with static shapes unless train.compile_dynamic asks otherwise. dynamo's caches are per
code object, and every setting's model runs the same code (DDP's forward, the model's forward): a second
micro-batch size would otherwise mark the batch dimension dynamic and recompile, and after
`recompile_limit` (8) entries dynamo falls back to eager for every later setting. So a compiled build resets
dynamo first (`fresh_compile_state`), unless compiled trainers are kept between windows (window.keep_models),
whose cached graphs a reset would throw away: then the limit is raised to hold one entry per build.

torch.compile is lazy: `compile_module` only wraps, and dynamo traces and inductor compiles on the first call (the
first warm-up step, whose forward and backward both compile). A failure there is raised as the trainer's own
exception, so `compile_failure` turns it into a `CompileFailed` whose message names torch.compile and the first line
of the real cause (dynamo's messages end in advice about TORCHDYNAMO_VERBOSE, not in the cause).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from trainer_tune.config.schema import CompileMode


class CompileFailed(RuntimeError):
    """torch.compile could not trace or compile the model: the trial's outcome (status error)."""


def compile_module(module: nn.Module, mode: CompileMode, *, dynamic: bool = False) -> nn.Module:
    """The module wrapped by torch.compile (nothing compiles until its first call). Called on the DDP-wrapped
    module where there is one, as PyTorch recommends: dynamo's DDPOptimizer then splits the graph at DDP's bucket
    boundaries, so the all-reduce of a bucket still overlaps the backward of the next."""
    return torch.compile(module, mode=mode.value, dynamic=dynamic)


_DEFAULT_RECOMPILE_LIMIT = 8


def fresh_compile_state(*, keeping_compiled: int) -> None:
    """Before a compiled trainer is built: reset dynamo when no compiled trainer is kept, so this setting compiles
    from scratch with nothing counted against its limits; otherwise raise the recompile limit to hold one cache
    entry per kept trainer and this one, with dynamo's own margin on top."""
    import torch._dynamo  # imported on use: only compiled trainers need it
    if keeping_compiled == 0:
        torch._dynamo.reset()
        return
    config = torch._dynamo.config
    wanted = keeping_compiled + 1 + _DEFAULT_RECOMPILE_LIMIT
    for name in ("recompile_limit", "cache_size_limit"):  # the first is torch >= 2.7's name for the second
        if hasattr(config, name) and getattr(config, name) < wanted:
            setattr(config, name, wanted)


@dataclass(frozen=True)
class DynamoCounts:
    """dynamo's process-wide counters at one moment; the difference of two is what happened between them (windows
    run one at a time, so that is one trainer's doing)."""

    graphs: int = 0
    """Graphs compiled (a first compile or a recompile)."""
    graph_breaks: int = 0
    """Graph breaks dynamo reported while tracing."""
    gave_up: int = 0
    """Frames dynamo stopped compiling (its recompile limit, or a frame it could not convert): they run eager."""

    def __sub__(self, other: "DynamoCounts") -> "DynamoCounts":
        return DynamoCounts(self.graphs - other.graphs, self.graph_breaks - other.graph_breaks,
                            self.gave_up - other.gave_up)

    def __add__(self, other: "DynamoCounts") -> "DynamoCounts":
        return DynamoCounts(self.graphs + other.graphs, self.graph_breaks + other.graph_breaks,
                            self.gave_up + other.gave_up)


def dynamo_counts() -> DynamoCounts:
    """The counters now (zeros before dynamo is first imported)."""
    from torch._dynamo.utils import counters
    limit_hits = sum(n for reason, n in counters["unimplemented"].items() if "recompile limit" in reason.lower())
    frames = counters["frames"]
    # A frame dynamo took on ("total") but did not compile ("ok") runs eager; a recompile-limit hit is one of them,
    # counted once either way.
    gave_up = max(limit_hits, int(frames["total"]) - int(frames["ok"]))
    return DynamoCounts(graphs=int(counters["stats"]["unique_graphs"]),
                        graph_breaks=int(sum(counters["graph_break"].values())), gave_up=gave_up)


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
