"""The input pipeline's part of the decision: which settings are input-bound, and what to try.

A setting is input-bound when its slowest rank spent more than recommend.input_bound_fraction of the measured
time waiting for batches (SettingEstimate.data_wait_fraction). Being input-bound never blocks a GO: the figures
stand, and a faster pipeline would only make the setting faster still. verdict.decide names such settings
in its reasons and its verdict; the figures behind them travel on the Decision, so sinks only show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from trainer_tune.evidence.estimate import SettingEstimate

MAX_LISTED = 3
"""Input-bound settings named one reason each; more are named together in one line (the report lists all)."""


@dataclass(frozen=True)
class InputWait:
    """One finished setting's wait for its batches."""

    label: str
    num_workers: int
    """data.num_workers of the setting (swept by sweep.num_workers)."""
    data_wait_fraction: Optional[float]
    """Share of the measured time the slowest rank waited for batches; None when not recorded."""
    data_wait_s_median: Optional[float]
    """Median wait per measured step."""
    input_bound: bool
    """data_wait_fraction above recommend.input_bound_fraction."""

    def to_json_dict(self) -> dict[str, Any]:
        return {"label": self.label, "num_workers": self.num_workers, "data_wait_fraction": self.data_wait_fraction,
                "data_wait_s_median": self.data_wait_s_median, "input_bound": self.input_bound}


def _num_workers(result: SettingEstimate) -> int:
    return result.flags.num_workers


def is_input_bound(result: SettingEstimate, threshold: Optional[float]) -> bool:
    return threshold is not None and result.ok and result.data_wait_fraction is not None \
        and result.data_wait_fraction > threshold


def input_waits(results: Sequence[SettingEstimate], threshold: Optional[float]) -> tuple[InputWait, ...]:
    """Every finished setting's wait, when there is something to show: a setting is input-bound, or the
    settings differ in data.num_workers (a sweep over it shows what workers change). Else empty."""
    finished = [r for r in results if r.ok]
    swept = len({_num_workers(r) for r in finished}) > 1
    if not swept and not any(is_input_bound(r, threshold) for r in finished):
        return ()
    return tuple(InputWait(label=r.label, num_workers=_num_workers(r), data_wait_fraction=r.data_wait_fraction,
                           data_wait_s_median=r.data_wait_s_median, input_bound=is_input_bound(r, threshold))
                 for r in sorted(finished, key=lambda r: r.index))


def _waited(result: SettingEstimate) -> str:
    """`38% of its step time waiting for batches (median 12 ms per step)`."""
    assert result.data_wait_fraction is not None
    median = (f" (median {result.data_wait_s_median * 1e3:.3g} ms per step)"
              if result.data_wait_s_median is not None else "")
    return f"{result.data_wait_fraction:.0%} of its step time waiting for batches{median}"


def _more_workers(now: int) -> str:
    """The sweep to try next from `now` workers: [0, 2, 4] from none, else now, 2 x now and 4 x now."""
    values = [0, 2, 4] if now == 0 else [now, 2 * now, 4 * now]
    return "[" + ",".join(str(v) for v in values) + "]"


def input_bound_reasons(results: Sequence[SettingEstimate], *, threshold: Optional[float],
                        first: Optional[SettingEstimate]) -> list[str]:
    """One reason per input-bound setting (`first`, the chosen or best one, leads); past MAX_LISTED, the rest in
    one line."""
    bound = [r for r in results if is_input_bound(r, threshold)]
    bound.sort(key=lambda r: (first is None or r.trial_key != first.trial_key, r.index))
    reasons = []
    for r in bound[:MAX_LISTED]:
        now = _num_workers(r)
        reasons.append(f"{r.label} is input-bound: {_waited(r)}; try data.num_workers (now {now}), "
                       f"data.pin_memory, data.prefetch_factor, or sweep.num_workers={_more_workers(now)}")
    rest = bound[MAX_LISTED:]
    if rest:
        listed = ", ".join(f"{r.label} ({r.data_wait_fraction:.0%})" for r in rest)
        reasons.append(f"also input-bound (share of step time waiting for batches): {listed}")
    return reasons


def verdict_note(result: Optional[SettingEstimate], *, threshold: Optional[float]) -> str:
    """What the verdict adds when the setting it names is input-bound, else nothing."""
    if result is None or not is_input_bound(result, threshold):
        return ""
    return f"; input-bound: {result.data_wait_fraction:.0%} of step time waiting for batches"
