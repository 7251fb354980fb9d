"""trainer_tune/workloads/step.py: the loss of one micro-step from each kind of batch, `step._target_`, and the
one-line errors for what they cannot take; the step's target checked before any process group starts."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer_tune.config.schema import ConfigError, CountArgs, StepArgs, ThroughputArgs, TuneConfig
from trainer_tune.examples.contrastive import PairEncoder, contrastive_step
from trainer_tune.workloads.step import StepRules, default_step, user_step
from trainer_tune.workloads.targets import TargetError, check_targets

CONTRASTIVE = "trainer_tune.examples.contrastive.contrastive_step"


def _rules(loss_fn: Any = None, *, loss_target: str | None = None, model_target: str | None = "my.Model",
           vocab_size: int = 11, autocast: Any = contextlib.nullcontext) -> StepRules:
    return StepRules(loss_fn=loss_fn, loss_target=loss_target, model_target=model_target, vocab_size=vocab_size,
                     autocast=autocast)


class Recorder(nn.Module):
    """Returns what `respond` makes of its arguments, and keeps them."""

    def __init__(self, respond: Any) -> None:
        super().__init__()
        self.respond = respond
        self.calls: list[tuple[tuple, dict]] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.respond(*args, **kwargs)


LOGITS = torch.randn(3, 4)
LABELS = torch.tensor([0, 3, 1])


def test_a_dict_batch_uses_the_loss_the_model_computed() -> None:
    """Hugging Face models given labels return an output with .loss (an object, or a dict with return_dict)."""
    own = torch.tensor(0.25)
    for output in (SimpleNamespace(loss=own, logits=LOGITS), {"loss": own, "logits": LOGITS}):
        model = Recorder(lambda **kwargs: output)
        batch = {"input_ids": torch.zeros(3, 5, dtype=torch.long), "labels": LABELS}
        assert default_step(model, batch, _rules()).item() == 0.25
        assert model.calls[0] == ((), batch)  # model(**batch)


def test_a_dict_batch_without_a_model_loss_uses_loss_target_then_cross_entropy() -> None:
    model = Recorder(lambda **kwargs: SimpleNamespace(logits=LOGITS))
    batch = {"features": torch.zeros(3, 2), "labels": LABELS}
    seen = []

    def my_loss(outputs: Any, got: dict) -> torch.Tensor:
        seen.append(got)
        return outputs.logits.sum()
    assert default_step(model, batch, _rules(my_loss, loss_target="my.loss")).item() == pytest.approx(LOGITS.sum())
    assert seen == [batch]  # called as loss(outputs, batch)
    torch.testing.assert_close(default_step(model, batch, _rules()), F.cross_entropy(LOGITS, LABELS))


def test_a_dict_batch_with_no_loss_and_no_labels_names_the_ways_out() -> None:
    model = Recorder(lambda **kwargs: (kwargs["anchor"], kwargs["positive"]))
    with pytest.raises(TargetError) as info:
        default_step(model, {"anchor": torch.zeros(2, 3), "positive": torch.zeros(2, 3)}, _rules())
    assert str(info.value) == ("model(**batch) returned no .loss for a batch dict(anchor: float32[2, 3], positive: "
                               "float32[2, 3]) with no 'labels': add labels to the batches, set loss._target_ "
                               "(called as loss(outputs, batch)), or set step._target_")


def test_a_model_loss_that_is_not_a_scalar_names_the_model() -> None:
    model = Recorder(lambda **kwargs: {"loss": F.cross_entropy(LOGITS, LABELS, reduction="none")})
    with pytest.raises(TargetError) as info:
        default_step(model, {"x": torch.zeros(3, 2), "labels": LABELS}, _rules(model_target="my.Model"))
    assert str(info.value) == ("model._target_='my.Model' returned a .loss of shape [3]; expected a scalar tensor "
                               "(the loss to call backward on)")


def test_a_pair_computes_the_loss_of_the_model_output_against_the_targets() -> None:
    model = Recorder(lambda inputs: LOGITS)
    images = torch.zeros(3, 3, 8, 8)
    torch.testing.assert_close(default_step(model, (images, LABELS), _rules()), F.cross_entropy(LOGITS, LABELS))
    assert model.calls[0][0][0] is images
    loss = default_step(model, [images, LABELS], _rules(lambda out, y: (out - 1).abs().mean(), loss_target="l1"))
    torch.testing.assert_close(loss, (LOGITS - 1).abs().mean())


def test_a_pair_whose_inputs_are_a_tuple_or_a_dict_unpacks_them() -> None:
    model = Recorder(lambda *args, **kwargs: LOGITS)
    a, b = torch.zeros(3, 2), torch.ones(3, 2)
    default_step(model, ((a, b), LABELS), _rules())
    default_step(model, ({"input_ids": a, "attention_mask": b}, LABELS), _rules())
    assert model.calls[0] == ((a, b), {}) and model.calls[1] == ((), {"input_ids": a, "attention_mask": b})


def test_a_non_scalar_loss_target_is_named() -> None:
    model = Recorder(lambda inputs: LOGITS)
    per_sample = lambda out, y: F.cross_entropy(out, y, reduction="none")  # noqa: E731 - the common mistake
    with pytest.raises(TargetError, match=r"^loss._target_='my.per_sample' returned a tensor of shape \[3\]; "
                                          r"expected a scalar tensor"):
        default_step(model, (torch.zeros(3, 2), LABELS), _rules(per_sample, loss_target="my.per_sample"))
    integer = lambda out, y: torch.tensor(3)  # noqa: E731
    with pytest.raises(TargetError, match=r"^loss._target_='my.count' returned a torch.int64 tensor; expected a "
                                          r"floating-point scalar loss"):
        default_step(model, (torch.zeros(3, 2), LABELS), _rules(integer, loss_target="my.count"))


def test_token_ids_are_the_language_model_path() -> None:
    vocab = 11
    batch = torch.randint(0, vocab, (2, 6))
    logits = torch.randn(2, 5, vocab)
    model = Recorder(lambda ids: logits)
    loss = default_step(model, batch, _rules(vocab_size=vocab))
    assert torch.equal(model.calls[0][0][0], batch[:, :-1])  # the model reads positions 0..seq_len-1
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1)))
    with pytest.raises(TargetError, match=r"^model._target_='my.Model' returned logits of shape \[2, 5, 7\] for "
                                          r"input_ids of shape \[2, 5\]; expected \[2, 5, 11\]"):
        default_step(Recorder(lambda ids: torch.randn(2, 5, 7)), batch, _rules(vocab_size=vocab))


@pytest.mark.parametrize("batch,shown", [
    ((torch.zeros(2, 3), torch.zeros(2), torch.ones(2)), "a pair (inputs, targets), got tuple(float32[2, 3], "
                                                         "float32[2], float32[2])"),
    (torch.zeros(2, 8), "cannot use a batch float32[2, 8]"),
    (torch.zeros(2, dtype=torch.long), "cannot use a batch int64[2]"),
    ("some text", "cannot use a batch str"),
])
def test_a_batch_the_default_step_cannot_take_points_to_step_target(batch: Any, shown: str) -> None:
    with pytest.raises(TargetError) as info:
        default_step(Recorder(lambda *a: LOGITS), batch, _rules())
    message = str(info.value)
    assert shown in message and "set step._target_ to a function step(model, batch) -> loss" in message
    assert "\n" not in message


@contextlib.contextmanager
def _counting(entered: list[int]) -> Iterator[None]:
    entered.append(1)
    yield


class _Autocast:
    """Stands in for torch.autocast: says whether code runs inside it."""

    def __init__(self) -> None:
        self.active = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.active = True
        try:
            yield
        finally:
            self.active = False


def test_the_forward_runs_under_autocast_and_the_default_loss_outside_it() -> None:
    autocast = _Autocast()
    seen: dict[str, bool] = {}

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        seen["forward"] = autocast.active
        return LOGITS

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen["loss"] = autocast.active
        return out.sum()
    default_step(Recorder(forward), (torch.zeros(3, 2), LABELS), _rules(loss_fn, loss_target="l", autocast=autocast))
    assert seen == {"forward": True, "loss": False}


def test_step_target_gets_the_model_the_batch_and_its_kwargs() -> None:
    torch.manual_seed(0)
    model = PairEncoder(dim=4, hidden=8, embed_dim=4)
    batch = {"anchor": torch.randn(5, 4), "positive": torch.randn(5, 4)}
    entered: list[int] = []
    fn = lambda m, b: contrastive_step(m, b, temperature=0.5)  # noqa: E731 - what instantiate's partial gives
    loss = user_step(fn, target=CONTRASTIVE, autocast=lambda: _counting(entered))(model, batch)
    assert entered == [1] and loss.dim() == 0 and loss.requires_grad
    anchors, positives = model(batch["anchor"], batch["positive"])
    torch.testing.assert_close(loss, F.cross_entropy(anchors @ positives.T / 0.5, torch.arange(5)))


@pytest.mark.parametrize("returned,shown", [
    (torch.zeros(4), "a tensor of shape [4]"),
    ((torch.tensor(1.0), {"acc": 0.5}), "a tuple"),
    (0.5, "a float"),
])
def test_a_step_target_that_returns_no_scalar_loss_is_named(returned: Any, shown: str) -> None:
    step = user_step(lambda m, b: returned, target="my.step", autocast=contextlib.nullcontext)
    with pytest.raises(TargetError) as info:
        step(nn.Linear(1, 1), torch.zeros(1, 1))
    assert str(info.value) == (f"step._target_='my.step' returned {shown}; expected a scalar tensor (the loss to "
                               f"call backward on)")


@pytest.mark.parametrize("step,count,message", [
    (StepArgs(_target_="my_steps.contrastive"), CountArgs(),
     "step._target_='my_steps.contrastive' is not allowed: it cannot be imported (ModuleNotFoundError: No module "
     "named 'my_steps')"),
    (StepArgs(_target_=CONTRASTIVE, kwargs={"temp": 0.1}), CountArgs(),
     f"step._target_='{CONTRASTIVE}' is not allowed with step.kwargs={{'temp': 0.1}}: got an unexpected keyword "
     f"argument 'temp'"),
    # A step is called as step(model, batch): a function of the batch alone does not fit.
    (StepArgs(_target_="trainer_tune.workloads.batch.count_samples"), CountArgs(),
     "step._target_='trainer_tune.workloads.batch.count_samples' is not allowed with step.kwargs={}: too many "
     "positional arguments"),
    (StepArgs(), CountArgs(_target_="trainer_tune.examples.contrastive.contrastive_step"),
     "throughput.count._target_='trainer_tune.examples.contrastive.contrastive_step' is not allowed with "
     "throughput.count.kwargs={}: missing a required argument: 'batch'"),
])
def test_step_and_count_targets_are_checked_before_the_process_group(step: StepArgs, count: CountArgs,
                                                                    message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_targets(TuneConfig(step=step, throughput=ThroughputArgs(count=count)))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_good_step_and_count_targets_pass_the_check() -> None:
    check_targets(TuneConfig(step=StepArgs(_target_=CONTRASTIVE, kwargs={"temperature": 0.05}),
                             throughput=ThroughputArgs(count=CountArgs(
                                 _target_="trainer_tune.workloads.batch.count_samples", unit="rows"))))
