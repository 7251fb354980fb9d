"""The gradient noise scale, and what it says about a batch: statistical efficiency and goodput. Pure maths.

McCandlish et al., "An Empirical Model of Large-Batch Training" (2018), appendix A.1. A gradient averaged over
B samples, G_B, has

    E |G_B|^2 = |G|^2 + tr(Sigma) / B

with G the true gradient and Sigma the covariance of one sample's gradient. Squared norms read at two or more
batch sizes in the same step (window.noise_steps: a micro-batch, a rank's accumulated batch, the global batch)
are points on a line in 1/B: its intercept is an unbiased estimate of |G|^2 and its slope of tr(Sigma). With two
sizes b < B that is |G|^2 ~ (B|G_B|^2 - b|G_b|^2) / (B - b) and tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B);
with three, least squares. The noise scale is

    B_noise = tr(Sigma) / |G|^2    (samples)

estimated as the ratio of the two means over steps: a single step's |G|^2 estimate is a difference of noisy
squares and can be negative, its mean over steps is not. The interval is a block bootstrap over steps.

Statistical efficiency per sample against the baseline's global batch B0: reaching a given loss takes
E(B) = E_min (1 + B / B_noise) samples, so a sample at B is worth E(B0) / E(B) = (B_noise + B0) / (B_noise + B)
of one at B0: below 1 above B0, above 1 below it. Goodput (Pollux, OSDI 2021) is throughput times that
efficiency: samples (or tokens) per second, counted at what they are worth at the baseline's batch.

What it assumes: each loss is a mean over its samples (the default steps and Hugging Face losses are; a sum
would scale the squared norms by B^2), samples drawn independently (a rank's micro-batches and the ranks' streams
are different samples), and G and Sigma that do not change over the few steps pooled (they do change over
training: B_noise at initialisation is not the one later on, model.checkpoint measures from where you train).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Optional, Sequence

import numpy as np

from trainer_tune.measure.figures import NoiseScaleFigures
from trainer_tune.measure.record import TrialResult
from trainer_tune.evidence.stats import block_bootstrap_indices

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


def statistical_efficiency(batch_size: int, *, baseline_batch_size: int, noise_scale: float) -> float:
    """What a sample at `batch_size` is worth against one at the baseline's: (B_noise + B0) / (B_noise + B)."""
    return (noise_scale + baseline_batch_size) / (noise_scale + batch_size)


def efficiency_interval(batch_size: int, *, baseline_batch_size: int,
                        ci95: Optional[Sequence[Optional[float]]]) -> Optional[list[float]]:
    """The efficiency at the ends of B_noise's 95% interval (monotone in B_noise; an unbounded end is 1, where
    every batch is far below the noise scale)."""
    if ci95 is None:
        return None
    ends = [statistical_efficiency(batch_size, baseline_batch_size=baseline_batch_size, noise_scale=b)
            if b is not None else 1.0 for b in ci95]
    return [min(ends), max(ends)]


def sweep_noise_scale(settings: Sequence[TrialResult]) -> tuple[Optional[NoiseScaleFigures], str]:
    """The sweep's one B_noise, pooled over every finished setting's noise steps, and a note on what it rests on.

    One model, one data source, one starting point: the noise scale is a property of those, not of the setting
    (micro-batch, accumulation, flags only change which batch sizes were read), so all settings pool."""
    finished = [r for r in settings if r.ok and r.mode == "train"]
    measured = [r for r in finished if r.noise_scale is not None and r.noise_scale.step_g2]
    if not measured:
        notes = sorted({r.noise_scale_note for r in finished if r.noise_scale_note})
        why = "; ".join(notes) if notes else ("no finished setting measured noise steps" if finished
                                              else "no finished training setting")
        return None, f"not measured: {why}"
    pooled = pool([r.noise_scale for r in measured])
    assert pooled is not None
    note = (f"pooled over {pooled.num_steps} noise steps of {len(measured)} of {len(finished)} finished settings "
            f"(the noise scale belongs to the model, the data and the weights, not to the setting)")
    return pooled, note + (f"; {pooled.note}" if pooled.note else "")


def with_goodput(settings: Sequence[TrialResult],
                 noise: Optional[NoiseScaleFigures]) -> list[TrialResult]:
    """Each finished setting with its statistical efficiency against the baseline's global batch and its goodput
    (samples/s and tokens/s times the efficiency); unchanged where B_noise or the baseline is missing."""
    baseline = next((r for r in settings if r.is_baseline), None)
    if noise is None or noise.value is None or baseline is None:
        return list(settings)
    out = []
    for r in settings:
        if not r.ok or r.mode != "train":
            out.append(r)
            continue
        efficiency = statistical_efficiency(r.global_batch_size, baseline_batch_size=baseline.global_batch_size,
                                            noise_scale=noise.value)
        out.append(dataclasses.replace(
            r, statistical_efficiency=efficiency,
            statistical_efficiency_ci95=efficiency_interval(r.global_batch_size,
                                                            baseline_batch_size=baseline.global_batch_size,
                                                            ci95=noise.ci95),
            goodput_samples_per_s=r.samples_per_s * efficiency if r.samples_per_s is not None else None,
            goodput_tokens_per_s=r.tokens_per_s * efficiency if r.tokens_per_s is not None else None))
    return out
