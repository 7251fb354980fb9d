"""The gradient noise scale B_noise of a window from its noise steps' readings (McCandlish et al. 2018, appendix A):
per step, |G|^2 and tr(Sigma) from the squared gradient norms at two or more batch sizes; B_noise is the ratio of
their means, with a block-bootstrap interval over the steps. A window's own figure: a setting's windows and a
sweep's settings pool their steps (`pool`); what B_noise means for a batch size is evidence/noise_scale.py's."""

from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence

import numpy as np

from trainer_tune.measure.figures import NoiseScaleFigures
from trainer_tune.measure.step_stats import block_bootstrap_indices

NoiseReading = tuple[tuple[int, float], ...]
"""One noise step's readings: (batch size in samples, squared norm of the gradient averaged over it), per size."""

_RESAMPLES = 2000


def step_estimate(reading: NoiseReading) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) of one step: least squares of |G_B|^2 on 1/B (exactly the two-size formulas with two)."""
    sizes = {b for b, _ in reading}
    if len(sizes) < 2:
        raise ValueError(f"a noise step needs two batch sizes or more, got {sorted(sizes)}")
    xs = [1.0 / b for b, _ in reading]
    ys = [y for _, y in reading]
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(ys)
    slope = math.fsum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / \
        math.fsum((x - x_mean) ** 2 for x in xs)
    return y_mean - slope * x_mean, slope


def estimate(readings: Sequence[NoiseReading], *, seed: int = 0) -> NoiseScaleFigures:
    """B_noise from the noise steps of one window (every step's readings at the same batch sizes)."""
    if not readings:
        raise ValueError("no noise steps to estimate from")
    per_step = [step_estimate(r) for r in readings]
    sizes = tuple(sorted({b for r in readings for b, _ in r}))
    return from_step_estimates([g for g, _ in per_step], [t for _, t in per_step], batch_sizes=sizes, seed=seed)


def from_step_estimates(step_g2: Sequence[float], step_trace_sigma: Sequence[float], *,
                        batch_sizes: tuple[int, ...], seed: int = 0) -> NoiseScaleFigures:
    """The ratio of the means of per-step estimates, with a block-bootstrap 95% interval over the steps."""
    g2, trace = np.asarray(step_g2, dtype=float), np.asarray(step_trace_sigma, dtype=float)
    g2_mean, trace_mean = float(g2.mean()), float(trace.mean())
    steps = len(g2)
    value, note = _ratio(g2_mean, trace_mean, steps=steps, batch_sizes=batch_sizes)
    ci95: Optional[list[Optional[float]]] = None
    if steps >= 2:
        idx = block_bootstrap_indices(steps, resamples=_RESAMPLES, seed=seed)
        g2_means, trace_means = g2[idx].mean(axis=1), trace[idx].mean(axis=1)
        # No signal left in a resample: every batch is below the noise scale (inf); no noise left: 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(g2_means <= 0, np.inf, np.maximum(trace_means, 0.0) / g2_means)
        # The nearest order statistics outwards, never an interpolation towards an infinite resample.
        low = float(np.quantile(ratios, 0.025, method="lower"))
        high = float(np.quantile(ratios, 0.975, method="higher"))
        ci95 = [low, high if math.isfinite(high) else None]
    return NoiseScaleFigures(value=value, ci95=ci95, num_steps=steps, batch_sizes=batch_sizes, g2_mean=g2_mean,
                             trace_sigma_mean=trace_mean, step_g2=tuple(float(v) for v in g2),
                             step_trace_sigma=tuple(float(v) for v in trace), note=note)


def _ratio(g2_mean: float, trace_mean: float, *, steps: int,
           batch_sizes: tuple[int, ...]) -> tuple[Optional[float], Optional[str]]:
    sizes = f"batch sizes {', '.join(map(str, batch_sizes))}"
    if g2_mean <= 0:
        return None, (f"the |G|^2 estimate is not positive over {steps} noise steps: at {sizes} the gradient's "
                      f"noise hides its mean, so B_noise is larger than these steps can measure (more "
                      f"window.noise_steps, or a model.checkpoint from later in training)")
    if trace_mean <= 0:
        return None, (f"the tr(Sigma) estimate is not positive over {steps} noise steps: no gradient noise "
                      f"measurable at {sizes} (B_noise far below them)")
    return trace_mean / g2_mean, None


def pool(figures: Sequence[Optional[NoiseScaleFigures]], *, seed: int = 0) -> Optional[NoiseScaleFigures]:
    """One estimate from the steps of several windows (or settings): every per-step estimate is unbiased for the
    same |G|^2 and tr(Sigma) whatever its batch sizes, so the steps pool as they are. None with no step."""
    present = [f for f in figures if f is not None and f.step_g2]
    if not present:
        return None
    return from_step_estimates([g for f in present for g in f.step_g2],
                               [t for f in present for t in f.step_trace_sigma],
                               batch_sizes=tuple(sorted({b for f in present for b in f.batch_sizes})), seed=seed)
