"""FLOPs per token against an independent count (torch's FlopCounterMode), peak-table lookup and MFU."""

import math

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from trainer_tune.config.schema import Attention, ModelArgs
from trainer_tune.config.flags import TrialFlags
from trainer_tune.measure.flops import PEAK_TFLOPS, gpt_flops_per_token, lookup_peak_tflops, mfu, transformer_flops_per_token
from trainer_tune.workloads.model import GPT, count_parameters
from trainer_tune.workloads.nsa_attention import select_blocks, selected_token_mask


# --- gpt_flops_per_token against FlopCounterMode over one forward and backward of the built-in GPT ---------
#
# What each side counts (docs/measurement.md, "FLOPs per token", says the same for readers):
# - FlopCounterMode counts matrix products only (mm, addmm, bmm, SDPA kernels it knows), 2 FLOPs per
#   multiply-add, forward and backward as autograd really runs them. Elementwise work (softmax, GELU,
#   LayerNorm, bias adds, the loss, the optimizer) and embedding lookups are in neither count.
# - On CPU the fused SDPA kernel (aten._scaled_dot_product_flash_attention_for_cpu) is not in the counter's
#   table in torch 2.13 and would count as 0, so attention runs on SDPA's math backend here: plain bmm
#   products, whose backward is 2x the forward like any matmul.
# - The counter counts every entry of every score matrix the code computes; the formula counts useful work
#   only: the causal half of dense attention, and for NSA the keys each query really attends to in each
#   branch (the batched path scores masked keys too: every key in the selected branch, 2 * window - 1 keys
#   per query in the window branch, every block in the compressed one). Each scored (query, key) pair costs
#   the same in every branch (one q.k and one p.v product of head_dim multiply-adds per head), so the
#   counter's attention products times (useful pairs / computed pairs) is its count of useful work. Both
#   pair counts below come from masks enumerated here and the shapes the code multiplies, not from the
#   formula's closed forms.
# - The formula's 6 * N charges every parameter but the embedding tables 6 FLOPs per token, biases and
#   LayerNorm gains included, which no matmul uses: that, and only that, is left over.
#
# Tolerance: the formula must be at least the counter's useful work and less than 1% above it. The known excess
# (biases and LayerNorm gains) is 0.53% to 0.79% for the shapes below and 0.06% for gpt_125m and nsa_125m; every
# error the formula could plausibly make is far larger: leaving out the tied LM head (7% for tiny), charging
# the position table (3.5%), full instead of causal attention (7%), NSA's block compression weights charged
# per token in 6 * N (13%). The second assertion pins the excess to exactly 6 FLOPs per bias and LayerNorm
# parameter, so even a smaller error shows.

_BATCH = 1


def _counted_per_token(model: nn.Module, args: ModelArgs) -> tuple[float, float]:
    """(parameter matmuls, attention products) per token from FlopCounterMode, forward and backward."""
    input_ids = torch.randint(0, args.vocab_size, (_BATCH, args.seq_len), generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        model(input_ids).float().logsumexp(dim=-1).mean().backward()
    by_op = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    # Every weight (linear layers, the tied LM head, NSA's block compression) is an mm/addmm on flattened
    # tokens; every attention product is a bmm over [batch * heads]. Anything else would be unaccounted for.
    assert set(by_op) <= {"aten.mm", "aten.addmm", "aten.bmm"}, by_op
    assert by_op.get("aten.bmm", 0) > 0, "no attention products counted: did SDPA run a kernel the counter misses?"
    tokens = _BATCH * args.seq_len
    return (by_op.get("aten.mm", 0) + by_op.get("aten.addmm", 0)) / tokens, by_op["aten.bmm"] / tokens


def _attention_pairs(args: ModelArgs) -> tuple[int, int]:
    """(useful, computed) (query, key) pairs of one sequence in one layer, summed over the attention branches."""
    seq = args.seq_len
    query = torch.arange(seq)[:, None]
    key = torch.arange(seq)[None, :]
    causal = key <= query
    if args.attention == Attention.dense:
        return int(causal.sum()), seq * seq  # the math backend scores the full square, then masks
    block, window = args.nsa_block_size, args.nsa_window_size
    num_complete = seq // block
    compressed = (torch.arange(num_complete)[None, :] + 1) * block - 1 <= query  # block complete by query
    some_probs = torch.rand(1, 1, seq, num_complete, generator=torch.Generator().manual_seed(0))
    selected = selected_token_mask(select_blocks(some_probs, block_size=block,
                                                 num_selected_blocks=args.nsa_num_selected_blocks),
                                   seq_len=seq, block_size=block)
    in_window = causal & (query - key < window)
    useful = int(compressed.sum()) + int(selected.sum()) + int(in_window.sum())
    # Score matrices as the batched path shapes them: queries x complete blocks, queries x all keys, and per
    # chunk of `width` queries (the sequence padded to whole chunks) 2 * width - 1 keys.
    width = min(window, seq)
    computed = seq * num_complete + seq * seq + math.ceil(seq / width) * width * (2 * width - 1)
    return useful, computed


def _bias_and_norm_parameters(model: nn.Module) -> int:
    return sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None) + \
        sum(p.numel() for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())


