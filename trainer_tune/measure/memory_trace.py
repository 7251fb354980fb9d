"""A setting's memory from one traced optimizer step: predicted under fake tensors before anything is built, or the
tensor bytes of a real step (docs/measurement.md, "Memory").

PyTorch's MemTracker (torch.distributed._tools.mem_tracker) counts every tensor a tracked step holds, by kind
(parameters, buffers, gradients, optimizer state, activations, temporaries), and its peak. Under FakeTensorMode no
storage is allocated, so the same step on fake tensors predicts the real step's tensor bytes without building them
(to the byte for the built-in GPT on a CPU, torch 2.13). What is traced is the trainer's own step (measure/window.py:
the setting's loss step, autocast, activation checkpointing, gradient accumulation, AdamW): one whole optimizer
step untracked first, so the optimizer's state exists as it does in every later step, then one tracked step.

Not in the trace (the note says which): DDP's gradient buckets (a model wrapped in DDP needs a process group; the
trace is of one rank's model states and step), compile (the eager step is traced), the GradScaler of fp16, the
allocator's rounding and cache on a GPU and, on a CPU, whatever the resident set holds besides tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
from torch.utils._pytree import tree_map

from trainer_tune.config.schema import TuneConfig
from trainer_tune.plan import TrialSpec
from trainer_tune.workloads.checkpointing import enable_activation_checkpointing
from trainer_tune.workloads.data import build_batches
from trainer_tune.workloads.model import build_trial_model
from trainer_tune.workloads.precision import autocast_for

PARTS = {"PARAM": "parameters", "BUFFER": "buffers", "GRAD": "gradients", "OPT": "optimizer_state",
         "ACT": "activations", "TEMP": "temporaries", "OTH": "other"}
"""MemTracker's kinds of tensor, by the names our records use."""


@dataclass(frozen=True)
class MemoryTrace:
    peak_bytes: Optional[int]
    """The most tensor bytes the tracked optimizer step held at once; None when the step could not be traced."""
    parts_bytes: Mapping[str, int] = field(default_factory=dict)
    """What was alive at the peak, by kind (PARTS' names)."""
    fake: bool = True
    """Predicted under fake tensors (nothing allocated), or counted in a real step."""
    notes: tuple[str, ...] = ()
    """What the trace leaves out for this setting, or why it failed (naming the error)."""


def _left_out(spec: TrialSpec, *, world_size: int) -> tuple[str, ...]:
    notes = []
    if world_size > 1:
        notes.append("DDP's gradient buckets are not traced (one rank's model states and step)")
    if spec.flags.compile:
        notes.append("the eager step is traced, not the compiled one")
    if spec.flags.precision == "fp16":
        notes.append("the fp16 GradScaler's buffers are not traced")
    return tuple(notes)


