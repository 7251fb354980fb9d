"""recommendation.yaml's "measure again" line, pasted as written, measures the same model, data and loss."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import ONE_ROUND, read_jsonl, run_tune

# quiet: its assertions read what the measurements decide (tests/conftest.py, _quiet_machine).
pytestmark = [pytest.mark.slow, pytest.mark.quiet]


def test_the_measure_again_line_measures_the_same_model(tmp_path: Path) -> None:
    """Once the overrides held only train.*, nsa.*, ddp.*: pasted after a sweep of another model they
    measured the built-in tiny one. One process: the overrides, not the ranks, are under test."""
    first, again = tmp_path / "first", tmp_path / "again"
    proc = run_tune(["model=tiny_nsa", "model.n_layers=1", "data=bytes", "+sweep=batch", "window=quick",
                     "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]", "sweep.min_rounds=2",
                     "sweep.max_rounds=2", "recommend.min_speedup=1000", "wandb=off", f"hydra.run.dir={first}"])
    # (A margin no setting can reach: NO-GO, so the baseline is chosen and its overrides are the line to paste.)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = (first / "recommendation.yaml").read_text().splitlines()
    line = next(h for h in header if h.startswith("#   python -m trainer_tune "))
    pasted = shlex.split(line.removeprefix("#   python -m trainer_tune "))
    assert pasted == yaml.safe_load((first / "recommendation.yaml").read_text())["overrides"]
    assert {"model=tiny_nsa", "model.n_layers=1", "data=bytes", "window=quick"} <= set(pasted)

    proc = run_tune([*pasted, *ONE_ROUND, "wandb=off", f"hydra.run.dir={again}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen = json.loads((first / "recommendation.json").read_text())["chosen"]
    [window] = read_jsonl(again / "trials.jsonl")
    assert window["model"] == chosen["model"] == "tiny_nsa"
    assert window["num_parameters"] == chosen["num_parameters"]
    assert (window["micro_batch_size"], window["grad_accum"]) == (chosen["micro_batch_size"], chosen["grad_accum"])
    # One setting and no sweep: its figures, not a NO-GO against itself.
    rec = json.loads((again / "recommendation.json").read_text())
    assert rec["decision"] == "MEASURED" and rec["verdict"].startswith("MEASURED: ")
    assert "NO-GO" not in proc.stdout
    assert "trainer_tune: 1 setting, measured in rounds" in proc.stdout  # not "1 settings"


def test_the_confirm_command_measures_the_named_setting_against_the_baseline_in_paired_rounds(tmp_path: Path) -> None:
    """recommendation.yaml's confirm line, pasted as written (plus wandb=off): exactly the two settings, paired in
    every round, in the same mode with the same margin, and a verdict that says whether the first one holds."""
    first = tmp_path / "first"
    # The baseline is the smallest batch, so the leader is another setting (a leader that is the baseline has nothing
    # to confirm: seen once with baseline 2 against [1, 4] on a busy machine).
    proc = run_tune(["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[4,8]", "sweep.grad_accums=[1]",
                     "train.micro_batch_size=1", "sweep.min_rounds=2", "sweep.max_rounds=2",
                     "recommend.min_speedup=100", "wandb=off", f"hydra.run.dir={first}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    first_rec = json.loads((first / "recommendation.json").read_text())
    # A margin no setting reaches: NO-GO, or INCONCLUSIVE when two rounds on a busy machine leave the interval
    # wide; either way the leader is the setting to confirm.
    assert first_rec["decision"] in ("NO-GO", "INCONCLUSIVE")
    leader = first_rec["leader"]
    saved = yaml.safe_load((first / "recommendation.yaml").read_text())
    header = (first / "recommendation.yaml").read_text().splitlines()
    line = header[header.index("# Confirm it: the same two settings again, in paired rounds, into a new output "
                               "directory:") + 1]
    pasted = shlex.split(line.removeprefix("#   python -m trainer_tune "))
    assert pasted[:-1] == saved["confirm_overrides"] and pasted[-1] == f"hydra.run.dir={first}-confirm"
    assert not any(o.startswith(("wandb", "hydra")) for o in saved["confirm_overrides"])
    assert f"python -m trainer_tune {line.removeprefix('#   python -m trainer_tune ')}" in \
        (first / "report.md").read_text()

    proc = run_tune([*pasted, "wandb=off"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    confirm = Path(f"{first}-confirm")
    windows = read_jsonl(confirm / "trials.jsonl")
    settings = {(w["micro_batch_size"], w["grad_accum"]) for w in windows}
    assert settings == {(1, 1), (leader["micro_batch_size"], leader["grad_accum"])}
    by_round: dict[str, set] = {}
    for w in windows:
        by_round.setdefault(w["round_id"], set()).add(w["micro_batch_size"])
    assert len(by_round) >= 3 and all(len(members) == 2 for members in by_round.values())  # paired in every round
    rec = json.loads((confirm / "recommendation.json").read_text())
    assert rec["min_speedup"] == 100
    said = f"the first sweep said {first_rec['decision']} for {leader['label']}; "
    assert any(r.startswith(said) for r in rec["reasons"]), rec["reasons"]
