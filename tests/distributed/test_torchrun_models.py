"""Real 2-rank sweeps under torchrun on gloo with other models: the NSA GPT with its flags as sweep axes, and a
user model given only by `_target_` (docs/your-model.md)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from conftest import ONE_ROUND, read_jsonl, run_tune
from trainer_tune.config.schema import Attention, ModelArgs
from trainer_tune.measure.flops import gpt_flops_per_token
from trainer_tune.workloads.nsa_attention import AUX_STAT_NAMES
from helpers.wandb_reader import find_offline_run_files, summarize_wandb_run

pytestmark = pytest.mark.slow

# One round: these tests are about models, and one window per setting keeps them short.
QUICK_ONE_SETTING = ["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[2]", "sweep.grad_accums=[1]",
                     *ONE_ROUND]


def _trials(out: Path) -> list[dict]:
    """The journal's windows (one per setting: one round), in plan order."""
    return sorted(read_jsonl(out / "trials.jsonl"), key=lambda t: t["index"])


def test_user_model_given_only_by_target_completes_a_sweep(tmp_path: Path) -> None:
    out = tmp_path / "custom"
    proc = run_tune(["model._target_=trainer_tune.examples.models.ConvLM", "+model.kwargs.vocab_size=${model.vocab_size}",
                     "+model.kwargs.d_model=64", "data._target_=trainer_tune.examples.batches.counting_batches",
                     "loss._target_=trainer_tune.examples.losses.label_smoothed_cross_entropy",
                     "+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]",
                     "sweep.min_rounds=2", "sweep.max_rounds=2", "wandb=off", f"hydra.run.dir={out}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _trials(out)
    assert sorted((t["round_id"], t["micro_batch_size"], t["grad_accum"]) for t in trials) == \
        [("r0", 1, 1), ("r0", 2, 1), ("r1", 1, 1), ("r1", 2, 1)]
    for t in trials:
        assert t["status"] == "ok", t["error"]
        assert t["model"] == "trainer_tune.examples.models.ConvLM" and t["world_size"] == 2
        # ConvLM(vocab 256, d_model 64, 2 layers): embedding, 2 x (depthwise conv + LayerNorm + MLP), norm, head.
        assert t["num_parameters"] == 256 * 64 + 2 * (64 * 4 + 64 + 2 * 64 + 64 * 256 + 256 + 256 * 64 + 64) \
            + 2 * 64 + 64 * 256
        assert t["tokens_per_s"] > 0
        # FlopCounterMode counted one micro-step on each rank when the setting's trainer was built; the record
        # holds the max over ranks. Every weight use costs 2 FLOPs per token forward and 4 backward (the input
        # gradient is needed everywhere: the embedding below trains): per token 6 x (2 layers x (64 x 256 + 256 x 64)
        # MLP weights + the 64 x 256 head + 2 layers x 64 x 4 depthwise taps), 128 tokens per sample, whatever
        # the micro-batch.
        mfu = t["mfu"]
        per_token = 6 * (2 * (64 * 256 + 256 * 64) + 64 * 256 + 2 * 64 * 4)
        assert (mfu["flops_source"], mfu["count_note"]) == ("FlopCounterMode", None)
        assert mfu["flops_per_sample"] == 128 * per_token and mfu["flops_per_token"] == pytest.approx(per_token)
        assert mfu["mfu"] is None and "no peak TFLOP/s for a cpu device" in mfu["warning"]
        assert mfu["achieved_tflops"] == pytest.approx(128 * per_token * t["samples_per_s"] / 1e12)
        assert t["nsa_aux_stats"] == []
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["decision"] in ("GO", "NO-GO", "INCONCLUSIVE")
    assert (rec["chosen"] or rec["leader"])["trial_key"] in {t["setting_key"] for t in trials}
    assert rec["verdict"] in proc.stdout


def test_wrong_output_shape_is_a_trial_error_not_a_hang(tmp_path: Path) -> None:
    out = tmp_path / "wrong"
    proc = run_tune(["model._target_=helpers.models.WrongShape",
                     "+model.kwargs.vocab_size=${model.vocab_size}", *QUICK_ONE_SETTING, "wandb=off",
                     f"hydra.run.dir={out}"], nproc=2, timeout_s=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (trial,) = _trials(out)
    assert trial["status"] == "error"
    host = socket.gethostname()
    for rank in (0, 1):  # each rank's error, named by rank and host
        assert (f"rank {rank} on {host}: trainer_tune.workloads.targets.TargetError: model._target_='helpers.models."
                f"WrongShape' returned logits of shape [2, 256] for input_ids of shape [2, 128]; expected "
                f"[2, 128, 256]") in trial["error"]


def test_unimportable_target_fails_before_the_process_group(tmp_path: Path) -> None:
    run_dir = tmp_path / "never"
    proc = run_tune(["model._target_=my_models.gpt.build", f"hydra.run.dir={run_dir}"], nproc=2, timeout_s=120)
    assert proc.returncode != 0
    assert ("trainer_tune: error: model._target_='my_models.gpt.build' is not allowed: it cannot be imported "
            "(ModuleNotFoundError: No module named 'my_models')") in proc.stderr
    assert "Traceback" not in proc.stderr.split("trainer_tune: error:")[0]
    assert not run_dir.exists()


def test_nsa_flags_as_sweep_axes_switch_the_layer_and_record_aux_stats(tmp_path: Path) -> None:
    out = tmp_path / "nsa"
    proc = run_tune(["model=tiny_nsa", *QUICK_ONE_SETTING, "sweep.nsa_prefill_batched=[true,false]",
                     "sweep.nsa_disable_aux_stats=[true,false]", "wandb.project=tt-test", f"hydra.run.dir={out}"],
                    nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _trials(out)
    # The baseline (both flags at their defaults) is also one of the four swept settings, so it is measured once.
    assert [(t["flags"]["prefill_batched"], t["flags"]["disable_aux_stats"]) for t in trials] == \
        [(True, False), (True, True), (False, True), (False, False)]
    for t in trials:
        assert t["status"] == "ok", t["error"]
        assert t["model"] == "tiny_nsa" and 0.4e6 < t["num_parameters"] < 0.6e6
        assert t["environment"]["NSA_PREFILL_BATCHED"] == ("1" if t["flags"]["prefill_batched"] else "0")
        stats = t["nsa_aux_stats"]
        if t["flags"]["disable_aux_stats"]:
            assert stats == []
            continue
        assert len(stats) == t["num_measured_steps"] == 4
        for step in stats:
            assert set(step) == set(AUX_STAT_NAMES)
            assert 0 < step["gate_selected_mean"] < 1 and 0 <= step["selected_window_overlap"] <= 1
            assert step["selection_entropy"] > 0 and step["selected_attention_entropy"] > 0
    # The batched and looped paths compute the same statistics from the same weights and data (first step).
    on = [t for t in trials if not t["flags"]["disable_aux_stats"]]
    for name in AUX_STAT_NAMES:
        assert on[0]["nsa_aux_stats"][0][name] == pytest.approx(on[1]["nsa_aux_stats"][0][name], rel=1e-4)
    # FLOPs per token are the sparse formula's, which at 128 tokens exceeds dense causal attention's (a query
    # attends to up to 4 compressed blocks, 64 selected tokens and a 32-token window, overlapping).
    tiny_nsa = ModelArgs(name="tiny_nsa", attention=Attention.nsa)
    assert on[0]["mfu"]["flops_per_token"] == pytest.approx(gpt_flops_per_token(tiny_nsa, num_parameters=513_688))
    assert on[0]["num_parameters"] == 513_688

    # Per-step statistics reach wandb's per-step history through the result, not through the sink.
    runs = [summarize_wandb_run(p) for p in find_offline_run_files(out / "wandb")]
    by_index = {run.config["trial"]["index"]: run for run in runs if run.job_type == "trial"}
    assert len(by_index) == 4
    for t in trials:
        rows = [row for row in by_index[t["index"]].history if "train/step_time_s" in row]
        logged = [row.get("nsa/selection_entropy") for row in rows]
        if t["flags"]["disable_aux_stats"]:
            assert logged == [None] * 4
        else:
            assert logged == pytest.approx([s["selection_entropy"] for s in t["nsa_aux_stats"]])
