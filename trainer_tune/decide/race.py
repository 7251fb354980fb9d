"""Rounds and the race: which settings are measured in which round, and which stop being measured.

A sweep measures every candidate in several short windows spread over the whole sweep, in rounds. Each
round measures every setting still in the race plus the baseline, in an order shuffled per round (seeded,
so a resumed sweep repeats it): slow drift of the machine's speed then hits every setting alike, and the
baseline's window in the same round is the pair each setting's ratio is taken against (comparison.compare).

After each round from sweep.min_rounds on, a setting clearly behind the leader by that one comparison rule
leaves the race (F-Race, Birattari et al. 2002; successive halving drops by rank instead); a setting that may
never be chosen (decide/eligible.py: over the p99 budget, over memory) leaves it first, once it has
sweep.min_rounds windows.
The race ends when one setting is left ahead of all others (separated), at `sweep.max_rounds`, or when the
next round would overrun `sweep.budget_s`; the baseline is measured in every round regardless, as the
reference.

Large spaces are screened first (`screening_rounds`; sweep.screen): the first SCREEN_ROUNDS rounds measure every
setting in a short window without the extras of a setting's first full window (comm split, noise steps), in blocks
of SCREEN_BLOCK settings that each hold a window of the baseline (round ids `r0.0`, `r0.1`, ...: a setting pairs
with the baseline window measured near it in time, and the baseline's repeats say how the machine moved during a
long round). After each, the race's rule drops the settings behind the leader at the corrected level: after the
first, one window each against the noise of the baseline's repeats (only what is very far behind leaves, but a
budget too small for a second screening round still learns something); after the second, with the noise pooled
over every setting (two windows each, evidence/stats.py). Each screening round is a look of the error budget
(decide/sequential.error_budget). The same rule then goes on in full rounds from sweep.min_rounds.

`run_race` drives the rounds for any RaceHost: the live sweep measures each window (run/sweep.py), a replay reads
them from a journal (decide/__main__.py). Every choice in it is a pure function of what every rank holds; the host
still broadcasts rank 0's answers.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence, TypeVar

from trainer_tune.config.schema import Objective, Strategy, TuneConfig
from trainer_tune.decide.eligible import eligible
from trainer_tune.decide.pool import build_pool, pick_best, with_sweep_goodput
from trainer_tune.decide.sequential import GO, NO_GO, ErrorBudget, error_budget, weigh
from trainer_tune.decide.strategy import NotMeasured, first_entrants, power_gate
from trainer_tune.evidence.comparison import Outcome, behind, compare, ranking
from trainer_tune.evidence.memory_fit import MemoryLimit, fit_memory, predicted_not_to_fit
from trainer_tune.evidence.noise_scale import sweep_noise_scale, with_goodput
from trainer_tune.evidence.estimate import SettingEstimate, aggregate_windows, sweep_noise
from trainer_tune.measure.record import WindowRecord
from trainer_tune.plan import TrialSpec, window_of
from trainer_tune.platform.units import count


class Raced(Protocol):
    """What the race needs to know of a setting: a result aggregated over its windows so far."""

    trial_key: str
    label: str
    throughput_per_s: Optional[float]


R = TypeVar("R", bound=Raced)
T = TypeVar("T")


def round_id(round_index: int, *, prefix: str = "") -> str:
    """The name pairing windows of one round: `r3`, or `job2/r3` for a multirun job's own rounds."""
    return f"{prefix}r{round_index}"


def round_order(keys: Sequence[str], *, round_index: int, seed: int) -> list[str]:
    """The settings of one round in a shuffled order, the same on every rank and on every resume."""
    ordered = sorted(keys)  # independent of the caller's order: only the set and the seed matter
    random.Random(f"trainer_tune/round/{seed}/{round_index}").shuffle(ordered)
    return ordered


