"""The CPU commands of the README, docs/quick-start.md and docs/troubleshooting.md, run as written (plus overrides
that keep them short): each exits with the code the docs promise and writes the recommendation and the files the
docs name. The commands are listed here verbatim and each must still be in the docs, so docs and behaviour cannot
drift apart. GPU, SLURM and multi-node commands are left out (tests/gpu, tests/slurm and test_multinode.py cover
their CPU forms)."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, clean_env

pytestmark = pytest.mark.slow

DOCS = ("README.md", "docs/quick-start.md", "docs/troubleshooting.md")

SHORT = ["window=quick", "sweep.min_rounds=1", "sweep.max_rounds=1", "wandb=off"]
"""One quick window per setting, no wandb: these runs check the commands, not the figures."""

SMALL_GRID = ["sweep.micro_batch_sizes=[1,2]"]
"""The sweeps' grids cut to two micro-batch sizes (the baseline is measured whatever the grid)."""

COMMANDS: list[tuple[str, list[str], int | tuple[int, ...], tuple[str, ...]]] = [
    # (the command as the docs write it, what the test appends, the exit code the docs promise, the files the
    # docs say it writes besides the recommendation's)
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch", SMALL_GRID, 0, ()),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch baseline.micro_batch_size=4 baseline.grad_accum=2",
     SMALL_GRID, 0, ()),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=global_batch", [], 0, ()),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch sweep.ddp_bucket_cap_mb=[5,25,100]",
     ["sweep.micro_batch_sizes=[1]", "sweep.grad_accums=[1]"], 0, ()),
    # No setting of the small grid comes near 3x the baseline, so the gate fails: NO-GO (exit 3) once the rounds show
    # every setting short of it, INCONCLUSIVE (exit 5) while a busy machine's windows are too noisy to show it (one
    # process with torch's default threads varies a lot beside other work), never GO.
    ("python -m trainer_tune +sweep=batch recommend=ci_gate recommend.min_speedup=3", SMALL_GRID, (3, 5), ()),
    ("launch/local.sh +sweep=batch baseline.micro_batch_size=4 baseline.grad_accum=2", SMALL_GRID, 0, ()),
    ("python -m trainer_tune -m train.micro_batch_size=1,2,4 train.grad_accum=1,2", [], 0, ()),
    # troubleshooting.md's stall rehearsal: rank 1 hangs in trial 1, both ranks dump their stacks, the watchdog
    # ends the trial (exit 4), torchrun restarts the group once and the sweep finishes (exit 0). As written it
    # takes 85 s here (the 30 s abort and 8 settings in 3 rounds), so it is shrunk: a 2 s stall threshold, an
    # abort after 6 s, two settings (the baseline and the stalled 1x1).
    ("torchrun --nproc_per_node=2 --max-restarts=1 -m trainer_tune +sweep=batch fault=stall watchdog.stall_s=10 "
     "watchdog.abort_after_s=30",
     ["watchdog.stall_s=2", "watchdog.abort_after_s=6", "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]"],
     0, ("stacks/trial-1-rank-0.txt", "stacks/trial-1-rank-1.txt")),
]


def _docs_code() -> str:
    """The text of every fenced code block of the docs the commands come from, one command per line."""
    blocks = []
    for name in DOCS:
        parts = (REPO / name).read_text().split("```")
        blocks += [block.replace("\\\n", " ") for block in parts[1::2]]
    return "\n".join(blocks)


def test_every_command_is_still_in_the_docs() -> None:
    lines = [line.split(" && ")[-1].split("  #")[0].strip() for line in _docs_code().splitlines()]
    missing = [command for command, _, _, _ in COMMANDS if command not in lines]
    assert not missing, f"no longer in {', '.join(DOCS)} as written: {missing}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command,extra,exit_code,files", COMMANDS, ids=[c for c, _, _, _ in COMMANDS])
