"""`python -m trainer_tune --help` is trainer_tune's own help (configs/hydra/help/trainer_tune.yaml), not Hydra's
"main is powered by Hydra": what it does, how to run a sweep, the groups, common overrides, exit codes, docs."""

from __future__ import annotations

import re

from conftest import REPO, run_tune


def test_help_says_what_trainer_tune_does_and_how_to_run_it() -> None:
    proc = run_tune(["--help"], timeout_s=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "powered by Hydra" not in text and "Powered by Hydra" not in text
    assert text.startswith("trainer_tune: find the fastest stable way to train")
    assert "torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch" in text
    assert "A sweep needs +sweep=..." in text
    # The groups with their options, from Hydra itself, so a new option shows without editing the help.
    assert "sweep: batch, batch_gpu, global_batch" in text and "window: default, long, quick" in text
    assert "wandb: default, off" in text
    for override in ("sweep.min_rounds=", "sweep.budget_s=", "baseline.micro_batch_size=",
                     "recommend.min_speedup=", "window=quick", "window=long", "wandb=off", "hydra.run.dir="):
        assert override in text, override
    # The exit codes are the README's.
    exit_codes = text.split("== Exit codes ==", 1)[1]
    readme_codes = re.findall(r"^\| (\d) \|", (REPO / "README.md").read_text(), flags=re.MULTILINE)
    assert re.findall(r"^(\d)  ", exit_codes, flags=re.MULTILINE) == readme_codes == ["0", "1", "2", "3", "4", "5"]
    # Every doc the help points to exists.
    linked = re.findall(r"^(README\.md|docs/[\w.-]+\.md)\s", text.split("== Docs ==", 1)[1], flags=re.MULTILINE)
    assert set(linked) == {"README.md", *(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))}
    assert all((REPO / doc).exists() for doc in linked)
