"""Between-window statistics: intervals over a setting's windows, the sweep's noise floor and paired ratios.

A window's own figures (step-time percentiles, its bootstrap interval) are measure/step_stats.py's."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence


from trainer_tune.measure.figures import NoiseFloor


# --- Between-window statistics (rounds) ------------------------------------------------------------------
# A machine's speed wanders over tens of seconds, so the steps of one window are not independent draws of a
# setting's speed: the window is. Intervals below therefore treat each window's rate as one observation (the
# top level of a hierarchical experiment, Kalibera and Jones, "Rigorous Benchmarking in Reasonable Time",
# ISMM 2013): a window's rate already contains its own step-to-step noise, so the spread of window rates
# measures both levels. With the few windows a sweep can afford (3 to 10), a bootstrap over windows covers
# far less than its nominal 95% (a percentile interval of 3 values spans at most their range), so the
# interval is Student's t on log rates: exact for log-normal window rates and the right width for any n.


def _t_quantile(confidence: float, df: int) -> float:
    from scipy.stats import t as student_t  # scipy is slow to import; only sweeps that finish need it

    return float(student_t.ppf(0.5 + confidence / 2.0, df))


def geometric_mean(values: Sequence[float]) -> float:
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"geometric mean of {list(values)}: needs positive values")
    return math.exp(statistics.fmean(math.log(v) for v in values))


def _pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """(pooled standard deviation, degrees of freedom) of groups with their own means."""
    sum_sq, df = 0.0, 0
    for values in groups:
        if len(values) >= 2:
            sum_sq += statistics.variance(values) * (len(values) - 1)
            df += len(values) - 1
    return (math.sqrt(sum_sq / df), df) if df else (0.0, 0)


def noise_floor(rates_by_setting: Mapping[str, Mapping[str, float]], *, baseline: str) -> Optional[NoiseFloor]:
    """The sweep's noise from each setting's window rates by round (`baseline`: the key of the setting measured
    in every round, whose per-round ratios carry the paired noise). None without two windows of anything.

    The ratio floor pools every setting's log ratios to the baseline round by round; the settings share the
    baseline's windows, so these are not independent and the degrees of freedom overstate the evidence a
    little: the floor is a floor, not the interval."""
    logs = {key: {r: math.log(v) for r, v in rates.items()} for key, rates in rates_by_setting.items() if rates}
    window_sd, window_df = _pooled_sd([list(by_round.values()) for by_round in logs.values()])
    if window_df == 0:
        return None
    base = logs.get(baseline, {})
    diffs = [[by_round[r] - base[r] for r in by_round if r in base] for key, by_round in logs.items() if key != baseline]
    ratio_sd, ratio_df = _pooled_sd(diffs)
    return NoiseFloor(window_log_sd=window_sd, window_df=window_df, ratio_log_sd=ratio_sd, ratio_df=ratio_df)


def moderated_variance(own_var: float, own_df: int, pooled_var: float, pooled_df: int) -> float:
    """The variance of one setting's log values to use with the sweep's pooled one: the larger of the pooled
    variance and the setting's own shrunk towards it (each weighted by its degrees of freedom).

    The round-to-round noise is much the same for every setting of a sweep (one machine, the same rounds), so the
    pooled estimate, with many degrees of freedom, is the better one; a setting whose own spread is clearly larger
    (it is unstable, or hit by bursts the others missed) keeps a larger variance. With the 2 degrees of freedom of 3
    windows a pretest of "clearly larger" has no power, so the own variance is shrunk instead of tested (the
    moderated variance of Smyth 2004, with the pooled estimate as its prior), and never below the pooled one."""
    shrunk = (own_df * own_var + pooled_df * pooled_var) / (own_df + pooled_df)
    return max(pooled_var, shrunk)


def _half_width(logs: Sequence[float], *, confidence: float, floor_sd: float, floor_df: int) -> float:
    """Student's t half-width of the mean of `logs`: with the sweep's pooled noise (`floor_sd` on `floor_df` degrees
    of freedom), from the moderated variance and the pooled degrees of freedom; without it, from the values alone."""
    n = len(logs)
    own_var = statistics.variance(logs)
    if floor_df < 1 or floor_sd == 0:
        return _t_quantile(confidence, n - 1) * math.sqrt(own_var / n)
    variance = moderated_variance(own_var, n - 1, floor_sd ** 2, floor_df)
    return _t_quantile(confidence, floor_df) * math.sqrt(variance / n)


def log_t_interval(values: Sequence[float], *, confidence: float = 0.95,
                   floor: Optional[NoiseFloor] = None) -> Optional[tuple[float, float]]:
    """Interval of the geometric mean of positive window rates: Student's t on their logs, never narrower than
    the sweep's noise floor. None with fewer than two observations: one window says nothing about the next."""
    if len(values) < 2:
        return None
    logs = [math.log(v) for v in values]
    centre = statistics.fmean(logs)
    half = _half_width(logs, confidence=confidence, floor_sd=floor.window_log_sd if floor else 0.0,
                       floor_df=floor.window_df if floor else 0)
    return math.exp(centre - half), math.exp(centre + half)


