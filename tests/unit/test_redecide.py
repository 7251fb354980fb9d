"""Recorded sweeps decide again to the recorded decision (the proof that moving code changed no verdict), and
`python -m trainer_tune.decide` re-decides with other recommend.* keys without touching the sweep's files."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_tune.decide.__main__ import REDECIDED_DIR, redecide, what_changed
from trainer_tune.run.journal import JOURNAL_NAME

SWEEPS = Path(__file__).resolve().parents[1] / "fixtures" / "sweeps"
NAMES = sorted(p.name for p in SWEEPS.iterdir() if (p / JOURNAL_NAME).exists())


def _key(setting: dict | None) -> str | None:
    return None if setting is None else setting["trial_key"]


def _approx(value):  # floats summed in another order may differ in the last bits, nothing more
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-9)
    if isinstance(value, (list, tuple)):
        return [_approx(v) for v in value]
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    return value


def test_the_recorded_sweeps_cover_what_the_decision_must_handle() -> None:
    recorded = {name: json.loads((SWEEPS / name / "recommendation.json").read_text()) for name in NAMES}
    assert {r["decision"] for r in recorded.values()} >= {"GO", "NO-GO"}
    assert any(r["num_failed"] for r in recorded.values())
    assert any(s["status"] == "oom" for r in recorded.values() for s in r["settings"])
    assert any(r["not_measured"] for r in recorded.values())  # power's chain stopped
    assert any(r["over_budget"] for r in recorded.values())  # serving with a latency budget
    assert any(r["objective"] == "goodput" for r in recorded.values())


EXPECTED_FIELDS = ("decision", "verdict", "reasons", "tied", "over_budget", "not_measured", "race", "objective",
                   "overrides", "environment", "num_trials", "num_failed", "confidence", "more_rounds",
                   "continue_overrides")
KEYED_FIELDS = ("chosen", "best", "baseline", "leader")
FIGURES = ("speedup", "speedup_ci95", "speedup_by_key", "speedup_intervals", "comparison", "drift")


def expected_of(report: dict) -> dict:
    """What a recorded sweep's decision is pinned by: the verdict, its reasons and race, the settings it names
    (by key) and every interval."""
    return {**{f: report.get(f) for f in EXPECTED_FIELDS}, **{f: _key(report.get(f)) for f in KEYED_FIELDS},
            **{f: report.get(f) for f in FIGURES},
            "settings": [[s["trial_key"], s["throughput_ci95"]] for s in report["settings"]],
            "matrix": [{k: v for k, v in row.items() if k != "note"} for row in report["explanations"]["matrix"]]}


@pytest.mark.parametrize("name", NAMES)
def test_a_recorded_sweep_decides_again_to_the_expected_decision(name: str) -> None:
    """expected.json is the decision the rules of today make from the recorded windows (README.md beside the
    sweeps says when and why it moved away from the sweep's own recommendation.json)."""
    expected = json.loads((SWEEPS / name / "expected.json").read_text())
    now = expected_of(json.loads(json.dumps(redecide(SWEEPS / name).report.to_json_dict())))
    for field, value in expected.items():
        assert now[field] == _approx(value), field


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_the_command_redecides_with_a_stricter_margin_and_leaves_the_sweep_as_it_was(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    shutil.copytree(SWEEPS / "grid", sweep)
    before = _digest(sweep)
    done = subprocess.run([sys.executable, "-m", "trainer_tune.decide", str(sweep), "recommend.min_speedup=1.5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The recorded GO for 8x2 (+63.4%, 95% CI +33.0% to +100.6%) straddles +50% at the corrected level.
    assert done.stdout.strip().splitlines()[-1] == \
        "decided again: GO 8x2 +63.4% [+33.0%, +100.6%] -> INCONCLUSIVE 8x2 +63.4% [+27.2%, +109.8%]"
    assert _digest(sweep) == before
    again = json.loads((sweep / REDECIDED_DIR / "recommendation.json").read_text())
    assert again["decision"] == "INCONCLUSIVE" and again["min_speedup"] == 1.5 and again["chosen"] is None
    assert (sweep / REDECIDED_DIR / "report.md").read_text().startswith("# trainer_tune report")
    yaml_text = (sweep / REDECIDED_DIR / "recommendation.yaml").read_text()
    assert "Continue this sweep" in yaml_text and "sweep.budget_s=" in yaml_text
    # A second call replaces the folder: nothing of the first is left behind.
    (sweep / REDECIDED_DIR / "stale.txt").write_text("x")
    assert subprocess.run([sys.executable, "-m", "trainer_tune.decide", str(sweep)], capture_output=True,
                          timeout=120).returncode == 0
    assert not (sweep / REDECIDED_DIR / "stale.txt").exists()


def test_another_objective_replays_the_race_on_the_windows_there_are() -> None:
    """Raced on throughput, decided on goodput: the replay races on goodput and stops where the journal ends."""
    result = redecide(SWEEPS / "grid", ["recommend.objective=goodput"])
    decision = result.report.decision
    assert decision.objective == "goodput" and decision.decision in ("GO", "NO-GO", "INCONCLUSIVE")
    assert decision.leader is not None and decision.leader.label == "8x1"  # most goodput, as recorded
    assert decision.race is not None and decision.race.num_rounds <= 3


@pytest.mark.parametrize(("args", "needle"), [
    (["{empty}"], "has no trials.jsonl: not the output directory of a sweep"),
    (["{grid}", "sweep.budget_s=5"], "sweep.budget_s=5 is not allowed: only recommend.KEY=VALUE overrides"),
    (["{grid}", "recommend.min_sped=2"], "did you mean recommend.min_speedup?"),
    (["{grid}", "recommend.min_speedup=0"], "recommend.min_speedup=0.0 is not allowed"),
    (["{grid}", "recommend.indifference=1.5"], "recommend.indifference=1.5 is not allowed"),
    (["{grid}", "recommend.objective=fastest"], "recommend.objective=fastest is not allowed"),
])
def test_a_usage_mistake_is_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", grid=SWEEPS / "grid") for a in args]
    done = subprocess.run([sys.executable, "-m", "trainer_tune.decide", *argv], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and needle in done.stderr
    assert not (SWEEPS / "grid" / REDECIDED_DIR).exists()
