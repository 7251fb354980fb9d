"""model.checkpoint in real runs: a 2-rank sweep whose trials start from a trained model, and serving too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import ONE_ROUND, read_jsonl, run_tune
from trainer_tune.config.schema import DataArgs, DataKind, ModelArgs
from trainer_tune.workloads.data import build_batches
from trainer_tune.workloads.model import GPT

pytestmark = pytest.mark.slow

RANDOM_INIT_LOSS = math.log(256)
"""A freshly initialised byte model predicts about uniformly over 256 bytes: ~5.55 nats."""


def _trained_checkpoint(path: Path, *, steps: int = 60) -> float:
    """The built-in tiny GPT trained briefly on the byte corpus (a few seconds), saved; its last loss."""
    args = ModelArgs()
    torch.manual_seed(0)
    model = GPT(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    batches = build_batches(data=DataArgs(kind=DataKind.bytes, seed=99), model=args, micro_batch_size=8, rank=0,
                            world_size=1, device=torch.device("cpu"))
    losses = []
    for _ in range(steps):
        batch = next(batches)
        loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, args.vocab_size), batch[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    torch.save(model.state_dict(), path)
    return sum(losses[-10:]) / 10


def test_every_trial_of_a_sweep_starts_from_the_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "tiny_bytes.pt"
    trained_loss = _trained_checkpoint(checkpoint)
    assert trained_loss < RANDOM_INIT_LOSS - 1.5, trained_loss
    out = tmp_path / "run"
    proc = run_tune(["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[2,4]", "sweep.grad_accums=[1]",
                     "data=bytes", f"model.checkpoint={checkpoint}", "wandb=off", *ONE_ROUND, f"hydra.run.dir={out}"],
                    nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    windows = read_jsonl(out / "trials.jsonl")
    assert sorted(w["micro_batch_size"] for w in windows) == [2, 4]
    for window in windows:
        assert window["status"] == "ok", window["error"]
        # From a random initialisation the first measured loss is ~ln 256 = 5.55 (one warm-up step at lr 3e-4
        # barely moves it); from the checkpoint it is where the checkpoint's training ended.
        assert window["loss_first"] < RANDOM_INIT_LOSS - 1.5, window["loss_first"]
        assert abs(window["loss_first"] - trained_loss) < 0.75, (window["loss_first"], trained_loss)
    for rank in (0, 1):  # each rank builds and loads its own model; DDP's broadcast then finds them equal
        log_text = (out / "logs" / f"rank-{rank}.log").read_text()
        assert f"model.checkpoint={checkpoint}: 25 tensors loaded" in log_text, log_text[-2000:]
    # Measuring again means measuring from the same weights.
    # (One window per setting cannot decide: the leader's overrides carry the checkpoint, and a chosen setting's would.)
    rec = json.loads((out / "recommendation.json").read_text())
    picked = rec["chosen"] or rec["leader"]
    assert f"model.checkpoint={checkpoint}" in picked["run_overrides"]
    assert not rec["overrides"] or f"model.checkpoint={checkpoint}" in rec["overrides"]


def test_serving_replicas_load_the_checkpoint_too(tmp_path: Path) -> None:
    """mode=inference builds its replicas through the same path: a checkpoint that does not fit is its error."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "wider.pt"
    torch.save(GPT(ModelArgs(d_model=64, n_heads=4)).state_dict(), checkpoint)
    out = tmp_path / "serve"
    proc = run_tune(["+sweep=serving", "window=quick", "sweep.micro_batch_sizes=[2]", f"model.checkpoint={checkpoint}",
                     "wandb=off", *ONE_ROUND, f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (window,) = read_jsonl(out / "trials.jsonl")
    assert window["status"] == "error"
    assert (f"TargetError: model.checkpoint={str(checkpoint)!r} does not fit the model: 25 shape mismatch(es): "
            f"token_emb.weight [256, 64] in the checkpoint, [256, 128] in the model") in window["error"]
