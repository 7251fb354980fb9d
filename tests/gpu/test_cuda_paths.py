"""The CUDA paths, on a real GPU: CUDA event timing, allocator peaks, bf16 autocast, a real OOM, NVML figures.

Skipped without CUDA (tests/conftest.py). One small sweep of the tiny GPT serves most tests: micro-batch 2
fits anywhere, micro-batch 8192 cannot fit under a 2% allocator cap (about 30 GB of activations against at
most 3 GB), in fp32 and bf16, one window each. benchmarks/gpu_check.sh runs these tests and the larger
models' sweeps.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from conftest import ONE_ROUND, read_jsonl, run_tune

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

FITS, NEVER_FITS = 2, 8192


@pytest.fixture(scope="module")
def cuda_sweep(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    if not torch.cuda.is_available():
        # Never on a CPU: micro-batch 8192 there is no OOM but tens of GB of host memory (no cap applies).
        pytest.fail("cuda_sweep needs CUDA; tests/conftest.py should have skipped this test")
    out = tmp_path_factory.mktemp("cuda_sweep") / "run"
    proc = run_tune(["model=tiny", "+sweep=batch", f"sweep.micro_batch_sizes=[{FITS},{NEVER_FITS}]",
                     "sweep.grad_accums=[1]", "sweep.precision=[fp32,bf16]", "train.max_memory_fraction=0.02",
                     "wandb=off", f"hydra.run.dir={out}", *ONE_ROUND], timeout_s=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_jsonl(Path(out) / "trials.jsonl")


def _fitting(windows: list[dict]) -> list[dict]:
    return [w for w in windows if w["micro_batch_size"] == FITS]


def test_cuda_event_clock_times_the_device_work() -> None:
    from trainer_tune.measure.window import _CudaEventClock

    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    clock = _CudaEventClock()
    host_start_s = time.perf_counter()
    clock.start()
    for _ in range(20):
        a = torch.tanh(a @ a)
    clock.stop()
    torch.cuda.synchronize()
    host_s = time.perf_counter() - host_start_s
    (device_s,) = clock.read_s()
    # The events bracket the kernels on the stream: never longer than the host saw with a synchronize, and
    # not a near-zero launch time either (20 products of 4096^3 take milliseconds on any GPU).
    assert 0.5 * host_s <= device_s <= host_s * 1.01, (device_s, host_s)


def test_settings_that_fit_run_on_cuda_with_allocator_peaks(cuda_sweep: list[dict]) -> None:
    fitting = _fitting(cuda_sweep)
    assert fitting and all(w["status"] == "ok" for w in fitting), [(w["label"], w["error"]) for w in fitting]
    for window in fitting:
        assert window["device"].startswith("cuda")
        assert window["peak_memory_source"] == "allocator_reserved"
        assert window["peak_memory_bytes"] == window["peak_memory_reserved_bytes"]
        assert 0 < window["peak_memory_allocated_bytes"] <= window["peak_memory_reserved_bytes"]
        assert window["step_time_s"]["median"] > 0


def test_bf16_autocasts_on_cuda(cuda_sweep: list[dict]) -> None:
    from trainer_tune.workloads.precision import autocast_for

    x = torch.randn(64, 64, device="cuda")
    with autocast_for("bf16", torch.device("cuda"))():
        assert (x @ x).dtype == torch.bfloat16
    precisions = {w["flags"]["precision"]: w["status"] for w in _fitting(cuda_sweep)}
    assert precisions == {"fp32": "ok", "bf16": "ok"}


def test_a_real_oom_is_recorded_as_oom_and_the_sweep_goes_on(cuda_sweep: list[dict]) -> None:
    too_big = [w for w in cuda_sweep if w["micro_batch_size"] == NEVER_FITS]
    assert too_big and all(w["status"] == "oom" for w in too_big), [(w["label"], w["status"]) for w in too_big]
    for window in too_big:
        assert "out of memory" in window["error"].lower() and "injected" not in window["error"]
    assert all(w["status"] == "ok" for w in _fitting(cuda_sweep))


def test_nvml_figures_are_recorded(cuda_sweep: list[dict]) -> None:
    for window in _fitting(cuda_sweep):
        gpu = window["gpu"]
        assert gpu is not None, window["gpu_note"]
        assert gpu["util_mean_pct"] is not None and 0 <= gpu["util_mean_pct"] <= 100
        assert gpu["memory_used_peak_bytes"] and gpu["memory_used_peak_bytes"] > 0
        assert gpu["power_mean_w"] and gpu["power_mean_w"] > 0