# NSA's per-position loop (nsa.prefill_batched=false) does the same useful work and gets the same formula; it
# is left out here because it runs thousands of small ops, about 40 s under the counter on this machine.
@pytest.mark.parametrize("args", [
    ModelArgs(),  # model=tiny
    ModelArgs(vocab_size=300, seq_len=100, d_model=96, n_layers=3, n_heads=6, mlp_ratio=2),
    ModelArgs(attention=Attention.nsa),  # model=tiny_nsa
    # A partial last block, a window that does not divide the sequence, a selection that does not fit early on.
    ModelArgs(attention=Attention.nsa, seq_len=100, d_model=96, n_heads=3, nsa_block_size=16,
              nsa_num_selected_blocks=3, nsa_window_size=24),
], ids=["tiny", "dense-odd", "tiny_nsa", "nsa-odd"])
def test_formula_agrees_with_flop_counter(args: ModelArgs) -> None:
    torch.manual_seed(0)
    # Aux statistics off: with them the batched path adds one more forward-only score product, a statistic
    # rather than training work, which the formula leaves out on purpose.
    model = GPT(args, TrialFlags(prefill_batched=True, disable_aux_stats=True))
    weights, products = _counted_per_token(model, args)
    useful_pairs, computed_pairs = _attention_pairs(args)
    counted_useful = weights + products * useful_pairs / computed_pairs
    formula = gpt_flops_per_token(args, num_parameters=count_parameters(model))
    assert counted_useful <= formula < 1.01 * counted_useful, (formula, counted_useful)
    assert formula - counted_useful == pytest.approx(6 * _bias_and_norm_parameters(model), rel=1e-6)


def test_sparse_attention_override_replaces_dense_term() -> None:
    # Sliding window of 32 keys per query: forward 4 * 128 * 32 = 16,384 per layer per token.
    # total = 6 * 1,000,000 + 3 * 2 * 16,384 = 6,098,304
    flops = transformer_flops_per_token(
        num_params_non_embedding=1_000_000,
        n_layers=2,
        d_model=128,
        seq_len=4096,
        attention_flops_per_token_per_layer=4 * 128 * 32,
    )
    assert flops == 6_098_304


def test_zero_attention_override_leaves_only_weights() -> None:
    flops = transformer_flops_per_token(
        num_params_non_embedding=10, n_layers=3, d_model=8, seq_len=16, attention_flops_per_token_per_layer=0
    )
    assert flops == 60


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_params_non_embedding": 0},
        {"n_layers": 0},
        {"d_model": -1},
        {"seq_len": 0},
        {"attention_flops_per_token_per_layer": -5.0},
    ],
)
def test_flops_rejects_bad_arguments(kwargs: dict) -> None:
    args = {"num_params_non_embedding": 100, "n_layers": 1, "d_model": 8, "seq_len": 8} | kwargs
    with pytest.raises(ValueError):
        transformer_flops_per_token(**args)


