"""Does the batcher simulation predict a real open-loop run? p99 request latency, simulated and measured.

    python benchmarks/serving_load.py                                   # resnet_small on images, one replica
    python benchmarks/serving_load.py --max-batch-size 8 --delay-ms 2 --loads 0.5,0.7,0.85 --requests 4000

One process (one replica, OMP threads as torchrun sets them: 1). Steps:
1. service times: every batch size 1..max served back to back (`--service-repeats` each, after warm-up), closed loop;
2. capacity: max batch / the mean service time of a full batch (requests per second the replica can serve at most);
3. for each load (a share of that capacity): the simulation (evidence/batcher_sim.py, driven by step 1's samples)
   and a real open-loop run (measure/open_loop.py), each on the same seeded Poisson arrivals; p50/p90/p99 of
   request latency after the fill-up (MSER-5) with sectioning intervals, and their ratio.
Prints a table; not part of CI beyond a smoke test. docs: benchmarks/README.md, "serving_load.py".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from hydra import compose, initialize_config_dir

from trainer_tune.config.schema import TuneConfig, config_dir, register_configs
from trainer_tune.workloads.arrivals import poisson_arrivals_s
from trainer_tune.evidence.batcher_sim import sampled_service, simulate
from trainer_tune.evidence.serving_load import fill_up_requests, quantile_interval
from trainer_tune.measure.open_loop import first_samples, run_open_loop
from trainer_tune.measure.replica import default_serve
from trainer_tune.workloads.data import build_batches
from trainer_tune.workloads.model import build_model

from omegaconf import OmegaConf


def _config(overrides: list[str]) -> TuneConfig:
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        raw = compose(config_name="config", overrides=["mode=inference", "wandb=off", *overrides])
    return OmegaConf.to_object(raw)  # type: ignore[return-value]


def _quantiles(latency_s: list[float]) -> tuple[int, dict[float, tuple[float, float, float]]]:
    drop = fill_up_requests(latency_s)
    kept = latency_s[drop:]
    figures = {}
    for q in (0.5, 0.9, 0.99):
        est = quantile_interval(kept, q)
        figures[q] = (est.point_s * 1e3, est.low_s * 1e3, est.high_s * 1e3)
    return drop, figures


def _service_text(samples: dict[int, list[float]]) -> str:
    return ", ".join(f"{size}: {statistics.median(times) * 1e3:.2f}/{sorted(times)[int(0.9 * len(times))] * 1e3:.2f}/"
                     f"{max(times) * 1e3:.2f}" for size, times in sorted(samples.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", default="model=resnet_small data=images",
                        help="config overrides choosing the model and data (space-separated)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--loads", default="0.7,0.85", help="arrival rates as shares of the measured capacity")
    parser.add_argument("--requests", type=int, default=4000, help="requests per real run")
    parser.add_argument("--sim-requests", type=int, default=100_000)
    parser.add_argument("--service-repeats", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = _config(args.overrides.split())
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).eval()
    batches = build_batches(data=cfg.data, model=cfg.model, micro_batch_size=args.max_batch_size, rank=0,
                            world_size=1, device=torch.device("cpu"))
    pool = [next(batches) for _ in range(4)]
    served = [0]

    def serve(size: int) -> None:
        batch = first_samples(pool[served[0] % len(pool)], size)
        served[0] += 1
        with torch.inference_mode():
            default_serve(model, batch)

    for size in range(1, args.max_batch_size + 1):  # warm-up: every shape once, a few times
        for _ in range(3):
            serve(size)
    samples: dict[int, list[float]] = {}
    for size in range(1, args.max_batch_size + 1):
        for _ in range(args.service_repeats):
            start_s = time.perf_counter()
            serve(size)
            samples.setdefault(size, []).append(time.perf_counter() - start_s)
    print(f"model {cfg.model.name}, max batch {args.max_batch_size}, max queue delay {args.delay_ms:g} ms, "
          f"threads {torch.get_num_threads()}")
    print(f"closed loop, service ms (median/p90/max) by batch size: {_service_text(samples)}")
    capacity_per_s = args.max_batch_size / statistics.median(samples[args.max_batch_size])
    print(f"capacity {capacity_per_s:,.0f} requests/s (full batches back to back, median service)")
    loads = [float(x) for x in args.loads.split(",")]
    reals = [run_open_loop(serve, poisson_arrivals_s(load * capacity_per_s, args.requests, args.seed + index),
                           rate_per_s=load * capacity_per_s, max_batch_size=args.max_batch_size,
                           max_queue_delay_s=args.delay_ms / 1e3) for index, load in enumerate(loads)]
    print(f"{'load':>5} {'rate/s':>8} {'':>6} {'p50 ms':>18} {'p90 ms':>18} {'p99 ms':>22} {'dropped':>8} "
          f"{'behind ms':>9}")
    worst = {"closed": 0.0, "other": 0.0}
    for index, (load, real) in enumerate(zip(loads, reals)):
        # Two service models: the closed-loop samples (what a sweep has before any open-loop run), and the service
        # times the other loads' real runs served (leave-one-out: measured in open loop, minutes apart, never
        # this run's own). The machine's speed wanders between minutes, so the second is the fair test of the
        # queueing model and the first says how much the closed-loop samples are off.
        others = [r for r in reals if r is not real] or [real]
        served: dict[int, list[float]] = {}
        for other in others:
            for size, times in other.service_by_batch_size().items():
                served.setdefault(size, []).extend(times)
        pooled = {**samples, **served}  # a size no other run served keeps its closed-loop samples
        service_models = {"closed": samples, "other": pooled}
        rows = [(name, list(simulate(poisson_arrivals_s(real.rate_per_s, args.sim_requests, args.seed + 1000 + index),
                                     sampled_service(model_samples, seed=args.seed + index),
                                     max_batch_size=args.max_batch_size,
                                     max_queue_delay_s=args.delay_ms / 1e3).latency_s), None)
                for name, model_samples in service_models.items()]
        rows.append(("real", list(real.latency_s), real.behind_s))
        p99 = {}
        for name, latency_s, behind_s in rows:
            drop, figures = _quantiles(latency_s)
            p99[name] = figures[0.99][0]
            cells = [f"{p:7.2f} [{lo:.2f},{hi:.2f}]" for p, lo, hi in figures.values()]
            print(f"{load:5.2f} {real.rate_per_s:8,.0f} {name:>6} {cells[0]:>18} {cells[1]:>18} {cells[2]:>22} "
                  f"{drop:8d} {'' if behind_s is None else f'{behind_s * 1e3:9.2f}'}")
        for name in worst:
            worst[name] = max(worst[name], abs(p99[name] / p99["real"] - 1))
        print(f"{'':>5} {'':>8} {'':>6} p99 sim/real: closed-loop service {p99['closed'] / p99['real']:.3f}, "
              f"other runs' service {p99['other'] / p99['real']:.3f}")
    for name, text in (("other", "other runs' service"), ("closed", "closed-loop service")):
        print(f"largest p99 disagreement, {text}: {worst[name]:.1%} ({'within' if worst[name] <= 0.2 else 'over'} 20%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
