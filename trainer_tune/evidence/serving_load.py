"""Serving under open-loop load: from one run's request latencies to a tail-latency interval, a verdict against the
latency target, whether the server kept up, and the search for the highest rate that meets the target.

Latencies of a queue are strongly dependent (a slow batch delays every request queued behind it), so intervals
come from contiguous sections of the run, not from treating requests as independent draws."""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from trainer_tune.evidence.stats import _t_quantile
from trainer_tune.measure.step_stats import quantile
from trainer_tune.platform.units import format_ms

MIN_SECTIONS = 5
"""Fewer sections leave the t interval too wide to say anything (t quantile 2.78 at 4 degrees of freedom)."""
MAX_SECTIONS = 20
"""More sections would make each too short for its tail quantile at the run lengths a measurement affords."""
EXCEEDANCES_PER_SECTION = 10
"""Each section holds this many requests beyond the quantile on average (1,000 requests a section for p99), so
its share beyond the point is counted, not a matter of one request more or less."""
TOO_FEW = "too few requests"


# --- Fill-up ----------------------------------------------------------------------------------------------

def fill_up_requests(latencies_s: Sequence[float]) -> int:
    """How many leading requests to drop as the queue's fill-up before the run settled (0 when none).

    MSER-5 (White 1997; Franklin and White 2008), the standard truncation rule for the initial transient of a
    simulation's output: average consecutive batches of 5 requests and drop the d batches that minimise the squared
    standard error of the remaining batches' mean, sum((z - mean)^2) / (b - d)^2, searching d over the first half
    (later truncation points look good only because few batches remain). A backlog's drain is dropped whole. On
    a run started empty, which settles within a hundred requests, it mostly drops nothing, but it cannot tell an
    early burst from a transient and now and then drops one (at 80% load, 3 runs in 10 lose a few hundred to a
    few thousand requests, 1 in 40 nearly half): the p99 interval's coverage was the same with and without it."""
    batch = 5
    num_batches = len(latencies_s) // batch
    if num_batches < 2:
        return 0
    means = [statistics.fmean(latencies_s[i * batch:(i + 1) * batch]) for i in range(num_batches)]
    # Suffix sums give every truncation point's statistic in one pass from the end.
    best_d, best_stat = 0, math.inf
    total, total_sq = 0.0, 0.0
    mser: list[float] = [0.0] * num_batches
    for d in range(num_batches - 1, -1, -1):
        total += means[d]
        total_sq += means[d] * means[d]
        remaining = num_batches - d
        mser[d] = max(0.0, total_sq - total * total / remaining) / remaining ** 2
    for d in range(num_batches // 2 + 1):
        if mser[d] < best_stat:
            best_d, best_stat = d, mser[d]
    return best_d * batch


# --- Quantile intervals -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantileEstimate:
    """A latency quantile of one run with its confidence interval."""

    q: float
    """The quantile (0.99 for p99)."""
    point_s: float
    """The sample quantile of all the requests given (numpy's linear interpolation)."""
    low_s: float
    high_s: float
    """The interval; (0, inf) when the run is too short to give one."""
    num_requests: int
    sections: int
    """Contiguous sections behind the interval; 0 when it does not come from sectioning."""
    method: str
    """"sectioning", "order statistics" or "too few requests"."""
    confidence: float = 0.95


def requests_per_section(q: float) -> int:
    """The fewest requests a section needs to hold EXCEEDANCES_PER_SECTION beyond the q-quantile on average (1,000
    for p99, 20 for p50)."""
    return math.ceil(EXCEEDANCES_PER_SECTION / min(q, 1.0 - q))


def _check_quantile_args(latencies_s: Sequence[float], q: float, confidence: float) -> None:
    if not latencies_s:
        raise ValueError("a latency quantile needs at least one request")
    if not 0.0 < q < 1.0:
        raise ValueError(f"q={q}: needs 0 < q < 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: needs 0 < confidence < 1")


def quantile_interval(latencies_s: Sequence[float], q: float, confidence: float = 0.95,
                      sections: Optional[int] = None) -> QuantileEstimate:
    """The q-quantile of a run's latencies (arrival order, fill-up already dropped) with a sectioning interval.

    Sectioning (Asmussen and Glynn, Stochastic Simulation, 2007, III.5): cut the run into contiguous sections long
    against the queue's memory, so that they are nearly independent even though requests are not, and take a
    Student-t interval on the sections' spread around the whole run's estimate. What is sectioned is the share of
    requests at or under the point (the empirical distribution function at the quantile): a mean, whose sectioning
    interval holds with sections of a thousand requests for p99. The share's interval q -+ h is then read back
    through the run's own quantiles, [quantile(q - h), quantile(q + h)]: the order-statistic interval of
    `order_statistic_interval` with its binomial variance replaced by the one the sections measure (requests
    come in bursts, so it is larger). Sectioning the q-quantile itself (each section's p99) covers far less than
    its nominal share here: a section of a thousand requests holds one or two bursts over its p99, so its p99
    scatters in jumps that the t interval does not describe (measured 2026-12 on an M/M/1 queue at 80% load over
    100 seeds: 66% coverage of the true p99 for a nominal 95% at 20,000 requests, 75% at 40,000; this interval
    88% and 94% at 20,000 and 30,000, the order-statistic one 20%). An upper end beyond the data is inf.

    `sections`: how many (default: as many as hold `requests_per_section(q)` requests each, 5 to 20). Fewer than
    5 such sections: no interval, (0, inf), method "too few requests"."""
    _check_quantile_args(latencies_s, q, confidence)
    n = len(latencies_s)
    ordered = sorted(latencies_s)
    point_s = quantile(ordered, q)
    if sections is None:
        sections = min(MAX_SECTIONS, n // requests_per_section(q))
        if sections < MIN_SECTIONS:
            return QuantileEstimate(q=q, point_s=point_s, low_s=0.0, high_s=math.inf, num_requests=n, sections=0,
                                    method=TOO_FEW, confidence=confidence)
    elif not 2 <= sections <= n:
        raise ValueError(f"sections={sections}: needs 2 to {n} (the number of requests)")
    bounds = [i * n // sections for i in range(sections + 1)]
    shares = [sum(1 for x in latencies_s[a:b] if x <= point_s) / (b - a) for a, b in zip(bounds, bounds[1:])]
    overall = bisect.bisect_right(ordered, point_s) / n
    spread = math.sqrt(sum((share - overall) ** 2 for share in shares) / (sections - 1))
    half = _t_quantile(confidence, sections - 1) * spread / math.sqrt(sections)
    return QuantileEstimate(q=q, point_s=point_s,
                            low_s=quantile(ordered, q - half) if q - half > 0 else 0.0,
                            high_s=quantile(ordered, q + half) if q + half < 1 else math.inf,
                            num_requests=n, sections=sections, method="sectioning", confidence=confidence)


def _binomial_cdf(n: int, p: float) -> list[tuple[int, float]]:
    """(k, P(B <= k)) for B ~ binomial(n, p), over the ranks within 12 standard deviations of the mean (the rest
    carry under 1e-30 of the probability)."""
    width = 12.0 * math.sqrt(n * p * (1.0 - p)) + 2.0
    first, last = max(0, math.floor(n * p - width)), min(n, math.ceil(n * p + width))
    log_norm = math.lgamma(n + 1)
    cdf, total = [], 0.0
    for k in range(first, last + 1):
        total += math.exp(log_norm - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
                          + (n - k) * math.log1p(-p))
        cdf.append((k, total))
    return cdf


def order_statistic_interval(latencies_s: Sequence[float], q: float, confidence: float = 0.95) -> QuantileEstimate:
    """The distribution-free interval of the q-quantile from order statistics (the binomial(n, q) ranks, as MLPerf
    LoadGen's early stopping uses): exact for independent requests, too narrow for a queue's dependent ones (kept
    to show that, and for independent samples). An end beyond the data is unbounded (0 or inf)."""
    _check_quantile_args(latencies_s, q, confidence)
    n = len(latencies_s)
    ordered = sorted(latencies_s)
    tail = (1.0 - confidence) / 2.0
    # B = the number of requests at or below the true quantile: x_(l) <= quantile iff B >= l, x_(u) > it iff B < u;
    # take the largest l with P(B <= l - 1) <= tail and the smallest u with P(B <= u - 1) >= 1 - tail.
    cdf = _binomial_cdf(n, q)
    low_rank = max([k + 1 for k, c in cdf if c <= tail], default=0)
    high_rank = min([k + 1 for k, c in cdf if c >= 1.0 - tail], default=n + 1)
    return QuantileEstimate(q=q, point_s=quantile(latencies_s, q),
                            low_s=ordered[low_rank - 1] if low_rank >= 1 else 0.0,
                            high_s=ordered[high_rank - 1] if high_rank <= n else math.inf,
                            num_requests=n, sections=0, method="order statistics", confidence=confidence)


# --- Against the target -----------------------------------------------------------------------------------

Status = Literal["met", "missed", "unknown"]


@dataclass(frozen=True)
class TargetCheck:
    """A latency quantile against its target."""

    status: Status
    """"met": the interval lies at or under the target; "missed": wholly over it; "unknown": it straddles it."""
    more_requests: Optional[int]
    """Unknown only: about how many more requests would decide it; None when no number of them would tell."""
    reason: str


def target_check(estimate: QuantileEstimate, target_s: float) -> TargetCheck:
    """Met, missed or unknown, and for unknown how many more requests should decide it: the half-width shrinks as
    1/sqrt(n), so the run needs n * (half-width / |target - point|)^2 requests in all (the half-width on the
    target's side). A run too short for an interval needs at least 5 sections' worth."""
    if not target_s > 0:
        raise ValueError(f"target_s={target_s}: needs a positive target")
    p = f"p{100 * estimate.q:g}"
    figures = (f"{p} {format_ms(1e3 * estimate.point_s)} ms "
               f"[{format_ms(1e3 * estimate.low_s)}, {format_ms(1e3 * estimate.high_s)}] "
               f"over {estimate.num_requests:,} requests vs target {format_ms(1e3 * target_s)} ms")
    if estimate.high_s <= target_s:
        return TargetCheck("met", None, f"met: {figures}")
    if estimate.low_s > target_s:
        return TargetCheck("missed", None, f"missed: {figures}")
    n = estimate.num_requests
    if estimate.method == TOO_FEW:
        more = MIN_SECTIONS * requests_per_section(estimate.q) - n
        return TargetCheck("unknown", more, f"unknown: {figures}; no interval under "
                                            f"{MIN_SECTIONS} sections of {requests_per_section(estimate.q):,}")
    gap_s = target_s - estimate.point_s
    half_s = estimate.high_s - estimate.point_s if gap_s > 0 else estimate.point_s - estimate.low_s
    if gap_s == 0:
        return TargetCheck("unknown", None, f"unknown: {figures}; the point is on the target")
    if not math.isfinite(half_s):
        return TargetCheck("unknown", None, f"unknown: {figures}; the run is too short for the upper end")
    more = max(1, math.ceil(round(n * (half_s / abs(gap_s)) ** 2 - n, 6)))  # round: 30,000.000001 is 30,000
    return TargetCheck("unknown", more, f"unknown: {figures}; about {more:,} more requests should decide it")


# --- Did the server keep up? ------------------------------------------------------------------------------

SERVED_SHORTFALL = 0.03
"""Requests served while requests arrived may fall this share short of those that arrived before the run is called
unable to keep up: a server that keeps up ends with a queue of a few batches, a small share of a long run."""
GROWTH_SHARE = 1.0
"""A latency trend over the run of this share of the median latency or more is a growing queue, not a burst (a
queue growing from empty rises by about twice its median)."""
TREND_SECTIONS = 20
TREND_CONFIDENCE = 0.99
"""One-sided: the trend's lower bound must be above 0 at this level. At 95% one run in twenty near saturation
(90% busy) read as growing; at 99% none of a hundred did, and servers 5% over capacity still all do."""


@dataclass(frozen=True)
class Sustainability:
    sustainable: bool
    """False: the queue kept growing, so the run's latencies depend on its length and describe no steady state."""
    reason: str


def _trend(arrivals_s: Sequence[float], latencies_s: Sequence[float],
           confidence: float = TREND_CONFIDENCE) -> Optional[tuple[float, float]]:
    """(slope, its one-sided TREND_CONFIDENCE lower bound) of section mean latency on section mean arrival time,
    from TREND_SECTIONS contiguous sections; None for fewer than 50 requests. Requests are dependent, so the
    slope's uncertainty comes from the scatter of the section means, not of the requests."""
    n = len(latencies_s)
    sections = min(TREND_SECTIONS, n // 10)
    if sections < MIN_SECTIONS:
        return None
    bounds = [i * n // sections for i in range(sections + 1)]
    xs = [statistics.fmean(arrivals_s[a:b]) for a, b in zip(bounds, bounds[1:])]
    ys = [statistics.fmean(latencies_s[a:b]) for a, b in zip(bounds, bounds[1:])]
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sxx
    residual_var = sum((y - y_mean - slope * (x - x_mean)) ** 2 for x, y in zip(xs, ys)) / (sections - 2)
    lower = slope - _t_quantile(2.0 * confidence - 1.0, sections - 2) * math.sqrt(residual_var / sxx)
    return slope, lower


def sustained(arrivals_s: Sequence[float], completions_s: Sequence[float], latencies_s: Sequence[float],
              rate_per_s: float, trend_confidence: float = TREND_CONFIDENCE) -> Sustainability:
    """Whether the server kept up with the offered load over the whole run (every request, arrival order).

    Unsustainable when latency rises significantly through the run (the slope of section means is above 0 at
    TREND_CONFIDENCE) and the rise is either large (over the run, GROWTH_SHARE of the median latency or more) or matched
    by a shortfall in throughput (fewer than 1 - SERVED_SHORTFALL of the requests that arrived were served by
    the last arrival). A server near saturation has long bursts of high latency that come and go: requiring a
    significant trend and a real size keeps those from reading as a growing queue. The offered rate is the
    schedule's realised one (its Poisson noise is not the server's fault); `rate_per_s` is named for the reason."""
    n = len(arrivals_s)
    if not n == len(completions_s) == len(latencies_s):
        raise ValueError(f"{n} arrivals, {len(completions_s)} completions and {len(latencies_s)} latencies: "
                         "needs one of each per request")
    if n < 2 or not arrivals_s[-1] > arrivals_s[0]:
        return Sustainability(True, f"{n} requests: too short a run to see the queue grow")
    span_s = arrivals_s[-1] - arrivals_s[0]
    served = sum(1 for c in completions_s if c <= arrivals_s[-1])
    shortfall = 1.0 - served / n
    trend = _trend(arrivals_s, latencies_s, trend_confidence)
    median_s = statistics.median(latencies_s)
    throughput = (f"served {served / span_s:,.4g}/s of {n / span_s:,.4g}/s arriving "
                  f"(offered {rate_per_s:,.4g}/s)")
    if trend is None:
        if shortfall > SERVED_SHORTFALL:
            return Sustainability(False, f"{throughput}: the server fell behind")
        return Sustainability(True, f"{throughput}")
    slope, lower = trend
    growth_s = slope * span_s
    rise = (f"latency {'rose' if growth_s >= 0 else 'fell'} {format_ms(1e3 * abs(growth_s))} ms over the run "
            f"(median {format_ms(1e3 * median_s)} ms)")
    if lower > 0 and (growth_s >= GROWTH_SHARE * median_s or shortfall > SERVED_SHORTFALL):
        return Sustainability(False, f"queue kept growing: {rise}; {throughput}")
    return Sustainability(True, f"kept up: {rise}; {throughput}")


# --- The highest rate that meets the target ---------------------------------------------------------------

@dataclass(frozen=True)
class RatePoint:
    """One measured rate: its tail latency against the target, and whether the server kept up."""

    rate_per_s: float
    check: TargetCheck
    sustainable: bool

    @property
    def met(self) -> bool:
        return self.sustainable and self.check.status == "met"

    @property
    def missed(self) -> bool:
        return not self.sustainable or self.check.status == "missed"


@dataclass(frozen=True)
class SustainableRate:
    """The highest offered rate whose tail latency meets the target, as far as the measured rates tell."""

    rate_per_s: float
    """The highest measured rate that met the target (0 when none did)."""
    low_per_s: float
    high_per_s: float
    """The crossing lies between the highest met rate and the lowest missed one (inf when no rate missed)."""
    reason: str


def _is_measured(rate_per_s: float, points: Sequence[RatePoint]) -> bool:
    return any(math.isclose(p.rate_per_s, rate_per_s, rel_tol=1e-9) for p in points)


@dataclass(frozen=True)
class RateSearch:
    """Bisection for the highest rate that meets the latency target, on rates already measured.

    A rate is met when its interval lies under the target and the server kept up; missed when its interval lies
    over the target or the queue grew; unknown when its interval straddles the target. Latency rises with the
    offered rate, so the crossing lies between the highest met rate and the lowest missed one; a met rate above a
    missed one is noise and is ignored (the answer stays on the safe side). An unknown rate bounds neither side:
    its latency is too close to the target to tell with the requests measured (re-measure it with
    `check.more_requests` more and replace the point to settle it); the search goes on in the widest gap left
    between the bounds and the unknown rates, and ends when every gap is within the resolution."""

    target_s: float
    """The latency target of the checks (for the reason only; the checks carry the verdicts)."""
    lo_rate_per_s: float
    """Measured first: a rate expected to meet the target. If it misses, no rate does."""
    hi_rate_per_s: float
    """Measured second: a rate expected to miss it. If it meets, the answer is at least this."""
    resolution: float = 0.05
    """Stop when the bracket's upper end is within this share above its lower end."""
    step_down: int = 0
    """While every rate measured missed the target, measure half the lowest, up to this many times below
    lo_rate_per_s (a prediction that was too high leaves its lower bound missed). An unknown rate is not stepped
    below: its latency is near the target, and lower rates would only cost requests."""

    def __post_init__(self) -> None:
        if not 0 < self.lo_rate_per_s < self.hi_rate_per_s:
            raise ValueError(f"lo_rate_per_s={self.lo_rate_per_s}, hi_rate_per_s={self.hi_rate_per_s}: needs "
                             "0 < lo < hi")
        if not self.resolution > 0:
            raise ValueError(f"resolution={self.resolution}: needs a positive share")

    def _bracket(self, points: Sequence[RatePoint]) -> tuple[Optional[float], Optional[float]]:
        """(highest met rate under the lowest missed one, lowest missed rate); None where there is none."""
        missed = [p.rate_per_s for p in points if p.missed]
        high = min(missed) if missed else None
        met = [p.rate_per_s for p in points if p.met and (high is None or p.rate_per_s < high)]
        return (max(met) if met else None), high

    def next_rate(self, points: Sequence[RatePoint]) -> Optional[float]:
        """The rate to measure next, or None when the search is over: the lower bound, then the upper bound, then
        the geometric midpoint of the widest gap (the resolution is a share, so gaps are halved in ratio)."""
        if not _is_measured(self.lo_rate_per_s, points):
            return self.lo_rate_per_s
        low, high = self._bracket(points)
        below = [p.rate_per_s for p in points if p.rate_per_s < self.lo_rate_per_s * (1 - 1e-9)]
        if low is None and all(p.missed for p in points) and len(below) < self.step_down:
            return min(p.rate_per_s for p in points) / 2
        if high is None and not _is_measured(self.hi_rate_per_s, points):
            return self.hi_rate_per_s
        lower = low if low is not None else min(p.rate_per_s for p in points)
        upper = high if high is not None else self.hi_rate_per_s
        if lower >= upper:
            return None  # the lower bound missed, or the upper bound met: nothing left to bisect
        edges = [lower, *sorted(p.rate_per_s for p in points if lower < p.rate_per_s < upper), upper]
        ratio, a, b = max((b / a, a, b) for a, b in zip(edges, edges[1:]))
        return math.sqrt(a * b) if ratio > 1.0 + self.resolution else None

    def result(self, points: Sequence[RatePoint]) -> SustainableRate:
        """The highest met rate and the bracket around the crossing, with a reason in figures."""
        low, high = self._bracket(points)
        target = f"the latency target of {format_ms(1e3 * self.target_s)} ms"
        unknown = sorted(p.rate_per_s for p in points if not p.met and not p.missed)
        unknown_text = f"; too close to tell at {', '.join(f'{r:,.4g}/s' for r in unknown)}" if unknown else ""
        if high is None:
            missed_text = "missed at no measured rate"
        else:
            lowest = min((p for p in points if p.missed and p.rate_per_s == high), key=lambda p: p.sustainable)
            missed_text = f"missed at {high:,.4g}/s" + ("" if lowest.sustainable else " (the queue kept growing)")
        if low is None:
            return SustainableRate(0.0, 0.0, math.inf if high is None else high,
                                   f"no measured rate met {target}: {missed_text}{unknown_text}")
        if high is None:
            return SustainableRate(low, low, math.inf, f"met {target} up to {low:,.4g}/s, {missed_text}: the "
                                                      f"highest sustainable rate may be higher{unknown_text}")
        return SustainableRate(low, low, high, f"met {target} at {low:,.4g}/s, {missed_text}{unknown_text}")
