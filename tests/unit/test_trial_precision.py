"""A setting's precision reaches the trainer's step on CPU: bf16 and fp16 really autocast the forward's matrix
products, fp16 scales the loss with a GradScaler, and the noise steps read true (unscaled) gradients. One process,
no process group: the trainer every rank of a sweep builds."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from trainer_tune.config.schema import Precision, TuneConfig
from trainer_tune.platform.distributed import DistSession, RankEnv
from trainer_tune.platform.faults import NO_FAULT
from trainer_tune.config.flags import TrialFlags
from trainer_tune.measure.flops import lookup_peak_tflops
from trainer_tune.measure.noise_steps import run_noise_steps
from trainer_tune.plan import build_plan
from trainer_tune.run.sweep import _peak_tflops
from trainer_tune.measure.window import _Trainer


def _trainer(precision: str, *, grad_accum: int = 1) -> _Trainer:
    cfg = TuneConfig()
    cfg.model.seq_len, cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads = 16, 32, 1, 2
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = 2, grad_accum
    rank_env = RankEnv(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0, hostname="here",
                       under_torchrun=False, restart_count=0)
    session = DistSession(rank_env=rank_env, device=torch.device("cpu"), backend=None)
    spec = build_plan(cfg, world_size=1, base_flags=TrialFlags(), device_type="cpu")[0]
    spec = dataclasses.replace(spec, flags=TrialFlags(precision=precision))
    return _Trainer(cfg=cfg, spec=spec, session=session, fault=NO_FAULT, heartbeat=lambda _s, _m: None)


def _linear_output_dtypes(trainer: _Trainer) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in trainer.module.modules() if isinstance(m, nn.Linear)]
    try:
        trainer.step(trainer.steps_done)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                                  ("fp16", torch.float16)])
def test_the_forward_autocasts_to_the_settings_precision(precision: str, dtype: torch.dtype) -> None:
    trainer = _trainer(precision)
    assert _linear_output_dtypes(trainer) == {dtype}
    # Weights (and so gradients and optimizer state) stay float32 in every precision.
    assert {p.dtype for p in trainer.module.parameters()} == {torch.float32}
    assert (trainer.scaler is not None) == (precision == "fp16")


def test_fp16_scales_the_loss_and_the_noise_steps_read_unscaled_gradients() -> None:
    fp16, fp32 = _trainer("fp16", grad_accum=2), _trainer("fp32", grad_accum=2)
    assert fp16.scaler is not None and fp16.scaler.is_enabled()
    # The gradient flowing back through the model carries the loss scale (2**16 at the start).
    weight = next(p for p in fp16.module.parameters() if p.dim() == 2)
    reference = next(p for p in fp32.module.parameters() if p.dim() == 2)
    seen: dict[str, float] = {}
    weight.register_hook(lambda g: seen.__setitem__("fp16", float(g.norm())))
    reference.register_hook(lambda g: seen.__setitem__("fp32", float(g.norm())))
    fp16.step(0)
    fp32.step(0)
    assert seen["fp16"] / seen["fp32"] == pytest.approx(fp16.scaler.get_scale(), rel=0.05)
    # Same seed, same batches: the noise steps' squared norms agree with fp32's (within fp16's rounding), for the
    # micro-batch reading (scale divided out) and the accumulated one (GradScaler.unscale_ before it).
    (half,), (full,) = run_noise_steps(fp16, num_steps=1, world_size=1), run_noise_steps(fp32, num_steps=1, world_size=1)
    assert [b for b, _ in half] == [b for b, _ in full] == [2, 4]
    for (_, g2_half), (_, g2_full) in zip(half, full):
        assert g2_half == pytest.approx(g2_full, rel=0.05)


def test_each_precision_gets_its_own_peak_for_mfu(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: the device name is the only CUDA call the lookup makes, so it is given; the peak table is real.
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device=None: "NVIDIA H100 80GB HBM3")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    cfg, device = TuneConfig(), torch.device("cuda", 0)
    peaks = {p: _peak_tflops(cfg, device, precision=p)[0] for p in Precision}
    assert peaks[Precision.bf16] == lookup_peak_tflops(device_name="NVIDIA H100 80GB HBM3", dtype="bfloat16")[0]
    assert peaks[Precision.fp16] == lookup_peak_tflops(device_name="NVIDIA H100 80GB HBM3", dtype="float16")[0]
    assert peaks[Precision.fp32] == lookup_peak_tflops(device_name="NVIDIA H100 80GB HBM3", dtype="float32", tf32=tf32)[0]
    assert peaks[Precision.bf16] > peaks[Precision.fp32]  # type: ignore[operator]
    assert _peak_tflops(cfg, torch.device("cpu"), precision=Precision.bf16)[0] is None
