"""The NSA auxiliary statistics of a whole model, per optimizer step, averaged over layers, micro-steps and ranks.

Each NativeSparseAttention layer that collects them leaves its statistics of the last forward in
`last_aux_stats` (see AUX_STAT_NAMES). This is the only place they are combined; the measured steps keep each
step's averages on the device, and the window averages them over ranks once, after its last measured step
(`over_ranks`): an all-reduce and a read every step would drain the GPU's queue inside the window
(docs/measurement.md). Results and sinks only carry the floats on.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from trainer_tune.workloads.nsa_attention import NativeSparseAttention

StepStats = dict[str, Tensor]
"""One optimizer step's statistics, averaged over layers and micro-steps: zero-dimensional device tensors."""


def over_ranks(steps: Sequence[StepStats], mean_over_ranks: Callable[[Tensor], list]) -> list[dict[str, float]]:
    """Every step's statistics averaged over ranks, as floats: one stacked [steps, names] tensor goes through
    `mean_over_ranks` (distributed.DistSession.mean_tensor_over_ranks: one all-reduce and one read for the whole
    window). Names are sorted so every rank stacks them in the same order."""
    if not steps:
        return []
    names = sorted(steps[0])
    if not names:
        return [{} for _ in steps]
    stacked = torch.stack([torch.stack([step[name].detach().double().reshape(()) for name in names])
                           for step in steps])
    rows = mean_over_ranks(stacked)
    return [dict(zip(names, row)) for row in rows]


class AuxStatsCollector:
    """The per-step auxiliary statistics of every NSA layer in a model that collects them.

    After each micro-step, `add_micro_step` adds each layer's statistics to running sums (on the device, no
    host sync); at the end of the optimizer step, `end_step` averages them over layers and micro-steps, still on
    the device. A model without such layers costs nothing here.
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

    def end_step(self) -> Optional[StepStats]:
        """This step's statistics on the device (averaged over layers and micro-steps); None without NSA layers
        that collect them."""
        if not self.layers:
            return None
        means = {name: total / self._num_added for name, total in self._sums.items()}
        self._sums, self._num_added = {}, 0
        return means
