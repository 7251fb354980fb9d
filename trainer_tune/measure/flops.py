"""Model FLOPs per token of the built-in GPT, achieved FLOP/s and model FLOPs utilization (MFU).

MFU here is *model* FLOPs utilization: the FLOPs the model needs per sample divided by the device's dense
peak. For the built-in GPT trained by its own step they are known in closed form: what it mathematically needs
(no recomputation from activation checkpointing, no masked-out attention blocks a kernel computes anyway). Every
other model's are counted once per setting by FlopCounterMode (flop_count.py), which counts what the kernels are
asked to compute. It is a comparison figure, not a measurement of what the hardware did; the throughput stays
the measure of speed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trainer_tune.config.schema import Attention, ModelArgs, TuneConfig
from trainer_tune.workloads.nsa_attention import nsa_attention_flops_per_token

__all__ = [
    "PEAK_TFLOPS",
    "MfuResult",
    "analytic_flops_apply",
    "gpt_flops_per_token",
    "lookup_peak_tflops",
    "mfu",
    "nsa_compression_flops_per_token",
    "transformer_flops_per_token",
]


def transformer_flops_per_token(
    *,
    num_params_non_embedding: int,
    n_layers: int,
    d_model: int,
    seq_len: int,
    attention_flops_per_token_per_layer: float | None = None,
) -> float:
    """Training FLOPs (forward + backward) per token of a decoder-only transformer.

    ``flops = 6 * N + 3 * n_layers * A``

    - ``N`` = ``num_params_non_embedding``: every weight used in a matmul. Leave out the token and
      position embedding tables (a lookup, no FLOPs) but *count the LM head* (``vocab * d_model``),
      which is a real matmul even when its weight is tied to the token embedding (count it once).
      Each such weight costs 2 FLOPs per token forward (multiply + add) and 4 backward (gradient
      w.r.t. input and w.r.t. weight), hence 6. ``gpt_flops_per_token`` passes every parameter but
      the embedding tables, so biases and LayerNorm gains are charged 6 FLOPs each too, although no
      matmul uses them (the usual 6N convention; under 1% of N for the built-in shapes, see
      tests/unit/test_flops.py).
    - ``A`` = forward attention FLOPs per token per layer that no weight accounts for (the score
      ``Q @ K^T`` and the weighted sum ``P @ V``), tripled for training (backward is twice forward).
      By default, dense causal attention: query at position ``i`` (1-based) attends to ``i`` keys,
      so the average over a sequence is ``(seq_len + 1) / 2`` keys, and each key costs
      ``2 * d_model`` FLOPs for the score plus ``2 * d_model`` for the value sum::

          A = 4 * d_model * (seq_len + 1) / 2 = 2 * d_model * (seq_len + 1)

      so the attention term is ``6 * n_layers * d_model * (seq_len + 1)``, about half of the
      non-causal ``12 * n_layers * d_model * seq_len`` used in the PaLM paper's appendix.
      Softmax, norms and activations are ignored (a few percent at most).
    - For sparse or windowed attention, or heads whose ``n_heads * head_dim != d_model``, pass
      ``attention_flops_per_token_per_layer`` (forward FLOPs the kernel really has to compute per
      token per layer); it replaces the default ``A``.
    """
    if num_params_non_embedding <= 0:
        raise ValueError(f"num_params_non_embedding must be > 0, got {num_params_non_embedding}")
    if n_layers <= 0:
        raise ValueError(f"n_layers must be > 0, got {n_layers}")
    if d_model <= 0:
        raise ValueError(f"d_model must be > 0, got {d_model}")
    if seq_len <= 0:
        raise ValueError(f"seq_len must be > 0, got {seq_len}")
    if attention_flops_per_token_per_layer is None:
        attention_forward = 2.0 * d_model * (seq_len + 1)
    elif attention_flops_per_token_per_layer < 0:
        raise ValueError(
            "attention_flops_per_token_per_layer must be >= 0, "
            f"got {attention_flops_per_token_per_layer}"
        )
    else:
        attention_forward = float(attention_flops_per_token_per_layer)
    return 6.0 * num_params_non_embedding + 3.0 * n_layers * attention_forward


def nsa_compression_flops_per_token(*, d_model: int, n_heads: int, seq_len: int, block_size: int) -> float:
    """Forward FLOPs per token of NSA's block compression (keys and values).

    Per complete block and head, one ``[block_size * head_dim] -> [head_dim]`` linear map for the keys and one
    for the values: ``2 * 2 * block_size * head_dim**2`` FLOPs for ``block_size`` tokens. Over the
    ``floor(seq_len / block_size)`` complete blocks of a sequence, per token::

        4 * n_heads * head_dim**2 * block_size * floor(seq_len / block_size) / seq_len

    (about ``4 * head_dim * d_model``). Counting the compression weights in ``6 * N`` instead would charge
    them once per token and head, ``block_size / n_heads`` times too much.
    """
    head_dim = d_model // n_heads
    complete_tokens = (seq_len // block_size) * block_size
    return 4.0 * n_heads * head_dim * head_dim * complete_tokens / seq_len


def gpt_flops_per_token(args: ModelArgs, *, num_parameters: int) -> float:
    """Training FLOPs per token of the built-in GPT (trainer_tune/workloads/model.py) with ``num_parameters`` distinct
    parameters: ``transformer_flops_per_token`` with the attention term the layer really needs.

    The position table is a lookup (no FLOPs); the token embedding is counted once, as the tied LM head; biases
    and LayerNorm gains stay in ``N`` (6 FLOPs each, an over-count of under 1%). Dense attention uses the
    causal default. NSA counts, per layer, the keys each query really attends to in the
    three branches (``nsa_attention_flops_per_token``) plus the block compression, whose weights are taken
    out of ``N``; the gate's small linear map stays in ``N``. What the batched CPU path computes beyond that
    (masked keys, see ``nsa_attention_flops_per_token``) is not useful work and is not counted.
    """
    num_params_non_embedding = num_parameters - args.seq_len * args.d_model
    attention = None
    if args.attention == Attention.nsa:
        head_dim = args.d_model // args.n_heads
        compression_params = 2 * (head_dim * args.nsa_block_size * head_dim + head_dim)
        num_params_non_embedding -= args.n_layers * compression_params
        attention = nsa_attention_flops_per_token(
            d_model=args.d_model, n_heads=args.n_heads, seq_len=args.seq_len, block_size=args.nsa_block_size,
            num_selected_blocks=args.nsa_num_selected_blocks, window_size=args.nsa_window_size,
        ) + nsa_compression_flops_per_token(d_model=args.d_model, n_heads=args.n_heads, seq_len=args.seq_len,
                                            block_size=args.nsa_block_size)
    return transformer_flops_per_token(num_params_non_embedding=num_params_non_embedding, n_layers=args.n_layers,
                                       d_model=args.d_model, seq_len=args.seq_len,
                                       attention_flops_per_token_per_layer=attention)


def analytic_flops_apply(cfg: TuneConfig) -> bool:
    """Whether `gpt_flops_per_token` gives the FLOPs of the step the sweep trains: the built-in GPT (no
    model._target_) on its own step (no step._target_, which may run the model any number of times). Every other
    step is counted by FlopCounterMode when its trainer is built (flop_count.py); docs/measurement.md says why the
    GPT keeps its formula."""
    return cfg.model._target_ is None and cfg.step._target_ is None


# Dense (no structured sparsity) peak TFLOP/s per device, keyed by (family, dtype).
# "tf32" is the tensor-core rate that float32 matmuls get when TF32 is allowed; "float32" is the
# plain CUDA-core rate. Datasheets quote sparse figures with an asterisk: these are half of those.
PEAK_TFLOPS: dict[tuple[str, str], float] = {
    # NVIDIA A100 Tensor Core GPU datasheet (same peaks for SXM4 and PCIe, 40 GB and 80 GB).
    ("A100 SXM", "bfloat16"): 312.0,
    ("A100 SXM", "float16"): 312.0,
    ("A100 SXM", "tf32"): 156.0,
    ("A100 SXM", "float32"): 19.5,
    ("A100 PCIe", "bfloat16"): 312.0,
    ("A100 PCIe", "float16"): 312.0,
    ("A100 PCIe", "tf32"): 156.0,
    ("A100 PCIe", "float32"): 19.5,
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column.
    ("H100 SXM", "bfloat16"): 989.4,
    ("H100 SXM", "float16"): 989.4,
    ("H100 SXM", "tf32"): 494.7,
    ("H100 SXM", "float32"): 66.9,
    # Same datasheet, H100 PCIe column.
    ("H100 PCIe", "bfloat16"): 756.0,
    ("H100 PCIe", "float16"): 756.0,
    ("H100 PCIe", "tf32"): 378.0,
    ("H100 PCIe", "float32"): 51.0,
    # Same datasheet, H100 NVL column (per GPU; 1,671 sparse bf16, 835 sparse tf32).
    ("H100 NVL", "bfloat16"): 835.5,
    ("H100 NVL", "float16"): 835.5,
    ("H100 NVL", "tf32"): 417.5,
    ("H100 NVL", "float32"): 60.0,
    # NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column (same compute as H100 SXM).
    ("H200 SXM", "bfloat16"): 989.4,
    ("H200 SXM", "float16"): 989.4,
    ("H200 SXM", "tf32"): 494.7,
    ("H200 SXM", "float32"): 66.9,
    # Same datasheet, H200 NVL column (same compute as H100 NVL).
    ("H200 NVL", "bfloat16"): 835.5,
    ("H200 NVL", "float16"): 835.5,
    ("H200 NVL", "tf32"): 417.5,
    ("H200 NVL", "float32"): 60.0,
    # NVIDIA GH200 Grace Hopper Superchip datasheet: its Hopper GPU has H100 SXM compute.
    ("GH200", "bfloat16"): 989.4,
    ("GH200", "float16"): 989.4,
    ("GH200", "tf32"): 494.7,
    ("GH200", "float32"): 66.9,
    # NVIDIA HGX B200 datasheet (8-GPU board: 36 PF sparse bf16, 18 PF sparse tf32, 600 TF fp32),
    # divided by 8 GPUs and by 2 for dense.
    ("B200", "bfloat16"): 2250.0,
    ("B200", "float16"): 2250.0,
    ("B200", "tf32"): 1125.0,
    ("B200", "float32"): 75.0,
    # NVIDIA L4 Tensor Core GPU datasheet.
    ("L4", "bfloat16"): 121.0,
    ("L4", "float16"): 121.0,
    ("L4", "tf32"): 60.0,
    ("L4", "float32"): 30.3,
    # NVIDIA L40S GPU datasheet (362.05 dense bf16/fp16, 183 dense tf32).
    ("L40S", "bfloat16"): 362.0,
    ("L40S", "float16"): 362.0,
    ("L40S", "tf32"): 183.0,
    ("L40S", "float32"): 91.6,
    # NVIDIA A10 Tensor Core GPU datasheet.
    ("A10", "bfloat16"): 125.0,
    ("A10", "float16"): 125.0,
    ("A10", "tf32"): 62.5,
    ("A10", "float32"): 31.2,
    # NVIDIA V100 Tensor Core GPU datasheet (Volta: no bf16, no TF32), SXM2 and PCIe columns,
    # and the V100S PCIe datasheet.
    ("V100 SXM2", "float16"): 125.0,
    ("V100 SXM2", "float32"): 15.7,
    ("V100 PCIe", "float16"): 112.0,
    ("V100 PCIe", "float32"): 14.0,
    ("V100S PCIe", "float16"): 130.0,
    ("V100S PCIe", "float32"): 16.4,
    # NVIDIA Ada GPU architecture whitepaper, GeForce RTX 4090 column: tensor rates *with FP32
    # accumulate* (what PyTorch's bf16/fp16 matmuls use; fp16 accumulate would be 330.3).
    ("RTX 4090", "bfloat16"): 165.2,
    ("RTX 4090", "float16"): 165.2,
    ("RTX 4090", "tf32"): 82.6,
    ("RTX 4090", "float32"): 82.6,
}

# Families whose float32 matmuls can run on TF32 tensor cores (Ampere and newer).
_HAS_TF32 = frozenset(family for family, dtype in PEAK_TFLOPS if dtype == "tf32")

# torch.cuda.get_device_name() strings, lower-cased, matched in order: the first hit wins, so
# more specific names come first ("gh200" before "h200", "h100 nvl" before "h100", "l40s" before
# "l4"). Word boundaries keep "a10" from matching "a100" / "a10g" and "b200" from "gb200".
_NAME_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), family)
    for pattern, family in (
        (r"\bgh200\b", "GH200"),
        (r"\bh200\b.*\bnvl\b", "H200 NVL"),
        (r"\bh200\b", "H200 SXM"),
        (r"\bh100\b.*\bnvl\b", "H100 NVL"),
        (r"\bh100\b.*\bpcie\b", "H100 PCIe"),
        # "NVIDIA H100 80GB HBM3" is the SXM part; it reports no form factor.
        (r"\bh100\b", "H100 SXM"),
        (r"\ba100\b.*\bpcie\b", "A100 PCIe"),
        (r"\ba100\b", "A100 SXM"),
        (r"\bb200\b", "B200"),
        (r"\bl40s\b", "L40S"),
        (r"\bl4\b", "L4"),
        (r"\ba10\b", "A10"),
        (r"\bv100s\b", "V100S PCIe"),
        (r"\bv100\b.*\bpcie\b", "V100 PCIe"),
        (r"\bv100\b", "V100 SXM2"),
        (r"\brtx 4090\b", "RTX 4090"),
    )
)

_DTYPE_ALIASES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


def _device_family(device_name: str) -> str | None:
    lowered = device_name.lower()
    for pattern, family in _NAME_PATTERNS:
        if pattern.search(lowered):
            return family
    return None


def lookup_peak_tflops(*, device_name: str, dtype: str, tf32: bool = False) -> tuple[float | None, str | None]:
    """Dense peak TFLOP/s of one device for matmuls in ``dtype``, or ``(None, reason)``.

    ``device_name`` is what ``torch.cuda.get_device_name()`` reports. ``dtype`` is "bfloat16",
    "float16" or "float32" (a ``torch.`` prefix and bf16/fp16/fp32 are accepted too). ``tf32`` says
    whether float32 matmuls may use TF32 (``torch.backends.cuda.matmul.allow_tf32``, or
    ``torch.set_float32_matmul_precision("high")``); it is ignored on GPUs without TF32.
    """
    canonical = _DTYPE_ALIASES.get(dtype.lower().removeprefix("torch."))
    if canonical is None:
        return None, f"unknown dtype {dtype!r}: expected one of bfloat16, float16, float32"
    family = _device_family(device_name)
    if family is None:
        return None, f"no peak TFLOP/s known for device {device_name!r}; MFU cannot be computed"
    key = "tf32" if canonical == "float32" and tf32 and family in _HAS_TF32 else canonical
    peak = PEAK_TFLOPS.get((family, key))
    if peak is None:
        return None, f"{family} ({device_name!r}) has no {canonical} tensor-core rate in the peak table"
    return peak, None


@dataclass(frozen=True)
class MfuResult:
    """Achieved model FLOP/s and its ratio to the device peak."""

    achieved_tflops: float
    """Model TFLOP/s summed over all devices."""
    achieved_tflops_per_device: float
    """``achieved_tflops / num_devices``: what is compared with one device's peak."""
    peak_tflops_per_device: float | None
    """Dense peak of one device, or None when unknown."""
    mfu: float | None
    """Fraction of peak in [0, 1]; None when the peak is unknown or the ratio is impossible."""
    mfu_raw: float | None
    """The plain ratio, kept even when it exceeds 1.0 (for debugging a bad measurement)."""
    warning: str | None
    """Why ``mfu`` is None, in one line."""


