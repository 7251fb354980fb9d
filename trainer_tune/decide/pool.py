"""What a verdict chooses from, and its leader: the one definition the race's stop rule and the final verdict share.

`build_pool` sorts the settings by the one eligibility rule (decide/eligible.py) into candidates (may be chosen) and
contenders (candidates still in the race); `pick_best` names the leader among the contenders (most throughput or
goodput, ties broken by recommend.tie_break; the best point figure with a point objective). The race asks both after
every round (race.evidence_says) and the verdict asks them once at the end (verdict.decide), so the race can never
stop on a GO for one leader that the verdict, choosing another, would not give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Optional, Sequence

from trainer_tune.config.schema import Objective, RecommendArgs, TieBreak
from trainer_tune.decide.eligible import OVER_LATENCY, OVER_MEMORY, eligible, ineligibility, over_latency_budget
from trainer_tune.evidence.comparison import Outcome, compare, ranking
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.evidence.noise_scale import sweep_noise_scale, with_goodput
from trainer_tune.measure.figures import NoiseScaleFigures
from trainer_tune.measure.record import TOKENS
from trainer_tune.platform.units import count


def with_sweep_goodput(results: Sequence[SettingEstimate]
                       ) -> tuple[list[SettingEstimate], Optional[NoiseScaleFigures], Optional[str]]:
    """(results with their statistical efficiency and goodput, the sweep's B_noise, its note): in training, from the
    noise scale pooled over every finished setting (noise_scale.py); serving settings are returned as they are."""
    training = any(r.mode == "train" for r in results)
    noise, note = sweep_noise_scale(results) if training else (None, None)
    return list(with_goodput(results, noise)), noise, note


def sweep_unit(results: Sequence[SettingEstimate]) -> str:
    """The unit every rate of the decision is in: the baseline's, else another finished setting's (the settings
    of a sweep share one data source and throughput.unit, so they agree)."""
    finished = [r for r in results if r.ok]
    pick = next((r for r in finished if r.is_baseline), finished[0] if finished else next(iter(results), None))
    return pick.throughput_unit if pick is not None else TOKENS


def _tie_break(tied: Sequence[SettingEstimate], *, fastest: SettingEstimate, baseline: Optional[SettingEstimate],
               rule: TieBreak) -> SettingEstimate:
    if rule == TieBreak.fastest:
        return fastest
    return min(tied, key=lambda r: _least_change_key(r, baseline))


_LEAST_CHANGE_RULES = ("the baseline's global batch", "less memory", "the smaller global batch",
                       "the smaller micro-batch", "the higher point estimate")
"""What each part of _least_change_key prefers, in order: named by the tie reason when it decided."""


def _least_change_key(result: SettingEstimate, baseline: Optional[SettingEstimate]) -> tuple:
    base_batch = baseline.global_batch_size if baseline is not None else None
    return (result.global_batch_size != base_batch, result.peak_memory_bytes or 0, result.global_batch_size,
            result.micro_batch_size, -(result.throughput_per_s or 0.0))


def _deciding_rule(best: SettingEstimate, tied: Sequence[SettingEstimate], baseline: Optional[SettingEstimate]) -> str:
    """The first preference of recommend.tie_break=least_change that set `best` apart from the runner-up."""
    others = [r for r in tied if r.trial_key != best.trial_key]
    runner_up = min(others, key=lambda r: _least_change_key(r, baseline))
    mine, theirs = _least_change_key(best, baseline), _least_change_key(runner_up, baseline)
    return next((rule for rule, a, b in zip(_LEAST_CHANGE_RULES, mine, theirs) if a != b), "plan order")


def _tie_reason(best: SettingEstimate, tied: Sequence[SettingEstimate], rule: TieBreak,
                baseline: Optional[SettingEstimate] = None, *, goodput: bool = False) -> str:
    """Names the tie and what it may cost: how much slower the chosen setting may be than each it tied with."""
    costs = []
    for other in tied:
        if other.trial_key == best.trial_key:
            continue
        comparison = compare(best, other, goodput=goodput)
        if comparison.interval is not None and comparison.interval[0] < 1.0:
            costs.append(f"{(1.0 - comparison.interval[0]) * 100:.1f}% {'less goodput' if goodput else 'slower'} "
                         f"than {other.label}")
        elif comparison.interval is None:
            costs.append(f"unknown against {other.label} (one window)")
    why = ("the higher paired ratio to the baseline" if rule == TieBreak.fastest
           else f"least change: {_deciding_rule(best, tied, baseline)}")
    text = (f"the measurements cannot order {', '.join(r.label for r in tied)} (their ratios' 95% intervals hold "
            f"1); the tie goes to {best.label} ({why}, recommend.tie_break={rule.value})")
    return text + (f"; at worst it is {', '.join(costs)}" if costs else "")


def _contenders(finished: Sequence[SettingEstimate], *, args: RecommendArgs,
                contender_keys: Optional[Collection[str]], point_objective: bool) -> tuple[list[SettingEstimate], list[SettingEstimate], list[SettingEstimate], list[str]]:
    """(candidates, contenders, over the latency budget, reasons) by the one rule, decide/eligible.py: candidates
    may be chosen (finished, within memory and the latency budget); contenders are the candidates still in the race
    at its end, measured in as many windows as the best-measured of them."""
    reasons: list[str] = []
    candidates: list[SettingEstimate] = []
    over_budget: list[SettingEstimate] = []
    for r in finished:
        found = ineligibility(r, args)
        if found is None:
            candidates.append(r)
        elif found[0] == OVER_MEMORY:
            reasons.append(f"{r.label} is excluded: {found[1]}")
        elif found[0] == OVER_LATENCY:
            over_budget.append(r)
    reasons.extend(f"{r.label} is {over_latency_budget(r, args.max_batch_latency_ms)}" for r in over_budget)  # type: ignore
    if contender_keys is not None and not point_objective:
        # Settings the race dropped stay candidates (their figures stand), but they lost to the leader. (The race
        # compares throughput, or goodput with that objective: a point objective's winner may be a setting it
        # dropped, so those see every one.)
        contenders = [r for r in candidates if r.trial_key in contender_keys] or candidates
    else:
        contenders = candidates
    # One window says nothing about the next one: such a setting (say, one strategy=power let in last) cannot
    # be recommended over settings measured in several, however fast its one window was.
    several = [r for r in contenders if eligible(r, args, min_windows=2) is None]
    # The baseline alone in several windows (its repeats in a screening round cut short) is no field to choose from.
    if any(not r.is_baseline for r in several) and len(several) < len(contenders):
        once = ", ".join(r.label for r in contenders if r not in several)
        reasons.append(f"{once}: measured in one window only, which gives no interval, so not recommended over "
                       f"settings measured in several")
        contenders = several
    return candidates, contenders, over_budget, reasons


@dataclass(frozen=True)
class Pool:
    """What the verdict chooses from, by the one eligibility rule (decide/eligible.py)."""

    results: tuple[SettingEstimate, ...]
    """Every setting, with its statistical efficiency and goodput."""
    baseline: Optional[SettingEstimate]
    finished: tuple[SettingEstimate, ...]
    candidates: tuple[SettingEstimate, ...]
    """Finished and eligible: may be chosen."""
    contenders: tuple[SettingEstimate, ...]
    """Candidates still in the race at its end, measured in as many windows as the best-measured."""
    over_budget: tuple[SettingEstimate, ...]
    args: RecommendArgs
    unit: str

    @property
    def goodput(self) -> bool:
        return self.args.objective == Objective.goodput

    @property
    def point_objective(self) -> bool:
        return self.args.objective in (Objective.latency, Objective.energy)


def build_pool(results: Sequence[SettingEstimate], *, args: RecommendArgs,
               contender_keys: Optional[Collection[str]]) -> tuple[Pool, list[str]]:
    """The settings the verdict may choose from, and the reasons for those it may not."""
    finished = [r for r in results if r.ok and r.throughput_per_s is not None]
    failed = [r for r in results if not r.ok]
    reasons: list[str] = []
    if failed:
        listed = ", ".join(f"{r.label} ({r.status})" for r in failed)
        reasons.append(f"{len(failed)} of {count(len(results), 'setting')} did not finish cleanly and cannot be "
                       f"recommended: {listed}")
    point_objective = args.objective in (Objective.latency, Objective.energy)
    candidates, contenders, over_budget, excluded = _contenders(finished, args=args, contender_keys=contender_keys,
                                                                 point_objective=point_objective)
    pool = Pool(results=tuple(results), baseline=next((r for r in results if r.is_baseline), None),
                 finished=tuple(finished), candidates=tuple(candidates), contenders=tuple(contenders),
                 over_budget=tuple(over_budget), args=args, unit=sweep_unit(results))
    return pool, reasons + excluded


def pick_best(pool: Pool) -> tuple[Optional[SettingEstimate], list[SettingEstimate], list[str]]:
    """(best, the settings tied with it, reasons): the fastest contender (most goodput, or the best point figure
    with recommend.objective=latency/energy), ties broken by recommend.tie_break."""
    contenders, args = pool.contenders, pool.args
    fastest = max(contenders, key=ranking(pool.results), default=None)
    if pool.point_objective:
        best, why_none = _point_objective_best(contenders, args.objective)
        return best, [], [why_none] if why_none else []
    if pool.goodput and any(r.goodput_per_s is None for r in contenders):
        return None, [], []  # no efficiency: the gradient noise scale was not measured (noise_scale_reason says why)
    if fastest is None:
        return None, [], []
    if pool.goodput:
        fastest = max(contenders, key=ranking(pool.results, goodput=True))
    tied = [r for r in contenders if r.trial_key == fastest.trial_key
            or compare(r, fastest, goodput=pool.goodput).outcome in (Outcome.tie, Outcome.unknown)]
    best = _tie_break(tied, fastest=fastest, baseline=pool.baseline, rule=args.tie_break)
    reasons = [_tie_reason(best, tied, args.tie_break, pool.baseline, goodput=pool.goodput)] if len(tied) > 1 else []
    return best, tied, reasons


OBJECTIVE_FIGURE = {Objective.latency: "p99 latency per batch", Objective.energy: "energy per sample",
                     Objective.throughput: "throughput", Objective.goodput: "goodput"}
OBJECTIVE_BEST = {Objective.latency: "lowest p99 latency", Objective.energy: "least energy per sample",
                   Objective.throughput: "highest throughput", Objective.goodput: "most goodput"}


def objective_value(result: SettingEstimate, objective: Objective) -> Optional[float]:
    """The figure a point objective minimises: p99 latency (ms) or energy per sample (J); None if unmeasured."""
    if objective == Objective.latency:
        return result.latency.p99_ms if result.latency is not None else None
    if objective == Objective.energy:
        return result.energy_j_per_sample
    raise ValueError(f"{objective} is decided by comparison.compare, not by a point figure")


def _point_objective_best(contenders: Sequence[SettingEstimate],
                          objective: Objective) -> tuple[Optional[SettingEstimate], Optional[str]]:
    """The contender with the smallest figure (ties to the higher throughput), or None and why."""
    measured = [r for r in contenders if objective_value(r, objective) is not None]
    if not measured:
        notes = sorted({r.energy_note for r in contenders if r.energy_note}) if objective == Objective.energy else []
        return None, (f"{OBJECTIVE_FIGURE[objective]} was measured for no setting"
                      + (f": {'; '.join(notes)}" if notes else ""))
    best = min(measured, key=lambda r: (objective_value(r, objective), -(r.throughput_per_s or 0.0)))
    missing = [r.label for r in contenders if r not in measured]
    return best, (f"{OBJECTIVE_FIGURE[objective]} was not measured for {', '.join(missing)}" if missing else None)