MIN_FLOOR_DF_FOR_ONE_WINDOW = 4
"""A window alone has no spread of its own; compared unpaired, it takes the sweep's pooled window noise when that
rests on at least this many degrees of freedom (a screening round's baseline repeats: 12 for 100 settings), and
has no interval otherwise."""


def _side_variance(logs: Sequence[float], floor: Optional[NoiseFloor]) -> tuple[float, int]:
    """(variance of the mean of `logs`, its degrees of freedom) for an unpaired comparison: with the sweep's pooled
    window noise, the moderated variance on the pooled and own degrees of freedom (windows of settings that share no
    rounds, such as two settings screened in different blocks, are compared this way; a lone window takes the
    pooled noise as it is); without it, the values' own."""
    n = len(logs)
    if n < 2:
        assert floor is not None  # ratio_estimate gives no interval to a lone window without a floor
        return floor.window_log_sd ** 2, floor.window_df
    own = statistics.variance(logs)
    if floor is None or floor.window_df < 1 or floor.window_log_sd == 0:
        return own / n, n - 1
    return moderated_variance(own, n - 1, floor.window_log_sd ** 2, floor.window_df) / n, floor.window_df + n - 1


@dataclass(frozen=True)
class RatioEstimate:
    """rate(a) / rate(b) from windows, with how it was estimated."""

    ratio: float
    """Geometric mean of the per-round ratios (paired), or the ratio of geometric means (unpaired)."""
    interval: Optional[tuple[float, float]]
    """95% interval of the ratio; None when the windows cannot support one (a side with one window)."""
    paired: bool
    """Both sides were measured in the same rounds, at least two of them: drift common to a round cancels."""
    num_pairs: int
    """Rounds both sides were measured in."""


def point_ratio(a_by_round: Mapping[str, float], b_by_round: Mapping[str, float]) -> float:
    """rate(a) / rate(b) without an interval, exactly ratio_estimate's centre: the geometric mean of the per-round
    ratios when at least two rounds hold both, else the ratio of the two sides' geometric means. What a ranking
    needs (evidence/comparison.ranking), without the t quantile and the noise floor."""
    if not a_by_round or not b_by_round:
        raise ValueError("a ratio needs at least one window on each side")
    common = sorted(set(a_by_round) & set(b_by_round))
    if len(common) >= 2:
        return math.exp(statistics.fmean(math.log(a_by_round[r] / b_by_round[r]) for r in common))
    return geometric_mean(list(a_by_round.values())) / geometric_mean(list(b_by_round.values()))


def ratio_estimate(a_by_round: Mapping[str, float], b_by_round: Mapping[str, float], *,
                   confidence: float = 0.95, floor: Optional[NoiseFloor] = None) -> RatioEstimate:
    """rate(a) / rate(b) from per-round window rates keyed by round id.

    Paired when at least two rounds hold both: the ratio inside each round cancels whatever slowed or sped up
    the machine during that round, and the interval is over the per-round ratios. Otherwise the two sides are
    independent samples: Welch's t on the difference of mean log rates."""
    if not a_by_round or not b_by_round:
        raise ValueError("a ratio needs at least one window on each side")
    common = sorted(set(a_by_round) & set(b_by_round))
    if len(common) >= 2:
        logs = [math.log(a_by_round[r] / b_by_round[r]) for r in common]
        centre = statistics.fmean(logs)
        half = _half_width(logs, confidence=confidence, floor_sd=floor.ratio_log_sd if floor else 0.0,
                           floor_df=floor.ratio_df if floor else 0)
        return RatioEstimate(ratio=math.exp(centre), interval=(math.exp(centre - half), math.exp(centre + half)),
                             paired=True, num_pairs=len(common))
    a, b = list(a_by_round.values()), list(b_by_round.values())
    ratio = geometric_mean(a) / geometric_mean(b)
    if (len(a) < 2 or len(b) < 2) and (floor is None or floor.window_df < MIN_FLOOR_DF_FOR_ONE_WINDOW
                                       or floor.window_log_sd == 0):
        return RatioEstimate(ratio=ratio, interval=None, paired=False, num_pairs=len(common))
    log_a, log_b = [math.log(v) for v in a], [math.log(v) for v in b]
    (var_a, df_a), (var_b, df_b) = _side_variance(log_a, floor), _side_variance(log_b, floor)
    se = math.sqrt(var_a + var_b)
    if se == 0:
        return RatioEstimate(ratio=ratio, interval=(ratio, ratio), paired=False, num_pairs=len(common))
    # Welch-Satterthwaite degrees of freedom, each side with those of the variance it uses.
    df = (var_a + var_b) ** 2 / (var_a ** 2 / df_a + var_b ** 2 / df_b)
    half = _t_quantile(confidence, max(1, math.floor(df))) * se
    return RatioEstimate(ratio=ratio, interval=(ratio * math.exp(-half), ratio * math.exp(half)), paired=False,
                         num_pairs=len(common))
