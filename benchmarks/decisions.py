"""Can the verdict be trusted? Repeat a sweep and compare; compare search strategies on the same sweep.

    python benchmarks/decisions.py repeat --runs 2                      # the same sweep twice
    python benchmarks/decisions.py strategies --strategies grid,adaptive  # same sweep, each strategy
    python benchmarks/decisions.py repeat --runs 2 -- sweep.grad_accums=[1]   # extra Hydra overrides

Each sweep is a real `torchrun --standalone --nproc_per_node=N -m trainer_tune +sweep=batch wandb=off`, run
one after the other (never at the same time: they would slow each other down), each in its own output
directory under --out. The script only reads what the sweeps wrote (trials.jsonl, recommendation.json) and
prints a comparison; it asserts nothing about time.

repeat: the chosen setting per run; whether the runs agree (the same setting, or settings whose 95%
intervals overlap in every run: a tie); per setting, tokens/s with its interval in each run and whether
the intervals overlap.

strategies: per strategy, the verdict, the settings measured, cut short or not measured, and the measured
and warm-up steps spent; whether each strategy's choice agrees with the first strategy's (same setting or a
tie by the first strategy's intervals).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional


def run_sweep(out: Path, *, nproc: int, overrides: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "trainer_tune", "+sweep=batch", "wandb=off", f"hydra.run.dir={out}", *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    start_s = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall_s = time.perf_counter() - start_s
    if proc.returncode != 0:
        sys.exit(f"sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines() if line.strip()]
    rec = json.loads((out / "recommendation.json").read_text())
    # The baseline's re-check (sweep.recheck_baseline) is not a setting: kept apart, shown as the run's drift.
    trials = [t for t in lines if t.get("recheck_of") is None]
    return {"trials": trials, "rec": rec, "wall_s": wall_s, "widening": (rec.get("drift") or {}).get("widening", 1.0)}


def _overlap(a: Optional[list[float]], b: Optional[list[float]]) -> Optional[bool]:
    if not a or not b:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def _chosen(run: dict[str, Any]) -> Optional[str]:
    chosen = run["rec"].get("chosen")
    return None if chosen is None else chosen["label"]


def _ci_by_label(run: dict[str, Any]) -> dict[str, Optional[list[float]]]:
    return {t["label"]: t["tokens_per_s_ci95"] for t in run["trials"] if t["status"] == "ok"}


def agree(a: dict[str, Any], b: dict[str, Any]) -> str:
    """'same setting', 'tie' (the two choices' intervals overlap in both runs), or 'different'."""
    la, lb = _chosen(a), _chosen(b)
    if la == lb:
        return "same setting"
    ca, cb = _ci_by_label(a), _ci_by_label(b)
    ties = [_overlap(ci.get(la), ci.get(lb)) for ci in (ca, cb) if la in ci and lb in ci]
    return "tie" if ties and all(ties) else "different"


def _widened(ci: Optional[list[float]], widening: float) -> Optional[list[float]]:
    return None if ci is None else [ci[0] / widening, ci[1] * widening]


def _drift_text(run: dict[str, Any]) -> str:
    drift = run["rec"].get("drift")
    if not drift:
        return "no re-check"
    state = "within noise" if drift["within_noise"] else f"beyond noise, widening {drift['widening']:.3f}"
    return f"baseline re-check {drift['change'] * 100:+.1f}% ({state})"


def _fmt_ci(t: dict[str, Any]) -> str:
    if t["status"] != "ok":
        return t["status"]
    low, high = t["tokens_per_s_ci95"]
    return f"{t['tokens_per_s']:,.0f} [{low:,.0f}-{high:,.0f}]"


def repeat(args: argparse.Namespace) -> None:
    runs = [run_sweep(args.out / f"run-{i}", nproc=args.nproc, overrides=args.overrides) for i in range(args.runs)]
    print("\n## repeat\n")
    for i, run in enumerate(runs):
        print(f"run {i}: {run['rec']['verdict']}  ({run['wall_s']:.0f} s; {_drift_text(run)})")
    for i in range(1, len(runs)):
        print(f"run 0 vs run {i}: {agree(runs[0], runs[i])}")
    labels = [t["label"] for t in runs[0]["trials"]]
    print("\n| setting | " + " | ".join(f"run {i} tokens/s [95% CI]" for i in range(len(runs)))
          + " | intervals overlap | overlap with each run's drift widening |")
    print("| --- " * (len(runs) + 3) + "|")
    num_overlap = num_overlap_widened = 0
    for label in labels:
        row = [next((t for t in run["trials"] if t["label"] == label), None) for run in runs]
        cis = [t["tokens_per_s_ci95"] if t and t["status"] == "ok" else None for t in row]
        widened = [_widened(ci, run["widening"]) for ci, run in zip(cis, runs)]
        overlaps = all(_overlap(cis[0], ci) for ci in cis[1:])
        overlaps_widened = all(_overlap(widened[0], ci) for ci in widened[1:])
        num_overlap += overlaps
        num_overlap_widened += overlaps_widened
        print(f"| {label} | " + " | ".join(_fmt_ci(t) if t else "-" for t in row)
              + f" | {'yes' if overlaps else 'NO'} | {'yes' if overlaps_widened else 'NO'} |")
    print(f"\n{num_overlap} of {len(labels)} settings agree within their intervals across runs; "
          f"{num_overlap_widened} with the intervals widened by each run's measured drift")


def strategies(args: argparse.Namespace) -> None:
    names = args.strategies.split(",")
    runs = {name: run_sweep(args.out / name, nproc=args.nproc, overrides=[f"sweep.strategy={name}", *args.overrides])
            for name in names}
    print("\n## strategies\n")
    print("| strategy | verdict | trials measured | cut short | not measured | measured steps | warm-up steps | wall s | "
          f"drift | agrees with {names[0]} |")
    print("| --- " * 10 + "|")
    for name, run in runs.items():
        trials, rec = run["trials"], run["rec"]
        measured = sum(t["num_measured_steps"] for t in trials if t["status"] == "ok")
        warmup = sum(t["num_warmup_steps"] for t in trials)
        print(f"| {name} | {rec['verdict']} | {len(trials)} | {len(rec.get('cut_short', []))} | "
              f"{len(rec.get('not_measured', []))} | {measured} | {warmup} | {run['wall_s']:.0f} | "
              f"{_drift_text(run)} | {agree(runs[names[0]], run)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("repeat")
    rep.add_argument("--runs", type=int, default=2)
    strat = sub.add_parser("strategies")
    strat.add_argument("--strategies", default="grid,adaptive,power")
    for p in (rep, strat):
        p.add_argument("overrides", nargs="*", help="extra Hydra overrides, after --")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    repeat(args) if args.command == "repeat" else strategies(args)


if __name__ == "__main__":
    main()
