"""How figures with units are written for people: shared by the explanations and every sink."""

from __future__ import annotations

from typing import Optional


def format_bytes(value: Optional[int]) -> str:
    if value is None:
        return "n/a"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_ms(value: Optional[float]) -> str:
    """Milliseconds to three significant digits, whole from 100 on: `0.842`, `12.3`, `1,234` (a latency of a
    small model is under a millisecond, one of a large batch seconds long: one format keeps both readable)."""
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def count(number: int, noun: str, plural: Optional[str] = None) -> str:
    """`1 trial`, `3 trials`: a count with its noun in the right number (plural defaults to noun + s)."""
    return f"{number} {noun if number == 1 else (plural or noun + 's')}"
