"""A fake machine for the whole pipeline (plan -> race -> estimates -> decision -> report) without hardware, like
hyperfine's mock executor: it serves as the race's host (decide/race.py) and yields WindowRecords whose rates have
planted true effects and noise shaped like our 2-core machines' (../shared/FACTS.md):

- a slow log-drift of the machine's speed in time order: AR(1) per window with lag-1 correlation 0.24 and a
  standard deviation chosen so that neighbouring windows' log ratio has a standard deviation of about 0.09 (the
  figure measured over 12 windows of one setting);
- bursts of other load: with a small chance per window a burst starts and slows every window for 2 to 5 windows by
  20% to 45%;
- noise within a window: each step's time varies by 2% around the window's mean, far below the between-window
  drift, so a window's own interval says little and the between-window one is the one that matters.

Calibrated on the six recorded sweeps in tests/fixtures/sweeps/ (a 2-core machine, other work beside it): each
window's log rate around its setting's mean, in time order, had a neighbouring-window standard deviation of 0.05 to
0.13 (median 0.09) and a lag-1 correlation of -0.4 to +0.6 (median about +0.2); the paired log ratio to the
baseline's window of the same round varied by 0.06 to 0.18, so pairing cancels little at this time scale.

Everything is seeded: the same seed gives the same windows, the same race and the same decision.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Optional

from trainer_tune.config.flags import flags_to_environ
from trainer_tune.decide.race import SCREEN_WINDOW_SHARE
from trainer_tune.measure.record import WindowRecord
from trainer_tune.measure.step_stats import StepTimeStats
from trainer_tune.plan import TrialSpec, window_of

SEQ_LEN = 128
LAG1 = 0.24
"""Correlation of neighbouring windows' log speed (FACTS.md)."""
NEIGHBOUR_LOG_SD = 0.09
"""Standard deviation of the log ratio of neighbouring windows (FACTS.md): sqrt(2 (1 - rho)) x sd."""


@dataclass
class FakeMachine:
    """The race's host over a simulated machine. `true_rate(spec)` is a setting's tokens/s on a quiet machine."""

    true_rate: Callable[[TrialSpec], float]
    seed: int
    world_size: int = 2
    window_s: float = 1.0
    """Measured time per window (window.measure_s's default): a window runs as many steps as fit, 4 to 200."""
    burst_chance: float = 0.04
    neighbour_log_sd: float = NEIGHBOUR_LOG_SD
    """How much neighbouring windows' log speed differs: 0.09 on a shared machine, about half that on a quiet one."""
    window_overhead_s: float = 0.5
    """Build and warm-up time per window, added to its wall time (what sweep.budget_s counts)."""
    build_s: float = 0.0
    """Extra time of a setting's first window of any kind (building its model; later windows reuse it); 0 keeps the
    calibrated sweeps as they were."""
    first_window_extra_s: float = 0.0
    """Extra time of a setting's first full window (comm split, noise steps); 0 keeps the calibrated sweeps as they
    were."""
    clock_s: float = 0.0
    windows: list[WindowRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"fake-machine/{self.seed}")
        self._log_sd = self.neighbour_log_sd / math.sqrt(2.0 * (1.0 - LAG1))
        self._drift = self._rng.gauss(0.0, self._log_sd)
        self._burst_left, self._burst_factor = 0, 1.0
        self._built: set[str] = set()

    def _speed(self) -> float:
        """The machine's speed factor for the next window: drift in time order times any burst."""
        innovation_sd = self._log_sd * math.sqrt(1.0 - LAG1 ** 2)
        self._drift = LAG1 * self._drift + self._rng.gauss(0.0, innovation_sd)
        if self._burst_left == 0 and self._rng.random() < self.burst_chance:
            self._burst_left, self._burst_factor = self._rng.randint(2, 5), 1.0 - self._rng.uniform(0.2, 0.45)
        factor = self._burst_factor if self._burst_left > 0 else 1.0
        self._burst_left = max(0, self._burst_left - 1)
        return math.exp(self._drift) * factor

    # --- decide.race.RaceHost ----------------------------------------------------------------------------
    def broadcast(self, value):  # noqa: ANN001, ANN201 - one process: every rank is this one
        return value

    def measure(self, spec: TrialSpec, *, round_id: str, attempts: int, first: bool,
                screening: bool = False) -> Optional[WindowRecord]:
        window = window_of(spec, round_id)
        tokens_per_step = spec.micro_batch_size * spec.grad_accum * self.world_size * SEQ_LEN
        step_s = tokens_per_step / (self.true_rate(spec) * self._speed())
        # A screening window is a quarter as long; its rate varies as much as a full one's, the noise being the machine's
        # between windows rather than the steps' within one (FACTS.md). A first full window adds the extras.
        window_s = self.window_s * SCREEN_WINDOW_SHARE if screening else self.window_s
        num_steps = min(200, max(4, round(window_s / step_s)))
        steps = tuple(step_s * (1.0 + self._rng.gauss(0.0, 0.02)) for _ in range(num_steps))
        measured_s = math.fsum(steps)
        tokens_per_s = tokens_per_step * len(steps) / measured_s
        overhead_s = (self.window_overhead_s + (self.first_window_extra_s if first else 0.0)
                      + (self.build_s if spec.key not in self._built else 0.0))
        self._built.add(spec.key)
        self.clock_s += measured_s + overhead_s
        record = WindowRecord(
            trial_key=window.key, setting_key=spec.key, round_id=round_id, index=spec.index, label=spec.label(),
            is_baseline=spec.is_baseline, status="ok", micro_batch_size=spec.micro_batch_size,
            grad_accum=spec.grad_accum, world_size=self.world_size,
            global_batch_size=spec.micro_batch_size * spec.grad_accum * self.world_size,
            tokens_per_step=float(tokens_per_step), flags=spec.flags, environment=flags_to_environ(spec.flags),
            tokens_per_s=tokens_per_s, samples_per_s=tokens_per_s / SEQ_LEN, measured_s=measured_s,
            step_time_s=StepTimeStats.of(steps), num_warmup_steps=2, num_measured_steps=len(steps), warmup_s=0.5,
            loss_first=5.5, loss_last=5.4, peak_memory_bytes=None, peak_memory_source=None,
            peak_memory_allocated_bytes=None, peak_memory_reserved_bytes=None, peak_memory_note="fake machine",
            num_parameters=1000, model="fake", device="cpu", backend="gloo", torch_version="fake",
            started_at=f"{self.clock_s - measured_s:012.3f}", finished_at=f"{self.clock_s:012.3f}",
            step_times_s=steps, wall_s=measured_s + overhead_s)
        self.windows.append(record)
        return record
