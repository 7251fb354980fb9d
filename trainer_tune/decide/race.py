"""Rounds and the race: which settings are measured in which round, and which stop being measured.

A sweep measures every candidate in several short windows spread over the whole sweep, in rounds. Each
round measures every setting still in the race plus the baseline, in an order shuffled per round (seeded,
so a resumed sweep repeats it): slow drift of the machine's speed then hits every setting alike, and the
baseline's window in the same round is the pair each setting's ratio is taken against (recommend.compare).

After each round from `race_from` on, a setting clearly behind the leader by that one comparison rule
leaves the race (F-Race, Birattari et al. 2002; successive halving drops by rank instead); a setting over a
hard limit of the decision (the p99 latency budget) leaves it first, once it has sweep.min_rounds windows.
The race ends when one setting is left ahead of all others (separated), at `sweep.max_rounds`, or when the
next round would overrun `sweep.budget_s`; the baseline is measured in every round regardless, as the
reference.

Everything here is a pure function of what every rank holds; the sweep still broadcasts rank 0's answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence, TypeVar

from trainer_tune.platform.units import count


class Raced(Protocol):
    """What the race needs to know of a setting: a result aggregated over its windows so far."""

    trial_key: str
    label: str
    throughput_per_s: Optional[float]


R = TypeVar("R", bound=Raced)


def round_id(round_index: int, *, prefix: str = "") -> str:
    """The name pairing windows of one round: `r3`, or `job2/r3` for a multirun job's own rounds."""
    return f"{prefix}r{round_index}"


def round_order(keys: Sequence[str], *, round_index: int, seed: int) -> list[str]:
    """The settings of one round in a shuffled order, the same on every rank and on every resume."""
    ordered = sorted(keys)  # independent of the caller's order: only the set and the seed matter
    random.Random(f"trainer_tune/round/{seed}/{round_index}").shuffle(ordered)
    return ordered


@dataclass(frozen=True)
class Drop:
    """A setting that left the race, and why (shown with the verdict)."""

    label: str
    trial_key: str
    after_round: int
    """Rounds measured before it was dropped (1-based count)."""
    reason: str


def _throughput(contender: Raced) -> Optional[float]:
    return contender.throughput_per_s


def race_drops(contenders: Sequence[R], *, after_round: int, behind: Callable[[R, R], Optional[str]],
               rate: Callable[[R], Optional[float]] = _throughput) -> list[Drop]:
    """The contenders clearly behind the leader (the highest point estimate of `rate`: throughput, or goodput with
    recommend.objective=goodput): `behind(c, leader)` returns why c loses to the leader beyond noise, or None
    while the comparison cannot tell them apart. Contenders without a rate neither lead nor leave."""
    measured = [c for c in contenders if rate(c) is not None]
    if len(measured) < 2:
        return []
    leader = max(measured, key=rate)  # type: ignore[arg-type]
    drops = []
    for contender in measured:
        if contender.trial_key == leader.trial_key:
            continue
        reason = behind(contender, leader)
        if reason is not None:
            drops.append(Drop(label=contender.label, trial_key=contender.trial_key, after_round=after_round,
                              reason=reason))
    return drops


def limit_drops(contenders: Sequence[R], *, after_round: int,
                over_limit: Callable[[R], Optional[str]]) -> list[Drop]:
    """The contenders whose figures break a hard limit of the decision (recommend.max_latency_ms):
    `over_limit(c)` returns why c can never be chosen, or None. Such a setting cannot win whatever its speed, so
    more windows of it would only cost time, and while it stays it could lead the race and drop the settings
    that can be chosen."""
    drops = []
    for contender in contenders:
        reason = over_limit(contender)
        if reason is not None:
            drops.append(Drop(label=contender.label, trial_key=contender.trial_key, after_round=after_round,
                              reason=reason))
    return drops


def race_over(*, alive: Sequence[str], round_index: int, min_rounds: int, max_rounds: int,
              elapsed_s: float, budget_s: Optional[float], last_round_s: Optional[float]) -> Optional[str]:
    """Why no further round is measured, or None to measure round `round_index` (0-based).

    At least `min_rounds` rounds always run (fewer windows give no interval worth the name). After that the
    race stops once one setting is left, at `max_rounds`, or when the next round, estimated from the last
    one's duration, would end past `budget_s`."""
    if round_index < min_rounds:
        return None
    if len(alive) <= 1:
        return f"one setting left after {count(round_index, 'round')}: the race is decided"
    if round_index >= max_rounds:
        return f"sweep.max_rounds={max_rounds} reached with {count(len(alive), 'setting')} still in the race"
    if budget_s is not None and last_round_s is not None and elapsed_s + last_round_s > budget_s:
        return (f"sweep.budget_s={budget_s:g}: {elapsed_s:.0f} s spent and another round takes about "
                f"{last_round_s:.0f} s; {count(len(alive), 'setting')} still in the race")
    return None


@dataclass(frozen=True)
class RaceSummary:
    """How the race went: shown with the verdict, in recommendation.json and in wandb."""

    num_rounds: int
    end_reason: str
    """Why no further round was measured."""
    drops: tuple[Drop, ...]
    """Settings that left the race, in the order they left."""
    contenders: tuple[str, ...]
    """Labels of the settings still in the race when it ended."""
    contender_keys: tuple[str, ...] = ()
    """Their setting keys (what the decision matches on; labels are for people)."""

    def to_json_dict(self) -> dict[str, object]:
        return {"num_rounds": self.num_rounds, "end_reason": self.end_reason,
                "drops": [{"label": d.label, "after_round": d.after_round, "reason": d.reason} for d in self.drops],
                "contenders": list(self.contenders)}
