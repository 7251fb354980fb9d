"""Regenerate README.md's "What you see" sample from a real run of the quick start's sweep.

    python docs/sample_output.py            # runs the sweep (about a minute on 2 cores) and rewrites the sample
    python docs/sample_output.py --check    # exit 1 when README.md's sample lacks today's table columns or lines

The sweep is the quick start's own command (`torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch`) with
wandb off and the output in a temporary directory, printed at COLUMNS=120 (a terminal of that width). Long runs of
per-window lines are cut to their first and last few, with "..." between; everything else is as printed.
tests/unit/test_readme_sample.py runs the check.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
WIDTH = 120
START = "## What you see\n\n```\n"
END = "\n```\n"
KEEP = 3
"""Lines kept at each end of a run of `round ...` or `race: ...` lines."""

REQUIRED_LINES = (
    r"^trainer_tune: \d+ settings, measured in rounds; results in ",
    r"^round 1 \S+: ok [\d,]+ tokens/s, median step ",
    r"^trainer_tune trials",
    r"^decision matrix \(each objective alone\):",
    r"^  - max throughput: ",
    r"^(GO|NO-GO|INCONCLUSIVE): ",
)
"""Lines every sample shows, whatever the verdict (regular expressions)."""

LEAD_COLUMNS = ("#", "setting", "status", "tokens/s", "95% CI of tokens/s (windows)", "vs baseline")
"""The columns the console always shows for a training sweep (sinks/console.py)."""


def run_sweep(out: Path) -> str:
    env = {**os.environ, "COLUMNS": str(WIDTH), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer_tune",
           "+sweep=batch", "wandb=off", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode not in (0, 3, 5):
        sys.exit(f"the sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.replace(str(out), "outputs/runs/2026-12-07_20-00-00")


def trimmed(text: str) -> str:
    """Runs of per-window lines cut to their ends."""
    lines, out, run = text.splitlines(), [], []

    def flush() -> None:
        out.extend(run if len(run) <= 2 * KEEP else [*run[:KEEP], "...", *run[-KEEP:]])
        run.clear()

    for line in lines:
        if line.startswith(("round ", "race: ")):
            run.append(line)
        else:
            flush()
            out.append(line.rstrip())
    flush()
    return "\n".join(out)


def sample_of(readme: str) -> str:
    start = readme.index(START) + len(START)
    return readme[start:readme.index(END, start)]


def header_cells(sample: str) -> list[str]:
    """The first table's column names (header lines joined per column)."""
    rows = [line for line in sample.splitlines() if line.startswith("┃")]
    table_rows: list[list[str]] = []
    for line in rows:
        cells = [cell.strip() for cell in line.strip("┃").split("┃")]
        if table_rows and len(cells) != len(table_rows[0]):
            break  # a second table
        table_rows.append(cells)
    return [" ".join(part for part in column if part) for column in zip(*table_rows)]


def problems(readme: str) -> list[str]:
    """What README.md's sample lacks of today's output."""
    sample = sample_of(readme)
    found = [f"no line matching {pattern!r}" for pattern in REQUIRED_LINES
             if not any(re.match(pattern, line) for line in sample.splitlines())]
    columns = header_cells(sample)
    found += [f"no column {name!r} in the table (columns: {columns})" for name in LEAD_COLUMNS if name not in columns]
    found += [f"a line wider than {WIDTH} columns: {line[:40]}..." for line in sample.splitlines()
              if len(line) > WIDTH and not line.startswith(("GO", "NO-GO", "INCONCLUSIVE", "continue this sweep"))]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check README.md's sample")
    args = parser.parse_args()
    readme = README.read_text()
    if not args.check:
        with tempfile.TemporaryDirectory() as tmp:
            sample = trimmed(run_sweep(Path(tmp) / "run"))
        start = readme.index(START) + len(START)
        readme = readme[:start] + sample + readme[readme.index(END, start):]
        README.write_text(readme)
    found = problems(readme)
    for problem in found:
        print(f"README.md sample: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
