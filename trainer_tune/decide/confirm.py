"""The confirm command: the setting a sweep named, measured again against its baseline in paired rounds.

A close call is settled by more evidence on the two settings it is about, not by re-measuring the chosen one
alone (nothing to pair it with). `confirm_overrides` gives the Hydra overrides of a sweep of exactly those two:
the baseline as the sweep's baseline (baseline.*, and its flags as the run's own), the named setting as the only
grid point (one value per axis), in the same mode, with the same objective, margin, indifference and latency
budget; `recommend.confirms` names what the first sweep said, and the new verdict says whether it holds
(`confirmation_reason`). The user adds hydra.run.dir (a new one) and any wandb keys.
"""

from __future__ import annotations

from typing import Optional

from trainer_tune.config.flags import FLAG_SPECS, flags_to_overrides, format_flag
from trainer_tune.config.rerun import hydra_value
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.evidence.estimate import SettingEstimate

CONFIRM_ROUNDS = 3
"""At least this many paired rounds: two give an interval on one degree of freedom."""


def confirm_overrides(named: Optional[SettingEstimate], baseline: Optional[SettingEstimate], *, decision: str,
                      args: RecommendArgs) -> tuple[str, ...]:
    """The overrides of a sweep of `named` against `baseline` (empty without both, or when they are one setting).
    `decision` is the first sweep's verdict word (GO after which `named` is the chosen setting, else its leader)."""
    if named is None or baseline is None or named.trial_key == baseline.trial_key:
        return ()
    serving = named.mode == "inference"
    setting = ["train.micro_batch_size", "train.grad_accum", *(s.config_key for s in FLAG_SPECS)]
    own = [o for o in baseline.run_overrides if o.split("=")[0].lstrip("+~") not in setting]
    overrides = [*own,
                 f"baseline.micro_batch_size={baseline.micro_batch_size}",
                 f"train.micro_batch_size={baseline.micro_batch_size}",
                 *([] if serving else [f"baseline.grad_accum={baseline.grad_accum}",
                                       f"train.grad_accum={baseline.grad_accum}"]),
                 *flags_to_overrides(baseline.flags),
                 f"sweep.micro_batch_sizes=[{named.micro_batch_size}]",
                 *([] if serving else [f"sweep.grad_accums=[{named.grad_accum}]"]),
                 *(f"sweep.{spec.sweep_key}=[{format_flag(getattr(named.flags, spec.field_name))}]"
                   for spec in FLAG_SPECS
                   if getattr(named.flags, spec.field_name) != getattr(baseline.flags, spec.field_name)),
                 f"sweep.min_rounds={CONFIRM_ROUNDS}",
                 f"recommend.objective={args.objective.value}", f"recommend.min_speedup={args.min_speedup:g}",
                 f"recommend.indifference={args.indifference:g}",
                 *([f"recommend.max_batch_latency_ms={args.max_batch_latency_ms:g}"] if args.max_batch_latency_ms is not None else []),
                 f"recommend.confirms={hydra_value(f'{decision} {named.label}')}"]
    return tuple(overrides)


def confirmation_reason(confirms: str, *, decision: str, chosen: Optional[SettingEstimate],
                        baseline: Optional[SettingEstimate]) -> str:
    """Whether this sweep (a confirm sweep) bears out what the first one said (`confirms`: its verdict word and the
    setting it named)."""
    first, _, label = confirms.partition(" ")
    won = decision == "GO" and chosen is not None and baseline is not None and chosen.trial_key != baseline.trial_key
    if decision not in ("GO", "NO-GO"):
        return f"the first sweep said {first} for {label}; this one cannot tell yet either ({decision})"
    if first == "GO":
        return (f"the first sweep's GO for {label} holds: measured again against the baseline, it is faster" if won
                else f"the first sweep's GO for {label} does not hold: measured again against the baseline, "
                     f"this sweep says {decision}")
    return (f"the first sweep said {first} for {label}; measured again against the baseline, this sweep says "
            f"{decision}{' for it' if won else ''}")
