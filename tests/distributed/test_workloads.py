"""Real 2-rank sweeps of workloads that are not language models (trainer_tune/examples/, docs/your-model.md): a CNN
on image pairs (samples/s, no tokens), a DistilBERT classifier on padded, masked dicts (tokens/s of real tokens
only), a step function; bad batches and losses as trial errors; a step target that does not fit, before any
process group starts. One round of one window per setting: these are about mechanics, not decisions."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from torch.utils.data import DistributedSampler

from conftest import ONE_ROUND, REPO, read_jsonl, refused_before_any_group, run_tune
from trainer_tune.examples.text import RandomText
from trainer_tune.examples.vision import ResNet

pytestmark = pytest.mark.slow

QUICK = ["window=quick", "sweep.grad_accums=[1]", *ONE_ROUND, "wandb=off"]
"""window=quick: 1 warm-up step, 4 measured steps, then 2 steps without gradient sync (window.comm_split_steps)."""

CNN = "torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch model=resnet_small data=images"
TEXT = "torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch model=distilbert_cls data=text_cls"
STEP = ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch model=pair_encoder data=pairs "
        "step._target_=trainer_tune.examples.contrastive.contrastive_step +step.kwargs.temperature=0.05")
"""docs/your-model.md's example commands, run here as written (with QUICK and a smaller grid appended), so
test_docs_commands.py does not run them again."""


def _documented(command: str) -> list[str]:
    """The command's arguments to trainer_tune, after checking that docs/your-model.md still has it."""
    blocks = (REPO / "docs" / "your-model.md").read_text().split("```")[1::2]
    lines = {" ".join(line.split()) for block in blocks for line in block.replace("\\\n", " ").splitlines()}
    assert command in lines, f"no longer in docs/your-model.md as written: {command}"
    argv = shlex.split(command)
    return argv[argv.index("trainer_tune") + 1:]


def _windows(out: Path) -> dict[str, dict]:
    return {w["label"]: w for w in read_jsonl(out / "trials.jsonl")}


