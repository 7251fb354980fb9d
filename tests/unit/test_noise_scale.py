"""The gradient noise scale estimator (noise_scale.py) on synthetic gradients with a known |G|^2 and tr(Sigma), the
gradient reader of the noise steps (noise_steps.py) against per-sample gradients, and statistical efficiency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer_tune.evidence.noise_scale import efficiency_interval, statistical_efficiency
from trainer_tune.measure.noise_estimate import NoiseReading, estimate, pool, step_estimate
from trainer_tune.measure.noise_steps import GradientNormReader, squared_norm

DIM = 64
G2 = 1.0
TRACE_SIGMA = 8.0
"""B_noise = 8 samples: between the micro-batch (2) and the global batch (8) of the window below."""


def _synthetic_readings(num_steps: int, *, micro_batch_size: int = 2, grad_accum: int = 2, world_size: int = 2,
                        seed: int = 0) -> list[NoiseReading]:
    """What a window's noise steps read, from per-sample gradients G + noise with a known covariance: per rank the
    mean over micro-step 0's samples and over all its samples (squared norms averaged over ranks, as the window
    does), and the mean over every rank's samples."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=DIM)
    g *= math.sqrt(G2) / np.linalg.norm(g)
    # A diagonal covariance with unequal variances, scaled so its trace is TRACE_SIGMA.
    variances = rng.uniform(0.2, 1.8, size=DIM)
    variances *= TRACE_SIGMA / variances.sum()
    readings = []
    local_batch = micro_batch_size * grad_accum
    for _ in range(num_steps):
        samples = g + rng.normal(size=(world_size, local_batch, DIM)) * np.sqrt(variances)
        micro = samples[:, :micro_batch_size].mean(axis=1)
        local = samples.mean(axis=1)
        overall = samples.reshape(-1, DIM).mean(axis=0)
        readings.append(((micro_batch_size, float((micro ** 2).sum(axis=1).mean())),
                         (local_batch, float((local ** 2).sum(axis=1).mean())),
                         (local_batch * world_size, float((overall ** 2).sum()))))
    return readings


def test_two_sizes_give_mccandlish_formulas() -> None:
    b, big_b, small_sq, big_sq = 2, 8, 5.0, 2.0
    g2, trace = step_estimate(((b, small_sq), (big_b, big_sq)))
    assert g2 == pytest.approx((big_b * big_sq - b * small_sq) / (big_b - b))
    assert trace == pytest.approx((small_sq - big_sq) / (1 / b - 1 / big_b))


def test_estimator_recovers_known_g2_and_trace_sigma() -> None:
    """Tolerance: with 3,000 steps of the window's three batch sizes, |G|^2 and tr(Sigma) within 3% and B_noise
    within 4% of the truth (over 8 seeds their standard deviations were 0.6%, 0.5% and 0.9%: the tolerance is
    4 to 6 of them), and the 95% interval holds the truth."""
    figures = estimate(_synthetic_readings(3000))
    assert figures.batch_sizes == (2, 4, 8) and figures.num_steps == 3000
    assert figures.g2_mean == pytest.approx(G2, rel=0.03)
    assert figures.trace_sigma_mean == pytest.approx(TRACE_SIGMA, rel=0.03)
    assert figures.value == pytest.approx(TRACE_SIGMA / G2, rel=0.04)
    low, high = figures.ci95
    assert low < TRACE_SIGMA / G2 < high


def test_two_sizes_only_also_recover_it() -> None:
    """One rank with grad_accum 4 (micro-batch 2 and the rank's 8), as a window without a second rank reads it."""
    readings = [tuple(r[:2]) for r in _synthetic_readings(3000, grad_accum=4, world_size=1, seed=1)]
    figures = estimate(readings)
    assert figures.batch_sizes == (2, 8)
    assert figures.value == pytest.approx(TRACE_SIGMA / G2, rel=0.15)