@pytest.mark.parametrize(
    ("device_name", "dtype", "tf32", "expected"),
    [
        ("NVIDIA A100-SXM4-80GB", "bfloat16", False, 312.0),
        ("NVIDIA A100-SXM4-40GB", "float16", False, 312.0),
        ("NVIDIA A100-SXM4-80GB", "float32", True, 156.0),
        ("NVIDIA A100-SXM4-80GB", "float32", False, 19.5),
        ("NVIDIA A100-PCIE-40GB", "bfloat16", False, 312.0),
        ("NVIDIA A100 80GB PCIe", "float32", True, 156.0),
        ("NVIDIA H100 80GB HBM3", "bfloat16", False, 989.4),
        ("NVIDIA H100 80GB HBM3", "float32", True, 494.7),
        ("NVIDIA H100 80GB HBM3", "float32", False, 66.9),
        ("NVIDIA H100 PCIe", "bfloat16", False, 756.0),
        ("NVIDIA H100 PCIe", "float32", False, 51.0),
        ("NVIDIA H100 NVL", "bfloat16", False, 835.5),
        ("NVIDIA H200", "bfloat16", False, 989.4),
        ("NVIDIA H200", "float32", True, 494.7),
        ("NVIDIA H200 NVL", "bfloat16", False, 835.5),
        ("NVIDIA GH200 480GB", "bfloat16", False, 989.4),
        ("NVIDIA L4", "bfloat16", False, 121.0),
        ("NVIDIA L4", "float32", False, 30.3),
        ("NVIDIA L40S", "bfloat16", False, 362.0),
        ("NVIDIA L40S", "float32", False, 91.6),
        ("NVIDIA A10", "bfloat16", False, 125.0),
        ("NVIDIA A10", "float32", False, 31.2),
        ("Tesla V100-SXM2-32GB", "float16", False, 125.0),
        ("Tesla V100-SXM2-16GB", "float32", False, 15.7),
        # Volta has no TF32: float32 stays float32 even when TF32 is allowed.
        ("Tesla V100-SXM2-16GB", "float32", True, 15.7),
        ("Tesla V100-PCIE-16GB", "float16", False, 112.0),
        ("Tesla V100S-PCIE-32GB", "float16", False, 130.0),
        ("NVIDIA GeForce RTX 4090", "bfloat16", False, 165.2),
        ("NVIDIA GeForce RTX 4090", "float32", False, 82.6),
        ("NVIDIA B200", "bfloat16", False, 2250.0),
        ("NVIDIA H100 80GB HBM3", "torch.bfloat16", False, 989.4),
        ("NVIDIA H100 80GB HBM3", "bf16", False, 989.4),
    ],
)
def test_peak_lookup_by_reported_device_name(device_name: str, dtype: str, tf32: bool, expected: float) -> None:
    peak, reason = lookup_peak_tflops(device_name=device_name, dtype=dtype, tf32=tf32)
    assert (peak, reason) == (expected, None)


@pytest.mark.parametrize("device_name", ["NVIDIA A10G", "NVIDIA GB200", "AMD Instinct MI300X", "cpu", ""])
def test_unknown_device_gives_reason(device_name: str) -> None:
    peak, reason = lookup_peak_tflops(device_name=device_name, dtype="bfloat16")
    assert peak is None
    assert reason is not None and "no peak" in reason


def test_bf16_on_volta_gives_reason() -> None:
    peak, reason = lookup_peak_tflops(device_name="Tesla V100-SXM2-16GB", dtype="bfloat16")
    assert peak is None
    assert reason is not None and "bfloat16" in reason


def test_unknown_dtype_gives_reason() -> None:
    peak, reason = lookup_peak_tflops(device_name="NVIDIA H200", dtype="int8")
    assert peak is None
    assert reason is not None and "int8" in reason


def test_every_peak_is_positive_and_dense_bf16_matches_fp16() -> None:
    for (family, dtype), peak in PEAK_TFLOPS.items():
        assert peak > 0, (family, dtype)
        if dtype == "bfloat16":
            assert PEAK_TFLOPS[(family, "float16")] == peak


