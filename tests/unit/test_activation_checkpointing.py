"""Activation checkpointing (trainer_tune/workloads/checkpointing.py): the same numbers with less kept, the
forward really recomputed in the backward, one hook (`activation_checkpointing_enable()`) for the built-in GPT, a
Hugging Face model and a model of your own, and one line for a model without it."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.checkpointing_models import MLPBlock, RefusesCheckpointing, ResidualMLP
from helpers.models import PlainMLP
from trainer_tune.config.schema import ModelArgs, TuneConfig
from trainer_tune.platform.distributed import DistSession, RankEnv
from trainer_tune.config.flags import TrialFlags
from trainer_tune.plan import TrialSpec, build_plan
from trainer_tune.measure.window import measure_local
from trainer_tune.workloads.checkpointing import checkpoint_blocks, enable_activation_checkpointing
from trainer_tune.workloads.model import build_model
from trainer_tune.workloads.targets import TargetError

TINY = ModelArgs(seq_len=32, n_layers=3)


def _count_calls(modules: list[nn.Module]) -> list[int]:
    """A one-element counter of forward calls over `modules`, kept by forward pre-hooks: a recomputation stops as
    soon as it has what the backward needs (torch's early stop), so a module's forward may start and not finish."""
    calls = [0]

    def hook(_module: nn.Module, _inputs: tuple) -> None:
        calls[0] += 1
    for module in modules:
        module.register_forward_pre_hook(hook)
    return calls


def _gpt_step(*, checkpointed: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int, int]:
    """Loss and gradients of one step of the tiny GPT, and its blocks' MLP calls in the forward and the backward."""
    torch.manual_seed(0)
    model = build_model(TINY)
    if checkpointed:
        enable_activation_checkpointing(model)
    calls = _count_calls([block.mlp for block in model.blocks])
    tokens = torch.randint(0, TINY.vocab_size, (2, TINY.seq_len + 1), generator=torch.Generator().manual_seed(1))
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    forward_calls = calls[0]
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return loss.detach(), grads, forward_calls, calls[0] - forward_calls


def test_the_gpt_checkpointed_per_block_gives_the_same_loss_and_gradients_and_recomputes_each_block() -> None:
    plain_loss, plain_grads, plain_forward, plain_backward = _gpt_step(checkpointed=False)
    loss, grads, forward_calls, backward_calls = _gpt_step(checkpointed=True)
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=0, atol=1e-7, msg=name)
    # Each block's MLP runs once in the forward either way; checkpointed, once more in the backward.
    assert (plain_forward, plain_backward) == (TINY.n_layers, 0)
    assert (forward_calls, backward_calls) == (TINY.n_layers, TINY.n_layers)


def test_checkpoint_blocks_keeps_names_is_idempotent_and_does_nothing_without_gradients() -> None:
    model = ResidualMLP()
    keys = list(model.state_dict())
    assert checkpoint_blocks(model.blocks) == 3
    assert checkpoint_blocks(model.blocks) == 3  # again: still one checkpoint per block, not two nested
    assert list(model.state_dict()) == keys  # model.checkpoint's state dicts still load
    calls = _count_calls(list(model.blocks))
    inner = _count_calls([block[1] for block in model.blocks])
    features = torch.randn(4, 12)
    model(features).sum().backward()
    assert (calls[0], inner[0]) == (3, 6)  # nested twice would recompute twice: 9
    with torch.no_grad():
        model(features)
    assert (calls[0], inner[0]) == (6, 9)  # 3 more forwards, no recomputation
    # A deep copy's blocks run their own weights, not the original's.
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    assert torch.equal(twin(features), torch.zeros(4, 5)) and not torch.equal(model(features), torch.zeros(4, 5))


def test_a_hugging_face_model_is_checkpointed_through_its_own_method() -> None:
    pytest.importorskip("transformers")
    from trainer_tune.examples.models import hf_gpt2

    model = hf_gpt2(vocab_size=64, seq_len=16, d_model=32, num_layers=2, num_heads=2)
    model.train()
    assert not model.is_activation_checkpointing
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers 5's name, not the deprecated one
        enable_activation_checkpointing(model)
    assert model.is_activation_checkpointing
    calls = _count_calls([block.mlp for block in model.transformer.h])
    tokens = torch.randint(0, 64, (2, 16))
    loss = model(tokens, labels=tokens).loss
    forward_calls = calls[0]
    loss.backward()
    assert (forward_calls, calls[0] - forward_calls) == (2, 2)  # each block recomputed in the backward


