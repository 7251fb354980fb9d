"""The stall watchdog: every rank dumps its Python stacks when its training step stops making progress.

The training loop calls `beat(step, micro_step)` on every micro-step. A daemon thread polls the time since
the last beat; past the stall threshold it writes a header and every thread's stack to
`stacks/trial-<index>-rank-<rank>.txt`, logs a `watchdog_dump` event, and repeats every
`dump_interval_s` while the stall lasts. After `abort_after_s` it calls the abort callback (which records
the trial durably) and ends the process with `EXIT_STALLED`, so torchrun can restart the group and the
sweep can resume. When a peer has already posted a failure for the trial (say it ran out of memory before
a gradient all-reduce this rank waits in), the abort comes at the stall threshold instead.

Ranks blocked in a collective behind a stuck rank stop beating too, so every rank of a hung group dumps.

Two mechanisms cover the two ways a process can hang:
- the Python thread above, which needs the GIL (held by nobody while the main thread waits in a gloo or
  NCCL collective, a sleep, or most torch kernels);
- `faulthandler.dump_traceback_later`, a C-level timer that walks the frames without the GIL, for a main
  thread stuck in C code that holds it. The Python thread re-arms that timer on every poll, so it only
  fires when the Python thread itself cannot run. Only one such timer exists per process.

`faulthandler.register(SIGTERM, chain=True)` also dumps the stacks when torchrun terminates a surviving
worker after another one failed.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional

from trainer_tune.config.schema import WatchdogArgs
from trainer_tune.measure.record import utc_now

log = logging.getLogger(__name__)

EXIT_STALLED = 4
"""A step made no progress for watchdog.abort_after_s; the trial is recorded and the process ends."""

_POLL_S = 0.25


@dataclass(frozen=True)
class Stall:
    """What the watchdog knows about a stall when it acts."""

    trial_index: int
    step: int
    micro_step: int
    stalled_s: float
    threshold_s: float

    def describe(self) -> str:
        return (f"trial {self.trial_index} step {self.step} micro-step {self.micro_step} not complete after "
                f"{self.stalled_s:.1f} s (threshold {self.threshold_s:.1f} s)")


class StallTracker:
    """The watchdog's decisions as pure logic over an injectable clock, so tests need not wait."""

    def __init__(self, args: WatchdogArgs, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.args = args
        self.clock = clock
        self.trial_index: Optional[int] = None
        self.step = self.micro_step = 0
        self.last_beat_s = clock()
        self._intervals_s: list[float] = []
        self._last_dump_s: Optional[float] = None
        self._aborted = False

    def begin_trial(self, trial_index: int) -> None:
        self.trial_index, self.step, self.micro_step = trial_index, 0, 0
        self.last_beat_s = self.clock()
        self._last_dump_s = None

    def end_trial(self) -> None:
        self.trial_index = None

    def beat(self, step: int, micro_step: int) -> None:
        now = self.clock()
        if self.trial_index is not None and (step, micro_step) != (0, 0):
            self._intervals_s.append(now - self.last_beat_s)
            del self._intervals_s[:-256]  # recent history is what predicts the next micro-step
        self.step, self.micro_step, self.last_beat_s = step, micro_step, now
        self._last_dump_s = None

    def threshold_s(self) -> float:
        if self.args.stall_s is not None:
            return self.args.stall_s
        typical_s = statistics.median(self._intervals_s) if self._intervals_s else 0.0
        return self.args.floor_s + self.args.step_multiple * typical_s

    def poll(self) -> tuple[str, Optional[Stall]]:
        """("ok" | "dump" | "abort", the stall)."""
        if self.trial_index is None or self._aborted:
            return "ok", None
        now = self.clock()
        stalled_s, threshold_s = now - self.last_beat_s, self.threshold_s()
        if stalled_s < threshold_s:
            return "ok", None
        stall = Stall(trial_index=self.trial_index, step=self.step, micro_step=self.micro_step,
                      stalled_s=stalled_s, threshold_s=threshold_s)
        if stalled_s >= max(self.args.abort_after_s, threshold_s):
            self._aborted = True
            return "abort", stall
        if self._last_dump_s is None or now - self._last_dump_s >= self.args.dump_interval_s:
            self._last_dump_s = now
            return "dump", stall
        return "ok", None


class Watchdog:
    """The thread around a StallTracker, writing stack files for one rank."""

    def __init__(self, args: WatchdogArgs, *, rank: int, hostname: str, stacks_dir: Path,
                 on_abort: Callable[[Stall], None], peer_failed: Callable[[], bool] = lambda: False) -> None:
        self.tracker = StallTracker(args)
        self.peer_failed = peer_failed
        self.rank, self.hostname = rank, hostname
        self.stacks_dir = stacks_dir
        self.on_abort = on_abort
        self._file: Optional[IO[str]] = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer_tune-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self.stacks_dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stack_path(self, trial_index: int) -> Path:
        return self.stacks_dir / f"trial-{trial_index}-rank-{self.rank}.txt"

    def begin_trial(self, trial_index: int) -> None:
        with self._lock:
            self._close_file()
            # Opened up front: faulthandler writes to a file descriptor, and must never find it closed.
            self._file = open(self.stack_path(trial_index), "a")
            faulthandler.register(signal.SIGTERM, file=self._file, all_threads=True, chain=True)
            self.tracker.begin_trial(trial_index)

    def beat(self, step: int, micro_step: int) -> None:
        self.tracker.beat(step, micro_step)

    def end_trial(self) -> None:
        with self._lock:
            self.tracker.end_trial()
            faulthandler.cancel_dump_traceback_later()
            self._close_file(remove_if_empty=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.end_trial()
        faulthandler.unregister(signal.SIGTERM)
        # A process killed outright (fault=exit, OOM killer) leaves the empty file it held open for a dump; the
        # restarted rank removes its own empty files, so stacks/ holds only real dumps.
        try:
            mine = list(self.stacks_dir.glob(f"trial-*-rank-{self.rank}.txt"))
        except FileNotFoundError:  # another rank of this node stopped first and removed the empty stacks/
            mine = []
        for path in mine:
            with contextlib.suppress(OSError):
                if path.stat().st_size == 0:
                    path.unlink()
        # stacks/ exists only where something stalled (README): rmdir removes it only while it is empty.
        with contextlib.suppress(OSError):
            self.stacks_dir.rmdir()

    def _close_file(self, *, remove_if_empty: bool = False) -> None:
        if self._file is None:
            return
        path = Path(self._file.name)
        self._file.close()
        self._file = None
        if remove_if_empty and path.exists() and path.stat().st_size == 0:
            path.unlink()

    def _dump(self, stall: Stall, *, event: str) -> None:
        assert self._file is not None
        header = (f"=== {event} ({stall.describe()}) at {utc_now()} on {self.hostname} rank {self.rank} "
                  f"pid {os.getpid()}\n")
        self._file.write(header)
        self._file.flush()
        faulthandler.dump_traceback(file=self._file, all_threads=True)
        self._file.flush()
        os.fsync(self._file.fileno())
        log.warning("%s (%s); stacks in %s", event, stall.describe(), self._file.name)

    def _run(self) -> None:
        while not self._stop.wait(_POLL_S):
            with self._lock:
                if self._file is None:
                    continue
                # The C-level fallback fires only if this thread misses its polls for a whole threshold.
                faulthandler.dump_traceback_later(self.tracker.threshold_s() + 4 * _POLL_S, repeat=True,
                                                  file=self._file)
                action, stall = self.tracker.poll()
                if action == "dump" and stall is not None and self.peer_failed():
                    # A peer already reported why: this rank is only waiting for it. No point in waiting out
                    # abort_after_s.
                    action = "abort"
                if action == "dump" and stall is not None:
                    self._dump(stall, event="watchdog_dump")
                elif action == "abort" and stall is not None:
                    self._dump(stall, event="watchdog_abort")
                    break
        else:
            return
        faulthandler.cancel_dump_traceback_later()
        assert stall is not None
        try:
            self.on_abort(stall)
        finally:
            logging.shutdown()
            os._exit(EXIT_STALLED)
