"""How much does trainer_tune's measurement cost? Its window vs a bare hand-written DDP loop, same run.

    python benchmarks/overhead.py                      # re-launches itself under torchrun, 2 ranks
    python benchmarks/overhead.py --nproc 2 --micro-batch-size 8 --grad-accum 2 --steps 40 --repeats 7

Both sides build the same model from the same seed, wrap it in DDP, and feed the same synthetic token
stream; they alternate (ours first on even repeats, bare first on odd) so drift on a shared machine hits
both. Two ratios are printed, each the median over repeats of ours / bare:
- reported: the tokens/s trainer_tune records (tokens over the summed slowest-rank step times) over the
  bare loop's tokens over its wall time (synchronized, slowest rank);
- wall: trainer_tune's window loop timed from outside, instrumentation and progress callbacks included,
  over the same bare wall time. This is the cost of measuring at all.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from trainer_tune.config.schema import DistArgs, TelemetryArgs, TuneConfig
from trainer_tune.workloads.data import build_batches
from trainer_tune.platform.distributed import DistSession, RankEnv
from trainer_tune.config.flags import TrialFlags
from trainer_tune.measure.summarize import TrialContext, result_from_window
from trainer_tune.workloads.model import build_model
from trainer_tune.plan import build_plan
from trainer_tune.measure.telemetry import TelemetryProbe
from trainer_tune.measure.window import combine_ranks, measure_local


def _bare_tokens_per_s(cfg: TuneConfig, session: DistSession, *, steps: int) -> float:
    """The loop a careful engineer would write by hand, timed over its whole run."""
    device, ga, mbs = session.device, cfg.train.grad_accum, cfg.train.micro_batch_size
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    ddp = DistributedDataParallel(model) if session.distributed else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    batches = build_batches(data=cfg.data, model=cfg.model, micro_batch_size=mbs, rank=session.rank_env.rank,
                            world_size=session.rank_env.world_size,
                            device=device)

    def step() -> None:
        for micro in range(ga):
            batch = next(batches)
            ctx = ddp.no_sync() if micro < ga - 1 and session.distributed else contextlib.nullcontext()
            with ctx:
                logits = ddp(batch[:, :-1])
                loss = F.cross_entropy(logits.float().reshape(-1, cfg.model.vocab_size), batch[:, 1:].reshape(-1))
                (loss / ga).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(cfg.window.warmup_steps):
        step()
    session.barrier()
    start_s = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed_s, = session.max_over_ranks([time.perf_counter() - start_s])
    tokens = steps * ga * mbs * cfg.model.seq_len * session.rank_env.world_size
    return tokens / elapsed_s


def _ours(cfg: TuneConfig, session: DistSession, probe: Optional[TelemetryProbe]) -> tuple[float, float]:
    """(tokens/s as trainer_tune reports it, tokens/s over the window loop's outside wall time)."""
    (spec,) = build_plan(cfg, world_size=session.rank_env.world_size, base_flags=TrialFlags(),
                         device_type=session.device.type)
    ctx = TrialContext(model_name=cfg.model.name, device=str(session.device),
                       backend=session.backend, num_warmup_steps=cfg.window.warmup_steps,
                       num_measured_steps=cfg.window.measure_steps, label=spec.label())
    measured_start: list[float] = []

    measured_end: list[float] = []

    def on_step(step: int, _measured: bool) -> None:
        # The outside clock runs from the end of the last warm-up step to the end of the last measured
        # step, as the bare loop's does; teardown after the window is not a training cost.
        if step == cfg.window.warmup_steps - 1:
            measured_start.append(time.perf_counter())
        if step == cfg.window.warmup_steps + cfg.window.measure_steps - 1:
            measured_end.append(time.perf_counter())

    local = measure_local(cfg=cfg, spec=spec, session=session, on_step=on_step, probe=probe)
    wall_s, = session.max_over_ranks([measured_end[0] - measured_start[0]])
    result = result_from_window(spec, combine_ranks(local, session=session), ctx, started_at="", finished_at="")
    tokens = result.tokens_per_step * cfg.window.measure_steps
    return result.tokens_per_s, tokens / wall_s  # type: ignore[return-value]


def worker(args: argparse.Namespace) -> None:
    rank_env = RankEnv.from_environ(os.environ)
    session = DistSession.start(DistArgs(), rank_env)
    # Resolved as the entry point resolves it (interpolations such as the model's recorded name).
    cfg: TuneConfig = OmegaConf.to_object(OmegaConf.structured(TuneConfig))  # type: ignore[assignment]
    cfg.train.micro_batch_size, cfg.train.grad_accum = args.micro_batch_size, args.grad_accum
    cfg.baseline.micro_batch_size, cfg.baseline.grad_accum = args.micro_batch_size, args.grad_accum
    cfg.window.warmup_steps, cfg.window.measure_steps = 3, args.steps
    # Exactly `steps` timed steps and nothing after them, so both sides do the same work.
    cfg.window.max_measure_steps, cfg.window.comm_split_steps = cfg.window.measure_steps, 0
    # The probe samples the GPU through NVML at 10 Hz during measured steps, as a sweep does; without a driver
    # only the CPU meter runs. --no-telemetry measures the window without it.
    probe = None if args.no_telemetry else TelemetryProbe(TelemetryArgs(), local_rank=rank_env.local_rank,
                                                          device=session.device)
    reported, wall, bare = [], [], []
    for repeat in range(args.repeats):
        order = ("ours", "bare") if repeat % 2 == 0 else ("bare", "ours")
        for side in order:
            if side == "ours":
                r, w = _ours(cfg, session, probe)
                reported.append(r)
                wall.append(w)
            else:
                bare.append(_bare_tokens_per_s(cfg, session, steps=args.steps))
    if rank_env.is_rank0:
        ratio_reported = statistics.median(a / b for a, b in zip(reported, bare))
        ratio_wall = statistics.median(a / b for a, b in zip(wall, bare))
        print(f"model {cfg.model.name}, world size {rank_env.world_size}, device {session.device}, "
              f"micro_batch_size {args.micro_batch_size} x grad_accum {args.grad_accum}, "
              f"{args.steps} steps x {args.repeats} repeats, telemetry "
              f"{'off' if probe is None else 'on (GPU sampling ' + ('on' if probe.gpu_off_reason is None else 'off: ' + probe.gpu_off_reason) + ')'}")
        print(f"bare DDP loop      tokens/s median {statistics.median(bare):,.0f}  "
              f"(min {min(bare):,.0f}, max {max(bare):,.0f})")
        print(f"trainer_tune       tokens/s median {statistics.median(reported):,.0f}  (as reported)")
        print(f"trainer_tune wall  tokens/s median {statistics.median(wall):,.0f}  (instrumentation included)")
        print(f"ratio reported/bare {ratio_reported:.3f}")
        print(f"ratio wall/bare     {ratio_wall:.3f}")
    session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--no-telemetry", action="store_true", help="measure the window without the telemetry probe")
    args = parser.parse_args()
    if "RANK" in os.environ or args.nproc == 1:
        worker(args)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           __file__, *sys.argv[1:]]
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