def test_docs_command_exits_as_documented(tmp_path: Path, command: str, extra: list[str],
                                          exit_code: int | tuple[int, ...],
                                          files: tuple[str, ...]) -> None:
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "torchrun":
        argv[0] = str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "out"
    multirun = "-m" in argv[argv.index("trainer_tune"):] if "trainer_tune" in argv else False
    where = f"hydra.sweep.dir={out}" if multirun else f"hydra.run.dir={out}"
    # torchrun as written rendezvouses on its fixed default port: another run on this machine must not share it.
    env = clean_env({"PET_MASTER_PORT": str(_free_port()), "PYTHON": sys.executable})
    started = time.monotonic()
    proc = subprocess.run([*argv, *SHORT, *extra, where], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    took_s = time.monotonic() - started
    codes = exit_code if isinstance(exit_code, tuple) else (exit_code,)
    assert proc.returncode in codes, f"{command}: exit {proc.returncode} ({took_s:.0f} s)\n{proc.stderr[-3000:]}"
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["verdict"].startswith(("GO", "NO-GO", "INCONCLUSIVE")) and (out / "report.md").exists()
    assert (out / "trials.jsonl").exists() and (out / "recommendation.yaml").exists()
    missing = [name for name in files if not (out / name).exists()]
    assert not missing, f"{command}: no {missing} in {out}\n{proc.stderr[-3000:]}"


YOUR_MODEL = "docs/your-model.md"

ONE_SETTING_AND_BASELINE = ["sweep.micro_batch_sizes=[1]", "sweep.grad_accums=[1]"]
"""The example sweeps cut to 1x1 beside the baseline 2x1: two settings, so the verdict compares them."""

YOUR_MODEL_COMMANDS: list[tuple[str, list[str], int]] = [
    # (the command as docs/your-model.md writes it, continuation lines joined, what the test appends, exit code)
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch model._target_=trainer_tune.examples.models.ConvLM "
     "'+model.kwargs.vocab_size=${model.vocab_size}' +model.kwargs.d_model=128", ONE_SETTING_AND_BASELINE, 0),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch model=conv_lm "
     "data._target_=trainer_tune.examples.batches.counting_batches +data.kwargs.max_step=3 "
     "loss._target_=trainer_tune.examples.losses.label_smoothed_cross_entropy +loss.kwargs.smoothing=0.05",
     ONE_SETTING_AND_BASELINE, 0),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch model=hf_gpt2", ONE_SETTING_AND_BASELINE, 0),
    # The NSA measurements at micro-batch 2, both flag values (one of them is the baseline): two windows.
    ("torchrun --nproc_per_node=2 -m trainer_tune model=tiny_nsa +sweep=batch 'sweep.micro_batch_sizes=[1,4]' "
     "'sweep.grad_accums=[1]' 'sweep.nsa_prefill_batched=[true,false]' window.measure_s=8 wandb=off",
     ["sweep.micro_batch_sizes=[2]"], 0),
    ("torchrun --nproc_per_node=2 -m trainer_tune model=tiny_nsa +sweep=batch 'sweep.micro_batch_sizes=[1,4]' "
     "'sweep.grad_accums=[1]' 'sweep.nsa_disable_aux_stats=[true,false]' window.measure_s=8 wandb=off",
     ["sweep.micro_batch_sizes=[2]"], 0),
]
"""docs/your-model.md's trainer_tune commands, but those for GPUs (train=gpu_bf16), those that start from the
reader's own checkpoint (model.checkpoint=runs/...: tests/distributed/test_checkpoint.py runs that command with a
checkpoint it trains) and those below."""

NEEDS_THE_READERS_FILES = ("train=gpu_bf16", "model.checkpoint=runs/")

YOUR_MODEL_RUN_BY_TEST_WORKLOADS = (
    "torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch model=resnet_small data=images",
    "torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch model=distilbert_cls data=text_cls",
    "torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch model=pair_encoder data=pairs "
    "step._target_=trainer_tune.examples.contrastive.contrastive_step +step.kwargs.temperature=0.05",
)
"""The examples' commands: tests/distributed/test_workloads.py runs them as written and checks what they record."""


def _your_model_commands_in_the_docs() -> list[str]:
    """The trainer_tune commands of docs/your-model.md's code blocks, continuation lines joined, spaces collapsed."""
    blocks = (REPO / YOUR_MODEL).read_text().split("```")[1::2]
    lines = [" ".join(line.split()) for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith(("torchrun ", "python ")) and " trainer_tune" in line]


def test_every_your_model_command_is_run_here() -> None:
    """Both ways: a command added to the docs must be added here, a command here must still be in the docs."""
    in_docs = {command for command in _your_model_commands_in_the_docs()
               if not any(marker in command for marker in NEEDS_THE_READERS_FILES)}
    listed = {command for command, _, _ in YOUR_MODEL_COMMANDS} | set(YOUR_MODEL_RUN_BY_TEST_WORKLOADS)
    assert in_docs == listed, f"only in the docs: {sorted(in_docs - listed)}; only here: {sorted(listed - in_docs)}"


@pytest.mark.parametrize("command,extra,exit_code", YOUR_MODEL_COMMANDS, ids=[c for c, _, _ in YOUR_MODEL_COMMANDS])
def test_your_model_command_exits_as_documented(tmp_path: Path, command: str, extra: list[str],
                                                exit_code: int) -> None:
    test_docs_command_exits_as_documented(tmp_path, command, extra, exit_code, ())


INFERENCE = "docs/inference.md"

SERVING_GRID = ["sweep.micro_batch_sizes=[1]"]
"""The serving grid cut to batch 1 beside the baseline 2: two settings, one quick window each."""

LOAD_GRID = ["serving.max_batch_sizes=[4]", "serving.confirm_settings=1", "serving.requests_per_rate=200",
             "serving.max_s_per_rate=1", "serving.max_rates=2", "serving.service_repeats=5",
             "serving.max_queue_delays_ms=[1]"]
"""A serving-under-load sweep cut short: the baseline and 4/1ms, at most two rates of 200 requests each (too few for
a p99 interval: these runs check the commands, not the figures)."""

