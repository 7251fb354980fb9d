"""The decision matrix (explain.ObjectiveWinner rows) in words: the same names and figures in the console, report.md
and wandb. Formatting only: every figure arrives on the row."""

from __future__ import annotations

from typing import Optional

from trainer_tune.explain.matrix import MAX_GOODPUT, MAX_THROUGHPUT, MIN_ENERGY, MIN_LATENCY, MIN_MEMORY, ObjectiveWinner
from trainer_tune.platform.units import format_bytes, format_ms

OBJECTIVE_NAMES = {MAX_THROUGHPUT: "max throughput", MIN_LATENCY: "min p99 latency",
                   MIN_ENERGY: "min energy per sample", MIN_MEMORY: "min peak memory", MAX_GOODPUT: "max goodput"}


def objective_name(row: ObjectiveWinner) -> str:
    return OBJECTIVE_NAMES.get(row.objective, row.objective)


def rate_text(value: Optional[float], unit: str) -> Optional[str]:
    return None if value is None else f"{value:,.0f} {unit}/s"


def p99_text(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"p99 {format_ms(value)} ms"


def energy_text(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"{value:.3g} J/sample"


def memory_text(value: Optional[int]) -> Optional[str]:
    return None if value is None else format_bytes(value)


def figure_text(row: ObjectiveWinner, unit: str) -> Optional[str]:
    """The figure the objective picks by, in its unit (throughput with its 95% interval); None without a winner."""
    if row.value is None:
        return None
    if row.objective == MAX_THROUGHPUT:
        interval = f" (95% CI {row.value_ci95[0]:,.0f} to {row.value_ci95[1]:,.0f})" if row.value_ci95 else ""
        return f"{rate_text(row.value, unit)}{interval}"
    if row.objective == MAX_GOODPUT:
        return f"{rate_text(row.value, unit)} of goodput"
    if row.objective == MIN_LATENCY:
        return p99_text(row.value)
    if row.objective == MIN_ENERGY:
        return energy_text(row.value)
    if row.objective == MIN_MEMORY:
        return memory_text(int(row.value))
    return f"{row.value:g}"


def other_figures_text(row: ObjectiveWinner, unit: str) -> str:
    """The winner's measured figures besides the objective's own, e.g. `p99 60.0 ms, 0.3 J/sample`."""
    goodput = rate_text(row.goodput_per_s, unit)
    figures = {MAX_THROUGHPUT: rate_text(row.throughput_per_s, unit), MIN_LATENCY: p99_text(row.latency_p99_ms),
               MIN_ENERGY: energy_text(row.energy_j_per_sample), MIN_MEMORY: memory_text(row.memory_bytes),
               MAX_GOODPUT: f"{goodput} of goodput" if goodput else None}
    return ", ".join(text for objective, text in figures.items() if objective != row.objective and text)


def matrix_line(row: ObjectiveWinner, unit: str) -> str:
    """One line per objective: `max throughput: 16x1 at 1,600 samples/s (95% CI ...), with p99 60.0 ms: <note>`
    (the note names any tie)."""
    if row.label is None:
        return f"{objective_name(row)}: none ({row.note})"
    others = other_figures_text(row, unit)
    return f"{objective_name(row)}: {row.label} at {figure_text(row, unit)}{f', with {others}' if others else ''}: " \
           f"{row.note}"