def mfu(
    *,
    flops_per_sample: float,
    samples_per_s: float,
    num_devices: int,
    peak_tflops_per_device: float | None,
) -> MfuResult:
    """Model FLOPs utilization for ``samples_per_s`` processed over ``num_devices`` devices.

    ``samples_per_s`` is the global rate (all ranks, all accumulation steps). Any unit works as long as both
    figures are in it (FLOPs per token with tokens/s gives the same).
    """
    if flops_per_sample <= 0:
        raise ValueError(f"flops_per_sample must be > 0, got {flops_per_sample}")
    if samples_per_s < 0:
        raise ValueError(f"samples_per_s must be >= 0, got {samples_per_s}")
    if num_devices <= 0:
        raise ValueError(f"num_devices must be > 0, got {num_devices}")
    if peak_tflops_per_device is not None and peak_tflops_per_device <= 0:
        raise ValueError(f"peak_tflops_per_device must be > 0, got {peak_tflops_per_device}")

    achieved_tflops = flops_per_sample * samples_per_s / 1e12
    per_device = achieved_tflops / num_devices
    if peak_tflops_per_device is None:
        return MfuResult(
            achieved_tflops=achieved_tflops,
            achieved_tflops_per_device=per_device,
            peak_tflops_per_device=None,
            mfu=None,
            mfu_raw=None,
            warning="peak TFLOP/s of this device is unknown; MFU not computed",
        )
    ratio = per_device / peak_tflops_per_device
    warning = None
    if ratio > 1.0:
        # Above peak is physically impossible: the sample count, the clock (no device sync?) or the
        # FLOP count is wrong. Never let such a number through as a result.
        warning = (
            f"MFU {ratio:.1%} exceeds 100% ({per_device:.1f} of {peak_tflops_per_device:.1f} TFLOP/s "
            "per device): a measurement or FLOP-count error, not reported"
        )
    return MfuResult(
        achieved_tflops=achieved_tflops,
        achieved_tflops_per_device=per_device,
        peak_tflops_per_device=peak_tflops_per_device,
        mfu=ratio if warning is None else None,
        mfu_raw=ratio,
        warning=warning,
    )
