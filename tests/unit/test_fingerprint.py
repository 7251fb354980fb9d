"""The fingerprint of the machine and software behind a window (platform/fingerprint.py): what it holds on a CPU,
that it survives the journal, and which differences count."""

from __future__ import annotations

import dataclasses
import json

import torch

from trainer_tune.measure.record import RECORD_VERSION, WindowRecord
from trainer_tune.platform.fingerprint import SPEED_FIELDS, Fingerprint, local_facts


def _fingerprint(**changes: object) -> Fingerprint:
    base = Fingerprint(host="node-1", cpu_model="Some CPU", cpus_usable=2, gpu_name=None, gpu_count=0,
                       gpu_memory_bytes=None, driver_version=None, cuda_version=None, nccl_version=None,
                       torch_version="2.13.0+cpu", trainer_tune_version="0.1.0", python_version="3.11.7",
                       world_size=2, local_world_size=2, omp_num_threads="1", torch_threads=(1, 1))
    return dataclasses.replace(base, **changes)


def test_a_cpu_rank_reads_its_facts_without_any_gpu_call_failing() -> None:
    facts = local_facts(torch.device("cpu"))
    assert facts["gpu_count"] == 0 and facts["gpu_name"] is None and facts["driver_version"] is None
    assert facts["torch_version"] == torch.__version__ and facts["torch_threads"] == torch.get_num_threads()
    assert facts["cpus_usable"] >= 1
    json.dumps(facts)  # what the ranks exchange through the store


def test_only_what_decides_speed_is_a_difference() -> None:
    mine = _fingerprint()
    assert mine.differences(_fingerprint(host="node-7")) == []  # a requeue on a like node is the same machine
    assert mine.differences(_fingerprint(torch_threads=(2, 2))) == ["torch_threads: (1, 1) -> (2, 2)"]
    assert mine.differences(_fingerprint(torch_version="2.14.0", world_size=4)) == [
        "torch_version: 2.13.0+cpu -> 2.14.0", "world_size: 2 -> 4"]
    assert "host" not in SPEED_FIELDS


def test_a_journal_line_keeps_its_fingerprint_and_an_older_line_has_none() -> None:
    from helpers.fake_machine import FakeMachine
    from trainer_tune.config.flags import TrialFlags
    from trainer_tune.config.schema import TuneConfig
    from trainer_tune.plan import build_plan
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(OmegaConf.structured(TuneConfig))
    (spec,) = build_plan(cfg, world_size=2, base_flags=TrialFlags(), device_type="cpu")
    window = FakeMachine(true_rate=lambda _spec: 1000.0, seed=0).measure(spec, round_id="r0", attempts=0, first=True)
    assert window is not None
    stamped = dataclasses.replace(window, fingerprint=_fingerprint())
    line = json.loads(json.dumps(stamped.to_json_dict()))
    assert WindowRecord.from_json_dict(line).fingerprint == _fingerprint()
    older = {k: v for k, v in line.items() if k != "fingerprint"}
    older["record_version"] = 4
    read = WindowRecord.from_json_dict(older)
    assert read.fingerprint is None and read.record_version == RECORD_VERSION


def test_more_threads_than_usable_cores_is_named_with_the_figures() -> None:
    from trainer_tune.platform.fingerprint import threads_note

    assert threads_note(_fingerprint()) is None  # torchrun's one thread per worker on 2 cores
    note = threads_note(_fingerprint(torch_threads=(2, 2), omp_num_threads=None))
    assert note is not None and note.startswith("2 ranks x 2 torch threads = 4 threads on 2 usable cores "
                                                "(OMP_NUM_THREADS=unset)")
    # Ranks on other hosts use their own cores.
    assert threads_note(_fingerprint(world_size=4, torch_threads=(1, 1, 8, 8))) is None
    # sweep.num_threads=[1,2] on the same machine: its 2-thread settings oversubscribe.
    assert threads_note(_fingerprint(), most_threads_per_rank=2).startswith("2 ranks x 2 torch threads = 4 threads")


def test_load_already_on_the_machine_is_named_when_it_leaves_too_few_free_cores() -> None:
    from trainer_tune.platform.fingerprint import load_note

    assert load_note(_fingerprint(other_busy_cores=0.1, load_average_1m=0.4)) is None  # idle: 1.9 free for 2
    assert load_note(_fingerprint(other_busy_cores=None)) is None  # not read: nothing to say
    note = load_note(_fingerprint(other_busy_cores=1.6, load_average_1m=3.2))
    assert note == ("other processes were using 1.6 of the 2 usable cores when the sweep started, load average 3.2: "
                    "0.4 free for 2 threads (2 ranks), so every rate here depends on that load; measure on an idle "
                    "machine, or with fewer threads")
    # One process with one thread fits in what is left.
    assert load_note(_fingerprint(other_busy_cores=1.0, world_size=1, local_world_size=1, torch_threads=(1,))) is None


def test_the_load_counts_other_processes_and_not_the_sweeps_own() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from trainer_tune.platform.fingerprint import _others_cpu_s

    spin = [sys.executable, "-c", "while True: pass"]
    # Another process using a core, not a child of this one: started from a shell that exits at once.
    other = int(subprocess.run(["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                               capture_output=True, text=True, check=True).stdout)
    child = subprocess.Popen(spin)  # like a DataLoader worker: the sweep's own
    try:
        time.sleep(0.3)
        seen = _others_cpu_s()
        assert other in seen and seen[other] > 0
        assert child.pid not in seen and os.getpid() not in seen and os.getppid() not in seen
    finally:
        os.kill(other, signal.SIGKILL)
        child.kill()
        child.wait()
