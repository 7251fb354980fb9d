"""FLOPs of any model: FlopCounterMode counts one micro-step when a setting's trainer is built (flop_count.py), and
the result's MFU comes from it; the built-in GPT keeps its formula. One process, no process group: the same code
path as every rank of a sweep (window.measure_local, then combine_ranks and summarize.result_from_window)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.models import PlainMLP, random_features
from trainer_tune.config.schema import TuneConfig
from trainer_tune.platform.distributed import DistSession, RankEnv
from trainer_tune.measure.figures import ANALYTIC, FLOP_COUNTER
from trainer_tune.config.flags import TrialFlags
from trainer_tune.measure.flop_count import count_step_flops
from trainer_tune.measure.flops import gpt_flops_per_token
from trainer_tune.measure.summarize import TrialContext, result_from_window
from trainer_tune.evidence.estimate import aggregate_windows
from trainer_tune.plan import TrialSpec, build_plan, window_of
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.measure.window import LocalWindow, TrainerPool, combine_ranks, measure_local
from trainer_tune.workloads.model import build_model, count_parameters

MICRO_BATCH = 4
IN, HIDDEN, CLASSES = 12, 32, 5  # the helper models' defaults
PEAK_TFLOPS = 1.0
"""A made-up peak, so that MFU would be reported on this CPU: what the tests check is when it is not."""


def _session() -> DistSession:
    rank_env = RankEnv(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0, hostname="here",
                       under_torchrun=False, restart_count=0)
    return DistSession(rank_env=rank_env, device=torch.device("cpu"), backend=None)


def _cfg(model_target: str | None = "helpers.models.PlainMLP") -> TuneConfig:
    cfg = TuneConfig()
    cfg.model._target_ = model_target
    cfg.model.seq_len = 16
    if model_target is not None:
        cfg.data._target_ = "helpers.models.random_features"
    cfg.window.warmup_steps, cfg.window.measure_steps, cfg.window.max_measure_steps = 1, 2, 2
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = MICRO_BATCH, 1
    return cfg


def _spec(cfg: TuneConfig) -> TrialSpec:
    return build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")[0]


def _result(spec: TrialSpec, local: LocalWindow, *, flops_per_token: float | None = None) -> SettingEstimate:
    ctx = TrialContext(model_name="m", device="cpu", backend=None, num_warmup_steps=1, num_measured_steps=2,
                       label=spec.label(), flops_per_token=flops_per_token, peak_tflops_per_device=PEAK_TFLOPS)
    return result_from_window(spec, combine_ranks(local, session=_session()), ctx, started_at="t0", finished_at="t1")


def test_a_plain_mlp_is_counted_as_by_hand() -> None:
    # Hand count for Linear(12 -> 32), ReLU, Linear(32 -> 5) on a batch of B samples, 2 FLOPs per multiply-add:
    # - forward: 2*B*12*32 + 2*B*32*5;
    # - backward: each layer's weight gradient, 2*B*in*out again, but an input gradient only for the second layer:
    #   the features do not require grad, so autograd never computes the first layer's, and FlopCounterMode counts
    #   what autograd runs. Total 4*B*12*32 + 6*B*32*5. Biases (the add and the gradient's sum), ReLU and the loss
    #   are elementwise: 0 FLOPs in FlopCounterMode's convention, and in MFU's.
    hand = 4 * MICRO_BATCH * IN * HIDDEN + 6 * MICRO_BATCH * HIDDEN * CLASSES
    cfg = _cfg()
    spec = _spec(cfg)
    local = measure_local(cfg=cfg, spec=spec, session=_session())
    assert local.flops is not None and (local.flops.flops, local.flops.note) == (hand, None)
    result = _result(spec, local)
    assert result.ok and result.tokens_per_s is None and result.mfu_note is None
    mfu = result.mfu
    assert mfu is not None and mfu.flops_source == FLOP_COUNTER and mfu.count_note is None
    assert mfu.flops_per_sample == hand / MICRO_BATCH and mfu.flops_per_token is None  # images-like: no tokens
    assert result.samples_per_s is not None
    assert mfu.achieved_tflops == pytest.approx(hand / MICRO_BATCH * result.samples_per_s / 1e12)
    assert mfu.mfu == pytest.approx(mfu.achieved_tflops / PEAK_TFLOPS) and mfu.warning is None


def test_a_settings_mfu_follows_its_samples_per_s_over_windows() -> None:
    cfg = _cfg()
    setting = _spec(cfg)
    pool = TrainerPool()
    windows = []
    for round_id in ("r0", "r1"):
        spec = window_of(setting, round_id)
        windows.append(_result(spec, measure_local(cfg=cfg, spec=spec, session=_session(), pool=pool)))
    pool.clear()
    setting_result = aggregate_windows(windows)
    mfu = setting_result.mfu
    assert mfu is not None and setting_result.samples_per_s is not None and mfu.flops_per_sample is not None
    assert mfu.achieved_tflops == pytest.approx(mfu.flops_per_sample * setting_result.samples_per_s / 1e12)
    assert mfu.mfu == pytest.approx(mfu.achieved_tflops / PEAK_TFLOPS)


def test_counting_leaves_the_model_and_the_random_stream_as_they_were() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Dropout(0.5), nn.Linear(HIDDEN, CLASSES))  # dropout draws
    before = [p.detach().clone() for p in model.parameters()]
    batch = next(random_features(micro_batch_size=MICRO_BATCH, rank=0, seed=0))
    rng = torch.get_rng_state()
    flops = count_step_flops(model, batch, lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                             micro_batch_size=MICRO_BATCH, device=torch.device("cpu"))
    assert flops.flops == 4 * MICRO_BATCH * IN * HIDDEN + 6 * MICRO_BATCH * HIDDEN * CLASSES
    assert all(p.grad is None for p in model.parameters())  # the first trained step accumulates from nothing
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("keep", [True, False])
def test_a_setting_is_counted_once_whether_its_model_is_kept_or_rebuilt(keep: bool) -> None:
    cfg = _cfg()
    spec = _spec(cfg)
    pool = TrainerPool()
    pool.keep = keep
    PlainMLP.num_forwards = 0
    first = measure_local(cfg=cfg, spec=spec, session=_session(), pool=pool)
    assert PlainMLP.num_forwards == 1 + 1 + 2  # the count, one warm-up step, two measured steps
    PlainMLP.num_forwards = 0
    second = measure_local(cfg=cfg, spec=spec, session=_session(), pool=pool)
    assert PlainMLP.num_forwards == 1 + 2  # kept: one re-warming step; rebuilt: window.warmup_steps; no count
    assert second.flops == first.flops and first.flops is not None and first.flops.flops is not None
    pool.clear()


def test_an_op_without_a_formula_makes_the_count_a_lower_bound_and_mfu_none() -> None:
    cfg = _cfg("helpers.models.OpaqueHeadMLP")
    spec = _spec(cfg)
    local = measure_local(cfg=cfg, spec=spec, session=_session())
    result = _result(spec, local)
    assert result.ok and all(loss is not None and math.isfinite(loss) for loss in result.losses)  # it trained
    mfu = result.mfu
    assert mfu is not None and mfu.flops_source == FLOP_COUNTER
    assert mfu.flops_per_sample == 4 * IN * HIDDEN  # only the first layer: forward and its weight gradient
    assert mfu.count_note == ("FlopCounterMode has no formula for trainer_tune_tests.opaque_matmul and counts it "
                              "as 0 FLOPs: the count is a lower bound")
    assert mfu.mfu is None and mfu.mfu_raw is not None and mfu.warning == f"{mfu.count_note}; MFU not reported"


def test_a_model_the_counter_cannot_count_trains_and_has_no_mfu() -> None:
    cfg = _cfg("helpers.models.JaggedMLP")
    spec = _spec(cfg)
    local = measure_local(cfg=cfg, spec=spec, session=_session())
    result = _result(spec, local)
    assert result.ok and result.samples_per_s and all(loss is not None for loss in result.losses)
    assert result.mfu is None
    assert result.mfu_note is not None and result.mfu_note.startswith(
        "FlopCounterMode could not count one micro-step: TypeError: unsupported operand type(s) for @: "
        "'NestedTensor'"), "a later torch counts nested tensors: JaggedMLP needs another op the counter refuses"


def test_attention_on_cpu_counts_as_the_fused_kernels_do() -> None:
    # torch 2.13's table lacks SDPA's fused CPU kernel, which would count 0. With the counter's formulas for the
    # fused kernels: forward 2 products (scores, values) of 2*b*h*s*s*d FLOPs each; backward 5 (the scores
    # recomputed, then the gradients of scores, values, queries and keys): 14*b*h*s*s*d in all.
    b, h, s, d = 2, 3, 16, 8

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Parameter(torch.randn(3, b, h, s, d))

        def forward(self, _batch: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(*self.qkv, is_causal=True).square().mean()

    flops = count_step_flops(Attention(), torch.zeros(b), lambda m, batch: m(batch), micro_batch_size=b,
                             device=torch.device("cpu"))
    assert (flops.flops, flops.note) == (14 * b * h * s * s * d, None)


@pytest.mark.parametrize("groups", [1, 8])
def test_a_convolution_backward_counts_twice_its_forward_whatever_the_groups(groups: int) -> None:
    # Conv1d(8 -> 8 channels, kernel 3, groups) on [b, 8, 20] (output 18 long) whose input needs a gradient (it is
    # scaled by a parameter first): forward 2*b*18*8*(8/groups)*3 FLOPs, then the input gradient and the weight
    # gradient take as many each: 3x the forward. torch 2.13's own formula ignores groups for the weight gradient,
    # which for the depthwise case (groups=8) would read 8x too much there.
    b, channels, length, kernel = 2, 8, 20, 3

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))
            self.conv = nn.Conv1d(channels, channels, kernel, groups=groups, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x * self.scale).square().mean()

    forward = 2 * b * (length - kernel + 1) * channels * (channels // groups) * kernel
    flops = count_step_flops(Scaled(), torch.randn(b, channels, length), lambda m, batch: m(batch),
                             micro_batch_size=b, device=torch.device("cpu"))
    assert (flops.flops, flops.note) == (3 * forward, None)


def test_the_built_in_gpt_keeps_its_formula_and_is_not_counted() -> None:
    cfg = _cfg(model_target=None)
    spec = _spec(cfg)
    local = measure_local(cfg=cfg, spec=spec, session=_session())
    assert local.flops is None  # no count, no cost: tests/unit/test_flops.py pins the formula to the counter
    per_token = gpt_flops_per_token(cfg.model, num_parameters=count_parameters(build_model(cfg.model)))
    mfu = _result(spec, local, flops_per_token=per_token).mfu
    assert mfu is not None and mfu.flops_source == ANALYTIC and mfu.count_note is None
    assert mfu.flops_per_token == per_token and mfu.flops_per_sample == pytest.approx(per_token * cfg.model.seq_len)