SCREEN_ABOVE = 16
"""sweep.screen=null screens a race that more settings than this enter in its first round."""
SCREEN_ROUNDS = 2
"""Short rounds before the screening drops: two windows per setting give every setting a difference of its own, so
the noise pooled over 32 settings has 32 degrees of freedom where one window each would leave only the baseline's
repeats (FACTS.md: the window-to-window noise is much the same for every setting)."""
SCREEN_BLOCK = 8
"""Settings per block of a screening round; each block holds a window of the baseline too."""
SCREEN_WINDOW_SHARE = 0.25
"""A screening window measures this share of window.measure_s (window.measure_steps at least): two screening
rounds of 32 settings then fit in about 50 s on a 2-core machine, where half-length windows took 68 s. The noise
that matters is the machine's between windows (FACTS.md), which a shorter window hardly adds to."""


def screening_rounds(cfg: TuneConfig, *, num_entering: int) -> int:
    """How many of the first rounds screen (0: none): sweep.screen, or with null when more than SCREEN_ABOVE settings
    enter the first round. Only a grid raced on throughput without a latency budget screens: screening drops on
    throughput alone, before a setting has the windows that say whether it breaks a limit."""
    sweep, recommend = cfg.sweep, cfg.recommend
    allowed = (sweep.race and sweep.strategy == Strategy.grid and recommend.objective == Objective.throughput
               and recommend.max_batch_latency_ms is None)
    wanted = sweep.screen if sweep.screen is not None else num_entering > SCREEN_ABOVE
    return min(SCREEN_ROUNDS, sweep.max_rounds) if allowed and wanted else 0


def screening_slots(order: Sequence[str], *, baseline_key: str, round_id: str, seed: int,
                    round_index: int) -> list[tuple[str, str]]:
    """(setting key, window round id) of a screening round: the settings in `order` cut into blocks of SCREEN_BLOCK,
    each block with its own window of the baseline at a seeded place in it, named `{round_id}.{block}`."""
    others = [key for key in order if key != baseline_key]
    slots: list[tuple[str, str]] = []
    rng = random.Random(f"trainer_tune/screen/{seed}/{round_index}")
    for start in range(0, max(1, len(others)), SCREEN_BLOCK):
        block = others[start:start + SCREEN_BLOCK]
        if baseline_key in order:
            block.insert(rng.randint(0, len(block)), baseline_key)
        slots += [(key, f"{round_id}.{start // SCREEN_BLOCK}") for key in block]
    return slots


RESUMED_MARK = "~"
"""Joins a round id and the count of process lifetimes it was resumed in: `r3~1` holds the windows of round 3 that a
resumed sweep measured after the group died part-way through it."""


