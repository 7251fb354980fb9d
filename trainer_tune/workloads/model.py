"""The built-in decoder-only GPT, in plain PyTorch, and `build_model`, which builds it or the user's own model.

Pre-norm blocks (LayerNorm, causal multi-head attention, GELU MLP), learned position embeddings, and an LM
head tied to the token embedding. Attention is dense (`scaled_dot_product_attention`) or native sparse
attention (`model.attention=nsa`, trainer_tune/workloads/nsa_attention.py), whose code path and auxiliary statistics
follow the trial's `nsa.prefill_batched` and `nsa.disable_aux_stats`. `forward(input_ids)` takes
`[batch, seq]` token ids and returns logits `[batch, seq, vocab]`. `build_trial_model` is what a trial runs: the
same model, starting from model.checkpoint's weights when set. `activation_checkpointing_enable()` checkpoints
each block (trainer_tune/workloads/checkpointing.py: the hook through which any model turns it on).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer_tune.config.schema import Attention, ModelArgs
from trainer_tune.config.flags import TrialFlags
from trainer_tune.workloads.checkpointing import checkpoint_blocks
from trainer_tune.workloads.nsa_attention import NativeSparseAttention


class CausalSelfAttention(nn.Module):
    def __init__(self, *, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, d_model = x.shape
        q, k, v = self.qkv(x).split(d_model, dim=2)
        # [batch, seq, d_model] -> [batch, heads, seq, head_dim]
        q, k, v = (t.view(batch, seq, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, d_model))


def _attention(args: ModelArgs, flags: TrialFlags) -> nn.Module:
    if args.attention == Attention.nsa:
        return NativeSparseAttention(
            d_model=args.d_model, n_heads=args.n_heads, block_size=args.nsa_block_size,
            num_selected_blocks=args.nsa_num_selected_blocks, window_size=args.nsa_window_size,
            prefill_batched=flags.prefill_batched, collect_aux_stats=not flags.disable_aux_stats)
    return CausalSelfAttention(d_model=args.d_model, n_heads=args.n_heads)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, flags: TrialFlags) -> None:
        super().__init__()
        d_model, mlp_ratio = args.d_model, args.mlp_ratio
        self.norm_attn = nn.LayerNorm(d_model)
        self.attn = _attention(args, flags)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x))
        return x + self.mlp(self.norm_mlp(x))


class GPT(nn.Module):
    def __init__(self, args: ModelArgs, flags: TrialFlags = TrialFlags()) -> None:
        super().__init__()
        self.seq_len = args.seq_len
        self.token_emb = nn.Embedding(args.vocab_size, args.d_model)
        self.pos_emb = nn.Embedding(args.seq_len, args.d_model)
        self.blocks = nn.ModuleList(Block(args, flags) for _ in range(args.n_layers))
        self.norm_out = nn.LayerNorm(args.d_model)
        self.lm_head = nn.Linear(args.d_model, args.vocab_size, bias=False)
        self.lm_head.weight = self.token_emb.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of residual projections keeps the residual stream's variance flat with depth.
        for name, param in self.named_parameters():
            if name.endswith(("attn.proj.weight", "attn.o_proj.weight", "mlp.2.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * args.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def activation_checkpointing_enable(self) -> None:
        """Activation checkpointing per block (train.activation_checkpointing): each block keeps only its input
        for the backward and recomputes its attention and MLP there. The embeddings and the head stay as they are."""
        checkpoint_blocks(self.blocks)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        if seq > self.seq_len:
            raise ValueError(f"input has {seq} tokens per sample; the model was built for at most {self.seq_len}")
        positions = torch.arange(seq, device=input_ids.device)
        x = self.token_emb(input_ids) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm_out(x))


def build_model(args: ModelArgs, flags: TrialFlags = TrialFlags()) -> nn.Module:
    """The built-in GPT, or `model._target_` instantiated with `model.kwargs` (see trainer_tune/workloads/targets.py).

    `flags` sets the NSA layers' code path and statistics; a user model reads the same values from the NSA_*
    environment variables, which are exported before it is built."""
    if args._target_ is not None:
        from trainer_tune.workloads.targets import instantiate_model
        return instantiate_model(args)
    return GPT(args, flags)


def build_trial_model(args: ModelArgs, flags: TrialFlags = TrialFlags()) -> nn.Module:
    """The model a trial trains or serves, on the CPU: `build_model`'s, starting from model.checkpoint when one
    is set (trainer_tune/workloads/checkpoint.py). The caller moves it to the device and wraps it in DDP."""
    if args.checkpoint is None:
        return build_model(args, flags)
    from trainer_tune.workloads.checkpoint import load_checkpoint
    return load_checkpoint(args, lambda: build_model(args, flags))


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters: `parameters()` yields a tied weight once."""
    return sum(p.numel() for p in model.parameters())
