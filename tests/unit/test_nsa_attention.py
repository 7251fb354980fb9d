"""Unit tests for trainer_tune.workloads.nsa_attention (CPU, a few seconds in total)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from trainer_tune.workloads.nsa_attention import (
    AUX_STAT_NAMES,
    NativeSparseAttention,
    compress_blocks,
    compressed_branch,
    dense_causal_attention_flops_per_token,
    nsa_attention_flops_per_token,
    select_blocks,
    selected_branch,
    window_branch,
)
from trainer_tune.platform.distributed import DistSession, RankEnv
from trainer_tune.workloads.nsa_stats import over_ranks


def _layer(**overrides: object) -> NativeSparseAttention:
    kwargs: dict[str, object] = dict(d_model=32, n_heads=4, block_size=4, num_selected_blocks=2, window_size=8)
    kwargs.update(overrides)
    return NativeSparseAttention(**kwargs)  # type: ignore[arg-type]


def _perturb_after(x: torch.Tensor, *, t: int, seq_dim: int) -> torch.Tensor:
    """A copy of x whose positions > t along seq_dim are replaced by fresh noise."""
    changed = x.clone()
    future = changed.narrow(seq_dim, t + 1, x.shape[seq_dim] - t - 1)
    future.copy_(torch.randn_like(future) * 3.0)
    return changed


@pytest.mark.parametrize("prefill_batched", [True, False])
def test_layer_is_causal(prefill_batched: bool) -> None:
    torch.manual_seed(0)
    layer = _layer(prefill_batched=prefill_batched)
    x = torch.randn(2, 19, 32)
    with torch.no_grad():
        reference = layer(x)
        for t in (0, 3, 4, 10, 17):
            changed = layer(_perturb_after(x, t=t, seq_dim=1))
            torch.testing.assert_close(changed[:, : t + 1], reference[:, : t + 1], rtol=1e-5, atol=1e-6)
            assert not torch.allclose(changed[:, t + 1 :], reference[:, t + 1 :])


def _all_branches(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int) -> list[torch.Tensor]:
    head_dim = q.shape[-1]
    weight = torch.randn(head_dim, block_size * head_dim, generator=torch.Generator().manual_seed(1)) * 0.1
    bias = torch.zeros(head_dim)
    k_cmp = compress_blocks(k, weight=weight, bias=bias, block_size=block_size)
    v_cmp = compress_blocks(v, weight=weight, bias=bias, block_size=block_size)
    out_cmp, probs = compressed_branch(q, k_cmp, v_cmp, block_size=block_size)
    block_idx = select_blocks(probs, block_size=block_size, num_selected_blocks=2)
    out_sel = selected_branch(q, k, v, block_idx=block_idx, block_size=block_size)
    out_win = window_branch(q, k, v, window_size=5)
    return [out_cmp, out_sel, out_win]


def test_each_branch_is_causal() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 22, 8) for _ in range(3))
    reference = _all_branches(q, k, v, block_size=4)
    for t in (0, 2, 3, 7, 12, 20):
        changed = _all_branches(*(_perturb_after(x, t=t, seq_dim=2) for x in (q, k, v)), block_size=4)
        for name, new, old in zip(("compressed", "selected", "window"), changed, reference):
            torch.testing.assert_close(new[:, :, : t + 1], old[:, :, : t + 1], msg=f"{name} branch at t={t}")


def test_compressed_branch_is_zero_without_a_complete_block() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 4) for _ in range(3))
    weight, bias = torch.randn(4, 16), torch.randn(4)
    k_cmp = compress_blocks(k, weight=weight, bias=bias, block_size=4)
    v_cmp = compress_blocks(v, weight=weight, bias=bias, block_size=4)
    out, probs = compressed_branch(q, k_cmp, v_cmp, block_size=4)
    assert torch.isfinite(out).all()
    assert (out[:, :, :3] == 0).all()  # positions 0..2 precede the end of block 0
    assert (out[:, :, 3:] != 0).all()
    torch.testing.assert_close(probs[:, :, 3:].sum(-1), torch.ones(1, 2, 6))


SHAPES = [
    # (seq_len, block_size, num_selected_blocks, window_size)
    (37, 4, 3, 8),  # seq not a multiple of block_size
    (6, 4, 2, 16),  # seq shorter than the window
    (33, 4, 100, 3),  # more selected blocks requested than exist
    (5, 8, 2, 16),  # no complete block at all
    (64, 16, 4, 64),
    (20, 1, 3, 1),  # degenerate sizes
]


@pytest.mark.parametrize(("seq_len", "block_size", "num_selected_blocks", "window_size"), SHAPES)
def test_batched_and_looped_paths_agree(
    seq_len: int, block_size: int, num_selected_blocks: int, window_size: int
) -> None:
    torch.manual_seed(0)
    layer = _layer(block_size=block_size, num_selected_blocks=num_selected_blocks, window_size=window_size)
    x = torch.randn(2, seq_len, 32, requires_grad=True)
    upstream = torch.randn(2, seq_len, 32)
    results = []
    for prefill_batched in (True, False):
        layer.prefill_batched = prefill_batched
        out = layer(x)
        grads = torch.autograd.grad((out * upstream).sum(), [x, *layer.parameters()])
        results.append((out, grads, layer.last_aux_stats))
    (out_b, grads_b, stats_b), (out_l, grads_l, stats_l) = results
    torch.testing.assert_close(out_b, out_l, rtol=1e-5, atol=1e-5)
    names = ["x", *(name for name, _ in layer.named_parameters())]
    for name, grad_b, grad_l in zip(names, grads_b, grads_l):
        torch.testing.assert_close(grad_b, grad_l, rtol=1e-5, atol=1e-5, msg=f"gradient of {name}")
    for name in AUX_STAT_NAMES:
        torch.testing.assert_close(stats_b[name], stats_l[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prefill_batched", [True, False])
def test_every_parameter_gets_a_nonzero_gradient(prefill_batched: bool) -> None:
    torch.manual_seed(0)
    layer = _layer(prefill_batched=prefill_batched)
    layer(torch.randn(2, 2 * layer.block_size, 32)).square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_short_sequence_leaves_no_parameter_outside_the_graph() -> None:
    # DDP without find_unused_parameters needs a gradient (possibly zero) for every parameter.
    torch.manual_seed(0)
    layer = _layer(block_size=8)
    layer(torch.randn(2, 5, 32)).square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None, name
        if "compress" in name:
            assert (param.grad == 0).all(), name


def test_tiny_model_learns_a_fixed_batch() -> None:
    torch.manual_seed(0)
    vocab, d_model, seq_len = 16, 32, 24
    model = torch.nn.Sequential(
        torch.nn.Embedding(vocab, d_model),
        NativeSparseAttention(d_model=d_model, n_heads=2, block_size=4, num_selected_blocks=2, window_size=4),
        torch.nn.Linear(d_model, vocab),
    )
    tokens = torch.randint(0, vocab, (8, seq_len + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.cross_entropy(model(inputs).reshape(-1, vocab), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_aux_stats_are_collected_only_when_asked() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 20, 32)
    layer = _layer(collect_aux_stats=True)
    layer(x)
    stats = layer.last_aux_stats
    assert stats is not None and set(stats) == set(AUX_STAT_NAMES)
    for name, value in stats.items():
        assert value.ndim == 0 and not value.requires_grad and torch.isfinite(value), name
    for name in ("gate_compressed_mean", "gate_selected_mean", "gate_window_mean"):
        assert 0.0 < stats[name] < 1.0
    num_blocks = 20 // layer.block_size
    assert 0.0 < stats["selection_entropy"] <= math.log(num_blocks)

    quiet = _layer(collect_aux_stats=False)
    quiet(x)
    assert quiet.last_aux_stats is None


def test_a_window_of_aux_stats_is_averaged_over_ranks_in_one_reduction(tmp_path) -> None:
    steps = [{"b": torch.tensor(2.0), "a": torch.tensor(0.5)}, {"b": torch.tensor(4.0), "a": torch.tensor(1.5)}]
    calls = []

    def mean_over_ranks(stacked: torch.Tensor) -> list:
        calls.append(tuple(stacked.shape))
        return stacked.tolist()

    assert over_ranks(steps, mean_over_ranks) == [{"a": 0.5, "b": 2.0}, {"a": 1.5, "b": 4.0}]
    assert calls == [(2, 2)]  # one [steps, names] tensor, names sorted: one all-reduce for the whole window
    assert over_ranks([], mean_over_ranks) == [] and calls == [(2, 2)]
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no group already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        session = DistSession(rank_env=RankEnv.from_environ({}), device=torch.device("cpu"), backend="gloo")
        assert over_ranks(steps, session.mean_tensor_over_ranks) == [{"a": 0.5, "b": 2.0}, {"a": 1.5, "b": 4.0}]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 30, "n_heads": 4}, "d_model must be divisible by n_heads; got d_model=30, n_heads=4"),
        ({"d_model": 0}, "d_model must be an integer >= 1; got d_model=0"),
        ({"n_heads": -1}, "n_heads must be an integer >= 1; got n_heads=-1"),
        ({"block_size": 0}, "block_size must be an integer >= 1; got block_size=0"),
        ({"num_selected_blocks": 0}, "num_selected_blocks must be an integer >= 1; got num_selected_blocks=0"),
        ({"window_size": 2.5}, "window_size must be an integer >= 1; got window_size=2.5"),
        ({"window_size": True}, "window_size must be an integer >= 1; got window_size=True"),
    ],
)
def test_constructor_rejects_bad_arguments(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        _layer(**overrides)


def test_flops_against_hand_worked_examples() -> None:
    # d_model 8, seq 4, block 2, 1 selected block, window 2; positions t = 0..3:
    #   compressed keys floor((t+1)/2) = 0,1,1,2 (4); selected keys (t mod 2)+1 = 1,2,1,2 (6);
    #   window keys min(2, t+1) = 1,2,2,2 (7); 17 keys / 4 positions * 4 * d_model = 136.
    assert nsa_attention_flops_per_token(
        d_model=8, n_heads=2, seq_len=4, block_size=2, num_selected_blocks=1, window_size=2
    ) == pytest.approx(136.0)
    # d_model 4, seq 6, block 2, 2 selected, window 3: compressed 0,1,1,2,2,3 (9); selected
    #   1,2,3,4,3,4 (17); window 1,2,3,3,3,3 (15); 41 / 6 * 16.
    assert nsa_attention_flops_per_token(
        d_model=4, n_heads=1, seq_len=6, block_size=2, num_selected_blocks=2, window_size=3
    ) == pytest.approx(41 / 6 * 16)
    # Dense causal, d_model 8, seq 4: mean keys (1+2+3+4)/4 = 2.5, so 4 * 8 * 2.5.
    assert dense_causal_attention_flops_per_token(d_model=8, seq_len=4) == pytest.approx(80.0)
    with pytest.raises(ValueError, match="seq_len must be an integer >= 1; got seq_len=0"):
        nsa_attention_flops_per_token(
            d_model=8, n_heads=2, seq_len=0, block_size=2, num_selected_blocks=1, window_size=2
        )


def test_flops_cheaper_than_dense_for_long_sequences() -> None:
    nsa = nsa_attention_flops_per_token(
        d_model=1024, n_heads=16, seq_len=32768, block_size=64, num_selected_blocks=16, window_size=512
    )
    assert nsa < 0.15 * dense_causal_attention_flops_per_token(d_model=1024, seq_len=32768)