def lifetime_slots(slots: Sequence[tuple[str, str]], *, is_done: Callable[[str, str], bool],
                   baseline_key: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(setting key, window round id, the ids it moved from) of a round, such that no round pairs windows of two
    process lifetimes (docs/measurement.md, "Resuming").

    The journal's windows (`is_done(key, round id)`) were measured before this process started. A round that has
    some of its windows there and not others was cut short when the group died: the windows already measured
    stay in it, and the rest are measured now under the next id (`r3~1`) with a window of the baseline of their
    own, so each of them pairs with a baseline measured in the same lifetime. The same rule applies to `r3~1` when
    that is cut short too. The result is the same for a sweep and its replay (decide/__main__.py)."""
    groups: dict[str, list[str]] = {}
    for key, slot_id in slots:
        groups.setdefault(slot_id, []).append(key)
    placed: list[tuple[str, str, tuple[str, ...]]] = []
    for slot_id, keys in groups.items():
        moved_from: tuple[str, ...] = ()
        while True:
            done = [key for key in keys if is_done(key, slot_id)]
            missing = [key for key in keys if not is_done(key, slot_id)]
            placed += [(key, slot_id, moved_from) for key in done]
            if not done or not missing:
                placed += [(key, slot_id, moved_from) for key in missing]
                break
            moved_from += (slot_id,)
            head, mark, count = slot_id.rpartition(RESUMED_MARK)
            slot_id = f"{head}{mark}{int(count) + 1}" if mark and count.isdigit() else f"{slot_id}{RESUMED_MARK}1"
            keys = ([baseline_key] if baseline_key in keys and baseline_key not in missing else []) + missing
    return placed


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
               rate: Callable[[R], Optional[float]] = _throughput,
               rank: Optional[Callable[[R], float]] = None) -> list[Drop]:
    """The contenders clearly behind the leader (the first by `rank`, comparison.ranking: the paired ratio to the
    baseline; without it the highest `rate`: throughput, or goodput with recommend.objective=goodput): `behind(c,
    leader)` returns why c loses to the leader beyond noise, or None while the comparison cannot tell them apart.
    Contenders without a rate neither lead nor leave."""
    measured = [c for c in contenders if rate(c) is not None]
    if len(measured) < 2:
        return []
    leader = max(measured, key=rank or rate)  # type: ignore[arg-type]
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
    """The contenders whose figures break a hard limit of the decision (recommend.max_batch_latency_ms):
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
              elapsed_s: float, budget_s: Optional[float], next_round_s: Optional[float],
              stop_when_one_left: bool = True) -> Optional[str]:
    """Why no further round is measured, or None to measure round `round_index` (0-based).

    `budget_s` bounds all measuring, the first rounds included: no round starts that would end past it, by the
    estimate `next_round_s` (next_round_estimate_s; a sweep stopped so answers INCONCLUSIVE unless the evidence
    decided). Otherwise
    at least `min_rounds` rounds run; after that the race stops at `max_rounds`, or once one setting is left when
    `stop_when_one_left` (a point objective, which has no evidence rule: with throughput or goodput the evidence
    decides when to stop, see run_race)."""
    if budget_s is not None and next_round_s is not None and elapsed_s + next_round_s > budget_s:
        return (f"sweep.budget_s={budget_s:g}: {elapsed_s:.1f} s spent and another round takes about "
                f"{next_round_s:.1f} s; {count(len(alive), 'setting')} still in the race")
    if round_index < min_rounds:
        return None
    if len(alive) <= 1 and stop_when_one_left:
        return f"one setting left after {count(round_index, 'round')}: the race is decided"
    if round_index >= max_rounds:
        return f"sweep.max_rounds={max_rounds} reached with {count(len(alive), 'setting')} still in the race"
    return None


def next_round_estimate_s(last_round: Sequence[tuple[WindowRecord, bool]], *, num_windows: int,
                          lengthen: float = 1.0) -> Optional[float]:
    """About how long a round of `num_windows` windows takes, from the last round's (window, was it its setting's
    first) pairs: each window's mean measured time (times `lengthen` when short screening windows give way to full
    ones) plus the median overhead of a window whose setting had been measured before. A setting's first window
    also builds its model (1.2 s a window on a 2-core machine against 0.3 s for a kept one), which the next round
    does not repeat: the last round's own duration would overstate it several times after the first round."""
    if not last_round:
        return None
    spent = [((w.wall_s or 0.0) - (w.measured_s or 0.0), first) for w, first in last_round]
    again = [overhead for overhead, first in spent if not first]
    overhead_s = statistics.median(again or [overhead for overhead, _ in spent])
    measured_s = statistics.fmean(w.measured_s or 0.0 for w, _ in last_round) * lengthen
    return num_windows * (measured_s + max(0.0, overhead_s))