def test_a_cnn_on_image_pairs_is_measured_in_samples(tmp_path: Path) -> None:
    out = tmp_path / "cnn"
    proc = run_tune([*_documented(CNN), *QUICK, "sweep.micro_batch_sizes=[4]",
                     f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    windows = _windows(out)
    assert sorted(windows) == ["2x1", "4x1"]
    num_parameters = sum(p.numel() for p in ResNet(num_classes=10, channels=(16, 32)).parameters())
    for w in windows.values():
        assert w["status"] == "ok", w["error"]
        assert w["model"] == "trainer_tune.examples.vision.ResNet" and w["num_parameters"] == num_parameters
        assert w["throughput_unit"] == "samples" and w["tokens_per_s"] is None and w["tokens_per_step"] is None
        # Every sample of both ranks counted: global batch x measured steps over the measured time.
        assert w["samples_per_s"] == pytest.approx(
            w["global_batch_size"] * w["num_measured_steps"] / w["measured_s"], rel=1e-9)
        assert w["data_wait_fraction"] is not None and 0 <= w["data_wait_fraction"] < 1
    rec = json.loads((out / "recommendation.json").read_text())
    # The decision is in samples/s; its first reason gives the rate in that unit (the verdict does too, except
    # "keep baseline ... (fastest measured)", which gives no rate).
    assert rec["unit"] == "samples" and "samples/s" in rec["reasons"][0]
    assert "tokens/s" not in " ".join([rec["verdict"], *rec["reasons"]])
    assert rec["verdict"] in proc.stdout


def _real_tokens_per_step(window: dict, *, world_size: int, seed: int) -> tuple[float, int]:
    """What data=text_cls feeds in the window's measured steps, as a training script with a DistributedSampler
    (shuffled with data.seed, epoch 0 first) reads it: (attention-mask sum per step over both ranks, the
    input_ids' element count per step)."""
    micro_batch_size, model_seq_len = window["micro_batch_size"], 64
    dataset = RandomText(seq_len=model_seq_len, vocab_size=1000, seed=seed, num_samples=1024, min_length=8)
    # The setting's first window: FlopCounterMode counted one micro-batch when the trainer was built
    # (window._count_flops), then its noise steps read theirs (window._noise_steps), then the warm-up.
    noise_steps = window["noise_scale"]["num_steps"] if window["noise_scale"] else 0
    first = 1 + (noise_steps + window["num_warmup_steps"]) * window["grad_accum"]
    last = first + window["num_measured_steps"] * window["grad_accum"]
    mask_sum = 0
    for rank in range(world_size):
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
        sampler.set_epoch(0)
        order = list(sampler)
        assert last * micro_batch_size <= len(order)  # the window stays in the first epoch
        for index in order[first * micro_batch_size:last * micro_batch_size]:
            mask_sum += int(dataset[index]["attention_mask"].sum())
    padded = world_size * micro_batch_size * window["grad_accum"] * model_seq_len
    return mask_sum / window["num_measured_steps"], padded


def test_a_text_classifier_counts_only_the_real_tokens(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "text"
    proc = run_tune([*_documented(TEXT), *QUICK, "sweep.micro_batch_sizes=[2]",
                     f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (window,) = _windows(out).values()
    assert window["status"] == "ok", window["error"]
    assert window["model"] == "transformers.DistilBertForSequenceClassification"
    assert window["throughput_unit"] == "tokens"
    expected, padded = _real_tokens_per_step(window, world_size=2, seed=1234)
    assert window["tokens_per_step"] == pytest.approx(expected) and expected < padded
    assert window["tokens_per_s"] == pytest.approx(
        window["tokens_per_step"] * window["num_measured_steps"] / window["measured_s"], rel=1e-9)
    assert window["samples_per_s"] == pytest.approx(
        window["global_batch_size"] * window["num_measured_steps"] / window["measured_s"], rel=1e-9)
    # The model computed its own loss from the labels: cross-entropy of 2 classes, about log 2 at the start.
    assert 0.3 < window["loss_first"] < 1.2
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["unit"] == "tokens" and "tokens/s" in rec["verdict"]  # one setting: "MEASURED: ... tokens/s"


def test_a_step_function_trains_a_model_with_two_inputs(tmp_path: Path) -> None:
    out = tmp_path / "step"
    proc = run_tune([*_documented(STEP), *QUICK, "sweep.micro_batch_sizes=[4]",
                     f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    windows = _windows(out)
    assert sorted(windows) == ["2x1", "4x1"]
    for w in windows.values():
        assert w["status"] == "ok", w["error"]
        assert w["throughput_unit"] == "samples" and w["tokens_per_s"] is None
        # No default rule takes these batches (a dict without labels, a model returning two embeddings): the
        # loss can only have come from contrastive_step.
        assert w["loss_first"] is not None and w["loss_first"] >= 0
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["unit"] == "samples" and "samples/s" in rec["reasons"][0]


def test_bad_batches_and_losses_are_trial_errors_and_the_sweep_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "bad"
    proc = run_tune(["model._target_=helpers.workloads.Classifier", "data._target_=helpers.workloads.batches_by_size",
                     "+sweep=batch", *QUICK, "sweep.micro_batch_sizes=[1,4]", f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    windows = _windows(out)
    assert {label: w["status"] for label, w in windows.items()} == {"2x1": "error", "1x1": "error", "4x1": "ok"}
    expected = {
        "1x1": "TargetError: the default step takes a pair (inputs, targets), got tuple(float32[1, 8], int64[1], "
               "float32[1]): set step._target_ to a function step(model, batch) -> loss for this batch",
        "2x1": "TargetError: model._target_='helpers.workloads.Classifier' returned a .loss of shape [2]; expected "
               "a scalar tensor (the loss to call backward on)",
    }
    for label, message in expected.items():
        error = windows[label]["error"]
        assert all(f"rank {rank} on " in error for rank in (0, 1)) and error.count(message) == 2, error
        assert "Traceback" not in error
    assert windows["4x1"]["samples_per_s"] > 0


def test_a_step_target_that_does_not_fit_ends_before_the_process_group(tmp_path: Path) -> None:
    run_dir = tmp_path / "never"
    proc = run_tune(["model=pair_encoder", "data=pairs",
                     "step._target_=trainer_tune.examples.contrastive.contrastive_step", "+step.kwargs.temp=0.2",
                     f"hydra.run.dir={run_dir}"], nproc=2, timeout_s=120)
    # Each rank exits 2 (or is ended by torchrun once the first has); torchrun's own exit code is then 1, and its
    # summary lists the ranks' codes (README).
    assert proc.returncode == 1 and refused_before_any_group(proc.stderr, nproc=2), proc.stderr[-3000:]
    assert ("trainer_tune: error: step._target_='trainer_tune.examples.contrastive.contrastive_step' is not allowed "
            "with step.kwargs={'temp': 0.2}: got an unexpected keyword argument 'temp'") in proc.stderr
    assert "Traceback" not in proc.stderr.split("trainer_tune: error:")[0]
    assert not run_dir.exists()
