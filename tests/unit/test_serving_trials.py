"""mode=inference on one process: what a served window records (its mode, its forward FLOPs), counted
independently of the code under test (FlopCounterMode over a forward, or the layers' shapes by hand)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import REPO
from helpers.models import hand_forward_flops
from trainer_tune.config.schema import Mode, RecommendArgs, TuneConfig, register_configs
from trainer_tune.platform.distributed import DistSession, RankEnv
from trainer_tune.measure.figures import FLOP_COUNTER
from trainer_tune.config.flags import TrialFlags
from trainer_tune.evidence.estimate import aggregate_windows
from trainer_tune.measure.summarize import TrialContext, failed_result, result_from_window
from trainer_tune.plan import build_plan
from trainer_tune.decide.verdict import MEASURED, decide
from trainer_tune.measure.record import Status
from trainer_tune.run.sweep import _flops_per_token
from trainer_tune.measure.window import combine_ranks, measure_local
from trainer_tune.workloads.targets import ignored_settings
from trainer_tune.workloads.model import build_model

MICRO_BATCH = 4


def _compose(overrides: list[str], *, sweep: str = "+sweep=serving") -> TuneConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        raw = compose(config_name="config", overrides=[sweep, "window=quick", *overrides])
    return OmegaConf.to_object(raw)  # type: ignore[return-value]


def _session() -> DistSession:
    rank_env = RankEnv(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0, hostname="here",
                       under_torchrun=False, restart_count=0)
    return DistSession(rank_env=rank_env, device=torch.device("cpu"), backend=None)


def _context(cfg: TuneConfig, label: str) -> TrialContext:
    return TrialContext(model_name="m", device="cpu", backend=None, num_warmup_steps=1, num_measured_steps=4,
                        label=label, mode=cfg.mode)


def test_a_failed_served_window_is_recorded_as_inference() -> None:
    cfg = _compose([])
    spec = build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")[0]
    result = failed_result(spec, _context(cfg, spec.label()), status=Status.oom, error="out of memory",
                           started_at="t0", finished_at="t1")
    assert result.mode == "inference" and result.latency is None and result.samples_per_s is None


def test_the_gpts_serving_flops_are_its_counted_forward() -> None:
    """The built-in GPT's FLOPs per token in inference (a third of its training formula) against FlopCounterMode
    over one forward, on SDPA's math backend (plain bmm products the counter knows; the formula counts the causal
    half of the scores, the math backend scores the full square). What remains is the formula's charge for
    biases and LayerNorm gains, 2 FLOPs each per token in a forward: under 1%."""
    cfg = _compose([])
    assert cfg.mode == Mode.inference
    per_token = _flops_per_token(cfg)
    args = cfg.model
    torch.manual_seed(0)
    model = build_model(args, TrialFlags()).eval()
    input_ids = torch.randint(0, args.vocab_size, (1, args.seq_len))
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH), torch.inference_mode():
        model(input_ids)
    by_op = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    assert set(by_op) <= {"aten.mm", "aten.addmm", "aten.bmm"}, by_op
    weights = (by_op.get("aten.mm", 0) + by_op.get("aten.addmm", 0)) / args.seq_len
    causal = (args.seq_len + 1) / (2 * args.seq_len)  # useful (query, key) pairs over the full square
    counted = weights + by_op["aten.bmm"] / args.seq_len * causal
    biases_and_gains = sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None) \
        + sum(p.numel() for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    assert per_token is not None and counted <= per_token < 1.01 * counted
    assert per_token - counted == pytest.approx(2 * biases_and_gains, rel=1e-6)


def test_a_served_cnn_counts_one_forward_and_its_tflops_follow_samples_per_s() -> None:
    cfg = _compose(["model=resnet_small", "data=images", f"train.micro_batch_size={MICRO_BATCH}"])
    spec = build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")[0]
    local = measure_local(cfg=cfg, spec=spec, session=_session())
    assert local.losses == [] and local.no_sync_step_times_s == [] and local.ddp_applied is None
    model = build_model(cfg.model, TrialFlags())
    hand = hand_forward_flops(model, torch.zeros(MICRO_BATCH, 3, 32, 32))
    assert local.flops is not None and (local.flops.flops, local.flops.note) == (hand, None)
    ctx = _context(cfg, spec.label())
    result = result_from_window(spec, combine_ranks(local, session=_session()),
                                ctx, started_at="t0", finished_at="t1")
    assert result.ok and result.mode == "inference" and result.latency is not None
    mfu = result.mfu
    assert mfu is not None and mfu.flops_source == FLOP_COUNTER and mfu.flops_per_sample == hand / MICRO_BATCH
    assert result.samples_per_s is not None
    assert mfu.achieved_tflops == pytest.approx(hand / MICRO_BATCH * result.samples_per_s / 1e12)


def test_one_served_setting_is_measured_with_its_p99_and_the_serving_sweep_to_add() -> None:
    cfg = _compose(["model=resnet_small", "data=images"], sweep="mode=inference")
    spec = build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")[0]
    result = result_from_window(spec, combine_ranks(measure_local(cfg=cfg, spec=spec, session=_session()),
                                                    session=_session()),
                                _context(cfg, spec.label()), started_at="t0", finished_at="t1")
    rec = decide([aggregate_windows([result])], args=RecommendArgs())
    assert result.latency is not None and rec.decision == MEASURED
    assert f", p99 {result.latency.p99_ms:,.1f} ms); one setting, nothing to compare" in rec.verdict
    assert "no sweep: add +sweep=serving or sweep.* keys" in rec.reasons[0]


def test_training_only_settings_are_named_as_ignored_in_inference() -> None:
    notes = ignored_settings(_compose(["loss._target_=torch.nn.functional.mse_loss", "ddp.static_graph=true"]))
    assert notes == ["loss._target_='torch.nn.functional.mse_loss' is ignored with mode=inference: a served batch "
                     "has no loss",
                     "ddp.static_graph=true is ignored with mode=inference: there is no DDP, each rank serves on its "
                     "own"]
    assert ignored_settings(_compose([])) == []