def _num_windows(members: Sequence[str], *, baseline_key: str, screening: bool) -> int:
    """Windows in a round of `members`: one each, plus the baseline's repeats when it screens (screening_slots)."""
    if not screening or baseline_key not in members:
        return len(members)
    others = len(members) - 1
    return others + max(1, -(-others // SCREEN_BLOCK))


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
    screening_rounds: int = 0
    """How many of the first rounds were short screening rounds (0: no screening)."""

    def to_json_dict(self) -> dict[str, object]:
        return {"num_rounds": self.num_rounds, "end_reason": self.end_reason,
                "screening_rounds": self.screening_rounds,
                "drops": [{"label": d.label, "after_round": d.after_round, "reason": d.reason} for d in self.drops],
                "contenders": list(self.contenders)}


class RaceHost(Protocol):
    """Where the race's windows come from: the live sweep (run/sweep.py) measures and journals each window and
    broadcasts rank 0's answers; a replay (decide/__main__.py) reads the windows from a journal; a test's fake
    machine (tests/helpers/fake_machine.py) draws them."""

    def broadcast(self, value: T) -> T:
        """Rank 0's value, on every rank."""

    def measure(self, spec: TrialSpec, *, round_id: str, attempts: int, first: bool,
                screening: bool = False) -> Optional[WindowRecord]:
        """One window of `spec` in `round_id`, recorded; None when it cannot be had (the replay's journal ends).
        `first`: the setting's first full window, which also measures the extras (comm split, noise steps);
        `screening`: a short screening window (SCREEN_WINDOW_SHARE of window.measure_s, no extras)."""


class RaceObserver(Protocol):
    """Who watches the race go (the live sweep's console and its pool of kept trainers); optional."""

    def round_started(self, *, round_index: int, num_windows: int) -> None: ...

    def window_finished(self, result: WindowRecord, *, round_index: int) -> None: ...

    def dropped(self, drop: Drop) -> None: ...

    def release(self, setting_key: str) -> None:
        """The setting left the race: whatever was kept for its next window can go."""


@dataclass(frozen=True)
class RaceResult:
    settings: dict[str, SettingEstimate]
    """Each setting that entered the race, aggregated over its windows, by setting key."""
    not_measured: list[NotMeasured]
    summary: RaceSummary
    num_windows_measured: int
    budget: ErrorBudget
    """The error budget the race spent its looks from; the verdict on its settings uses the same one."""


def run_race(host: RaceHost, cfg: TuneConfig, plan: list[TrialSpec], *, done: dict[str, WindowRecord],
             attempts: dict[str, int], prefix: str, swept: tuple[str, ...],
             limit: Optional[MemoryLimit] = None, observer: Optional[RaceObserver] = None,
             not_built: Sequence[NotMeasured] = ()) -> RaceResult:
    """Measure rounds until the race is decided, sweep.max_rounds or sweep.budget_s (see decide/race.py).

    Every decision that changes what is measured next (which settings enter, which leave, whether another
    round starts) is rank 0's, broadcast: the inputs are the same on every rank, but the budget reads a
    clock, and a choice one rank made alone would leave the others waiting in the next window's collectives.
    Windows found in the journal are taken as measured, so a resumed sweep replays the same rounds and
    continues where the group died, losing no measured window."""
    by_key = {spec.key: spec for spec in plan}
    baseline = plan[0]
    windows: dict[str, list[WindowRecord]] = {}
    entered: list[TrialSpec] = []
    contenders: set[str] = set()
    failed: set[str] = set()
    drops: list[Drop] = []
    not_measured: list[NotMeasured] = list(not_built)  # planned, never built: predicted over the memory limit
    num_measured = 0
    elapsed_s = 0.0
    last_round: list[tuple[WindowRecord, bool]] = []  # the last round's windows, each with "its setting's first?"
    last_screened = False
    end_reason = ""
    settings: dict[str, SettingEstimate] = {}

    def enter(specs: Sequence[TrialSpec]) -> None:
        for spec in specs:
            if spec.key not in {s.key for s in entered}:
                entered.append(spec)
                contenders.add(spec.key)

    enter(first_entrants(plan, cfg.sweep))
    screen_rounds = screening_rounds(cfg, num_entering=len(entered))
    budget = error_budget(num_planned=len(plan), sweep=cfg.sweep, screening_looks=screen_rounds)
    full: set[str] = set()  # settings with a full window: their first one measured the extras
    on_evidence = cfg.sweep.race and cfg.recommend.objective in (Objective.throughput, Objective.goodput)
    round_index = 0
    while True:
        members = sorted(contenders | ({baseline.key} if baseline.key not in failed else set()))
        screening = round_index < screen_rounds
        estimate_s = next_round_estimate_s(
            last_round, num_windows=_num_windows(members, baseline_key=baseline.key, screening=screening),
            lengthen=1.0 / SCREEN_WINDOW_SHARE if last_screened and not screening else 1.0)
        over = host.broadcast(race_over(
            alive=sorted(contenders), round_index=round_index, min_rounds=cfg.sweep.min_rounds,
            max_rounds=cfg.sweep.max_rounds, elapsed_s=elapsed_s, budget_s=cfg.sweep.budget_s,
            next_round_s=estimate_s, stop_when_one_left=not on_evidence))
        if over is not None or not members:
            end_reason = over or "every setting failed"
            break
        rid = round_id(round_index, prefix=prefix)
        order = round_order(members, round_index=round_index, seed=cfg.sweep.seed)
        slots = lifetime_slots(
            screening_slots(order, baseline_key=baseline.key, round_id=rid, seed=cfg.sweep.seed,
                            round_index=round_index) if screening else [(key, rid) for key in order],
            is_done=lambda key, slot_id: window_of(by_key[key], slot_id).key in done, baseline_key=baseline.key)
        if observer is not None:
            observer.round_started(round_index=round_index, num_windows=len(slots))
        round_s = 0.0
        this_round: list[tuple[WindowRecord, bool]] = []
        missing: Optional[str] = None
        for key, slot_id, moved_from in slots:
            if key in failed:  # the baseline's repeat in a later block of a screening round, after it failed
                continue
            spec = by_key[key]
            wkey = window_of(spec, slot_id).key
            if wkey in done:
                result = done[wkey]
            else:
                # A window moved to a resumed id keeps the attempts made under its earlier ids.
                tries = max(attempts.get(window_of(spec, sid).key, 0) for sid in (*moved_from, slot_id))
                measured = host.measure(spec, round_id=slot_id, attempts=tries,
                                        first=not screening and key not in full, screening=screening)
                if measured is None:  # a replay of a journal that ends here (decide/__main__.py)
                    missing = f"the journal has no window of {spec.label(swept_flags=swept)} in round {slot_id}"
                    break
                result = measured
                num_measured += 1
            if not screening:
                full.add(key)
            round_s += result.wall_s or 0.0
            this_round.append((result, not windows.get(key)))
            windows.setdefault(key, []).append(result)
            if observer is not None:
                observer.window_finished(result, round_index=round_index)
            if not result.ok:
                failed.add(key)
                contenders.discard(key)
        elapsed_s += round_s
        last_round, last_screened = this_round, screening
        noise = sweep_noise(windows)
        settings = {key: aggregate_windows(found, noise=noise) for key, found in windows.items()}
        if missing is not None:
            end_reason = f"{missing}: decided on the windows measured before it"
            break
        round_index += 1
        # Rank 0 decides who leaves and who enters; every rank applies the same answer.
        new_drops, entering, closed = host.broadcast(
            after_round(cfg, plan, settings=settings, contenders=contenders, entered=entered,
                         rounds_done=round_index, swept=swept, limit=limit, budget=budget,
                         screen_rounds=screen_rounds))
        for drop in new_drops:
            contenders.discard(drop.trial_key)
            if observer is not None:
                if drop.trial_key != baseline.key:  # the baseline is measured in every round regardless
                    observer.release(drop.trial_key)
                observer.dropped(drop)
            drops.append(drop)
        enter([by_key[key] for key in entering])
        # The strategy's view of what will never enter, as of this round (more windows can change a verdict).
        not_measured = [*not_built, *closed]
        # The evidence may stop the race only once the strategy can let nobody else in (strategy=power: every
        # chain has stopped or reached its end): a GO over the settings measured so far says nothing of the larger
        # micro-batches a chain would still try.
        closed_labels = {n.label for n in closed}
        waiting = [s for s in plan if s.key not in {e.key for e in entered}
                   and s.label(swept_flags=swept) not in closed_labels]
        if on_evidence and round_index >= cfg.sweep.min_rounds and not waiting:
            said = host.broadcast(evidence_says(cfg, settings, contenders=contenders, baseline_key=baseline.key,
                                                budget=budget))
            if said is not None:
                end_reason = f"after {count(round_index, 'round')} the evidence decided: {said}"
                break
    # Settings the strategy never let in (power: the chain stopped, or the race ended first).
    entered_keys = {s.key for s in entered}
    for spec in plan:
        label = spec.label(swept_flags=swept)
        if spec.key not in entered_keys and label not in {n.label for n in not_measured}:
            not_measured.append(NotMeasured(label=label, reason=f"the race ended first ({end_reason})"))
    still = sorted(k for k in contenders if k in settings)
    summary = RaceSummary(num_rounds=round_index, end_reason=end_reason, drops=tuple(drops),
                          contenders=tuple(settings[k].label for k in still),
                          contender_keys=tuple(still), screening_rounds=min(screen_rounds, round_index))
    return RaceResult(settings=settings, not_measured=not_measured, summary=summary,
                      num_windows_measured=num_measured, budget=budget)


def after_round(cfg: TuneConfig, plan: list[TrialSpec], *, settings: dict[str, SettingEstimate], contenders: set[str],
                 entered: list[TrialSpec], rounds_done: int, swept: tuple[str, ...],
                 limit: Optional[MemoryLimit] = None, budget: Optional[ErrorBudget] = None,
                 screen_rounds: int = 0) -> tuple[list[Drop], list[str], list[NotMeasured]]:
    """(settings that leave the race, settings that enter it next round, settings that never will).

    `budget`: the race's error budget (by default the sweep's without screening); `screen_rounds`: the first rounds
    that screened (decide/race.py), after which the first drops come.
    strategy=power: a setting the memory fit of its series (memory_fit.py, against `limit`) puts over the limit
    never enters, whether its chain would let it in now or later; the prediction is the reason."""
    drops: list[Drop] = []
    racing = [settings[k] for k in sorted(contenders) if k in settings and settings[k].ok]
    # Screening drops after each short round: after the first, each setting has one window, compared unpaired with
    # the noise of the baseline's repeats (evidence/stats.py), so only what is very far behind leaves; after the
    # second, with the noise pooled over every setting.
    screened_now = 0 < rounds_done <= screen_rounds
    if cfg.sweep.race:
        # A setting that may never be chosen (decide/eligible.py: over the p99 budget or over memory) in its first
        # sweep.min_rounds windows (a setting strategy=power let in late has its own; a screened one its screening
        # windows) leaves first: its figures stand, and the decision names why. Fewer batches tend to under-read a
        # p99, not over-read it.
        needed = rounds_done if screened_now else cfg.sweep.min_rounds
        measured = [r for r in racing if r.num_windows >= needed]
        drops = limit_drops(measured, after_round=rounds_done, over_limit=lambda r: eligible(r, cfg.recommend))
        racing = [r for r in racing if r.trial_key not in {d.trial_key for d in drops}]
    # No setting leaves before sweep.min_rounds: an interval from two windows rests on one difference of two
    # numbers, and a race that tests after every round gets many chances to drop a setting by bad luck. The race
    # compares throughput (goodput with that objective): with recommend.objective=latency or energy it would drop
    # the very settings those pick.
    # A drop is a test of the setting against the leader, itself picked as the maximum, after every round: at the
    # level that corrects for every setting and every look (decide/sequential.py), so the true best is rarely
    # dropped by bad luck (successive elimination with simultaneous intervals).
    level = (budget or error_budget(num_planned=len(plan), sweep=cfg.sweep)).pick_confidence
    if cfg.sweep.race and cfg.recommend.objective in (Objective.throughput, Objective.goodput) and \
            (screened_now or rounds_done >= max(2, cfg.sweep.min_rounds)):
        if cfg.recommend.objective == Objective.goodput:
            # Raced on goodput, with the sweep's B_noise so far (against the baseline's batch, whether or not it
            # still races): a smaller batch slower in throughput may lead. Without a noise scale yet, nobody has
            # goodput and nobody leaves.
            everyone = list(settings.values())
            with_rates = {r.trial_key: r for r in with_goodput(everyone, sweep_noise_scale(everyone)[0])}
            drops += race_drops([with_rates[r.trial_key] for r in racing], after_round=rounds_done,
                                rate=lambda r: r.goodput_per_s, rank=ranking(list(with_rates.values()), goodput=True),
                                behind=lambda c, leader: behind(c, leader, goodput=True, confidence=level))
        else:
            found = race_drops(racing, after_round=rounds_done, rank=ranking(list(settings.values())),
                               behind=lambda c, leader: behind(c, leader, confidence=level))
            if screened_now:
                found = [dataclasses.replace(d, reason=f"screened out after {count(rounds_done, 'short round')}: "
                                                       f"{d.reason}") for d in found]
            drops += found
    entering: list[str] = []
    closed: list[NotMeasured] = []
    if cfg.sweep.strategy == Strategy.power:
        entered_keys = {s.key for s in entered}

        def faster(a: SettingEstimate, b: SettingEstimate) -> Optional[bool]:
            if min(len(a.window_throughput_per_s), len(b.window_throughput_per_s)) < cfg.sweep.min_rounds:
                return None
            return compare(a, b).outcome == Outcome.better

        fits = fit_memory(list(settings.values()), limit=limit)
        for spec in plan:
            if spec.key in entered_keys:
                continue
            gate = power_gate(spec, plan=plan, settings=settings, sweep=cfg.sweep, faster=faster,
                              recommend=cfg.recommend)
            too_big = predicted_not_to_fit(spec.micro_batch_size, spec.flags.as_dict(), fits) \
                if gate.reason is None else None
            if too_big is not None:
                closed.append(NotMeasured(label=spec.label(swept_flags=swept), reason=too_big))
            elif gate.enter:
                entering.append(spec.key)
            elif gate.reason is not None:
                closed.append(NotMeasured(label=spec.label(swept_flags=swept), reason=gate.reason))
    return drops, entering, closed


def evidence_says(cfg: TuneConfig, settings: dict[str, SettingEstimate], *, contenders: set[str], baseline_key: str,
                  budget: ErrorBudget) -> Optional[str]:
    """GO or NO-GO (with why) when the evidence so far decides, else None: measure another round. The verdict's own
    pool, leader and rule (decide/pool.py, decide/sequential.weigh), on the settings still racing."""
    results, _, _ = with_sweep_goodput(list(settings.values()))
    pool, _ = build_pool(results, args=cfg.recommend, contender_keys=contenders)
    leader, _, _ = pick_best(pool)
    baseline = pool.baseline
    if leader is None or baseline is None or baseline.trial_key != baseline_key or baseline not in pool.candidates:
        return None
    if len(baseline.rates_by_round()) < 2 or (pool.goodput and any(c.goodput_per_s is None for c in pool.candidates)):
        return None
    verdict = weigh(leader, baseline, candidates=pool.candidates, contenders=pool.contenders, args=cfg.recommend,
                    budget=budget, goodput=pool.goodput)
    if verdict.decision not in (GO, NO_GO):
        return None
    return f"{verdict.decision} for {leader.label} ({verdict.reason})"
