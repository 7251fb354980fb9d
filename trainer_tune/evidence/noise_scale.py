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
from typing import Optional, Sequence


from trainer_tune.measure.figures import NoiseScaleFigures
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.measure.noise_estimate import pool

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


def sweep_noise_scale(settings: Sequence[SettingEstimate]) -> tuple[Optional[NoiseScaleFigures], str]:
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
            f"(the noise scale belongs to the model, the data and the weights, not to the setting), "
            f"{_where_read(measured)}")
    return pooled, note + (f"; {pooled.note}" if pooled.note else "")


def _where_read(measured: Sequence[SettingEstimate]) -> str:
    """Where the noise steps read: every setting's initial weights (window.py runs them before any other step), or,
    in windows recorded before that, after each window's own measured steps."""
    if not all(r.noise_read_at_start for r in measured):
        return ("read after each setting's measured steps (windows recorded before 2026-12), so at a different "
                "training point per setting")
    checkpoint = any(o.startswith("model.checkpoint=") and o != "model.checkpoint=null"
                     for r in measured for o in r.run_overrides)
    if checkpoint:
        return "each read at the checkpoint's weights (model.checkpoint) before any step"
    return ("each read at the model's random initial weights before any step: the noise scale there is not the one "
            "later in training (it grows as the loss falls), so without model.checkpoint this goodput advice is "
            "about the start of training and favours small batches; model.checkpoint measures from where you train")


def with_goodput(settings: Sequence[SettingEstimate],
                 noise: Optional[NoiseScaleFigures]) -> list[SettingEstimate]:
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
