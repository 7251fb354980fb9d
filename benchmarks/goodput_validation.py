"""Does goodput rank global batches the way training does? A check on the bundled byte corpus, on CPU.

    python benchmarks/goodput_validation.py --out /tmp/goodput             # everything, ~5 min on 2 cores
    python benchmarks/goodput_validation.py --out /tmp/goodput --no-sweep  # without the sweep's estimate

1. **Pretrain**: the built-in tiny GPT (`model=tiny`) on `data=bytes`, `--pretrain-steps` AdamW steps, saved as
   OUT/checkpoint.pt, a state dict that `model.checkpoint` takes (`pretrain`: the helper that writes one).
2. **The sweep's noise scale**: `torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch data=bytes
   model.checkpoint=OUT/checkpoint.pt`, reading recommendation.json's `gradient_noise_scale`. Without that key
   (a trainer_tune that does not estimate it) the script stops and says so: no number stands in for it.
3. **A reference noise scale**, independent of the sweep's code: B_simple = tr(Sigma) / |G|^2 at the checkpoint
   (and at random initialisation, for comparison), from gradients of many small batches on one process, with the
   two-batch-size estimator of McCandlish et al. (2018), appendix A.1.
4. **Train from the checkpoint** at each of `--batches` global batches for the same number of tokens, AdamW
   with the learning rate scaled by the square-root rule from the smallest batch, the loss evaluated on the
   same fixed windows along the way; `--seeds` data orders per batch.
5. **Compare** the efficiency the noise scale predicts, per sample relative to the smallest batch B_ref,
   (B_noise + B_ref) / (B_noise + B), with the efficiency training shows: the tokens B_ref's run needed to
   reach the loss B's run ended at, over the tokens B's run spent. Does the ranking of final losses follow,
   and how far apart are predicted and measured efficiencies?
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer_tune.config.schema import DataArgs, DataKind, ModelArgs
from trainer_tune.workloads.data import build_batches
from trainer_tune.workloads.model import build_model

CPU = torch.device("cpu")
MODEL = ModelArgs()
"""model=tiny: 2 layers, d_model 128, 128 tokens per sample, one token per byte."""
EVAL_SEED = 424_242
"""The evaluation windows: the same for every run (not held out: the corpus is 40 kB, see README)."""


def _batches(*, seed: int, micro_batch_size: int) -> Iterator[torch.Tensor]:
    return build_batches(data=DataArgs(kind=DataKind.bytes, seed=seed), model=MODEL,
                         micro_batch_size=micro_batch_size, rank=0, world_size=1, device=CPU)


def _loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The loss trainer_tune's default step computes for token ids: mean next-token cross-entropy."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, MODEL.vocab_size), batch[:, 1:].reshape(-1))


def eval_batches(num_samples: int) -> list[torch.Tensor]:
    stream = _batches(seed=EVAL_SEED, micro_batch_size=min(num_samples, 32))
    return [next(stream) for _ in range(max(1, num_samples // 32))]


@torch.no_grad()
def eval_loss(model: nn.Module, eval_windows: Sequence[torch.Tensor]) -> float:
    was_training = model.training
    model.eval()
    loss = statistics.fmean(_loss(model, batch).item() for batch in eval_windows)
    model.train(was_training)
    return loss


def pretrain(path: Path, *, steps: int, batch_size: int, lr: float, seed: int = 0) -> list[float]:
    """Train the built-in tiny GPT on the byte corpus and save its state dict at `path` (for model.checkpoint).
    Returns the training loss of each step."""
    torch.manual_seed(seed)
    model = build_model(MODEL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    stream = _batches(seed=seed, micro_batch_size=batch_size)
    losses = []
    for step in range(steps):
        # A short linear warm-up: Adam's first updates from fresh moments are the largest.
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, steps // 20))
        loss = _loss(model, next(stream))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return losses


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


@dataclass(frozen=True)
class NoiseScale:
    value: float
    """B_simple = mean tr(Sigma) / mean |G|^2 over groups, in samples (sequences of seq_len tokens)."""
    ci95: tuple[float, float]
    """Bootstrap over groups (percentile)."""
    g2_mean: float
    trace_sigma_mean: float
    num_groups: int
    small_batch: int
    big_batch: int


def reference_noise_scale(model: nn.Module, *, small_batch: int, num_small: int, num_groups: int,
                          seed: int = 7) -> NoiseScale:
    """Per group: `num_small` gradients of `small_batch` samples (b) and their mean (B = b x num_small), giving
    unbiased |G|^2 = (B|G_B|^2 - b|G_b|^2)/(B - b) and tr(Sigma) = (|G_b|^2 - |G_B|^2)/(1/b - 1/B), |G_b|^2 the
    mean over the small batches. The weights do not move."""
    stream = _batches(seed=seed, micro_batch_size=small_batch)
    b, big = small_batch, small_batch * num_small
    g2, trace = [], []
    for _ in range(num_groups):
        total: Optional[torch.Tensor] = None
        small_sq = 0.0
        for _ in range(num_small):
            model.zero_grad(set_to_none=True)
            _loss(model, next(stream)).backward()
            grad = _flat_grad(model).double()
            small_sq += float(grad @ grad) / num_small
            total = grad if total is None else total + grad
        assert total is not None
        mean = total / num_small
        big_sq = float(mean @ mean)
        g2.append((big * big_sq - b * small_sq) / (big - b))
        trace.append((small_sq - big_sq) / (1 / b - 1 / big))
    model.zero_grad(set_to_none=True)
    g2_arr, trace_arr = np.array(g2), np.array(trace)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, num_groups, size=(2000, num_groups))
    ratios = trace_arr[picks].mean(axis=1) / g2_arr[picks].mean(axis=1)
    ratios = ratios[g2_arr[picks].mean(axis=1) > 0]
    low, high = np.percentile(ratios, [2.5, 97.5]) if len(ratios) else (math.nan, math.nan)
    return NoiseScale(value=float(trace_arr.mean() / g2_arr.mean()), ci95=(float(low), float(high)),
                      g2_mean=float(g2_arr.mean()), trace_sigma_mean=float(trace_arr.mean()),
                      num_groups=num_groups, small_batch=b, big_batch=big)


@dataclass(frozen=True)
class Run:
    global_batch: int
    seed: int
    lr: float
    tokens: list[int]
    """Tokens trained on at each evaluation (0 first: the checkpoint itself)."""
    losses: list[float]
    """The loss on the evaluation windows at each evaluation."""
    wall_s: float


def train_from(checkpoint: Path, *, global_batch: int, num_tokens: int, lr: float, seed: int,
               eval_windows: Sequence[torch.Tensor], num_evals: int, max_micro_batch: int,
               save_to: Optional[Path] = None) -> Run:
    """Plain PyTorch: the checkpoint, a fresh AdamW, `global_batch` samples per optimizer step (gradient
    accumulation above max_micro_batch), a constant learning rate after a warm-up of a tenth of the tokens.
    `save_to`: where to save the trained state dict."""
    model = build_model(MODEL)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    micro = min(global_batch, max_micro_batch)
    assert global_batch % micro == 0, (global_batch, micro)
    accum = global_batch // micro
    tokens_per_step = global_batch * MODEL.seq_len
    num_steps = max(1, num_tokens // tokens_per_step)
    warmup_steps = max(1, num_steps // 10)
    eval_at = {round(num_steps * (i + 1) / num_evals) for i in range(num_evals)}
    stream = _batches(seed=1000 + seed, micro_batch_size=micro)
    tokens, losses = [0], [eval_loss(model, eval_windows)]
    start_s = time.perf_counter()
    for step in range(1, num_steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / warmup_steps)
        for _ in range(accum):
            (_loss(model, next(stream)) / accum).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step in eval_at:
            tokens.append(step * tokens_per_step)
            losses.append(eval_loss(model, eval_windows))
    if save_to is not None:
        torch.save(model.state_dict(), save_to)
    return Run(global_batch=global_batch, seed=seed, lr=lr, tokens=tokens, losses=losses,
               wall_s=time.perf_counter() - start_s)


def tokens_to_reach(loss: float, *, tokens: Sequence[float], losses: Sequence[float]) -> Optional[float]:
    """Tokens at which a loss curve first comes down to `loss` (linear between evaluations): 0 when it starts
    there already (a run that ended above where it started made no progress); None if never."""
    if loss >= losses[0]:
        return 0.0
    for i in range(1, len(losses)):
        if losses[i] <= loss:
            t0, t1, l0, l1 = tokens[i - 1], tokens[i], losses[i - 1], losses[i]
            return t1 if l0 == l1 else t0 + (t1 - t0) * (l0 - loss) / (l0 - l1)
    return None


def predicted_efficiency(b_noise: float, *, batch: int, reference: int) -> float:
    """Per-sample efficiency of `batch` relative to `reference` (McCandlish et al.; Pollux's goodput factor)."""
    return (b_noise + reference) / (b_noise + batch)


def sweep_noise_scale(out: Path, checkpoint: Path, *, nproc: int, overrides: Sequence[str]) -> dict:
    """The noise scale a real trainer_tune sweep measures from the checkpoint (recommendation.json)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "trainer_tune", "+sweep=batch", "data=bytes", f"model.checkpoint={checkpoint}", "wandb=off",
           f"hydra.run.dir={out}", *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        sys.exit(f"the sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rec = json.loads((out / "recommendation.json").read_text())
    if "gradient_noise_scale" not in rec:
        sys.exit(f"{out / 'recommendation.json'} has no gradient_noise_scale: this trainer_tune does not estimate "
                 f"the gradient noise scale (issue 16's estimator). Nothing stands in for it; run with --no-sweep "
                 f"to compare training against the reference estimate alone.")
    noise = rec["gradient_noise_scale"]
    if noise is None or noise.get("value") is None:
        sys.exit(f"the sweep measured no gradient noise scale: {noise}")
    return noise


def _mean_curve(runs: Sequence[Run]) -> tuple[list[int], list[float]]:
    assert all(r.tokens == runs[0].tokens for r in runs)
    return runs[0].tokens, [statistics.fmean(values) for values in zip(*(r.losses for r in runs))]


def best_lr_runs(runs: Sequence[Run]) -> list[Run]:
    """Per batch, the runs of the learning rate whose mean final loss is lowest (the efficiency model assumes
    a tuned learning rate at every batch); with one learning rate per batch, all runs."""
    kept = []
    for batch in sorted({r.global_batch for r in runs}):
        by_lr: dict[float, list[Run]] = {}
        for r in runs:
            if r.global_batch == batch:
                by_lr.setdefault(r.lr, []).append(r)
        if len(by_lr) > 1:
            print(f"batch {batch}: mean final loss by lr: " + ", ".join(
                f"{lr:.2e}: {statistics.fmean(r.losses[-1] for r in rs):.4f}" for lr, rs in sorted(by_lr.items())))
        kept.extend(min(by_lr.values(), key=lambda rs: statistics.fmean(r.losses[-1] for r in rs)))
    return kept


def compare(runs: Sequence[Run], *, estimates: dict[str, float]) -> None:
    """Print the loss each batch reached, the efficiency it shows against the smallest batch, and what each
    noise-scale estimate predicted."""
    runs = best_lr_runs(runs)
    batches = sorted({r.global_batch for r in runs})
    reference = batches[0]
    ref_tokens, ref_curve = _mean_curve([r for r in runs if r.global_batch == reference])
    final = {b: [r.losses[-1] for r in runs if r.global_batch == b] for b in batches}
    names = list(estimates)
    measured_by_batch: dict[int, float] = {}
    print("\n| global batch (samples) | lr | steps | final loss per seed | mean | measured efficiency vs "
          f"{reference} | " + " | ".join(f"predicted ({name}, B_noise {estimates[name]:.0f})" for name in names)
          + " |")
    print("| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
    for b in batches:
        sample = next(r for r in runs if r.global_batch == b)
        steps = sample.tokens[-1] // (b * MODEL.seq_len)
        mean = statistics.fmean(final[b])
        reach = tokens_to_reach(mean, tokens=ref_tokens, losses=ref_curve)
        measured = "-" if b == reference else (f"{reach / sample.tokens[-1]:.2f}" if reach is not None
                                               else f"> 1 (below {reference}'s final loss)")
        if b != reference and reach is not None:
            measured_by_batch[b] = reach / sample.tokens[-1]
        predicted = [f"{predicted_efficiency(estimates[n], batch=b, reference=reference):.2f}" for n in names]
        print(f"| {b} | {sample.lr:.2e} | {steps} | {', '.join(f'{x:.4f}' for x in final[b])} | {mean:.4f} | "
              f"{measured} | " + " | ".join(predicted) + " |")
    for name in names:
        ratios = [f"{b}: {measured_by_batch[b] / predicted_efficiency(estimates[name], batch=b, reference=reference):.2f}"
                  for b in measured_by_batch]
        print(f"\nmeasured / predicted efficiency ({name}): {', '.join(ratios)}")
    order = sorted(batches, key=lambda b: statistics.fmean(final[b]))
    print(f"\nfinal losses rank (best first): {order}; goodput's statistical efficiency ranks smaller batches "
          f"first at equal tokens: {'as predicted' if order == batches else 'NOT as predicted'}")
    spread = {b: (max(final[b]) - min(final[b])) for b in batches if len(final[b]) > 1}
    if spread:
        print("seed-to-seed spread of the final loss: " + ", ".join(f"{b}: {s:.4f}" for b, s in spread.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[4, 16, 64],
                        help="global batches to train at, in samples (comma-separated; the smallest is B_ref)")
    parser.add_argument("--tokens", type=int, default=64 * 128 * 60,
                        help="tokens each run trains on (default: 60 steps of the largest default batch)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate at the smallest batch (sqrt rule above)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lr-factors", type=lambda s: [float(x) for x in s.split(",")], default=[1.0],
                        help="also train at the sqrt-rule lr times these (comma-separated, 1 included), keeping the "
                             "best per batch: the efficiency model assumes a tuned lr")
    parser.add_argument("--evals", type=int, default=12, help="evaluations of the eval loss per run")
    parser.add_argument("--eval-samples", type=int, default=128)
    parser.add_argument("--max-micro-batch", type=int, default=32)
    parser.add_argument("--noise-groups", type=int, default=24)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process (on a shared 2-core machine, 2 threads oversubscribe)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the trainer_tune sweep's estimate")
    parser.add_argument("--sweep-overrides", nargs="*", default=[
        "sweep.micro_batch_sizes=[2,8]", "sweep.grad_accums=[1,2]", "sweep.min_rounds=3", "sweep.max_rounds=3",
        "sweep.race=false", "sweep.budget_s=null"])
    args = parser.parse_args()
    if 1.0 not in args.lr_factors:
        parser.error("--lr-factors must include 1 (the square-root rule's own learning rate)")
    torch.set_num_threads(args.threads)
    start_s = time.perf_counter()

    checkpoint = args.out / "checkpoint.pt"
    if checkpoint.exists():
        print(f"reusing {checkpoint}")
    else:
        losses = pretrain(checkpoint, steps=args.pretrain_steps, batch_size=args.pretrain_batch, lr=args.pretrain_lr)
        print(f"pretrained {args.pretrain_steps} steps x {args.pretrain_batch} samples "
              f"({args.pretrain_steps * args.pretrain_batch * MODEL.seq_len:,} tokens, "
              f"{args.pretrain_steps * args.pretrain_batch * MODEL.seq_len / 39_760:.1f} passes over the corpus): "
              f"training loss {statistics.fmean(losses[:10]):.3f} -> {statistics.fmean(losses[-10:]):.3f}; "
              f"saved {checkpoint} ({time.perf_counter() - start_s:.0f} s)")
    eval_windows = eval_batches(args.eval_samples)

    estimates: dict[str, float] = {}
    if not args.no_sweep:
        noise = sweep_noise_scale(args.out / "sweep", checkpoint, nproc=args.nproc, overrides=args.sweep_overrides)
        print(f"sweep's gradient_noise_scale: {noise}")
        estimates["sweep"] = float(noise["value"])

    def reference_at(where: str, state: Optional[Path]) -> NoiseScale:
        torch.manual_seed(0)
        model = build_model(MODEL)
        if state is not None:
            model.load_state_dict(torch.load(state, map_location="cpu", weights_only=True))
        t_s = time.perf_counter()
        ref = reference_noise_scale(model, small_batch=4, num_small=16, num_groups=args.noise_groups)
        print(f"reference B_simple at {where}: {ref.value:.1f} samples (95% CI {ref.ci95[0]:.1f}-{ref.ci95[1]:.1f}; "
              f"|G|^2 {ref.g2_mean:.3g}, tr(Sigma) {ref.trace_sigma_mean:.3g}; b={ref.small_batch}, "
              f"B={ref.big_batch}, {ref.num_groups} groups; eval loss {eval_loss(model, eval_windows):.3f}; "
              f"{time.perf_counter() - t_s:.0f} s)", flush=True)
        return ref

    reference_at("random init", None)
    estimates["reference"] = reference_at("the checkpoint", checkpoint).value

    reference_batch = min(args.batches)
    runs = []
    for batch, factor in itertools.product(sorted(args.batches), args.lr_factors):
        lr = args.lr * math.sqrt(batch / reference_batch) * factor
        for seed in range(args.seeds):
            save_to = args.out / "after_reference_run.pt" if (batch, seed, factor) == (reference_batch, 0, 1.0) \
                else None
            run = train_from(checkpoint, global_batch=batch, num_tokens=args.tokens, lr=lr, seed=seed, eval_windows=eval_windows,
                             num_evals=args.evals, max_micro_batch=args.max_micro_batch, save_to=save_to)
            runs.append(run)
            print(f"batch {batch} seed {seed}: lr {lr:.2e}, eval loss {run.losses[0]:.4f} -> {run.losses[-1]:.4f} "
                  f"over {run.tokens[-1]:,} tokens ({run.wall_s:.0f} s)", flush=True)
    # The noise scale grows as the loss falls: where the comparison runs end, it is no longer the checkpoint's.
    estimates["reference, end"] = reference_at(f"the end of batch {reference_batch}'s run",
                                               args.out / "after_reference_run.pt").value
    (args.out / "runs.json").write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    compare(runs, estimates=estimates)
    print(f"\ntotal {time.perf_counter() - start_s:.0f} s")


if __name__ == "__main__":
    main()
