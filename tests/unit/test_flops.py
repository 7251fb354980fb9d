"""FLOPs per token, peak-table lookup and MFU."""

import math

import pytest

from trainer_tune.flops import PEAK_TFLOPS, lookup_peak_tflops, mfu, transformer_flops_per_token


def test_hand_worked_dense_causal_example() -> None:
    # N = 1,000,000 matmul weights, 2 layers, d_model = 128, seq_len = 128.
    # weights:   6 * 1,000,000                       = 6,000,000
    # attention: forward per layer per token = 4 * d_model * (seq_len + 1) / 2
    #                                        = 4 * 128 * 129 / 2 = 33,024
    #            training (x3), 2 layers     = 3 * 2 * 33,024    =   198,144
    # total                                                      = 6,198,144
    flops = transformer_flops_per_token(
        num_params_non_embedding=1_000_000, n_layers=2, d_model=128, seq_len=128
    )
    assert flops == 6_198_144


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


def test_mfu_hand_worked() -> None:
    # 6e9 FLOPs/token * 100,000 tokens/s = 6e14 FLOP/s = 600 TFLOP/s over 2 devices
    # = 300 TFLOP/s per device; / 989.4 peak = 0.30321...
    result = mfu(flops_per_token=6e9, tokens_per_s=100_000, num_devices=2, peak_tflops_per_device=989.4)
    assert result.achieved_tflops == pytest.approx(600.0)
    assert result.achieved_tflops_per_device == pytest.approx(300.0)
    assert result.mfu == pytest.approx(300.0 / 989.4)
    assert result.mfu_raw == result.mfu
    assert result.warning is None


def test_mfu_unknown_peak_is_none_with_warning() -> None:
    result = mfu(flops_per_token=6e9, tokens_per_s=1000, num_devices=1, peak_tflops_per_device=None)
    assert result.mfu is None and result.mfu_raw is None
    assert result.achieved_tflops == pytest.approx(6.0)
    assert result.warning is not None and "unknown" in result.warning


def test_mfu_above_one_is_flagged_not_reported() -> None:
    # 6e9 * 1e6 = 6e15 FLOP/s = 6000 TFLOP/s on one 989.4 TFLOP/s device: 606%.
    result = mfu(flops_per_token=6e9, tokens_per_s=1_000_000, num_devices=1, peak_tflops_per_device=989.4)
    assert result.mfu is None
    assert result.mfu_raw == pytest.approx(6000.0 / 989.4)
    assert result.warning is not None and "measurement" in result.warning


def test_mfu_exactly_one_is_allowed() -> None:
    result = mfu(flops_per_token=1e12, tokens_per_s=100, num_devices=1, peak_tflops_per_device=100.0)
    assert result.mfu is not None and math.isclose(result.mfu, 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"flops_per_token": 0}, {"tokens_per_s": -1}, {"num_devices": 0}, {"peak_tflops_per_device": 0.0}],
)
def test_mfu_rejects_bad_arguments(kwargs: dict) -> None:
    args = {"flops_per_token": 1.0, "tokens_per_s": 1.0, "num_devices": 1, "peak_tflops_per_device": 1.0} | kwargs
    with pytest.raises(ValueError):
        mfu(**args)