INFERENCE_COMMANDS: list[tuple[str, list[str], int]] = [
    # (the command as docs/inference.md (and the README's "Serving batch size") writes it, what the test appends,
    # the exit code the docs promise)
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=serving recommend.max_batch_latency_ms=50", SERVING_GRID, 0),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=serving model=resnet_small data=images "
     "recommend.max_batch_latency_ms=20", SERVING_GRID, 0),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=serving model=distilbert_cls data=text_cls "
     "recommend.max_batch_latency_ms=50", SERVING_GRID, 0),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=serving recommend.objective=latency", SERVING_GRID, 0),
    # Refused before any process group starts: one line, exit 2.
    ("python -m trainer_tune +sweep=serving 'sweep.grad_accums=[1,2]'", [], 2),
    # Serving under load (docs/inference.md, "Under load"), cut to the baseline and one batcher setting, two rates.
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=serving_load recommend.max_p99_ms=10", LOAD_GRID, 0),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=serving_load model=distilbert_cls data=text_cls "
     "recommend.max_p99_ms=50", LOAD_GRID, 0),
    ("torchrun --nproc_per_node=2 -m trainer_tune +sweep=serving_load 'serving.rate_per_s=[200,400,800]' "
     "recommend.max_p99_ms=20", [*LOAD_GRID[:-1], "serving.max_queue_delays_ms=[0]"], 0),
    # Decided again from the journal of the first serving_load command (run first into the same directory).
    ("python -m trainer_tune.decide outputs/runs/2026-12-08_01-30-00 recommend.max_p99_ms=20", [], 0),
]
"""The serving commands of docs/inference.md and the README, but the GPU one (train=gpu_bf16)."""


def _serving_commands_in_the_docs() -> list[str]:
    """trainer_tune commands of docs/inference.md's code blocks and the README's serving ones, spaces collapsed."""
    blocks = (REPO / INFERENCE).read_text().split("```")[1::2]
    blocks += [block for block in (REPO / "README.md").read_text().split("```")[1::2] if "+sweep=serving" in block]
    lines = [" ".join(line.split()) for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith(("torchrun ", "python ")) and " trainer_tune" in line]


def test_every_serving_command_is_run_here() -> None:
    """Both ways: a command added to the docs must be added here, a command here must still be in the docs."""
    in_docs = {command for command in _serving_commands_in_the_docs() if "train=gpu_bf16" not in command}
    listed = {command for command, _, _ in INFERENCE_COMMANDS}
    assert in_docs == listed, f"only in the docs: {sorted(in_docs - listed)}; only here: {sorted(listed - in_docs)}"


@pytest.mark.parametrize("command,extra,exit_code", INFERENCE_COMMANDS, ids=[c for c, _, _ in INFERENCE_COMMANDS])
def test_serving_command_exits_as_documented(tmp_path: Path, command: str, extra: list[str], exit_code: int) -> None:
    if exit_code == 2:
        argv = [sys.executable, *shlex.split(command)[1:]]
        proc = subprocess.run([*argv, f"hydra.run.dir={tmp_path / 'out'}"], cwd=REPO, env=clean_env({}),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-3000:]
        (line,) = [line for line in proc.stderr.splitlines() if line.startswith("trainer_tune: error: ")]
        assert line in (REPO / INFERENCE).read_text(), f"the docs show another message than {line!r}"
        assert not (tmp_path / "out" / "trials.jsonl").exists()
        return
    if "trainer_tune.decide" in command:
        # The re-decide of a serving-under-load sweep: first the sweep, then the command on its directory.
        sweep = tmp_path / "sweep"
        test_docs_command_exits_as_documented(
            sweep, "torchrun --nproc_per_node=2 -m trainer_tune +sweep=serving_load recommend.max_p99_ms=10",
            LOAD_GRID, 0, ())
        argv = [sys.executable, *shlex.split(command)[1:]]
        argv[argv.index("outputs/runs/2026-12-08_01-30-00")] = str(sweep / "out")
        proc = subprocess.run(argv, cwd=REPO, env=clean_env({}), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1].startswith("decided again: ")
        assert json.loads((sweep / "out" / "redecided" / "recommendation.json").read_text())["target_p99_ms"] == 20.0
        return
    test_docs_command_exits_as_documented(tmp_path, command, extra, exit_code, ())
    out = tmp_path / "out"
    rec = json.loads((out / "recommendation.json").read_text())
    if "+sweep=serving_load" in command:
        assert rec["mode"] == "serving_load" and rec["baseline"] == "2/0ms"
        assert [s["label"] for s in rec["settings"]][0] == "2/0ms" and (out / "report.md").exists()
        return
    assert len(rec["settings"]) == 2
    for setting in rec["settings"]:
        assert setting["mode"] == "inference" and setting["status"] == "ok", setting.get("error")
        assert setting["latency"]["num_batches"] >= 4 and setting["latency"]["p99_ms"] > 0
    budget = next((float(a.split("=")[1]) for a in shlex.split(command) if a.startswith("recommend.max_batch_latency_ms=")),
                  None)
    assert rec["max_batch_latency_ms"] == budget
    report = (out / "report.md").read_text()
    assert "## Serving" in report and "## Decision matrix" in report and "| min p99 latency |" in report
