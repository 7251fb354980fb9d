"""dynamo's counters as a window reads them (workloads/compile.py): a recompile, and the silent fall back to eager at
the recompile limit, are seen; static shapes keep a second batch size from being marked dynamic. One tiny compiled
Linear (a few seconds on 2 cores)."""

from __future__ import annotations

import torch

from trainer_tune.measure.figures import CompileFigures
from trainer_tune.workloads.compile import compile_module, dynamo_counts, fresh_compile_state
from trainer_tune.config.schema import CompileMode


def _step(module: torch.nn.Module, batch_size: int) -> None:
    module(torch.randn(batch_size, 8)).sum().backward()


def test_a_recompile_and_the_fall_back_to_eager_are_counted() -> None:
    import torch._dynamo

    fresh_compile_state(keeping_compiled=0)
    limit = torch._dynamo.config.recompile_limit
    try:
        torch._dynamo.config.recompile_limit = 1
        module = compile_module(torch.nn.Linear(8, 2), CompileMode.default)
        start = dynamo_counts()
        _step(module, 2)
        first = dynamo_counts() - start
        assert first.graphs == 1 and first.gave_up == 0
        _step(module, 2)  # the same shape: the cached graph
        assert (dynamo_counts() - start).graphs == 1
        _step(module, 4)  # a second shape with static shapes is a second graph; over the limit of 1, dynamo gives up
        later = dynamo_counts() - start
        assert later.graphs == 1 and later.gave_up == 1
        figures = CompileFigures(recompiles_measured=later.graphs - first.graphs, graph_breaks=later.graph_breaks,
                                 fell_back_to_eager=later.gave_up > 0)
        assert figures.why_not_compiled().startswith("torch.compile fell back to eager")
        assert CompileFigures(recompiles_measured=2, graph_breaks=0, fell_back_to_eager=False).why_not_compiled() == \
            "dynamo recompiled 2 graph(s) during measured steps: its rate holds compile time"
        assert CompileFigures(recompiles_measured=0, graph_breaks=3, fell_back_to_eager=False).why_not_compiled() is None
    finally:
        torch._dynamo.config.recompile_limit = limit
        fresh_compile_state(keeping_compiled=0)


def test_kept_compiled_trainers_raise_the_limit_instead_of_a_reset() -> None:
    import torch._dynamo

    limit = torch._dynamo.config.recompile_limit
    try:
        fresh_compile_state(keeping_compiled=12)
        assert torch._dynamo.config.recompile_limit == 12 + 1 + 8
        fresh_compile_state(keeping_compiled=1)  # never lowered
        assert torch._dynamo.config.recompile_limit == 21
    finally:
        torch._dynamo.config.recompile_limit = limit