def _one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_of: Any, batches: list[Any],
              grad_accum: int, tracker: Any = None) -> None:
    for micro in range(grad_accum):
        if tracker is not None and micro:
            # MemTracker follows one pass through each module; a micro-step is a pass: clear the modules' own
            # statistics (the peak over the whole step stays).
            tracker.reset_mod_stats()
        loss = loss_of(model, batches[micro % len(batches)])
        (loss / grad_accum).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trace_step_memory(cfg: TuneConfig, spec: TrialSpec, *, fake: bool = True, world_size: int = 1) -> MemoryTrace:
    """The peak tensor bytes of one optimizer step of `spec` on the CPU: predicted under fake tensors (`fake`), or
    counted in a real step. A model or step the trace cannot run (an op without a fake implementation, a shape that
    depends on data) gives peak None and the error, never an exception."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from trainer_tune.measure.window import step_fn  # the trainer's own loss step

    device = torch.device("cpu")
    notes = _left_out(spec, world_size=world_size)
    try:
        # Real batches first (the data source may be anything: a DataLoader, a file), then faked: their shapes and
        # dtypes are what the trace needs.
        source = build_batches(data=cfg.data, model=cfg.model, micro_batch_size=spec.micro_batch_size, rank=0,
                               world_size=world_size, device=device)
        real_batches = [next(source) for _ in range(min(spec.grad_accum, 2))]
        mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
        with mode:
            batches = ([tree_map(lambda t: mode.from_tensor(t) if isinstance(t, torch.Tensor) else t, b)  # type: ignore[union-attr]
                        for b in real_batches] if fake else real_batches)
            torch.manual_seed(cfg.train.seed)
            model = build_trial_model(cfg.model, spec.flags)  # on the CPU already (a fake .to() cannot swap)
            if spec.flags.activation_checkpointing:
                enable_activation_checkpointing(model)
            optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
            loss_of = step_fn(cfg, autocast_for(spec.flags.precision, device))
            _one_step(model, optimizer, loss_of, batches, spec.grad_accum)  # creates the optimizer's state
            tracker = MemTracker()
            tracker.track_external(model, optimizer)
            with tracker:
                _one_step(model, optimizer, loss_of, batches, spec.grad_accum, tracker)
            peak = tracker.get_tracker_snapshot("peak").get(device, {})
    except Exception as exc:  # noqa: BLE001 - any failure of the trace is a missing prediction, never a failed sweep
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        return MemoryTrace(peak_bytes=None, fake=fake,
                           notes=(f"the step could not be traced{' under fake tensors' if fake else ''} ({message})",))
    parts = {PARTS[str(kind).rsplit(".", 1)[-1]]: int(value) for kind, value in peak.items()
             if kind != "Total" and str(kind).rsplit(".", 1)[-1] in PARTS}
    return MemoryTrace(peak_bytes=int(peak.get("Total", 0)), parts_bytes=parts, fake=fake, notes=notes)


MEMORY_KEY = "memory_prediction"
"""A journal line's key for one setting's prediction (run/journal.py)."""


@dataclass(frozen=True)
class MemoryPrediction:
    """One planned setting's memory before it is measured: the fake trace, and on a CPU the real step's tensor
    bytes it is checked against."""

    setting_key: str
    label: str
    predicted: MemoryTrace
    tensor_peak_bytes: Optional[int]
    """The tensor bytes MemTracker saw in one real step on the CPU (None on a GPU, where the allocator's peak of
    the measured windows is the check, or when the real step failed)."""

    @property
    def error(self) -> Optional[float]:
        """predicted / tensor peak - 1, when both are known."""
        predicted = self.predicted.peak_bytes
        if predicted is None or not self.tensor_peak_bytes:
            return None
        return predicted / self.tensor_peak_bytes - 1

    def to_json_dict(self) -> dict[str, Any]:
        return {MEMORY_KEY: {"setting_key": self.setting_key, "label": self.label,
                             "predicted_peak_bytes": self.predicted.peak_bytes,
                             "parts_bytes": dict(self.predicted.parts_bytes), "notes": list(self.predicted.notes),
                             "tensor_peak_bytes": self.tensor_peak_bytes}}

    @staticmethod
    def from_json_dict(data: Mapping[str, Any]) -> "MemoryPrediction":
        inner = data[MEMORY_KEY]
        trace = MemoryTrace(peak_bytes=inner.get("predicted_peak_bytes"),
                            parts_bytes={str(k): int(v) for k, v in (inner.get("parts_bytes") or {}).items()},
                            fake=True, notes=tuple(inner.get("notes") or ()))
        return MemoryPrediction(setting_key=str(inner["setting_key"]), label=str(inner["label"]), predicted=trace,
                                tensor_peak_bytes=inner.get("tensor_peak_bytes"))


def predict_setting(cfg: TuneConfig, spec: TrialSpec, *, label: str, world_size: int) -> MemoryPrediction:
    """The prediction of one setting, under fake tensors only: nothing is built (`with_real_step` adds the real
    step's tensor bytes, once the setting is built anyway)."""
    return MemoryPrediction(setting_key=spec.key, label=label,
                            predicted=trace_step_memory(cfg, spec, fake=True, world_size=world_size),
                            tensor_peak_bytes=None)


def with_real_step(prediction: MemoryPrediction, cfg: TuneConfig, spec: TrialSpec, *,
                   world_size: int) -> MemoryPrediction:
    """The prediction with one real step's tensor bytes on the CPU beside it (what a CPU prediction is checked
    against); call it only for a setting that is built anyway: a setting predicted not to fit never is."""
    real = trace_step_memory(cfg, spec, fake=False, world_size=world_size)
    return dataclasses.replace(prediction, tensor_peak_bytes=real.peak_bytes)
