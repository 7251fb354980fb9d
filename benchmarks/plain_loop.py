"""A plain hand-written training loop on one GPU: the rate a user's own loop gets, to set beside trainer_tune's.

    python benchmarks/plain_loop.py --out plain_loop.json            # GPT-2 small shape, micro-batch 8, bf16
    python benchmarks/plain_loop.py --micro-batch-size 16 --precision fp32 --steps 60 --repeats 5
    python benchmarks/plain_loop.py --dry-run                        # the same code on the CPU, a tiny shape (CI)

The built-in GPT (trainer_tune's ModelArgs and build_model; nothing of its measurement), AdamW (fused on CUDA,
as trainer_tune's window builds it), the forward under the precision's autocast (fp16 with a GradScaler), the
float32 cross-entropy of next-token prediction, `optimizer.step()` and `zero_grad(set_to_none=True)`. Random token
batches [micro_batch_size, seq_len + 1] are made on the device before any timing. After the warm-up steps, each
repeat is one stretch of timed steps with one `torch.cuda.synchronize()` before it and one after it, on the host's
wall clock (`time.perf_counter()`); tokens/s is the median over repeats of seq_len x micro_batch_size x
grad_accum x steps over the stretch's time.

Inside the timed steps torch's own detector of synchronising operations is on
(`torch.cuda.set_sync_debug_mode("warn")`), and its warnings are counted: `syncs_in_loop`, which must be 0 for a
loop that never waits on the device. It is off everywhere else.

Prints one JSON object (and writes it to --out): tokens_per_s, steps, micro_batch_size, seq_len, precision,
syncs_in_loop and more. Without CUDA it exits 3 with one line, unless --dry-run, which runs on the CPU with a
tiny shape (the shape arguments ignored), at most 1 warm-up step, 2 steps and 2 repeats, and without the detector
(syncs_in_loop is then null).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F

EXIT_NO_CUDA = 3
SYNC_WARNING = "synchronizing CUDA operation"
"""What torch's sync debug mode warns ("called a synchronizing CUDA operation", c10/cuda/CUDAFunctions.cpp)."""
GPT2_SMALL = {"vocab_size": 50304, "seq_len": 1024, "d_model": 768, "n_layers": 12, "n_heads": 12, "mlp_ratio": 4}
"""configs/model/gpt_125m.yaml, the shape of gpu_check.sh's GPT steps: the defaults here."""
TINY = {"vocab_size": 256, "seq_len": 32, "d_model": 32, "n_layers": 2, "n_heads": 2, "mlp_ratio": 4}
"""--dry-run's shape: seconds on a CPU."""
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class SyncTally:
    """Warnings caught while the loop ran: the synchronising operations torch's detector reported, and others."""

    syncs: int = 0
    samples: list[str] = field(default_factory=list)
    """Where the first few synchronisations happened (file:line: message), to find them."""
    other_warnings: int = 0


@contextlib.contextmanager
def counting_syncs(*, arm: bool) -> Iterator[SyncTally]:
    """Count the synchronisation warnings raised inside the block; `arm` turns torch's detector on for the block
    (CUDA only) and off again after it. Every warning is recorded (simplefilter "always"), repeats included."""
    tally = SyncTally()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if arm:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield tally
        finally:
            if arm:
                torch.cuda.set_sync_debug_mode("default")
    for warning in caught:
        if SYNC_WARNING in str(warning.message):
            tally.syncs += 1
            if len(tally.samples) < 5:
                tally.samples.append(f"{warning.filename}:{warning.lineno}: {warning.message}")
        else:
            tally.other_warnings += 1


def _build(args: argparse.Namespace, shape: dict[str, int], device: torch.device) -> tuple[Any, ...]:
    # trainer_tune's model builder and nothing else of it (put the checkout first, as gpu_check.sh does).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from trainer_tune.config.schema import ModelArgs
    from trainer_tune.workloads.model import build_model, count_parameters

    torch.manual_seed(args.seed)
    model = build_model(ModelArgs(**shape)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    generator = torch.Generator(device=device).manual_seed(args.seed)
    batches = [torch.randint(0, shape["vocab_size"], (args.micro_batch_size, shape["seq_len"] + 1), device=device,
                             generator=generator) for _ in range(max(2, args.grad_accum))]
    return model, optimizer, scaler, batches, count_parameters(model)


def run(args: argparse.Namespace) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    shape = dict(TINY) if args.dry_run else {k: getattr(args, k) for k in GPT2_SMALL}
    model, optimizer, scaler, batches, num_parameters = _build(args, shape, device)
    dtype = AUTOCAST[args.precision]
    vocab, ga = shape["vocab_size"], args.grad_accum
    losses: list[torch.Tensor] = []

    def step(index: int) -> None:
        for micro in range(ga):
            batch = batches[(index * ga + micro) % len(batches)]
            with torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
                logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, vocab), batch[:, 1:].reshape(-1))
            if scaler is not None:
                scaler.scale(loss / ga).backward()
            else:
                (loss / ga).backward()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())  # stays on the device: read after the timing

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    for index in range(args.warmup):
        step(index)
    rates, syncs, samples, other = [], 0, [], 0
    for _ in range(args.repeats):
        losses.clear()
        synchronize()
        with counting_syncs(arm=cuda) as tally:
            start_s = time.perf_counter()
            for index in range(args.steps):
                step(index)
        synchronize()
        elapsed_s = time.perf_counter() - start_s
        rates.append(args.steps * ga * args.micro_batch_size * shape["seq_len"] / elapsed_s)
        syncs, other = syncs + tally.syncs, other + tally.other_warnings
        samples += tally.samples[:5 - len(samples)]
    last_loss = float(losses[-1]) if losses else None
    return {
        "tokens_per_s": statistics.median(rates), "tokens_per_s_by_repeat": rates, "steps": args.steps,
        "repeats": args.repeats, "warmup_steps": args.warmup, "micro_batch_size": args.micro_batch_size,
        "grad_accum": ga, "seq_len": shape["seq_len"], "precision": args.precision, "shape": shape,
        "num_parameters": num_parameters,
        "syncs_in_loop": tally_or_none(syncs, armed=cuda), "sync_samples": samples, "other_warnings": other,
        "sync_debug": "on (torch.cuda.set_sync_debug_mode('warn') during the timed steps)" if cuda
        else "off: dry run on the CPU",
        "loss_last": last_loss, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__, "dry_run": bool(args.dry_run),
    }


def tally_or_none(syncs: int, *, armed: bool) -> Optional[int]:
    """The count where the detector was on; None where it was not (a CPU dry run counts nothing)."""
    return syncs if armed else None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the JSON here too (its folder is created)")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--precision", choices=sorted(AUTOCAST), default="bf16")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed stretches; tokens_per_s is their median")
    parser.add_argument("--seed", type=int, default=0)
    for key, value in GPT2_SMALL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=value)
    parser.add_argument("--dry-run", action="store_true",
                        help="on the CPU with a tiny shape and without the sync detector (CI)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.warmup, args.steps, args.repeats = min(args.warmup, 1), min(args.steps, 2), min(args.repeats, 2)
    elif not torch.cuda.is_available():
        print("plain_loop: no CUDA device", file=sys.stderr)
        return EXIT_NO_CUDA
    for name in ("micro_batch_size", "grad_accum", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    result = run(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(f"plain_loop: {result['tokens_per_s']:,.0f} tokens/s, {args.micro_batch_size}x{args.grad_accum} "
          f"{args.precision}, syncs in loop {result['syncs_in_loop']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
