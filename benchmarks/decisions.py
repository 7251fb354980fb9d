"""Can the verdict be trusted? Honest intervals, repeatable picks, with and without other load.

    python benchmarks/decisions.py identical --copies 12            # one setting 12 times: interval coverage
    python benchmarks/decisions.py reference                        # long measurement: the true ranking
    python benchmarks/decisions.py repeat --runs 4 --reference DIR  # the default sweep N times: picks, ties
    python benchmarks/decisions.py repeat --runs 4 --load 1 ...     # the same with a CPU-heavy process beside
    python benchmarks/decisions.py strategies --strategies grid,power
    python benchmarks/decisions.py repeat --runs 2 -- sweep.grad_accums=[1]   # extra Hydra overrides
    python benchmarks/decisions.py simulate --sweeps 400 --settings 8,32 --effects 0,0.1,0.5   # no torchrun
    python benchmarks/decisions.py --load 1 --bursty null --runs 4   # real sweeps of identical settings

Each sweep is a real `torchrun --standalone --nproc_per_node=N -m trainer_tune +sweep=batch wandb=off`, run
one after the other (never two at once, unless --load asks for other load on purpose), each in its own output
directory under --out. The script only reads what the sweeps wrote (trials.jsonl, recommendation.json) and
prints markdown; it asserts nothing about time.

identical: `sweep.ddp_bucket_cap_mb=[25.01, 25.02, ...]` against a baseline with 25 MiB buckets changes nothing
a tiny model does, so the copies are one setting measured many times in one sweep (race off, every copy in
every round). It prints the share of the copies' 95% intervals that hold the median of all copies, and the
share of their speedup intervals against the baseline (the same setting) that hold 1.

reference: the default sweep with long, many-round measurement (race off); its per-setting tokens/s is the
yardstick `repeat` judges picks by.

repeat: per run, the verdict, the pick, the tie and the race; with --reference, how far each pick is from the
fastest setting by the reference (target: within 5%), and whether a run said NO-GO although the reference's
best is more than 20% faster than the baseline.

--load K runs K busy processes (a pure-Python loop each) beside every sweep: the shared-machine case; with
--bursty each switches on for 1 to 6 s and off for 1 to 8 s (seeded per sweep), which is what a shared machine does.

null: real sweeps of K identical settings (DDP bucket caps a tiny model does not notice) against the baseline, each
with its own sweep.seed and the race on: every GO is false.

simulate: the real race and decision (decide/race.py, decide/verdict.py) on thousands of sweeps of a simulated
machine (tests/helpers/fake_machine.py: drift in time order, bursts of other load, little noise within a window,
calibrated on the recorded sweeps in tests/fixtures/sweeps/). K settings (the baseline 2x1 and K - 1 copies of it
that differ in a DDP bucket cap the simulated machine ignores, so every window is as long); with effect e, the last
copy is truly (1 + e) times the baseline's rate and every other setting equals the baseline (--others spread: each other setting is drawn from 0.5 to 1.0 times the baseline, seeded, the
shape of a large grid where screening can drop something): e = 0 is the null case (identical settings, where any
GO is false at min_speedup >= 1). The verdict is decide_race's, with the error budget the race spent. It prints,
per (K, e): GO, right GO (truly >= min_speedup and within 5% of the true best), false GO (truly below min_speedup),
NO-GO, INCONCLUSIVE, the true best dropped by the race, settings screened out (mean), median rounds, median
simulated seconds and median seconds of the sweeps that reached GO or NO-GO. --window-overhead-s, --build-s and
--first-window-extra-s set what a window costs beside measuring (the defaults are the calibrated 0.5 s per window;
a real first round costs about 1.2 s per window, later ones about 0.3 s: outputs/*/trials.jsonl wall_s).
Nothing is measured; the figures say how often today's decision rules are right on a machine shaped like ours.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

_BUSY = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"
_BURSTY = ("import random, sys, time\nrng = random.Random(int(sys.argv[1]))\nend = time.time() + 3600\n"
           "while time.time() < end:\n"
           "    busy_until = time.time() + rng.uniform(1.0, 6.0)\n"
           "    while time.time() < busy_until:\n        pass\n"
           "    time.sleep(rng.uniform(1.0, 8.0))\n")
"""Other work switching on for 1 to 6 s and off for 1 to 8 s, seeded: what a shared machine does (bursts)."""


@contextlib.contextmanager
def other_load(num_processes: int, *, bursty: bool = False, seed: int = 0) -> Iterator[None]:
    """K CPU-bound processes for the duration of a sweep: what a shared machine does to a measurement; bursty:
    each switches on and off for seconds at a time (seeded), the harder case for a verdict."""
    procs = [subprocess.Popen([sys.executable, "-c", _BURSTY, str(seed * 101 + i)] if bursty
                              else [sys.executable, "-c", _BUSY]) for i in range(num_processes)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run_sweep(out: Path, *, nproc: int, overrides: list[str], load: int = 0, bursty: bool = False,
              seed: int = 0) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "trainer_tune", "+sweep=batch", "wandb=off", f"hydra.run.dir={out}", *overrides]
    print("$", " ".join(cmd[1:]),
          f"(with {load} {'bursty' if bursty else 'busy'} processes beside it)" if load else "", flush=True)
    start_s = time.perf_counter()
    with other_load(load, bursty=bursty, seed=seed):
        proc = subprocess.run(cmd, capture_output=True, text=True)
    wall_s = time.perf_counter() - start_s
    if proc.returncode not in (0, 3, 5):
        sys.exit(f"sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines() if line.strip()]
    windows = [line for line in lines if "trial_key" in line]  # not the header, nor the memory predictions
    rec = json.loads((out / "recommendation.json").read_text())
    return {"windows": windows, "rec": rec, "settings": {s["label"]: s for s in rec["settings"]}, "wall_s": wall_s}


def _contains(interval: Optional[list[float]], value: float) -> Optional[bool]:
    return None if not interval else interval[0] <= value <= interval[1]


def identical(args: argparse.Namespace) -> None:
    # The baseline is the same setting too (25 MiB buckets): every speedup interval should hold 1.
    buckets = [round(25 + (i + 1) / 100, 2) for i in range(args.copies)]
    overrides = ["ddp.bucket_cap_mb=25", "sweep.micro_batch_sizes=[2]", "sweep.grad_accums=[1]", "sweep.race=false",
                 f"sweep.min_rounds={args.rounds}", f"sweep.max_rounds={args.rounds}", "sweep.budget_s=null",
                 f"sweep.ddp_bucket_cap_mb=[{','.join(str(b) for b in buckets)}]", *args.overrides]
    run = run_sweep(args.out / f"identical-load{args.load}", nproc=args.nproc, overrides=overrides, load=args.load,
                    bursty=args.bursty)
    copies = [s for s in run["rec"]["settings"] if not s["is_baseline"] and s["status"] == "ok"]
    median = statistics.median(s["tokens_per_s"] for s in copies)
    hold = [_contains(s["throughput_ci95"], median) for s in copies]
    speedups = run["rec"]["speedup_intervals"]
    hold_one = [_contains(speedups.get(s["trial_key"]), 1.0) for s in copies]
    rates = [s["tokens_per_s"] for s in copies]
    print(f"\n## identical settings ({len(copies)} copies, {args.rounds} rounds, load {args.load})\n")
    print("| copy | tokens/s | 95% CI | holds the median | speedup vs baseline 95% CI | holds 1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for s, h, h1 in zip(copies, hold, hold_one):
        ci, sp = s["throughput_ci95"], speedups.get(s["trial_key"])
        print(f"| {s['label']} | {s['tokens_per_s']:,.0f} | {ci[0]:,.0f}-{ci[1]:,.0f} | {'yes' if h else 'NO'} | "
              f"{sp[0]:.3f}-{sp[1]:.3f} | {'yes' if h1 else 'NO'} |" if ci and sp else f"| {s['label']} | - |")
    cv = statistics.stdev(rates) / statistics.fmean(rates)
    print(f"\nmedian {median:,.0f} tokens/s, copies' CV {cv:.1%}; {sum(bool(h) for h in hold)} of {len(hold)} "
          f"intervals hold the median; {sum(bool(h) for h in hold_one)} of {len(hold_one)} speedup intervals hold 1; "
          f"{run['wall_s']:.0f} s")


REFERENCE_OVERRIDES = ["sweep.race=false", "sweep.min_rounds=6", "sweep.max_rounds=6", "sweep.budget_s=null",
                       "window.measure_s=4", "window.measure_steps=10"]


def reference(args: argparse.Namespace) -> None:
    run = run_sweep(args.out / "reference", nproc=args.nproc, overrides=[*REFERENCE_OVERRIDES, *args.overrides])
    print(f"\n## reference ({run['wall_s']:.0f} s): {args.out / 'reference'}\n")
    print("| setting | tokens/s | 95% CI |")
    print("| --- | --- | --- |")
    for label, s in sorted(run["settings"].items(), key=lambda kv: -(kv[1]["tokens_per_s"] or 0)):
        ci = s["throughput_ci95"]
        print(f"| {label} | {s['tokens_per_s']:,.0f} | {ci[0]:,.0f}-{ci[1]:,.0f} |" if ci else f"| {label} | - | - |")


def repeat(args: argparse.Namespace) -> None:
    ref: Optional[dict[str, Any]] = None
    if args.reference is not None:
        rec = json.loads((args.reference / "recommendation.json").read_text())
        ref = {s["label"]: s["tokens_per_s"] for s in rec["settings"] if s["status"] == "ok"}
    runs = [run_sweep(args.out / f"run-{i}-load{args.load}", nproc=args.nproc,
                      overrides=[f"sweep.seed={i}", *args.overrides], load=args.load, bursty=args.bursty, seed=i)
            for i in range(args.runs)]
    print(f"\n## repeat ({args.runs} runs, load {args.load})\n")
    print("| run | verdict | pick | tied | rounds | dropped | wall s | pick vs reference's fastest |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    within, false_no_go = 0, 0
    for i, run in enumerate(runs):
        rec = run["rec"]
        pick = (rec.get("best") or {}).get("label")
        race = rec.get("race") or {}
        gap = "-"
        if ref and pick in ref:
            fastest = max(ref.values())
            gap = f"{ref[pick] / fastest - 1:+.1%}"
            within += ref[pick] >= 0.95 * fastest
            baseline = next((s["label"] for s in rec["settings"] if s["is_baseline"]), None)
            if rec["decision"] != "GO" and baseline in ref and fastest > 1.2 * ref[baseline]:
                false_no_go += 1
        print(f"| {i} | {rec['verdict']} | {pick} | {', '.join(rec.get('tied') or [])} | "
              f"{race.get('num_rounds')} | {', '.join(d['label'] for d in race.get('drops', []))} | "
              f"{run['wall_s']:.0f} | {gap} |")
    if ref:
        print(f"\n{within} of {len(runs)} picks within 5% of the reference's fastest; {false_no_go} NO-GO while the "
              f"reference's best is more than 20% faster than the baseline")


def strategies(args: argparse.Namespace) -> None:
    names = args.strategies.split(",")
    runs = {name: run_sweep(args.out / name, nproc=args.nproc, overrides=[f"sweep.strategy={name}", *args.overrides])
            for name in names}
    print("\n## strategies\n")
    print("| strategy | verdict | settings measured | not measured | windows | measured steps | wall s |")
    print("| --- " * 7 + "|")
    for name, run in runs.items():
        rec = run["rec"]
        measured = sum(w["num_measured_steps"] for w in run["windows"] if w["status"] == "ok")
        print(f"| {name} | {rec['verdict']} | {len(rec['settings'])} | {len(rec.get('not_measured', []))} | "
              f"{len(run['windows'])} | {measured} | {run['wall_s']:.0f} |")


def null(args: argparse.Namespace) -> None:
    """Real sweeps of K identical settings (the baseline's setting with DDP bucket caps that change nothing a tiny
    model does), each with its own sweep.seed, the race on: every GO is false."""
    buckets = [round(25 + (i + 1) / 100, 2) for i in range(args.copies)]
    print(f"\n## null: {args.runs} real sweeps of {args.copies} identical settings and the baseline, load "
          f"{args.load}{' bursty' if args.bursty else ''}\n")
    print("| run | seed | verdict | leader | speedup (CI) | rounds | wall s |")
    print("| --- " * 7 + "|")
    false_go = 0
    for run_index in range(args.runs):
        seed = args.seed + run_index
        overrides = ["ddp.bucket_cap_mb=25", "sweep.micro_batch_sizes=[2]", "sweep.grad_accums=[1]",
                     f"sweep.ddp_bucket_cap_mb=[{','.join(str(b) for b in buckets)}]", f"sweep.seed={seed}",
                     *args.overrides]
        run = run_sweep(args.out / f"null-{seed}", nproc=args.nproc, overrides=overrides, load=args.load,
                        bursty=args.bursty, seed=seed)
        rec = run["rec"]
        false_go += rec["decision"] == "GO"
        leader = (rec.get("leader") or {}).get("label", "-")
        ci = rec.get("speedup_ci95")
        print(f"| {run_index} | {seed} | {rec['decision']} | {leader} | {rec.get('speedup') or 1:.3f} "
              f"({ci[0]:.3f}-{ci[1]:.3f}) | {(rec.get('race') or {}).get('num_rounds')} | {run['wall_s']:.0f} |"
              if ci else f"| {run_index} | {seed} | {rec['decision']} | {leader} | - | - | {run['wall_s']:.0f} |",
              flush=True)
    print(f"\n{false_go} false GO in {args.runs} sweeps of identical settings")


def simulate(args: argparse.Namespace) -> None:
    # The simulated machine is the test suite's (tests/helpers): one model of our noise for tests and benchmarks.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from omegaconf import OmegaConf

    from helpers.fake_machine import FakeMachine
    from trainer_tune.config.flags import TrialFlags
    from trainer_tune.config.schema import TuneConfig
    from trainer_tune.decide.race import run_race
    from trainer_tune.decide.verdict import GO, NO_GO, decide_race
    from trainer_tune.plan import build_plan

    print("\n## simulate\n")
    print(f"{args.sweeps} simulated sweeps per row, sweep.budget_s={args.budget_s:g}, "
          f"recommend.min_speedup={args.min_speedup:g}, other settings {args.others}, seed {args.seed}; "
          f"{' '.join(args.overrides)}\n")
    print("| settings | true effect | GO | right GO | false GO | NO-GO | INCONCLUSIVE | best dropped | screened out | "
          "median rounds | median simulated s | median s to GO/NO-GO |")
    print("| --- " * 12 + "|")
    for num_settings in (int(k) for k in args.settings.split(",")):
        # K settings of one micro-batch (the baseline's, 2) that differ in a flag the simulated machine ignores
        # (DDP bucket caps), so every window has the same step length and only the planted truth differs.
        caps = [round(25 + (i + 1) / 100, 2) for i in range(num_settings - 1)]
        for effect in (float(e) for e in args.effects.split(",")):
            counts = {"go": 0, "right": 0, "false": 0, "no_go": 0, "dropped": 0, "inconclusive": 0}
            rounds, seconds, decided_s, screened = [], [], [], []
            for i in range(args.sweeps):
                seed = args.seed * 1_000_003 + i
                dotlist = ["ddp.bucket_cap_mb=25", "sweep.micro_batch_sizes=[2]", "sweep.grad_accums=[1]",
                           f"sweep.ddp_bucket_cap_mb=[{','.join(map(str, caps))}]",
                           f"sweep.budget_s={args.budget_s}", f"sweep.seed={seed}",
                           f"recommend.min_speedup={args.min_speedup}", *args.overrides]
                cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TuneConfig),
                                                          OmegaConf.from_dotlist(dotlist)))
                plan = build_plan(cfg, world_size=2, base_flags=TrialFlags(), device_type="cpu")
                others = random.Random(f"others/{seed}")
                truth = {s.key: (1.0 + effect if s.key == plan[-1].key
                                 else 1.0 if args.others == "baseline" or s.is_baseline
                                 else others.uniform(0.5, 1.0)) for s in plan}
                best_key = max(truth, key=truth.get)
                machine = FakeMachine(true_rate=lambda spec: 20_000.0 * truth[spec.key], seed=seed,
                                      window_overhead_s=args.window_overhead_s, build_s=args.build_s,
                                      first_window_extra_s=args.first_window_extra_s)
                race = run_race(machine, cfg, plan, done={}, attempts={}, prefix="", swept=())
                decision = decide_race(race, cfg)
                chosen = truth.get(decision.chosen.trial_key) if decision.chosen is not None else None
                if decision.decision == GO:
                    counts["go"] += 1
                    # With identical settings (effect 0) every GO is false, whatever the margin.
                    if effect > 0 and chosen is not None and chosen >= args.min_speedup \
                            and chosen >= 0.95 * truth[best_key]:
                        counts["right"] += 1
                    if effect == 0 or chosen is None or chosen < args.min_speedup:
                        counts["false"] += 1
                counts["no_go"] += decision.decision == NO_GO
                counts["inconclusive"] += decision.decision not in (GO, NO_GO)
                counts["dropped"] += any(d.trial_key == best_key for d in race.summary.drops) and effect > 0
                screened.append(sum(d.reason.startswith("screened out") for d in race.summary.drops))
                rounds.append(race.summary.num_rounds)
                seconds.append(machine.clock_s)
                if decision.decision in (GO, NO_GO):
                    decided_s.append(machine.clock_s)
            share = {k: f"{100.0 * v / args.sweeps:.1f}%" for k, v in counts.items()}
            print(f"| {len(plan)} | {effect:+.0%} | {share['go']} | {share['right']} | {share['false']} | "
                  f"{share['no_go']} | {share['inconclusive']} | {share['dropped'] if effect > 0 else '-'} | "
                  f"{statistics.fmean(screened):.1f} | {statistics.median(rounds):g} | "
                  f"{statistics.median(seconds):.0f} | "
                  f"{f'{statistics.median(decided_s):.0f}' if decided_s else '-'} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("--load", type=int, default=0, help="busy processes running beside each sweep")
    parser.add_argument("--bursty", action="store_true", help="the busy processes switch on and off (seeded)")
    sub = parser.add_subparsers(dest="command", required=True)
    ident = sub.add_parser("identical")
    ident.add_argument("--copies", type=int, default=12)
    ident.add_argument("--rounds", type=int, default=4)
    sub.add_parser("reference")
    rep = sub.add_parser("repeat")
    rep.add_argument("--runs", type=int, default=2)
    rep.add_argument("--reference", type=Path, default=None, help="output directory of a `reference` run")
    strat = sub.add_parser("strategies")
    strat.add_argument("--strategies", default="grid,power")
    nul = sub.add_parser("null")
    nul.add_argument("--runs", type=int, default=4)
    nul.add_argument("--copies", type=int, default=7)
    nul.add_argument("--seed", type=int, default=0)
    sim = sub.add_parser("simulate")
    sim.add_argument("--sweeps", type=int, default=200, help="simulated sweeps per (settings, effect)")
    sim.add_argument("--settings", default="8,32", help="numbers of settings, comma-separated")
    sim.add_argument("--effects", default="0,0.05,0.1,0.2,0.5", help="true effects of the best setting")
    sim.add_argument("--budget-s", type=float, default=30.0)
    sim.add_argument("--min-speedup", type=float, default=1.05)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--others", choices=("baseline", "spread"), default="baseline",
                     help="every other setting equals the baseline, or is drawn from 0.5 to 1.0 times it (seeded)")
    sim.add_argument("--window-overhead-s", type=float, default=0.5, help="wall time per window beside measuring")
    sim.add_argument("--build-s", type=float, default=0.0, help="extra time of a setting's first window (its build)")
    sim.add_argument("--first-window-extra-s", type=float, default=0.0,
                     help="extra time of a setting's first full window (comm split, noise steps)")
    for p in sub.choices.values():
        p.add_argument("overrides", nargs="*", help="extra Hydra overrides, after --")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    {"identical": identical, "reference": reference, "repeat": repeat, "strategies": strategies,
     "simulate": simulate, "null": null}[args.command](args)


if __name__ == "__main__":
    main()