class _HookWithKwargs(nn.Module):
    """The older Hugging Face name and signature (transformers 4): what it is given is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.given: list[dict] = []

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.given.append({"gradient_checkpointing_kwargs": gradient_checkpointing_kwargs})


def test_the_older_hook_name_is_called_and_asked_for_the_non_reentrant_kind() -> None:
    model = _HookWithKwargs()
    enable_activation_checkpointing(model)
    assert model.given == [{"gradient_checkpointing_kwargs": {"use_reentrant": False}}]
    enable_activation_checkpointing(ResidualMLP())  # a hook without arguments is called without any


def test_a_model_without_the_hook_is_refused_with_one_line_naming_what_to_define() -> None:
    with pytest.raises(TargetError) as info:
        enable_activation_checkpointing(PlainMLP())
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("train.activation_checkpointing=true needs the model to define "
                              "activation_checkpointing_enable(); PlainMLP has none")
    assert "trainer_tune.workloads.checkpointing.checkpoint_blocks" in message and "docs/your-model.md" in message


def test_a_hook_that_raises_is_one_line_with_its_cause() -> None:
    with pytest.raises(TargetError) as info:
        enable_activation_checkpointing(RefusesCheckpointing())
    assert str(info.value) == ("train.activation_checkpointing=true: RefusesCheckpointing."
                               "activation_checkpointing_enable() raised ValueError: RefusesCheckpointing does not "
                               "support gradient checkpointing. See its docs.")


# --- in a trial's trainer ------------------------------------------------------------------------------------

def _session() -> DistSession:
    rank_env = RankEnv(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0, hostname="here",
                       under_torchrun=False, restart_count=0)
    return DistSession(rank_env=rank_env, device=torch.device("cpu"), backend=None)


def _window(model_target: str, *, checkpointed: bool):  # type: ignore[no-untyped-def]
    cfg = TuneConfig()
    cfg.model._target_ = model_target
    cfg.data._target_ = "helpers.models.random_features"
    cfg.window.warmup_steps, cfg.window.measure_steps, cfg.window.max_measure_steps = 1, 3, 3
    cfg.window.comm_split_steps = 0
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = 4, 1
    spec: TrialSpec = build_plan(cfg, world_size=1, base_flags=TrialFlags(activation_checkpointing=checkpointed),
                                 device_type="cpu")[0]
    assert spec.flags.activation_checkpointing is checkpointed
    return measure_local(cfg=cfg, spec=spec, session=_session())


def test_a_checkpointed_trial_recomputes_trains_the_same_and_its_flop_count_leaves_out_the_recomputation() -> None:
    before = MLPBlock.calls
    plain = _window("helpers.checkpointing_models.ResidualMLP", checkpointed=False)
    plain_calls = MLPBlock.calls - before
    checkpointed = _window("helpers.checkpointing_models.ResidualMLP", checkpointed=True)
    checkpointed_calls = MLPBlock.calls - before - plain_calls
    # The 1 warm-up and 3 measured steps recompute each of the 3 blocks once more; the FLOP count's step does not.
    assert checkpointed_calls - plain_calls == (1 + 3) * 3, (plain_calls, checkpointed_calls)
    assert checkpointed.losses == plain.losses and len(plain.losses) == 3
    # MFU is the model's FLOPs, as the GPT's formula counts them: the forward recomputed in the backward is extra
    # work the setting chose, not more of the model's (a count with it would add the blocks' forward again).
    assert plain.flops is not None and plain.flops.flops
    assert checkpointed.flops == plain.flops


def test_a_trial_of_a_model_without_the_hook_raises_the_one_line() -> None:
    with pytest.raises(TargetError, match=r"^train.activation_checkpointing=true needs the model to define "):
        _window("helpers.models.PlainMLP", checkpointed=True)