def test_a_few_steps_give_a_wide_interval_that_pooling_narrows() -> None:
    windows = [estimate(_synthetic_readings(4, seed=seed)) for seed in range(50)]
    pooled = pool(windows)
    assert pooled is not None and pooled.num_steps == 200
    assert pooled.value == pytest.approx(TRACE_SIGMA / G2, rel=0.3)
    assert pooled.ci95[1] is not None and pooled.ci95[0] < TRACE_SIGMA / G2 < pooled.ci95[1]
    # A bootstrap over 4 steps is crude (a few by luck are narrow), but typically far wider than 200 steps'.
    widths = [w.ci95[1] - w.ci95[0] if w.ci95[1] is not None else math.inf for w in windows]
    assert pooled.ci95[1] - pooled.ci95[0] < float(np.median(widths)) / 2
    assert pool([None]) is None


def test_no_signal_is_said_not_hidden() -> None:
    """Pure noise (G = 0): the |G|^2 estimate hovers around 0, so B_noise is unbounded; never a made-up number."""
    rng = np.random.default_rng(3)
    readings = []
    for _ in range(40):
        samples = rng.normal(size=(8, DIM))
        readings.append(((2, float((samples[:2].mean(axis=0) ** 2).sum())),
                         (8, float((samples.mean(axis=0) ** 2).sum()))))
    figures = estimate(readings)
    assert figures.ci95 is not None and figures.ci95[1] is None  # unbounded above
    if figures.value is None:
        assert "not positive" in figures.note
    else:  # a slightly positive mean by chance: huge, with an open interval
        assert figures.value > 8 * 10


def test_efficiency_is_below_one_above_b0_and_above_one_below_it() -> None:
    assert statistical_efficiency(16, baseline_batch_size=16, noise_scale=8.0) == 1.0
    above = statistical_efficiency(64, baseline_batch_size=16, noise_scale=8.0)
    below = statistical_efficiency(4, baseline_batch_size=16, noise_scale=8.0)
    assert above == pytest.approx(24 / 72) and above < 1
    assert below == pytest.approx(24 / 12) and below > 1
    # Far below the noise scale every sample counts alike; far above it only the step counts.
    assert statistical_efficiency(64, baseline_batch_size=16, noise_scale=1e9) == pytest.approx(1.0, rel=1e-6)
    assert statistical_efficiency(64, baseline_batch_size=16, noise_scale=0.0) == pytest.approx(16 / 64)
    low, high = efficiency_interval(64, baseline_batch_size=16, ci95=[4.0, None])
    assert low == pytest.approx(20 / 68) and high == 1.0


def test_reader_reads_the_micro_batch_and_the_accumulated_gradient() -> None:
    """One rank, grad_accum 2: the reader's squared norms are those of the mean per-sample gradient over micro-step
    0's samples and over all four, counted independently (torch.func per-sample gradients)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(4, 5), torch.randn(4, 3)

    def loss_of(params: dict, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return ((torch.func.functional_call(model, params, (xs,)) - ys) ** 2).mean()

    params = dict(model.named_parameters())
    per_sample = torch.func.vmap(torch.func.grad(loss_of), in_dims=(None, 0, 0))(
        {k: v.detach() for k, v in params.items()}, x[:, None], y[:, None])

    def mean_sq(rows: slice) -> float:
        return sum(float((g[rows].mean(dim=0) ** 2).sum()) for g in per_sample.values())

    reader = GradientNormReader(model.parameters(), micro_batch_size=2, grad_accum=2, world_size=1)
    for micro in range(2):
        rows = slice(2 * micro, 2 * micro + 2)
        (loss_of(params, x[rows], y[rows]) / 2).backward()  # as window._Trainer.step divides by grad_accum
        reader.after_micro_step(micro)
    reader.before_update()
    (reading,) = reader.readings
    assert [b for b, _ in reading] == [2, 4]
    assert reading[0][1] == pytest.approx(mean_sq(slice(0, 2)), rel=1e-6)
    assert reading[1][1] == pytest.approx(mean_sq(slice(0, 4)), rel=1e-6)
    assert float(squared_norm(model.parameters())) == pytest.approx(mean_sq(slice(0, 4)), rel=1e-6)
