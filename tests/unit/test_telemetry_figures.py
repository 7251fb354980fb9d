"""How ranks' readings become a trial's figures, and how the wandb mode is chosen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from result_factory import make_result
from trainer_tune.config.schema import WandbArgs, WandbMode
from trainer_tune.measure.gpu_sampler import GpuSummary
from trainer_tune.measure.summarize import combine_gpu
from trainer_tune.sinks.wandb_sink import step_history, summary_figures
from trainer_tune.sinks.wandb_sink import resolve_mode


def _gpu(util: float, memory: int, energy: float | None, *, reason: str | None = None) -> GpuSummary:
    return GpuSummary(util_mean_pct=util, util_p10_pct=util - 10, util_p90_pct=util + 5, memory_used_peak_bytes=memory,
                      power_mean_w=300.0, energy_j=energy, energy_source="counter", energy_j_per_token=None,
                      num_samples=20, duration_s=2.0, unavailable_reason=reason)


def test_gpu_figures_combine_over_ranks() -> None:
    combined, note = combine_gpu([_gpu(90.0, 10, 600.0), _gpu(40.0, 30, 400.0)], tokens=2000, samples=16)
    assert note is None and combined is not None
    assert combined.util_mean_pct == 65.0  # per-GPU mean: the idle rank pulls it down
    assert combined.util_p10_pct == 55.0 and combined.util_p90_pct == 70.0
    assert combined.memory_used_peak_bytes == 30  # the fullest rank
    assert combined.energy_j == 1000.0 and combined.energy_j_per_token == 0.5  # the whole job's energy
    assert combined.energy_j_per_sample == 62.5
    assert len(combined.per_rank) == 2


def test_batches_without_tokens_get_energy_per_sample() -> None:
    combined, note = combine_gpu([_gpu(90.0, 10, 600.0), _gpu(40.0, 30, 400.0)], tokens=None, samples=16)
    assert note is None and combined is not None
    assert combined.energy_j_per_token is None and combined.energy_j_per_sample == 62.5


def test_a_figure_one_rank_lacks_is_none_not_a_partial_sum() -> None:
    combined, note = combine_gpu([_gpu(90.0, 10, 600.0), _gpu(40.0, 30, None, reason="energy: NotSupported")],
                                 tokens=2000, samples=16)
    assert combined is not None and combined.energy_j is None and combined.energy_j_per_token is None
    assert combined.energy_j_per_sample is None
    assert note == "energy: NotSupported"


def test_no_nvml_means_no_gpu_figures_and_a_reason() -> None:
    off = GpuSummary(**{f.name: None for f in dataclasses.fields(GpuSummary)}
                     | {"unavailable_reason": "NVML Shared Library Not Found"})
    assert combine_gpu([off, off], tokens=10, samples=2) == (None, "NVML Shared Library Not Found")
    assert combine_gpu([off, off], tokens=None, samples=2) == (None, "NVML Shared Library Not Found")
    assert combine_gpu([None, None], tokens=10, samples=2)[0] is None


def test_step_history_and_summary() -> None:
    result = dataclasses.replace(make_result(index=0, key="k"), step_times_s=(0.5, 0.25), losses=(5.0, None),
                                 gpu_utilization_series=((0.0, 80.0), (0.1, 95.0)))
    rows = step_history(result)
    assert rows[0] == {"step": 0, "train/step_time_s": 0.5, "train/tokens_per_s": result.tokens_per_step / 0.5,
                       "train/samples_per_s": result.global_batch_size / 0.5, "train/loss": 5.0}
    assert "train/loss" not in rows[1]
    # Each window's tokens/s on the round axis (make_result: three rounds at 1,000), then the GPU samples.
    assert rows[2:5] == [{"round": i, "round/tokens_per_s": 1000.0} for i in range(3)]
    assert rows[5:] == [{"gpu_time_s": 0.0, "gpu/util_pct": 80.0}, {"gpu_time_s": 0.1, "gpu/util_pct": 95.0}]
    figures = summary_figures(result)
    assert figures["tokens_per_s"] == result.tokens_per_s and figures["gpu_util_mean_pct"] is None


@pytest.mark.parametrize("mode,environ,expected", [
    (WandbMode.auto, {}, "offline"),
    (WandbMode.auto, {"WANDB_API_KEY": "x" * 40}, "online"),
    (WandbMode.auto, {"WANDB_MODE": "offline", "WANDB_API_KEY": "x" * 40}, "offline"),
    (WandbMode.offline, {"WANDB_API_KEY": "x" * 40}, "offline"),
    (WandbMode.online, {}, "online"),
])
def test_wandb_mode(mode: WandbMode, environ: dict, expected: str, tmp_path: Path) -> None:
    environ = {"NETRC": str(tmp_path / "no-netrc"), **environ}
    assert resolve_mode(WandbArgs(mode=mode), environ) == expected


def test_a_netrc_login_means_online(tmp_path: Path) -> None:
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / "netrc").chmod(0o600)
    assert resolve_mode(WandbArgs(), {"NETRC": str(tmp_path / "netrc")}) == "online"
