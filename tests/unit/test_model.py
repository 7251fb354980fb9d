from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO
from trainer_tune.config.schema import Attention, ModelArgs, register_configs
from trainer_tune.config.flags import TrialFlags
from trainer_tune.measure.flops import gpt_flops_per_token
from trainer_tune.workloads.model import build_model, count_parameters
from trainer_tune.workloads.nsa_attention import AUX_STAT_NAMES, NativeSparseAttention, nsa_attention_flops_per_token

TINY = ModelArgs()


def test_logits_shape() -> None:
    model = build_model(TINY)
    assert model(torch.randint(0, 256, (3, 17))).shape == (3, 17, 256)


def test_causal_future_tokens_do_not_change_the_past() -> None:
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    tokens = torch.randint(0, 256, (2, 64))
    changed = tokens.clone()
    changed[:, 40:] = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :40], b[:, :40], atol=1e-6)
    assert not torch.allclose(a[:, 40:], b[:, 40:], atol=1e-3)


def test_125m_preset_size() -> None:
    args = ModelArgs(name="gpt_125m", vocab_size=50304, seq_len=1024, d_model=768, n_layers=12, n_heads=12)
    with torch.device("meta"):
        model = build_model(args)
    assert 120e6 < count_parameters(model) < 130e6


# --- native sparse attention in the GPT -------------------------------------------------------------------------

TINY_NSA = ModelArgs(name="tiny_nsa", attention=Attention.nsa, seq_len=64, nsa_block_size=8,
                     nsa_num_selected_blocks=2, nsa_window_size=16)


def _nsa_layers(model: torch.nn.Module) -> list[NativeSparseAttention]:
    return [m for m in model.modules() if isinstance(m, NativeSparseAttention)]


@pytest.mark.parametrize("flags", [TrialFlags(prefill_batched=True, disable_aux_stats=False),
                                   TrialFlags(prefill_batched=False, disable_aux_stats=True)])
def test_trial_flags_switch_every_nsa_layer(flags: TrialFlags) -> None:
    layers = _nsa_layers(build_model(TINY_NSA, flags))
    assert len(layers) == TINY_NSA.n_layers
    for layer in layers:
        assert layer.prefill_batched is flags.prefill_batched
        assert layer.collect_aux_stats is not flags.disable_aux_stats
    assert _nsa_layers(build_model(TINY, flags)) == []


@pytest.mark.parametrize("prefill_batched", [True, False])
def test_nsa_gpt_is_causal(prefill_batched: bool) -> None:
    torch.manual_seed(0)
    model = build_model(TINY_NSA, TrialFlags(prefill_batched=prefill_batched)).eval()
    tokens = torch.randint(0, 256, (2, 40))
    for t in (0, 7, 8, 21, 38):  # inside the first block, at a block edge, past the window
        changed = tokens.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1 + torch.randint(0, 255, changed[:, t + 1:].shape)) % 256
        with torch.no_grad():
            a, b = model(tokens), model(changed)
        torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(a[:, t + 1:], b[:, t + 1:], atol=1e-3)


def test_nsa_gpt_batched_and_looped_agree() -> None:
    torch.manual_seed(0)
    batched = build_model(TINY_NSA, TrialFlags(prefill_batched=True))
    looped = build_model(TINY_NSA, TrialFlags(prefill_batched=False))
    looped.load_state_dict(batched.state_dict())
    tokens = torch.randint(0, 256, (2, 50))
    torch.testing.assert_close(batched(tokens), looped(tokens), rtol=1e-4, atol=1e-5)
    for layer_b, layer_l in zip(_nsa_layers(batched), _nsa_layers(looped)):
        assert layer_b.last_aux_stats is not None and layer_l.last_aux_stats is not None
        for name in AUX_STAT_NAMES:
            torch.testing.assert_close(layer_b.last_aux_stats[name], layer_l.last_aux_stats[name], rtol=1e-4,
                                       atol=1e-5)


@pytest.mark.parametrize("args", [TINY, TINY_NSA], ids=["dense", "nsa"])
def test_every_parameter_gets_a_gradient(args: ModelArgs) -> None:
    """DDP runs with find_unused_parameters=false by default: every parameter must be reached."""
    torch.manual_seed(0)
    model = build_model(args)
    batch = torch.randint(0, 256, (2, 33))
    logits = model(batch[:, :-1])
    F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("args", "steps"), [(TINY, 40), (TINY_NSA, 30)], ids=["dense", "nsa"])
def test_loss_falls_on_a_fixed_batch(args: ModelArgs, steps: int) -> None:
    torch.manual_seed(0)
    model = build_model(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.randint(0, 256, (4, 65))
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, 256), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def _preset(name: str) -> ModelArgs:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        raw = compose(config_name="config", overrides=[f"model={name}"])
    return OmegaConf.to_object(raw).model  # type: ignore[union-attr]


@pytest.mark.parametrize("preset,low,high", [("tiny", 0.4e6, 0.6e6), ("tiny_nsa", 0.4e6, 0.6e6),
                                             ("gpt_125m", 120e6, 130e6), ("nsa_125m", 120e6, 135e6)])
def test_presets_parameter_counts(preset: str, low: float, high: float) -> None:
    args = _preset(preset)
    with torch.device("meta"):
        num_parameters = count_parameters(build_model(args))
    assert low < num_parameters < high, num_parameters
    assert args.attention == (Attention.nsa if "nsa" in preset else Attention.dense)


def test_nsa_flops_count_the_sparse_work_not_dense_attention() -> None:
    nsa, dense = _preset("nsa_125m"), _preset("gpt_125m")
    with torch.device("meta"):
        n_nsa = count_parameters(build_model(nsa))
    flops_nsa = gpt_flops_per_token(nsa, num_parameters=n_nsa)
    head_dim = nsa.d_model // nsa.n_heads
    compression = 2 * (head_dim * nsa.nsa_block_size * head_dim + head_dim)
    weights = 6 * (n_nsa - nsa.seq_len * nsa.d_model - nsa.n_layers * compression)
    attention = flops_nsa - weights
    # Per layer and token, 3x (forward + backward) the keys really attended plus the block compression.
    expected = 3 * nsa.n_layers * (
        nsa_attention_flops_per_token(d_model=768, n_heads=12, seq_len=2048, block_size=32, num_selected_blocks=8,
                                      window_size=256)
        + 4 * 12 * head_dim**2)
    assert attention == pytest.approx(expected)
    dense_same_shape = dataclasses.replace(nsa, attention=Attention.dense)
    with torch.device("meta"):
        n_dense = count_parameters(build_model(dense_same_shape))
    # At 2048 tokens a query attends to ~530 keys (64 compressed, 256 selected, 256 in the window, fewer early
    # on) against ~1024 for dense causal attention: a little over half its FLOPs, with the compression.
    assert attention < 0.6 * (gpt_flops_per_token(dense_same_shape, num_parameters=n_dense) - 6 * (
        n_dense - nsa.seq_len * nsa.d_model))
    assert gpt_flops_per_token(dense, num_parameters=124_475_904) > 6 * 124e6
