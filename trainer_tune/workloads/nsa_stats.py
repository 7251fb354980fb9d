"""The NSA auxiliary statistics of a whole model, per optimizer step, averaged over layers, micro-steps and ranks.

Each NativeSparseAttention layer that collects them leaves its statistics of the last forward in
`last_aux_stats` (see AUX_STAT_NAMES). This is the only place they are combined and all-reduced; results and
sinks only carry the floats on.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainer_tune.workloads.nsa_attention import NativeSparseAttention


def reduce_aux_stats(stats: dict[str, Tensor]) -> dict[str, float]:
    """Average the statistics over ranks with a single all_reduce; plain floats when not distributed.

    Names are sorted so that every rank stacks them in the same order.
    """
    names = sorted(stats)
    if not names:
        return {}
    stacked = torch.stack([stats[name].detach().float().reshape(()) for name in names])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked = stacked / dist.get_world_size()
    return dict(zip(names, stacked.tolist()))


class AuxStatsCollector:
    """The per-step auxiliary statistics of every NSA layer in a model that collects them.

    After each micro-step, `add_micro_step` adds each layer's statistics to running sums (on the device, no
    host sync); at the end of the optimizer step, `reduce_step` averages them over layers and micro-steps and
    then over ranks with one all_reduce (a collective every rank makes at the same point of every step, since
    every rank runs the same model with the same flags). A model without such layers costs nothing here.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, NativeSparseAttention) and m.collect_aux_stats]
        self._sums: dict[str, Tensor] = {}
        self._num_added = 0

    def add_micro_step(self) -> None:
        for layer in self.layers:
            if layer.last_aux_stats is None:
                raise RuntimeError("an NSA layer that collects aux stats did not run in this micro-step")
            for name, value in layer.last_aux_stats.items():
                self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
            layer.last_aux_stats = None  # consumed: a layer that does not run in the next micro-step is caught
            self._num_added += 1

    def reduce_step(self) -> dict[str, float] | None:
        if not self.layers:
            return None
        means = {name: total / self._num_added for name, total in self._sums.items()}
        self._sums, self._num_added = {}, 0
        return reduce_aux_stats(means)
