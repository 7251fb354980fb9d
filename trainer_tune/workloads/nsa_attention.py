"""Native sparse attention (NSA, DeepSeek 2025) in plain PyTorch.

Each query position t mixes three causal attention branches with a learned per-head sigmoid gate:

* compressed: every complete block of ``block_size`` keys/values is compressed into one key and one
  value by a learned linear map over the flattened block (initialised to mean pooling; because each
  in-block position has its own weights, it also plays the part of an intra-block position embedding).
  Query t sees block j only when the block's last token is <= t. A query with no complete block
  gets exactly zero from this branch.
* selected: the compressed-branch softmax probabilities of each head rank that head's past blocks
  (selection is per head, not shared across heads: there are no key/value groups here to share it
  over). Each query keeps its top ``num_selected_blocks`` blocks, always including the block that
  contains it, and attends to their tokens at full resolution with a causal mask (token <= t).
  Ties are broken towards the lower block index (stable sort), so both code paths pick the same set.
* sliding window: causal attention over positions t - window_size + 1 .. t.

Block selection is an index choice, so no gradient flows through it; the compression parameters learn
only from the compressed branch.

Unused parameters and DDP: every parameter is in the autograd graph for every sequence length, so
``find_unused_parameters=False`` is safe. When seq_len < block_size no block is complete: the
compression parameters are still reached through an empty tensor and receive an all-zero gradient
(not ``None``). For seq_len >= block_size every parameter gets a real gradient.

``prefill_batched=False`` runs a Python loop over query positions that computes the same result; it
models the slow path of the real ``NSA_PREFILL_BATCHED`` flag.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AUX_STAT_NAMES = ("gate_compressed_mean", "gate_selected_mean", "gate_window_mean", "selection_entropy",
                  "selected_attention_entropy", "selected_window_overlap")
"""Per layer and micro-step: the mean gate of each branch, the mean entropy of the block-selection
distribution (nats), the mean entropy of the selected branch's attention (nats), and the mean share of each
query's selected tokens that its sliding window covers as well (redundant work between the two branches)."""


