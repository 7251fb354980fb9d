"""User code through `_target_`: checked before any process group starts, built with Hydra, and held to its
contract (shapes, dtypes, a scalar loss) with one-line errors; the byte corpus and the NSA statistics."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from trainer_tune.config.schema import Attention, ConfigError, DataArgs, DataKind, LossArgs, ModelArgs, SweepArgs, TuneConfig
from trainer_tune.workloads.data import _checked, build_batches, corpus_bytes
from trainer_tune.config.flags import TrialFlags
from trainer_tune.workloads.loss import build_loss, cross_entropy
from trainer_tune.workloads.step import checked_loss
from trainer_tune.workloads.model import build_model
from trainer_tune.workloads.nsa_stats import AuxStatsCollector
from trainer_tune.workloads.targets import TargetError, check_targets, ignored_settings, logits_of

CONV_LM = "trainer_tune.examples.models.ConvLM"
COUNTING = "trainer_tune.examples.batches.counting_batches"
SMOOTHED = "trainer_tune.examples.losses.label_smoothed_cross_entropy"
CPU = torch.device("cpu")


def _cfg(*, model: dict | None = None, data: dict | None = None, loss: dict | None = None) -> TuneConfig:
    return TuneConfig(model=ModelArgs(**(model or {})), data=DataArgs(**(data or {})), loss=LossArgs(**(loss or {})))


@pytest.mark.parametrize("section,target,message", [
    ("model", "no_such_package.models.Model",
     "model._target_='no_such_package.models.Model' is not allowed: it cannot be imported (ModuleNotFoundError: "
     "No module named 'no_such_package')"),
    ("model", "trainer_tune.examples.models.NoSuchModel",
     "model._target_='trainer_tune.examples.models.NoSuchModel' is not allowed: it cannot be imported"),
    ("data", "no_such_package.batches", "data._target_='no_such_package.batches' is not allowed: it cannot be"),
    ("loss", "torch.nn.functional.no_such_loss", "loss._target_='torch.nn.functional.no_such_loss' is not allowed"),
    ("model", "trainer_tune.examples.models.torch",
     "model._target_='trainer_tune.examples.models.torch' is not allowed: it names a module, not a class or function"),
])
def test_a_target_that_cannot_be_imported_is_a_config_error(section: str, target: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_targets(_cfg(**{section: {"_target_": target}}))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_target_path_must_be_dotted() -> None:
    with pytest.raises(ConfigError, match=r"^model._target_='ConvLM' is not allowed: a dotted import path"):
        ModelArgs(_target_="ConvLM")


@pytest.mark.parametrize("section,kwargs,message", [
    ("model", {"vocab": 256}, "model._target_='trainer_tune.examples.models.ConvLM' is not allowed with "
                              "model.kwargs={'vocab': 256}: missing a required argument: 'vocab_size'"),
    ("model", {"vocab_size": 256, "width": 3}, "got an unexpected keyword argument 'width'"),
    ("data", {"max_stride": 3}, "got an unexpected keyword argument 'max_stride'"),
    ("data", {"seq_len": 3}, "data.kwargs={'seq_len': 3} is not allowed: ['seq_len'] are given to every batch"),
    ("loss", {"smooth": 0.1}, "got an unexpected keyword argument 'smooth'"),
])
def test_kwargs_that_do_not_fit_the_signature_are_config_errors(section: str, kwargs: dict, message: str) -> None:
    target = {"model": CONV_LM, "data": COUNTING, "loss": SMOOTHED}[section]
    with pytest.raises(ConfigError) as info:
        check_targets(_cfg(**{section: {"_target_": target, "kwargs": kwargs}}))
    assert message in str(info.value)


def test_good_targets_pass_the_check() -> None:
    check_targets(_cfg(model={"_target_": CONV_LM, "kwargs": {"vocab_size": 256}},
                       data={"_target_": COUNTING, "kwargs": {"max_step": 3}},
                       loss={"_target_": SMOOTHED, "kwargs": {"smoothing": 0.05}}))


def test_user_model_is_built_with_its_kwargs_and_its_logits_checked() -> None:
    args = ModelArgs(_target_=CONV_LM, kwargs={"vocab_size": 256, "d_model": 32, "num_layers": 1})
    model = build_model(args, TrialFlags())
    assert model.embed.embedding_dim == 32
    ids = torch.randint(0, 256, (2, 10))
    assert logits_of(model(ids), input_ids=ids, vocab_size=256, target=CONV_LM).shape == (2, 10, 256)
    with pytest.raises(TargetError, match=r"returned logits of shape \[2, 10, 256\] for input_ids of shape \[2, "
                                          r"10\]; expected \[2, 10, 300\] \(batch, seq, model.vocab_size=300\)"):
        logits_of(model(ids), input_ids=ids, vocab_size=300, target=CONV_LM)


def test_logits_are_read_from_an_output_object() -> None:
    ids = torch.zeros(2, 5, dtype=torch.long)
    logits = torch.randn(2, 5, 7)
    assert logits_of(SimpleNamespace(logits=logits), input_ids=ids, vocab_size=7, target="x.y") is logits
    with pytest.raises(TargetError, match=r"model._target_='x.y' returned a tuple with no tensor .logits"):
        logits_of((logits,), input_ids=ids, vocab_size=7, target="x.y")


def test_wrong_shape_example_is_caught() -> None:
    model = build_model(ModelArgs(_target_="helpers.models.WrongShape", kwargs={"vocab_size": 16}))
    ids = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(TargetError, match=r"returned logits of shape \[3, 16\]"):
        logits_of(model(ids), input_ids=ids, vocab_size=16, target="helpers.models.WrongShape")


def test_a_target_that_raises_or_returns_no_module_is_a_one_line_trial_error() -> None:
    with pytest.raises(TargetError, match=r"^model._target_='trainer_tune.examples.models.ConvLM' failed when "
                                          r"called: TypeError: .*unexpected keyword argument 'nope'"):
        build_model(ModelArgs(_target_=CONV_LM, kwargs={"vocab_size": 8, "nope": 1}))
    with pytest.raises(TargetError, match=r"returned a Tensor, not a torch.nn.Module"):
        build_model(ModelArgs(_target_="torch.zeros", kwargs={"size": [2]}))


def test_hugging_face_gpt2_from_config_alone() -> None:
    pytest.importorskip("transformers")
    kwargs = {"config": {"_target_": "transformers.GPT2Config", "vocab_size": 64, "n_positions": 16, "n_embd": 32,
                         "n_layer": 1, "n_head": 2}}
    args = ModelArgs(_target_="transformers.GPT2LMHeadModel", kwargs=kwargs, vocab_size=64, seq_len=16)
    check_targets(TuneConfig(model=args))
    model = build_model(args)
    ids = torch.randint(0, 64, (2, 16))
    assert logits_of(model(ids), input_ids=ids, vocab_size=64, target=args._target_).shape == (2, 16, 64)


def _batches(data: DataArgs, *, micro_batch_size: int = 3, rank: int = 0, vocab_size: int = 256,
             seq_len: int = 12) -> list[torch.Tensor]:
    stream = build_batches(data=data, model=ModelArgs(vocab_size=vocab_size, seq_len=seq_len),
                           micro_batch_size=micro_batch_size, rank=rank, world_size=2, device=CPU)
    return list(itertools.islice(stream, 3))


def test_user_batch_source_gets_its_kwargs_and_the_runtime_arguments() -> None:
    data = DataArgs(_target_=COUNTING, kwargs={"max_step": 1})
    batches = _batches(data)
    for batch in batches:
        assert batch.shape == (3, 13) and batch.dtype == torch.long
        assert ((batch[:, 1:] - batch[:, :-1]) % 256 == 1).all()  # max_step=1 reached the source
    assert not torch.equal(_batches(data, rank=1)[0], batches[0])
    assert torch.equal(_batches(data)[0], batches[0])


def test_token_ids_out_of_the_vocabulary_are_caught() -> None:
    with pytest.raises(TargetError, match=r"^data._target_='trainer_tune.examples.batches.counting_batches' "
                                          r"yielded token ids in \[5, 17\]; expected ids in \[0, 10\) \(model.vocab_size=10\)"):
        next(_checked(iter([torch.arange(13).repeat(3, 1) + 5]), target=COUNTING, micro_batch_size=3,
                      vocab_size=10, device=CPU, non_blocking=False))


@pytest.mark.parametrize("batch,message", [
    (torch.zeros(2, 13, dtype=torch.long), r"yielded a batch of 2 samples \(int64\[2, 13\]\); expected "
                                           r"micro_batch_size=3 samples"),
    ({"x": torch.zeros(4, 2)}, r"yielded a batch of 4 samples \(dict\(x: float32\[4, 2\]\)\)"),
    ([1, 2, 3], r"yielded a batch with no tensor \(list\(int, int, int\)\)"),
])
def test_batches_of_the_wrong_size_or_kind_are_caught(batch: object, message: str) -> None:
    stream = _checked(iter([batch]), target="x.y", micro_batch_size=3, vocab_size=10, device=CPU, non_blocking=False)
    with pytest.raises(TargetError, match=r"^data._target_='x.y' " + message):
        next(stream)


def test_a_batch_source_that_runs_out_is_named() -> None:
    stream = _checked(iter([torch.zeros(1, 5, dtype=torch.long)]), target="x.y", micro_batch_size=1,
                      vocab_size=4, device=CPU, non_blocking=False)
    next(stream)
    with pytest.raises(TargetError, match=r"data._target_='x.y' ran out of batches"):
        next(stream)


def test_byte_corpus_batches_are_windows_of_the_shipped_text() -> None:
    text = corpus_bytes()
    assert len(text) > 20_000
    batches = _batches(DataArgs(kind=DataKind.bytes), seq_len=32)
    for batch in batches:
        assert batch.shape == (3, 33)
        for row in batch.tolist():
            assert bytes(row) in text
    assert not torch.equal(_batches(DataArgs(kind=DataKind.bytes), seq_len=32, rank=1)[0], batches[0])


def test_bytes_need_a_vocabulary_of_256() -> None:
    with pytest.raises(ConfigError, match=r"model.vocab_size=100 is not allowed: at least 256 with data=bytes"):
        TuneConfig(model=ModelArgs(vocab_size=100), data=DataArgs(kind=DataKind.bytes))


def test_default_loss_is_cross_entropy_and_a_target_replaces_it() -> None:
    logits, targets = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    assert build_loss(LossArgs()) is None  # the default: cross-entropy (or the model's own .loss)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    torch.testing.assert_close(cross_entropy(logits, targets), expected)
    classes, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(cross_entropy(classes, labels), torch.nn.functional.cross_entropy(classes, labels))
    smoothed = build_loss(LossArgs(_target_=SMOOTHED, kwargs={"smoothing": 0.2}))
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), label_smoothing=0.2)
    torch.testing.assert_close(smoothed(logits, targets), expected)
    with pytest.raises(TargetError, match=r"^loss._target_='a.b' returned a tensor of shape \[2, 5\]; expected a "
                                          r"scalar tensor"):
        checked_loss(torch.zeros(2, 5), source="loss._target_='a.b'")


def test_aux_stats_collector_averages_layers_and_micro_steps() -> None:
    args = ModelArgs(seq_len=32, nsa_block_size=8, nsa_window_size=8, attention=Attention.nsa)
    model = build_model(args, TrialFlags(disable_aux_stats=False))
    collector = AuxStatsCollector(model)
    assert len(collector.layers) == 2
    per_micro_step = []
    for _ in range(2):
        model(torch.randint(0, 256, (2, 32)))
        per_micro_step.append({name: sum(float(layer.last_aux_stats[name]) for layer in collector.layers) / 2
                               for name in collector.layers[0].last_aux_stats})
        collector.add_micro_step()
    step = collector.end_step()
    assert step is not None
    stats = {name: float(value) for name, value in step.items()}
    for name, value in stats.items():
        assert value == pytest.approx((per_micro_step[0][name] + per_micro_step[1][name]) / 2, rel=1e-5)
    assert 0 <= stats["selected_window_overlap"] <= 1 and stats["selected_attention_entropy"] > 0
    with pytest.raises(RuntimeError, match="did not run in this micro-step"):
        collector.add_micro_step()  # the layers' statistics were consumed and no forward ran since
    quiet = AuxStatsCollector(build_model(args, TrialFlags(disable_aux_stats=True)))
    assert quiet.layers == [] and quiet.end_step() is None


def test_settings_this_configuration_ignores_are_named() -> None:
    cfg = _cfg(model={"_target_": CONV_LM, "attention": Attention.nsa},
               data={"_target_": COUNTING, "kind": DataKind.bytes})
    assert ignored_settings(cfg) == [
        "model.attention=nsa is ignored: model._target_='trainer_tune.examples.models.ConvLM' builds the model (the "
        "built-in GPT's shape keys are not used)",
        "data.kind=bytes is ignored: data._target_='trainer_tune.examples.batches.counting_batches' gives the batches"]
    dense = TuneConfig(sweep=SweepArgs(nsa_prefill_batched=[True, False]))
    assert ignored_settings(dense) == ["sweep.nsa_prefill_batched multiplies the grid but changes nothing the "
                                       "built-in GPT does with model.attention=dense (use model=tiny_nsa, or a model "
                                       "that reads NSA_* itself)"]
    assert ignored_settings(TuneConfig(model=ModelArgs(attention=Attention.nsa),
                                       sweep=SweepArgs(nsa_prefill_batched=[True, False]))) == []
