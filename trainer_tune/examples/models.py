"""Models given by `model._target_`: anything that takes input_ids [batch, seq] and returns logits
[batch, seq, vocab] (or an object with .logits)."""

from __future__ import annotations

import torch
from torch import nn


class ConvLM(nn.Module):
    """A plain causal language model with no attention: token embedding, a stack of causal depthwise
    convolutions with gated MLPs, and an output head. Any nn.Module with this forward contract works.

        model._target_=trainer_tune.examples.models.ConvLM +model.kwargs.vocab_size=256 +model.kwargs.d_model=128
    """

    def __init__(self, *, vocab_size: int, d_model: int = 128, num_layers: int = 2, kernel_size: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.kernel_size = kernel_size
        self.convs = nn.ModuleList(
            nn.Conv1d(d_model, d_model, kernel_size, groups=d_model) for _ in range(num_layers))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 4 * d_model), nn.GELU(),
                          nn.Linear(4 * d_model, d_model)) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)  # [batch, seq, d_model]
        for conv, mlp in zip(self.convs, self.mlps):
            # Left padding only: position t sees t - kernel_size + 1 .. t, never the future.
            h = nn.functional.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))
            x = x + conv(h).transpose(1, 2)
            x = x + mlp(x)
        return self.head(self.norm(x))


def hf_gpt2(*, vocab_size: int, seq_len: int, d_model: int = 128, num_layers: int = 2, num_heads: int = 4) -> nn.Module:
    """A randomly initialised Hugging Face GPT-2 (no weights are downloaded). Needs `pip install transformers`.

    The same model without this factory, from config alone (see configs/model/hf_gpt2.yaml):
    model._target_=transformers.GPT2LMHeadModel with model.kwargs.config._target_=transformers.GPT2Config.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=seq_len, n_embd=d_model, n_layer=num_layers,
                        n_head=num_heads, bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(config)