# Hopper datasheets quote tensor-core rates *with sparsity* (the asterisked figures): bf16/fp16 and TF32 per GPU,
# from the H100 (SXM, PCIe, NVL), H200 (SXM, NVL) and GH200 datasheets. MFU needs the dense rate, half of each.
# Keyed by what torch.cuda.get_device_name() reports on each part.
HOPPER_SPARSE_DATASHEET_TFLOPS = {
    "NVIDIA H100 80GB HBM3": (1979.0, 989.0),
    "NVIDIA H100 PCIe": (1513.0, 756.0),
    "NVIDIA H100 NVL": (1671.0, 835.0),
    "NVIDIA H200": (1979.0, 989.0),
    "NVIDIA H200 NVL": (1671.0, 835.0),
    "NVIDIA GH200 480GB": (1979.0, 989.0),
    "NVIDIA GH200 144G HBM3e": (1979.0, 989.0),
}


@pytest.mark.parametrize("device_name", sorted(HOPPER_SPARSE_DATASHEET_TFLOPS))
def test_hopper_peaks_are_dense_not_sparse(device_name: str) -> None:
    sparse_bf16, sparse_tf32 = HOPPER_SPARSE_DATASHEET_TFLOPS[device_name]
    for dtype, tf32, sparse in (("bfloat16", False, sparse_bf16), ("float16", False, sparse_bf16),
                                ("float32", True, sparse_tf32)):
        peak, reason = lookup_peak_tflops(device_name=device_name, dtype=dtype, tf32=tf32)
        assert reason is None and peak is not None, (device_name, dtype)
        # Datasheets round the sparse figure (1,979 for 2 x 989.4): half of it within 0.2%.
        assert peak == pytest.approx(sparse / 2, rel=2e-3), (device_name, dtype)


def test_mfu_hand_worked() -> None:
    # 6e9 FLOPs/sample * 100,000 samples/s = 6e14 FLOP/s = 600 TFLOP/s over 2 devices
    # = 300 TFLOP/s per device; / 989.4 peak = 0.30321...
    result = mfu(flops_per_sample=6e9, samples_per_s=100_000, num_devices=2, peak_tflops_per_device=989.4)
    assert result.achieved_tflops == pytest.approx(600.0)
    assert result.achieved_tflops_per_device == pytest.approx(300.0)
    assert result.mfu == pytest.approx(300.0 / 989.4)
    assert result.mfu_raw == result.mfu
    assert result.warning is None


def test_mfu_unknown_peak_is_none_with_warning() -> None:
    result = mfu(flops_per_sample=6e9, samples_per_s=1000, num_devices=1, peak_tflops_per_device=None)
    assert result.mfu is None and result.mfu_raw is None
    assert result.achieved_tflops == pytest.approx(6.0)
    assert result.warning is not None and "unknown" in result.warning


def test_mfu_above_one_is_flagged_not_reported() -> None:
    # 6e9 * 1e6 = 6e15 FLOP/s = 6000 TFLOP/s on one 989.4 TFLOP/s device: 606%.
    result = mfu(flops_per_sample=6e9, samples_per_s=1_000_000, num_devices=1, peak_tflops_per_device=989.4)
    assert result.mfu is None
    assert result.mfu_raw == pytest.approx(6000.0 / 989.4)
    assert result.warning is not None and "measurement" in result.warning


def test_mfu_exactly_one_is_allowed() -> None:
    result = mfu(flops_per_sample=1e12, samples_per_s=100, num_devices=1, peak_tflops_per_device=100.0)
    assert result.mfu is not None and math.isclose(result.mfu, 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"flops_per_sample": 0}, {"samples_per_s": -1}, {"num_devices": 0}, {"peak_tflops_per_device": 0.0}],
)
def test_mfu_rejects_bad_arguments(kwargs: dict) -> None:
    args = {"flops_per_sample": 1.0, "samples_per_s": 1.0, "num_devices": 1, "peak_tflops_per_device": 1.0} | kwargs
    with pytest.raises(ValueError):
        mfu(**args)