def _masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim restricted to ``mask``; rows with nothing allowed become all zero.

    Filling with the dtype's minimum instead of -inf keeps all-masked rows finite (uniform), and the
    final multiplication zeroes them, so neither the output nor the gradient can become NaN.
    """
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * mask


def compress_blocks(x: Tensor, *, weight: Tensor, bias: Tensor, block_size: int) -> Tensor:
    """[batch, heads, seq, head_dim] -> [batch, heads, seq // block_size, head_dim]; partial tail dropped."""
    batch, heads, seq_len, head_dim = x.shape
    num_blocks = seq_len // block_size
    blocks = x[:, :, : num_blocks * block_size].reshape(batch, heads, num_blocks, block_size * head_dim)
    return F.linear(blocks, weight, bias)


def compressed_branch(q: Tensor, k_cmp: Tensor, v_cmp: Tensor, *, block_size: int) -> tuple[Tensor, Tensor]:
    """Attention of all queries over complete past blocks. Returns (output, block probabilities)."""
    seq_len, num_blocks = q.shape[2], k_cmp.shape[2]
    scores = (q @ k_cmp.transpose(-1, -2)) * q.shape[-1] ** -0.5
    block_last_token = (torch.arange(num_blocks, device=q.device) + 1) * block_size - 1
    allowed = block_last_token[None, :] <= torch.arange(seq_len, device=q.device)[:, None]
    probs = _masked_softmax(scores, allowed)
    return probs @ v_cmp, probs


def select_blocks(cmp_probs: Tensor, *, block_size: int, num_selected_blocks: int) -> Tensor:
    """Per query and head, the indices of the chosen blocks: [batch, heads, seq, k].

    The current block ranks first (+inf), past blocks by compressed probability, future blocks last
    (-inf). When fewer than ``num_selected_blocks`` blocks exist in the past, some returned indices
    point at future blocks; the selected branch masks their tokens out via token <= t.
    """
    seq_len, num_complete = cmp_probs.shape[2], cmp_probs.shape[3]
    num_blocks = math.ceil(seq_len / block_size)
    block = torch.arange(num_blocks, device=cmp_probs.device)[None, :]
    current = (torch.arange(seq_len, device=cmp_probs.device) // block_size)[:, None]
    importance = F.pad(cmp_probs.detach(), (0, num_blocks - num_complete))
    importance = importance.masked_fill(block > current, -math.inf).masked_fill(block == current, math.inf)
    order = torch.sort(importance, dim=-1, descending=True, stable=True).indices
    return order[..., : min(num_selected_blocks, num_blocks)]


def selected_token_mask(block_idx: Tensor, *, seq_len: int, block_size: int) -> Tensor:
    """[batch, heads, seq, seq] booleans: key s is in one of query t's selected blocks and s <= t.

    The causal part also drops any future block that select_blocks returned as filler. Every query keeps at
    least its own token, so no row is fully masked.
    """
    num_blocks = math.ceil(seq_len / block_size)
    chosen = torch.zeros(*block_idx.shape[:3], num_blocks, dtype=torch.bool, device=block_idx.device)
    chosen.scatter_(-1, block_idx, True)
    token_chosen = chosen.repeat_interleave(block_size, dim=-1)[..., :seq_len]  # [b, h, t, seq]
    position = torch.arange(seq_len, device=block_idx.device)
    return token_chosen & (position[None, :] <= position[:, None])


def selected_branch(q: Tensor, k: Tensor, v: Tensor, *, block_idx: Tensor, block_size: int) -> Tensor:
    """Full-resolution attention over the tokens of each query's selected blocks, all queries at once.

    A boolean [batch, heads, seq, seq] mask of the selected tokens goes to the fused SDPA kernel,
    which never materialises float scores. Gathering the selected keys per query instead would build
    [batch, heads, seq, k * block_size, head_dim], larger than the mask whenever seq < k * block_size
    * head_dim, and was several times slower on CPU at seq 256. The price is compute and mask memory
    quadratic in seq, like dense attention.
    """
    mask = selected_token_mask(block_idx, seq_len=q.shape[2], block_size=block_size)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@torch.no_grad()
def _selected_stats_batched(q: Tensor, k: Tensor, *, block_idx: Tensor, block_size: int,
                            window_size: int) -> dict[str, Tensor]:
    """Per query [batch, heads, seq]: the entropy of its selected-branch attention and the share of its selected
    tokens that the sliding window covers too.

    The fused kernel in selected_branch never shows its probabilities, so the entropy needs the scores again:
    a second [batch, heads, seq, seq] product and softmax, the real price of this statistic.
    """
    seq_len = q.shape[2]
    mask = selected_token_mask(block_idx, seq_len=seq_len, block_size=block_size)
    probs = _masked_softmax((q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5, mask)
    position = torch.arange(seq_len, device=q.device)
    distance = position[:, None] - position[None, :]
    in_window = (distance >= 0) & (distance < window_size)
    return {"selected_attention_entropy": torch.special.entr(probs).sum(dim=-1),
            "selected_window_overlap": (mask & in_window).sum(dim=-1) / mask.sum(dim=-1)}


def window_branch(q: Tensor, k: Tensor, v: Tensor, *, window_size: int) -> Tensor:
    """Causal sliding-window attention over the last ``window_size`` positions, for all queries.

    Queries go in chunks of width = min(window_size, seq) positions; chunk i sees keys i*width - width
    + 1 .. i*width + width - 1, so each chunk is one dense [width, 2 * width - 1] product and memory
    stays linear in seq.
    """
    batch, heads, seq_len, head_dim = q.shape
    width = min(window_size, seq_len)  # a window longer than the sequence only adds padding
    num_chunks = math.ceil(seq_len / width)
    tail = num_chunks * width - seq_len
    q_chunks = F.pad(q, (0, 0, 0, tail)).view(batch, heads, num_chunks, width, head_dim)
    k_chunks = F.pad(k, (0, 0, width - 1, tail)).unfold(2, 2 * width - 1, width)  # [b, h, c, d, 2w-1]
    v_chunks = F.pad(v, (0, 0, width - 1, tail)).unfold(2, 2 * width - 1, width)
    scores = (q_chunks @ k_chunks) * head_dim**-0.5  # [b, h, c, width, 2w-1]
    row = torch.arange(width, device=q.device)[:, None]
    col = torch.arange(2 * width - 1, device=q.device)[None, :]
    distance = row + width - 1 - col  # query position minus key position
    chunk_start = (torch.arange(num_chunks, device=q.device) * width)[:, None, None]
    allowed = (distance >= 0) & (distance < width) & (chunk_start - (width - 1) + col >= 0)
    out = _masked_softmax(scores, allowed) @ v_chunks.transpose(-1, -2)
    return out.reshape(batch, heads, num_chunks * width, head_dim)[:, :, :seq_len]


Branches = tuple[Tensor, Tensor, Tensor, "Tensor | None", "dict[str, Tensor] | None"]
"""Outputs of the compressed, selected and window branches [batch, heads, seq, head_dim], then, with
keep_stats (the looped path keeps them only then), the compressed block probabilities [batch, heads, seq,
complete blocks] and per-query statistics of the selected branch [batch, heads, seq]."""


def _branches_batched(
    q: Tensor, k: Tensor, v: Tensor, k_cmp: Tensor, v_cmp: Tensor, *, block_size: int, num_selected_blocks: int,
    window_size: int, keep_stats: bool,
) -> Branches:
    out_cmp, cmp_probs = compressed_branch(q, k_cmp, v_cmp, block_size=block_size)
    block_idx = select_blocks(cmp_probs, block_size=block_size, num_selected_blocks=num_selected_blocks)
    out_sel = selected_branch(q, k, v, block_idx=block_idx, block_size=block_size)
    out_win = window_branch(q, k, v, window_size=window_size)
    sel_stats = _selected_stats_batched(q, k, block_idx=block_idx, block_size=block_size,
                                        window_size=window_size) if keep_stats else None
    return out_cmp, out_sel, out_win, cmp_probs, sel_stats


def _branches_at_position(
    q_t: Tensor, k: Tensor, v: Tensor, k_cmp: Tensor, v_cmp: Tensor, *, t: int, block_size: int,
    num_selected_blocks: int, window_size: int, keep_stats: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """The three branches for the single query position t; q_t is [batch, heads, head_dim]. With keep_stats,
    also the entropy of the selected attention and the window's share of the selected tokens, [batch, heads]."""
    scale = q_t.shape[-1] ** -0.5
    # Compressed: only complete blocks exist in the slice, so no mask is needed. With none, the empty
    # slice still yields a zero output and keeps the compression parameters in the graph.
    num_complete = (t + 1) // block_size
    probs_cmp = torch.softmax(torch.einsum("bhd,bhnd->bhn", q_t, k_cmp[:, :, :num_complete]) * scale, dim=-1)
    out_cmp = torch.einsum("bhn,bhnd->bhd", probs_cmp, v_cmp[:, :, :num_complete])

    current = t // block_size
    current_score = q_t.new_full((*q_t.shape[:2], 1), math.inf)
    importance = torch.cat([probs_cmp[..., :current].detach(), current_score], dim=-1)
    chosen = torch.sort(importance, dim=-1, descending=True, stable=True).indices[..., :num_selected_blocks]
    token_block = torch.arange(t + 1, device=q_t.device) // block_size
    token_chosen = (token_block[:, None] == chosen[..., None, :]).any(dim=-1)  # [b, h, t + 1]
    scores_sel = torch.einsum("bhd,bhsd->bhs", q_t, k[:, :, : t + 1]) * scale
    probs_sel = _masked_softmax(scores_sel, token_chosen)
    out_sel = torch.einsum("bhs,bhsd->bhd", probs_sel, v[:, :, : t + 1])

    start = max(0, t - window_size + 1)
    probs_win = torch.softmax(torch.einsum("bhd,bhsd->bhs", q_t, k[:, :, start : t + 1]) * scale, dim=-1)
    out_win = torch.einsum("bhs,bhsd->bhd", probs_win, v[:, :, start : t + 1])
    sel_stats = None
    if keep_stats:
        with torch.no_grad():
            sel_stats = (torch.special.entr(probs_sel.float()).sum(dim=-1),
                         token_chosen[..., start:].sum(dim=-1) / token_chosen.sum(dim=-1))
    return out_cmp, out_sel, out_win, probs_cmp, sel_stats


def _branches_looped(
    q: Tensor, k: Tensor, v: Tensor, k_cmp: Tensor, v_cmp: Tensor, *, block_size: int, num_selected_blocks: int,
    window_size: int, keep_stats: bool,
) -> Branches:
    """The per-position reference path; block probabilities and statistics are kept only for the aux stats."""
    outs_cmp, outs_sel, outs_win, entropies, overlaps = [], [], [], [], []
    cmp_probs = q.new_zeros(*q.shape[:3], k_cmp.shape[2]) if keep_stats else None
    for t in range(q.shape[2]):
        out_cmp, out_sel, out_win, probs, stats_t = _branches_at_position(
            q[:, :, t], k, v, k_cmp, v_cmp, t=t, block_size=block_size,
            num_selected_blocks=num_selected_blocks, window_size=window_size, keep_stats=keep_stats,
        )
        outs_cmp.append(out_cmp)
        outs_sel.append(out_sel)
        outs_win.append(out_win)
        if cmp_probs is not None and stats_t is not None:
            cmp_probs[:, :, t, : probs.shape[-1]] = probs.detach()
            entropies.append(stats_t[0])
            overlaps.append(stats_t[1])
    sel_stats = {"selected_attention_entropy": torch.stack(entropies, dim=2),
                 "selected_window_overlap": torch.stack(overlaps, dim=2)} if keep_stats else None
    return (torch.stack(outs_cmp, dim=2), torch.stack(outs_sel, dim=2), torch.stack(outs_win, dim=2), cmp_probs,
            sel_stats)


@torch.no_grad()
def _aux_stats(gates: Tensor, cmp_probs: Tensor, sel_stats: dict[str, Tensor]) -> dict[str, Tensor]:
    """Gate means per branch, the mean entropy of the compressed (block-selection) distribution, and the
    means of the selected branch's per-query statistics.

    A query with no complete past block has a deterministic selection (its own block only) and
    counts as entropy zero, so the statistic is always finite.
    """
    gate_means = gates.float().mean(dim=(0, 1, 2))
    entropy = torch.special.entr(cmp_probs.float()).sum(dim=-1).mean()
    return {"gate_compressed_mean": gate_means[0], "gate_selected_mean": gate_means[1],
            "gate_window_mean": gate_means[2], "selection_entropy": entropy,
            **{name: value.float().mean() for name, value in sel_stats.items()}}


def _require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {name}={value!r}")


class NativeSparseAttention(nn.Module):
    """Causal NSA self-attention: x [batch, seq, d_model] -> [batch, seq, d_model]."""

    def __init__(
        self, *, d_model: int, n_heads: int, block_size: int, num_selected_blocks: int, window_size: int,
        prefill_batched: bool = True, collect_aux_stats: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("block_size", block_size),
                            ("num_selected_blocks", num_selected_blocks), ("window_size", window_size)):
            _require_positive_int(name, value)
        if d_model % n_heads != 0:
            raise ValueError(
                f"d_model must be divisible by n_heads; got d_model={d_model}, n_heads={n_heads} "
                f"(allowed: n_heads dividing {d_model})"
            )
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.block_size = block_size
        self.num_selected_blocks = num_selected_blocks
        self.window_size = window_size
        self.prefill_batched = prefill_batched
        self.collect_aux_stats = collect_aux_stats
        self.last_aux_stats: dict[str, Tensor] | None = None

        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        # Shared across heads; starts as exact mean pooling so early training sees sensible block keys.
        mean_pool = torch.eye(self.head_dim).repeat(1, block_size) / block_size
        self.k_compress_weight = nn.Parameter(mean_pool.clone())
        self.k_compress_bias = nn.Parameter(torch.zeros(self.head_dim))
        self.v_compress_weight = nn.Parameter(mean_pool.clone())
        self.v_compress_bias = nn.Parameter(torch.zeros(self.head_dim))
        self.gate = nn.Linear(d_model, 3 * n_heads)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, seq_len, _ = x.shape
        return x.view(batch, seq_len, self.n_heads, self.head_dim).transpose(1, 2).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        batch, seq_len, d_model = x.shape
        q, k, v = (self._split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        k_cmp = compress_blocks(k, weight=self.k_compress_weight, bias=self.k_compress_bias, block_size=self.block_size)
        v_cmp = compress_blocks(v, weight=self.v_compress_weight, bias=self.v_compress_bias, block_size=self.block_size)
        sizes = dict(
            block_size=self.block_size, num_selected_blocks=self.num_selected_blocks, window_size=self.window_size
        )
        branches = _branches_batched if self.prefill_batched else _branches_looped
        out_cmp, out_sel, out_win, cmp_probs, sel_stats = branches(
            q, k, v, k_cmp, v_cmp, **sizes, keep_stats=self.collect_aux_stats
        )
        gates = torch.sigmoid(self.gate(x)).view(batch, seq_len, self.n_heads, 3).transpose(1, 2)  # [b, h, t, 3]
        mixed = gates[..., 0:1] * out_cmp + gates[..., 1:2] * out_sel + gates[..., 2:3] * out_win
        self.last_aux_stats = None
        if self.collect_aux_stats:
            assert cmp_probs is not None and sel_stats is not None
            self.last_aux_stats = _aux_stats(gates, cmp_probs, sel_stats)
        return self.o_proj(mixed.transpose(1, 2).reshape(batch, seq_len, d_model))


def nsa_attention_flops_per_token(
    *, d_model: int, n_heads: int, seq_len: int, block_size: int, num_selected_blocks: int, window_size: int
) -> float:
    """Forward FLOPs per token of the attention score and value products, averaged over positions.

    With l = block_size, n = num_selected_blocks, w = window_size and query positions t = 0..T-1,
    the keys attended at position t are

        compressed  K_c(t) = floor((t + 1) / l)                  (complete blocks)
        selected    K_s(t) = (t mod l) + 1 + l * min(n - 1, floor(t / l))
        window      K_w(t) = min(w, t + 1)

    and each key costs one q.k and one p.v product of head_dim multiply-adds in each of n_heads
    heads, i.e. 2 * 2 * d_model FLOPs. Result: 4 * d_model * mean_t(K_c + K_s + K_w).
    This is the useful work a sparse kernel performs, the same convention as the dense causal
    formula below, which also leaves out the masked upper triangle. The batched CPU path here does
    more arithmetic than this (the selected branch scores every key of the sequence before masking, the window
    branch scores 2 * window - 1 keys per query), so do not read it as that path's cost.
    The q/k/v/o projections, gate and block compression are parameter matmuls left to the caller;
    the compression runs once per block per head, so a 2 * params-per-token estimate over-counts it
    by a factor block_size / n_heads.
    """
    for name, value in (("d_model", d_model), ("n_heads", n_heads), ("seq_len", seq_len), ("block_size", block_size),
                        ("num_selected_blocks", num_selected_blocks), ("window_size", window_size)):
        _require_positive_int(name, value)
    # n_heads cancels: head_dim * n_heads = d_model; it is validated and kept for a uniform call site.
    t = torch.arange(seq_len, dtype=torch.float64)
    keys_cmp = torch.floor((t + 1) / block_size)
    keys_sel = torch.remainder(t, block_size) + 1 + block_size * torch.clamp(
        torch.floor(t / block_size), max=num_selected_blocks - 1
    )
    keys_win = torch.clamp(t + 1, max=window_size)
    return 4.0 * d_model * float((keys_cmp + keys_sel + keys_win).mean())


def dense_causal_attention_flops_per_token(*, d_model: int, seq_len: int) -> float:
    """Forward score + value FLOPs per token of dense causal attention: 2 * 2 * d_model * (seq_len + 1) / 2."""
    return 2.0 * 2.0 * d_model * (seq_len + 1) / 2.0
