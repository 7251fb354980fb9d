from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer_tune.config import ModelArgs
from trainer_tune.model import build_model, count_parameters

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


def test_loss_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = build_model(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.randint(0, 256, (4, 65))
    losses = []
    for _ in range(40):
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_125m_preset_size() -> None:
    args = ModelArgs(name="gpt_125m", vocab_size=50304, seq_len=1024, d_model=768, n_layers=12, n_heads=12)
    with torch.device("meta"):
        model = build_model(args)
    assert 120e6 < count_parameters(model) < 130e6
