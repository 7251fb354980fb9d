"""The watchdog's decisions on a fake clock, and its stack files on a real thread."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

from trainer_tune.config.schema import WatchdogArgs
from trainer_tune.run.watchdog import StallTracker, Watchdog


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _tracker(**args: float) -> tuple[StallTracker, FakeClock]:
    clock = FakeClock()
    return StallTracker(WatchdogArgs(**args), clock=clock), clock  # type: ignore[arg-type]


def test_nothing_happens_outside_a_trial() -> None:
    tracker, clock = _tracker(stall_s=5, abort_after_s=20)
    clock.now_s += 1000
    assert tracker.poll() == ("ok", None)


def test_dump_at_threshold_repeat_at_interval_then_abort() -> None:
    tracker, clock = _tracker(stall_s=5, dump_interval_s=4, abort_after_s=20)
    tracker.begin_trial(3)
    tracker.beat(5, 0)
    clock.now_s += 4.9
    assert tracker.poll()[0] == "ok"
    clock.now_s += 0.2
    action, stall = tracker.poll()
    assert action == "dump" and stall is not None
    assert stall.describe().startswith("trial 3 step 5 micro-step 0 not complete after 5.1 s (threshold 5.0 s)")
    clock.now_s += 1
    assert tracker.poll()[0] == "ok"  # dumped a second ago: wait for the interval
    clock.now_s += 4
    assert tracker.poll()[0] == "dump"
    clock.now_s += 10
    action, stall = tracker.poll()
    assert action == "abort" and stall is not None and stall.stalled_s >= 20
    clock.now_s += 100
    assert tracker.poll()[0] == "ok"  # aborts once


def test_a_beat_resets_the_stall() -> None:
    tracker, clock = _tracker(stall_s=5, abort_after_s=20)
    tracker.begin_trial(0)
    for step in range(10):
        clock.now_s += 4
        tracker.beat(step, 0)
        assert tracker.poll()[0] == "ok"


def test_adaptive_threshold_is_floor_plus_multiple_of_median_micro_step() -> None:
    tracker, clock = _tracker(floor_s=60, step_multiple=10, abort_after_s=300)
    tracker.begin_trial(0)
    assert tracker.threshold_s() == 60
    tracker.beat(0, 0)
    for step in range(1, 6):
        clock.now_s += 2.0
        tracker.beat(step, 0)
    assert tracker.threshold_s() == 60 + 10 * 2.0


def test_watchdog_thread_writes_a_stack_file_naming_the_stuck_function(tmp_path: Path) -> None:
    aborted = threading.Event()
    watchdog = Watchdog(WatchdogArgs(stall_s=0.5, dump_interval_s=0.5, abort_after_s=60), rank=3,
                        hostname="host", stacks_dir=tmp_path, on_abort=lambda stall: aborted.set()).start()
    try:
        watchdog.begin_trial(7)
        watchdog.beat(2, 1)

        def stuck_in_a_collective() -> None:
            time.sleep(1.5)

        stuck_in_a_collective()
        text = (tmp_path / "trial-7-rank-3.txt").read_text()
        assert "=== watchdog_dump (trial 7 step 2 micro-step 1 not complete after" in text
        assert "on host rank 3" in text
        assert "stuck_in_a_collective" in text
        assert not aborted.is_set()
        watchdog.end_trial()
        watchdog.beat(0, 0)
        time.sleep(0.8)
    finally:
        watchdog.stop()


def test_a_restarted_rank_removes_the_empty_stack_files_a_killed_attempt_left(tmp_path: Path) -> None:
    """A rank killed outright (fault=exit) never closes the file it held open for a dump; the restarted rank
    removes its own empty ones when it stops, so stacks/ exists only where something was dumped."""
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "trial-2-rank-0.txt").write_text("")  # the killed attempt's
    (stacks / "trial-2-rank-1.txt").write_text("")  # another rank's: that rank cleans its own
    watchdog = Watchdog(WatchdogArgs(stall_s=60, abort_after_s=120), rank=0, hostname="host",
                        stacks_dir=stacks, on_abort=lambda stall: None).start()
    watchdog.begin_trial(3)
    watchdog.end_trial()
    watchdog.stop()
    assert sorted(p.name for p in stacks.iterdir()) == ["trial-2-rank-1.txt"]
    rank1 = Watchdog(WatchdogArgs(stall_s=60, abort_after_s=120), rank=1, hostname="host",
                     stacks_dir=stacks, on_abort=lambda stall: None).start()
    rank1.stop()
    assert not stacks.exists()


def _stop_in_step(rank: int, barrier: Any, root: Path, num_runs: int, failures: Any) -> None:
    for run in range(num_runs):
        watchdog = Watchdog(WatchdogArgs(stall_s=60, abort_after_s=120), rank=rank, hostname="host",
                            stacks_dir=root / str(run) / "stacks", on_abort=lambda stall: None).start()
        barrier.wait()  # the ranks of a node leave their last trial together
        try:
            watchdog.stop()
        except OSError as exc:
            failures.put(f"run {run} rank {rank}: {exc!r}")


def test_two_ranks_of_a_node_stop_together_without_tripping_over_the_shared_stacks_dir(tmp_path: Path) -> None:
    # Two ranks share stacks/; the one that stops first removes it (empty) while the other may be listing it. That
    # race ended about one 2-rank job in ten with FileNotFoundError (a multirun under torchrun, every job at risk).
    # Real processes, released together 200 times: under a second.
    context = multiprocessing.get_context("fork")
    barrier, failures = context.Barrier(2), context.Queue()
    ranks = [context.Process(target=_stop_in_step, args=(rank, barrier, tmp_path, 200, failures)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=60)
    assert [process.exitcode for process in ranks] == [0, 0]
    found = []
    while not failures.empty():
        found.append(failures.get())
    assert not found, found[:3]
    assert not list(tmp_path.glob("*/stacks"))


def test_a_real_dump_is_kept(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "trial-1-rank-0.txt").write_text("=== watchdog_dump ...\n")
    Watchdog(WatchdogArgs(stall_s=60, abort_after_s=120), rank=0, hostname="host", stacks_dir=stacks,
             on_abort=lambda stall: None).start().stop()
    assert (stacks / "trial-1-rank-0.txt").read_text().startswith("=== watchdog_dump")
