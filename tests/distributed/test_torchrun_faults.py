"""Real 2-rank torchrun sweeps with injected faults: nothing hangs, nothing measured is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ONE_ROUND, REPO, clean_env, read_jsonl
from trainer_tune.run.journal import read_journal
from trainer_tune.decide.race import round_order

pytestmark = pytest.mark.slow

# One round: these tests are about faults, and one window per setting keeps them short. The plan: 2x1 (the
# baseline, trial 0), 1x1 (trial 1), 4x1 (trial 2), in the round's shuffled order.
SWEEP = ["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2,4]", "sweep.grad_accums=[1]",
         *ONE_ROUND, "watchdog.stall_s=3", "watchdog.abort_after_s=8", "watchdog.dump_interval_s=2"]


def _torchrun(args: list[str], *, max_restarts: int, timeout_s: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--max-restarts={max_restarts}", "-m", "trainer_tune", *SWEEP, *args]
    return subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=timeout_s)


def _statuses(out: Path) -> list[tuple[int, str]]:
    """(setting index, status) of each window in plan order, as the journal reader sees them (it skips a torn
    line); the order windows were measured in is the round's shuffle."""
    return sorted((t.index, t.status) for t in read_journal(out / "trials.jsonl").results)


def _rounds(out: Path) -> dict[str, list[dict]]:
    """The journal's windows by round id, checking what a resume must never do: pair windows of two process
    lifetimes in one round; and that a resumed part of a round (`r0~1`) has a window of the baseline of its own."""
    by_round: dict[str, list[dict]] = {}
    for window in read_jsonl(out / "trials.jsonl"):
        by_round.setdefault(window["round_id"], []).append(window)
    for rid, windows in by_round.items():
        assert len({w["lifetime"] for w in windows}) == 1, (rid, windows)
        assert "~" not in rid or any(w["index"] == 0 for w in windows), rid
    return by_round


def _settings_once_per_round(by_round: dict[str, list[dict]], base: str) -> list[tuple[int, str]]:
    """(index, status) of each setting's window in round `base` and its resumed parts (`base~1`, ...): every
    setting but the baseline exactly once (the baseline may have a window in each part)."""
    parts = [rid for rid in by_round if rid.split("~")[0] == base]
    found = sorted((w["index"], w["status"]) for rid in parts for w in by_round[rid] if w["index"] != 0)
    baseline = sorted({w["status"] for rid in parts for w in by_round[rid] if w["index"] == 0})
    return [(0, status) for status in baseline] + found


