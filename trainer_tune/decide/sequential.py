"""Deciding on evidence: GO, NO-GO or INCONCLUSIVE from the windows so far, safe after selection and after many looks.

A sweep compares many settings with the baseline, picks the best, and looks at the evidence after every round: each
of those is a chance to be fooled by noise. The error budget (`ErrorBudget`) splits the one-sided error of a false
GO or NO-GO, 2.5% (ALPHA), over every setting that could be chosen and every look the race may take (Bonferroni over
settings x looks: simple, valid for any dependence between them, including the shared baseline and the leader
being picked as the maximum), and every comparison with the baseline is made at the level that leaves. Comparisons
between settings (the race's drops, the indifference check) split a one-sided 5% (PICK_ALPHA) the same way: the
chance that the true best is dropped, or that a GO names a setting more than recommend.indifference behind it. So:

- **GO**: the leader's paired speedup over the baseline is at least `recommend.min_speedup` at the lower end of
  its corrected interval, and no other setting still in the race can be more than `recommend.indifference`
  faster than it (the upper end of each one's corrected interval against the leader);
- **NO-GO**: every eligible setting's corrected upper end against the baseline is below `recommend.min_speedup`;
- **INCONCLUSIVE**: neither, for now: the leader, its interval, and an estimate of how many more rounds would
  decide, from the spread seen so far.

Why Bonferroni and not a confidence sequence or Dunnett: the number of looks is bounded (`sweep.max_rounds`), and
with the pooled noise estimate (evidence/stats.moderated_variance, 14 degrees of freedom for 8 settings in 3 rounds
rather than 2) the corrected t quantile is about 4 where an uncorrected 2-degrees-of-freedom one was 4.3: the
correction costs less than the pooling gains. Dunnett's exact constant would be somewhat smaller but assumes one
look and balanced, independent groups, which a race that drops settings does not have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from trainer_tune.config.schema import RecommendArgs, SweepArgs
from trainer_tune.evidence.comparison import Comparison, compare, level_text, percent
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.platform.units import count

GO = "GO"
NO_GO = "NO-GO"
INCONCLUSIVE = "INCONCLUSIVE"

ALPHA = 0.05
"""The two-sided error of the whole sweep's verdict against the baseline: one-sided 2.5% for a false GO (and for a
false NO-GO)."""
PICK_ALPHA = 0.10
"""The two-sided error of the pick among settings: one-sided 5% that the race drops the true best, or that a GO
names a setting more than recommend.indifference slower than the best (the issue's target for the best dropped
is 5%; a wrong pick is still a setting that clears the margin, so it costs less than a false GO)."""


@dataclass(frozen=True)
class ErrorBudget:
    """ALPHA spread over every comparison the verdict may rest on."""

    num_settings: int
    """Settings that could be chosen against the baseline: every planned one but the baseline (not only those still
    in the race: the leader was picked from all of them)."""
    num_looks: int
    """Rounds after which the race may stop on the evidence: sweep.max_rounds - sweep.min_rounds + 1."""

    @property
    def confidence(self) -> float:
        """The two-sided level of each comparison with the baseline."""
        return 1.0 - ALPHA / (max(1, self.num_settings) * max(1, self.num_looks))

    @property
    def pick_confidence(self) -> float:
        """The two-sided level of each comparison between two settings (race drops, the indifference check)."""
        return 1.0 - PICK_ALPHA / (max(1, self.num_settings) * max(1, self.num_looks))

    def describe(self, *, look: str = "look") -> str:
        """`99.91% intervals: 95% over 7 settings x 8 looks` (`look`: what a look is, e.g. a serving search's rate)."""
        return (f"{level_text(self.confidence)} intervals: {level_text(1.0 - ALPHA)} over "
                f"{self.num_settings} setting{'s' if self.num_settings != 1 else ''} x {self.num_looks} "
                f"{look}{'s' if self.num_looks != 1 else ''}")


def error_budget(*, num_planned: int, sweep: Optional[SweepArgs], screening_looks: int = 0) -> ErrorBudget:
    """The budget of a sweep of `num_planned` settings (the baseline among them) raced under `sweep`; one look
    without a race (a multirun's jobs, each decided once at the end). `screening_looks`: the race also drops
    settings after each of its short screening rounds (decide/race.py), a look each."""
    looks = 1 if sweep is None or not sweep.race else max(1, sweep.max_rounds - sweep.min_rounds + 1)
    return ErrorBudget(num_settings=max(1, num_planned - 1), num_looks=looks + screening_looks)


@dataclass(frozen=True)
class EvidenceVerdict:
    decision: str
    """GO, NO-GO or INCONCLUSIVE."""
    leader: Optional[SettingEstimate]
    comparison: Optional[Comparison]
    """The leader against the baseline, at the budget's level."""
    reason: str
    rivals: tuple[tuple[SettingEstimate, Comparison], ...] = ()
    """The settings still in the race that may be more than recommend.indifference faster than the leader, each with
    its comparison against it, the least settled first (why a leader that clears the margin is not yet a GO)."""


Comparer = Callable[[SettingEstimate, SettingEstimate, float], Comparison]
"""comparer(a, b, confidence): a against b, above 1 when a is better (compare; compare_lower for a figure where lower
is better)."""


def weigh(leader: SettingEstimate, baseline: SettingEstimate, *, candidates: Sequence[SettingEstimate],
          contenders: Sequence[SettingEstimate], args: RecommendArgs, budget: ErrorBudget,
          goodput: bool = False, comparer: Optional[Comparer] = None) -> EvidenceVerdict:
    """GO, NO-GO or INCONCLUSIVE for `leader` (the best contender) against `baseline`. `candidates`: every setting
    that may be chosen (for NO-GO, each must be shown below the margin); `contenders`: those still in the race (for
    GO, none may be shown possibly better than the leader by more than recommend.indifference). `comparer`: how two
    settings compare (by default compare on throughput, or on goodput with goodput=True); a point objective passes
    compare_lower on its figure, and only the settings with that figure take part."""
    if comparer is None:
        def comparer(a: SettingEstimate, b: SettingEstimate, confidence: float) -> Comparison:
            return compare(a, b, goodput=goodput, confidence=confidence)

    level = budget.confidence
    against = comparer(leader, baseline, level)
    if against.interval is None:
        return EvidenceVerdict(INCONCLUSIVE, leader, against, "a side was measured in one window only, which gives "
                                                              "no interval (sweep.min_rounds >= 2 gives one)")
    others = [c for c in candidates if c.trial_key != baseline.trial_key]
    if not others:
        return EvidenceVerdict(NO_GO, leader, against, "no other setting may be chosen")
    uppers = [comparer(c, baseline, level).interval for c in others]
    if all(u is not None and u[1] < args.min_speedup for u in uppers):
        return EvidenceVerdict(NO_GO, leader, against, f"every eligible setting's speedup is below the required "
                                                       f"{percent(args.min_speedup)} even at the upper end of its "
                                                       f"interval")
    if leader.trial_key == baseline.trial_key:
        return EvidenceVerdict(INCONCLUSIVE, leader, against, "the baseline leads, but not every other setting is "
                                                              "shown below the required "
                                                              f"{percent(args.min_speedup)}")
    if against.interval[0] < args.min_speedup:
        return EvidenceVerdict(INCONCLUSIVE, leader, against, f"the lower end of its speedup "
                                                              f"({percent(against.interval[0])}) is below the required "
                                                              f"{percent(args.min_speedup)} while the upper end "
                                                              f"({percent(against.interval[1])}) is above it")
    rivals = []
    for rival in contenders:
        if rival.trial_key in (leader.trial_key, baseline.trial_key):
            continue
        ahead = comparer(rival, leader, budget.pick_confidence)
        if ahead.interval is None or ahead.interval[1] > 1.0 + args.indifference:
            rivals.append((rival, ahead))
    if rivals:
        rivals.sort(key=lambda pair: -(pair[1].interval or (0.0, math.inf))[1])
        named = "; ".join(f"{rival.label} {ahead.describe()}" for rival, ahead in rivals[:5])
        if len(rivals) > 5:
            named += f"; and {count(len(rivals) - 5, 'more setting')}"
        return EvidenceVerdict(INCONCLUSIVE, leader, against,
                               f"{count(len(rivals), 'setting')} still in the race may be faster than {leader.label} "
                               f"by more than recommend.indifference={args.indifference:g}: {named}",
                               rivals=tuple(rivals))
    return EvidenceVerdict(GO, leader, against, f"at least the required {percent(args.min_speedup)} even at the "
                                                f"interval's lower end, and no setting still in the race can be more "
                                                f"than {args.indifference:.0%} faster")


def rounds_to_decide(comparison: Comparison, *, num_rounds: int, margin: float, cap: int = 100) -> Optional[int]:
    """About how many more rounds would make `comparison` clear `margin` one way or the other, if the ratio and the
    spread stay as they are: the half-width shrinks as 1 / sqrt(rounds). None without an interval, or when the
    ratio sits on the margin (no number of rounds would tell)."""
    if comparison.interval is None or num_rounds < 1:
        return None
    centre = math.log(comparison.ratio)
    half = (math.log(comparison.interval[1]) - math.log(comparison.interval[0])) / 2.0
    gap = abs(centre - math.log(margin))
    if gap <= 0:
        return None
    needed = math.ceil(num_rounds * (half / gap) ** 2)
    return None if needed > cap else max(1, needed - num_rounds)
