"""Screening a large space (decide/race.py): two short rounds in blocks that each hold a baseline window, then the
race's rule drops what is far behind, with the noise pooled over every setting. Known answers for the layout of a
screening round; the fake machine (tests/helpers/fake_machine.py) for what screening drops, counted over seeds."""

from __future__ import annotations

from collections import Counter

from omegaconf import OmegaConf

from helpers.fake_machine import FakeMachine
from trainer_tune.config.flags import TrialFlags
from trainer_tune.config.schema import TuneConfig
from trainer_tune.decide.race import SCREEN_BLOCK, run_race, screening_rounds, screening_slots
from trainer_tune.decide.verdict import NO_GO, decide_race
from trainer_tune.plan import build_plan

NUM_SEEDS = 12


def _config(*overrides: str) -> TuneConfig:
    merged = OmegaConf.merge(OmegaConf.structured(TuneConfig), OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def test_a_screening_round_cuts_the_settings_into_blocks_each_with_a_baseline_window() -> None:
    order = [f"s{i}" for i in range(20)]
    order.insert(7, "base")
    slots = screening_slots(order, baseline_key="base", round_id="r0", seed=3, round_index=0)
    assert len(slots) == 20 + 3  # three blocks (8, 8, 4 settings), a baseline window in each
    by_block: dict[str, list[str]] = {}
    for key, slot_id in slots:
        by_block.setdefault(slot_id, []).append(key)
    assert list(by_block) == ["r0.0", "r0.1", "r0.2"]
    assert [len(keys) for keys in by_block.values()] == [SCREEN_BLOCK + 1, SCREEN_BLOCK + 1, 5]
    assert all(keys.count("base") == 1 for keys in by_block.values())
    # Every other setting once, in the round's order.
    assert [key for key, _ in slots if key != "base"] == [key for key in order if key != "base"]
    assert slots == screening_slots(order, baseline_key="base", round_id="r0", seed=3, round_index=0)


def test_only_a_large_grid_raced_on_throughput_screens_by_default() -> None:
    grid = ["sweep.micro_batch_sizes=[1,2,3,4,5,6,7,8,9]", "sweep.grad_accums=[1,2]"]
    assert screening_rounds(_config(*grid), num_entering=18) == 2
    assert screening_rounds(_config(*grid), num_entering=16) == 0
    assert screening_rounds(_config(*grid, "sweep.screen=true"), num_entering=4) == 2
    assert screening_rounds(_config(*grid, "sweep.screen=false"), num_entering=18) == 0
    assert screening_rounds(_config(*grid, "sweep.strategy=power"), num_entering=18) == 0
    assert screening_rounds(_config(*grid, "recommend.objective=goodput"), num_entering=18) == 0
    assert screening_rounds(_config(*grid, "sweep.race=false"), num_entering=18) == 0


class _Recording(FakeMachine):
    """The fake machine, noting what the race asked of each window."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.asked: list[tuple[str, str, bool, bool]] = []

    def measure(self, spec, *, round_id, attempts, first, screening=False):  # noqa: ANN001, ANN201
        self.asked.append((spec.key, round_id, first, screening))
        return super().measure(spec, round_id=round_id, attempts=attempts, first=first, screening=screening)


def _large_sweep(seed: int):  # noqa: ANN202
    """32 settings: micro-batch 1..16 x accumulation 1, 2; 16x2 truly +50% over the baseline 2x1, the settings below
    micro-batch 8 at half the baseline's speed, the rest equal to it."""
    sizes = ",".join(str(m) for m in range(1, 17))
    cfg = _config(f"sweep.micro_batch_sizes=[{sizes}]", "sweep.grad_accums=[1,2]", "sweep.budget_s=120",
                  f"sweep.seed={seed}")
    plan = build_plan(cfg, world_size=2, base_flags=TrialFlags(), device_type="cpu")

    def truth(spec) -> float:  # noqa: ANN001
        if (spec.micro_batch_size, spec.grad_accum) == (16, 2):
            return 1.5
        return 1.0 if spec.is_baseline or spec.micro_batch_size >= 8 else 0.5

    machine = _Recording(true_rate=lambda spec: 20_000.0 * truth(spec), seed=seed)
    race = run_race(machine, cfg, plan, done={}, attempts={}, prefix="", swept=())
    return cfg, plan, machine, race


def test_screening_drops_what_is_far_behind_and_never_the_best() -> None:
    screened, best_dropped, no_go = Counter(), 0, 0
    for seed in range(NUM_SEEDS):
        cfg, plan, machine, race = _large_sweep(seed)
        assert race.summary.screening_rounds == 2
        assert race.budget.num_looks == cfg.sweep.max_rounds - cfg.sweep.min_rounds + 3  # each screening round a look
        best = next(s for s in plan if (s.micro_batch_size, s.grad_accum) == (16, 2))
        best_dropped += any(d.trial_key == best.key for d in race.summary.drops)
        slow = {s.key for s in plan if s.micro_batch_size < 8 and not s.is_baseline}
        screened[seed] = sum(d.reason.startswith("screened out after") and d.trial_key in slow
                             for d in race.summary.drops)
        no_go += decide_race(race, cfg).decision == NO_GO
        # Screening windows are short and carry no extras; each survivor's first full window carries them, once.
        firsts = Counter(key for key, _, first, _ in machine.asked if first)
        assert all(not first for _, rid, first, screening in machine.asked if screening)
        assert all(rid.startswith(("r0.", "r1.")) for _, rid, _, screening in machine.asked if screening)
        assert set(firsts.values()) <= {1}
        full = {key for key, _, _, screening in machine.asked if not screening}
        assert set(firsts) == full
    assert best_dropped == 0
    assert no_go == 0  # a setting truly +50% is never called "do not change"
    # The slow half (13 settings at 0.5x) mostly leaves after screening: a drop needs ~26% behind the leader at
    # the corrected level with 2 windows each, and these are 67% behind the best.
    assert sum(screened.values()) >= 0.8 * 13 * NUM_SEEDS, screened


def test_the_next_round_is_estimated_without_the_builds_of_first_windows() -> None:
    from types import SimpleNamespace

    from trainer_tune.decide.race import next_round_estimate_s

    built = SimpleNamespace(wall_s=1.5, measured_s=0.5)  # a setting's first window: build + warm-up + measuring
    kept = SimpleNamespace(wall_s=0.8, measured_s=0.5)  # the baseline's repeat: its model was kept
    last = [(built, True), (built, True), (kept, False)]
    # 0.5 s measured + 0.3 s overhead of a kept window, per window; the last round took 3.8 s for 3 windows.
    assert abs(next_round_estimate_s(last, num_windows=4) - 3.2) < 1e-9
    # Screening windows (half length) giving way to full ones: twice the measured time.
    assert abs(next_round_estimate_s(last, num_windows=4, lengthen=2.0) - 5.2) < 1e-9
    # Without a kept window to learn from, every window's overhead counts (a round of first windows only).
    assert abs(next_round_estimate_s([(built, True)], num_windows=2) - 3.0) < 1e-9
    assert next_round_estimate_s([], num_windows=2) is None
