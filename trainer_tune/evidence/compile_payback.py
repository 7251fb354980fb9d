"""What torch.compile costs and when it pays back: a compiled trainer's compile time, and the training steps after
which the time a compiled step saves has repaid it (docs/measurement.md, "torch.compile: compile_s and payback").

compile_s is what the warm-up of a freshly built compiled trainer took beyond the same number of ordinary steps:
warmup_s - num_warmup_steps x the median measured step. The warm-up's steps are where dynamo traces and inductor
compiles (a trainer is compiled on its first call, and a recompilation in a later warm-up step counts too); the
steps themselves are what a measured step costs. It includes first-step costs an eager trainer also pays (allocation),
so it errs high by those, and it is what this process paid: inductor's on-disk cache, warm from an earlier run, makes
it smaller.

Payback pairs each compiled setting with its eager twin (the same batch shape and every other flag) and divides:
steps = compile_s / (step_time_eager_s - step_time_compiled_s), step times from the settings' throughput (the
decision's figure). A compiled setting that is not faster never pays back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from trainer_tune.evidence.estimate import SettingEstimate


@dataclass(frozen=True)
class CompilePayback:
    """One compiled setting against its eager twin."""

    compiled_label: str
    eager_label: str
    compile_s: Optional[float]
    """The compiled setting's compile_s (its costliest build); None when not measured (then no payback either)."""
    step_time_eager_s: float
    """Global batch over the eager setting's samples/s: its mean optimizer step time."""
    step_time_compiled_s: float
    saved_s_per_step: float
    """step_time_eager_s - step_time_compiled_s; negative when compiled steps are slower."""
    payback_steps: Optional[float]
    """compile_s / saved_s_per_step: training steps after which compiling has paid for itself; None when it never
    does (not faster) or compile_s is unknown."""
    outcome: Optional[str] = None
    """comparison.compare's verdict of compiled against eager (better, worse, tie, unknown): whether the gain is
    beyond noise."""

    def describe(self) -> str:
        """`compile=true vs false: compile 21.3 s, saves 4.1 ms per step (tie): pays back after 5,200 steps`."""
        if self.compile_s is None:
            head = f"{self.compiled_label}: compile time not measured"
        else:
            head = f"{self.compiled_label}: compile {self.compile_s:.1f} s"
        gain = (f"saves {self.saved_s_per_step * 1e3:,.2f} ms per step" if self.saved_s_per_step > 0
                else f"{-self.saved_s_per_step * 1e3:,.2f} ms per step slower")
        beyond = f", {self.outcome} against {self.eager_label}" if self.outcome else f" against {self.eager_label}"
        if self.payback_steps is not None:
            tail = f"pays back after {self.payback_steps:,.0f} steps"
        elif self.saved_s_per_step <= 0:
            tail = "never pays back"
        else:
            tail = "payback unknown"
        return f"{head}, {gain}{beyond}: {tail}"

    def to_json_dict(self) -> dict[str, Any]:
        return {"compiled": self.compiled_label, "eager": self.eager_label, "compile_s": self.compile_s,
                "step_time_eager_s": self.step_time_eager_s, "step_time_compiled_s": self.step_time_compiled_s,
                "saved_s_per_step": self.saved_s_per_step, "payback_steps": self.payback_steps,
                "never": self.payback_steps is None and self.saved_s_per_step <= 0, "outcome": self.outcome}


def _step_time_s(result: SettingEstimate) -> Optional[float]:
    return result.global_batch_size / result.samples_per_s if result.samples_per_s else None


def _twin_key(result: SettingEstimate) -> tuple:
    flags = {name: value for name, value in result.flags.as_dict().items() if name != "compile"}
    return result.micro_batch_size, result.grad_accum, result.world_size, tuple(sorted(flags.items()))


def compile_paybacks(results: Sequence[SettingEstimate], *,
                     compare: Optional[Callable[[SettingEstimate, SettingEstimate], Any]] = None) -> list[CompilePayback]:
    """A payback for each finished compiled setting whose eager twin finished too, in the order given. `compare`
    (comparison.compare) says whether the gain is beyond noise; it is only recorded, never used in the maths."""
    finished = [r for r in results if r.ok and _step_time_s(r) is not None]
    eager = {_twin_key(r): r for r in finished if not r.flags.compile}
    out: list[CompilePayback] = []
    for compiled in (r for r in finished if r.flags.compile):
        twin = eager.get(_twin_key(compiled))
        if twin is None:
            continue
        eager_s, compiled_s = _step_time_s(twin), _step_time_s(compiled)
        assert eager_s is not None and compiled_s is not None
        saved_s = eager_s - compiled_s
        payback = compiled.compile_s / saved_s if compiled.compile_s is not None and saved_s > 0 else None
        outcome = None
        if compare is not None and compiled.rates_by_round() and twin.rates_by_round():
            outcome = compare(compiled, twin).outcome.value
        out.append(CompilePayback(compiled_label=compiled.label, eager_label=twin.label,
                                  compile_s=compiled.compile_s, step_time_eager_s=eager_s,
                                  step_time_compiled_s=compiled_s, saved_s_per_step=saved_s,
                                  payback_steps=payback, outcome=outcome))
    return out
