"""The real open-loop loop (measure/open_loop.py) on a virtual clock: with the same arrivals and service times it
must serve exactly the batches the simulation does (one batcher rule), time requests from their scheduled arrival
(a loop that falls behind charges the wait to the requests), and slice batches of every kind."""

from __future__ import annotations

import pytest
import torch

from trainer_tune.workloads.arrivals import poisson_arrivals_s
from trainer_tune.evidence.batcher_sim import simulate
from trainer_tune.measure.open_loop import first_samples, run_open_loop


class VirtualClock:
    """A clock that moves only when the loop waits or serves."""

    def __init__(self) -> None:
        self.now_s = 100.0  # not 0: the loop must time from its own start

    def __call__(self) -> float:
        return self.now_s

    def wait(self, target_s: float, clock: "VirtualClock") -> None:
        self.now_s = max(self.now_s, target_s)


def _service_s(size: int) -> float:
    return 0.004 + 0.001 * size


def _virtual_run(arrivals_s, *, max_batch_size: int, delay_s: float, late_s: float = 0.0):
    clock = VirtualClock()

    def serve(size: int) -> None:
        clock.now_s += _service_s(size)

    def wait(target_s: float, _clock) -> None:
        clock.wait(target_s + late_s, clock)  # late_s: a host that wakes late

    return run_open_loop(serve, arrivals_s, rate_per_s=1.0, max_batch_size=max_batch_size,
                         max_queue_delay_s=delay_s, clock=clock, wait=wait)


@pytest.mark.parametrize("max_batch_size,delay_s,rate_per_s", [(1, 0.0, 150.0), (4, 0.002, 400.0),
                                                                (8, 0.005, 900.0), (8, 0.0, 1500.0)])
def test_the_loop_serves_the_batches_the_simulation_serves(max_batch_size: int, delay_s: float,
                                                           rate_per_s: float) -> None:
    arrivals_s = poisson_arrivals_s(rate_per_s, 3000, seed=7)
    run = _virtual_run(arrivals_s, max_batch_size=max_batch_size, delay_s=delay_s)
    sim = simulate(arrivals_s, _service_s, max_batch_size=max_batch_size, max_queue_delay_s=delay_s)
    assert run.batch_sizes == sim.batch_sizes
    assert run.latency_s == pytest.approx(sim.latency_s, abs=1e-9)
    assert run.service_s == pytest.approx([_service_s(k) for k in run.batch_sizes])
    assert run.behind_s == pytest.approx(0.0, abs=1e-9)


def test_by_hand_requests_are_timed_from_their_scheduled_arrival() -> None:
    # Max batch 2, delay 5 ms, service 4 ms + 1 ms a request. 0 ms: one queued, wait for the next arrival (1 ms):
    # full, serve 2 (1..7 ms). 2 ms and 3 ms arrived meanwhile: full, serve at 7 ms (7..13). 20 ms: alone, waits
    # out the delay (25 ms), served 25..30.
    run = _virtual_run([0.0, 0.001, 0.002, 0.003, 0.020], max_batch_size=2, delay_s=0.005)
    assert run.batch_sizes == (2, 2, 1)
    assert run.completions_s == pytest.approx([0.007, 0.007, 0.013, 0.013, 0.030])
    assert run.latency_s == pytest.approx([0.007, 0.006, 0.011, 0.010, 0.010])


def test_a_loop_that_wakes_late_charges_the_delay_to_the_requests() -> None:
    # Every wake-up 2 ms late: latency still counts from the schedule, so it grows by the lateness (never hidden by
    # sending the requests later), and the loop reports how late it was.
    arrivals_s = [0.0, 0.050, 0.100]
    on_time = _virtual_run(arrivals_s, max_batch_size=1, delay_s=0.0)
    late = _virtual_run(arrivals_s, max_batch_size=1, delay_s=0.0, late_s=0.002)
    assert [b - a for a, b in zip(on_time.latency_s, late.latency_s)] == pytest.approx([0.0, 0.002, 0.002])
    assert late.behind_s == pytest.approx(0.002)


def test_first_samples_slices_every_kind_of_batch() -> None:
    ids = torch.arange(24).reshape(6, 4)
    assert first_samples(ids, 2).tolist() == ids[:2].tolist()
    pair = first_samples((ids, torch.arange(6)), 3)
    assert isinstance(pair, tuple) and pair[0].shape == (3, 4) and pair[1].tolist() == [0, 1, 2]
    mapping = first_samples({"input_ids": ids, "labels": torch.arange(6)}, 1)
    assert mapping["input_ids"].shape == (1, 4) and mapping["labels"].tolist() == [0]