def test_stall_on_rank_1_dumps_both_ranks_and_the_sweep_finishes_after_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "stall"
    proc = _torchrun(["fault=stall", f"hydra.run.dir={out}"], max_restarts=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _settings_once_per_round(_rounds(out), "r0") == [(0, "ok"), (1, "stalled"), (2, "ok")]
    for rank in (0, 1):
        text = (out / "stacks" / f"trial-1-rank-{rank}.txt").read_text()
        assert "=== watchdog_dump (trial 1 step 1 micro-step 0 not complete after" in text
        assert f"rank {rank} pid" in text
    # The stalled rank's stack names the function it is stuck in; its peer waits in the store exchange.
    assert "in injected_stall" in (out / "stacks" / "trial-1-rank-1.txt").read_text()
    assert "watchdog_dump" in proc.stderr and "recorded as stalled" in proc.stderr
    rec = json.loads((out / "recommendation.json").read_text())
    assert (rec["chosen"] or rec["leader"])["index"] != 1
    assert any("1x1 (stalled)" in reason for reason in rec["reasons"])
    assert not (out / "inflight.json").exists()


def test_stall_without_restarts_still_records_the_trial(tmp_path: Path) -> None:
    out = tmp_path / "stall0"
    proc = _torchrun(["fault=stall", f"hydra.run.dir={out}"], max_restarts=0)
    assert proc.returncode != 0  # torchrun reports the worker's exit 4
    assert "exitcode  : 4" in proc.stderr
    # The stalled window is recorded; whichever windows the round had measured before it are too.
    assert (1, "stalled") in _statuses(out) and all(status == "ok" for i, status in _statuses(out) if i != 1)
    # Running the command again resumes the round and skips the windows already recorded; what the round still
    # lacked is measured in a part of its own, with its own baseline window (never paired across processes).
    again = _torchrun(["fault=stall", f"hydra.run.dir={out}"], max_restarts=0)
    assert again.returncode == 0, again.stderr[-4000:]
    assert _settings_once_per_round(_rounds(out), "r0") == [(0, "ok"), (1, "stalled"), (2, "ok")]


@pytest.mark.parametrize("fault,status", [("oom", "oom"), ("nan_loss", "nan"), ("error", "error")])
def test_a_failure_on_one_rank_is_recorded_and_the_sweep_goes_on(fault: str, status: str, tmp_path: Path) -> None:
    out = tmp_path / fault
    proc = _torchrun([f"fault={fault}", f"hydra.run.dir={out}"], max_restarts=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _settings_once_per_round(_rounds(out), "r0") == [(0, "ok"), (1, status), (2, "ok")]
    failed, = (t for t in read_jsonl(out / "trials.jsonl") if t["index"] == 1)
    assert failed["tokens_per_s"] is None or status == "nan"
    if status != "nan":
        assert failed["error"].startswith("rank 1 on ")
        assert "injected" in failed["extra"]["tracebacks"]["1"]
    assert _picked(json.loads((out / "recommendation.json").read_text()))["index"] != 1


def test_sigkill_mid_round_resumes_the_round_and_loses_no_window(tmp_path: Path) -> None:
    """The group dies (SIGKILL) in 4x1's window of round 0; torchrun restarts it, and the resumed sweep replays
    the same rounds: the windows round 0 measured before the kill are kept, the killed one is measured once
    more (with a window of the baseline of its own when the round had others: `r0~1`, never paired with the dead
    group's), and round 1 follows. Every (setting, round) window is in the journal exactly once."""
    out = tmp_path / "kill"
    proc = _torchrun(["fault=exit", "fault.trial=2", "sweep.min_rounds=2", "sweep.max_rounds=2",
                      f"hydra.run.dir={out}"], max_restarts=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "failed (exitcode: -9)" in proc.stderr  # torchrun saw the SIGKILL
    assert "was running when the group died; measuring it once more" in proc.stderr
    windows = read_jsonl(out / "trials.jsonl")
    by_round = _rounds(out)
    for base in ("r0", "r1"):
        assert _settings_once_per_round(by_round, base) == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert len(by_round["r1"]) == 3 and len({w["lifetime"] for w in windows}) == 2
    # Round 1, measured whole after the restart, in its seeded order; round 0 finished before round 1 began.
    keys = {w["index"]: w["setting_key"] for w in windows}
    assert [w["setting_key"] for w in by_round["r1"]] == round_order(list(keys.values()), round_index=1, seed=0)
    assert [w["round_id"].split("~")[0] for w in windows] == ["r0"] * (len(windows) - 3) + ["r1"] * 3
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["num_trials"] == 3 and all(s["num_windows"] >= 2 for s in rec["settings"])


def test_torn_journal_line_resumes_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "torn"
    first = _torchrun([f"hydra.run.dir={out}"], max_restarts=0)
    assert first.returncode == 0, first.stderr[-4000:]
    header, *lines = (out / "trials.jsonl").read_text().splitlines()
    predictions = [line for line in lines if line.startswith('{"memory_prediction": ')]
    lines = [line for line in lines if line not in predictions]
    assert header.startswith('{"journal_header": ') and len(lines) == 3 and len(predictions) == 3
    # The last window's line as a writer killed mid-line would have left it.
    (out / "trials.jsonl").write_text("\n".join([header, *predictions, *lines[:2], lines[2][: len(lines[2]) // 3]]))
    again = _torchrun([f"hydra.run.dir={out}"], max_restarts=0)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"line {2 + len(predictions) + 2} is incomplete" in again.stderr
    # The two complete windows are kept, the torn line ignored, and only the missing window measured.
    assert _statuses(out) == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert len(read_journal(out / "trials.jsonl").results) == 3


def _picked(rec: dict) -> dict:
    """The setting a verdict names: the chosen one, or the leader of an INCONCLUSIVE."""
    return rec["chosen"] or rec["leader"]
