"""A real serving-under-load sweep on two replicas (torchrun, gloo): the journal holds every request of every
measured rate on both replicas, recommendation.json carries each setting's `serving` figures, report.md its table and
chart, wandb the same; a resume reads every rate back instead of serving it again; another grid in the same
directory is refused with every file left as it was."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from conftest import clean_env, read_header, read_jsonl, refused_before_any_group, run_tune
from helpers.wandb_reader import find_offline_run_files, summarize_wandb_run

SMALL = ["+sweep=serving_load", "serving.max_batch_sizes=[4]", "serving.max_queue_delays_ms=[0,1]",
         "serving.confirm_settings=1", "serving.requests_per_rate=1200", "serving.max_s_per_rate=1",
         "serving.max_rates=2", "serving.service_repeats=5", "recommend.max_p99_ms=20"]
SERVING_KEYS = {"max_batch_size", "max_queue_delay_ms", "sustainable_rate_per_s", "sustainable_rate_ci95",
                "p99_ms_at_rate", "p99_ci95_at_rate", "num_requests"}


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_serving_load_sweep_on_two_replicas_journals_decides_resumes_and_refuses_another_grid(tmp_path: Path) -> None:
    out = tmp_path / "load"
    proc = run_tune([*SMALL, f"hydra.run.dir={out}"], nproc=2, timeout_s=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["mode"] == "serving_load" and rec["decision"] in ("GO", "NO-GO", "INCONCLUSIVE")
    assert rec["baseline"] == "2/0ms" and rec["target_p99_ms"] == 20.0
    settings = {s["label"]: s for s in rec["settings"]}
    assert list(settings) == ["2/0ms", "4/0ms", "4/1ms"]
    for s in settings.values():
        assert SERVING_KEYS <= set(s["serving"])
    confirmed = [label for label, s in settings.items() if s["serving"]["confirmed"]]
    assert confirmed[0] == "2/0ms" and len(confirmed) == 2  # the baseline and the simulation's best
    for label in confirmed:
        serving = settings[label]["serving"]
        assert 1 <= len(serving["measured"]) <= 2
        rate, (low, high) = serving["sustainable_rate_per_s"], serving["sustainable_rate_ci95"]
        assert rate == low and (high is None or high > low)
        for m in serving["measured"]:
            assert m["check"] in ("met", "missed", "unknown") and m["simulated_p99_ms"] > 0
            assert m["p99_interval_ms"][0] <= m["p99_ms"]
    unconfirmed = next(label for label in settings if label not in confirmed)
    assert settings[unconfirmed]["serving"]["sustainable_rate_per_s"] is None
    assert settings[unconfirmed]["serving"]["predicted_rate_per_s"] > 0

    # The journal: its header, the service samples of both replicas, one line per (setting, rate) with every request.
    lines = read_jsonl(out / "trials.jsonl")
    assert read_header(out / "trials.jsonl")["definition"]["mode"] == "serving_load"
    service = [line["serving_service"] for line in lines if "serving_service" in line]
    assert len(service) == 1 and len(service[0]["by_replica"]) == 2
    assert all(sorted(r, key=int) == ["1", "2", "3", "4"] and all(len(v) == 5 for v in r.values())
               for r in service[0]["by_replica"])
    loads = [line["serving_load"] for line in lines if "serving_load" in line]
    assert len(loads) == sum(len(settings[label]["serving"]["measured"]) for label in confirmed)
    for load in loads:
        assert load["error"] is None and len(load["replicas"]) == 2
        # Each replica's share of 1,200; 1 s of arrivals would give fewer at low rates, but never fewer than a p99
        # interval needs (5,000 over both replicas, capped by the share).
        expected = 600
        for replica in load["replicas"]:
            assert len(replica["arrivals_us"]) == len(replica["latencies_us"]) == expected
            assert all(lat > 0 for lat in replica["latencies_us"])
            assert sum(replica["batch_sizes"]) == expected and max(replica["batch_sizes"]) <= load["max_batch_size"]

    report = (out / "report.md").read_text()
    assert "## Highest sustainable rate per batcher setting" in report
    assert "![p99 request latency against rate](charts/p99_vs_rate.png)" in report
    assert (out / "charts" / "p99_vs_rate.png").stat().st_size > 0
    assert "confirm_overrides" in (out / "recommendation.yaml").read_text()

    (run_file,) = find_offline_run_files(out / "wandb")
    run = summarize_wandb_run(run_file)
    assert run.job_type == "recommendation" and run.exit_code == 0
    assert run.summary["decision"] == rec["decision"] and run.summary["chosen"] == rec["chosen"]
    for label in confirmed:
        key = f"sustainable_rate_per_s/{label.replace('/', '_')}"
        assert run.summary[key] == settings[label]["serving"]["sustainable_rate_per_s"]
    assert any("charts/p99_vs_rate/sha256" in row for row in run.history)

    # A resume serves nothing again: the same service samples, predictions and searches read every rate back.
    again = run_tune([*SMALL, "wandb=off", f"hydra.run.dir={out}"], nproc=2, timeout_s=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"{len(loads)} rate(s) already in the journal" in " ".join(again.stdout.split())  # rich wraps at 80
    assert len(read_jsonl(out / "trials.jsonl")) == len(lines)
    rec_again = json.loads((out / "recommendation.json").read_text())
    assert rec_again["decision"] == rec["decision"]
    assert [s["serving"]["sustainable_rate_per_s"] for s in rec_again["settings"]] == \
        [s["serving"]["sustainable_rate_per_s"] for s in rec["settings"]]

    # Decided again from the journal's requests alone: the same verdict; a looser target reads the same rates again.
    redecided = subprocess.run([sys.executable, "-m", "trainer_tune.decide", str(out)], capture_output=True,
                               text=True, env=clean_env(), timeout=120)
    assert redecided.returncode == 0, redecided.stderr[-3000:]
    assert redecided.stdout.strip().splitlines()[-1] == f"decided again: {rec['decision']} {rec['chosen']} (unchanged)"
    looser = subprocess.run([sys.executable, "-m", "trainer_tune.decide", str(out), "recommend.max_p99_ms=1000"],
                            capture_output=True, text=True, env=clean_env(), timeout=120)
    assert looser.returncode == 0, looser.stderr[-3000:]
    loose = json.loads((out / "redecided" / "recommendation.json").read_text())
    assert loose["target_p99_ms"] == 1000.0
    for s in loose["settings"]:
        # No rate the queue kept up with misses a 1 s target (met, or unknown over these short runs' requests).
        assert all(m["check"] != "missed" for m in s["serving"]["measured"] if m["sustainable"])
    assert [[m["rate_per_s"] for m in s["serving"]["measured"]] for s in loose["settings"]] == \
        [[m["rate_per_s"] for m in s["serving"]["measured"]] for s in rec["settings"]]  # nothing served again

    # Another grid in the same directory: refused before any process group, every file as it was.
    before = _files(out)
    other = run_tune([*SMALL[:1], "serving.max_batch_sizes=[8]", *SMALL[2:], "wandb=off", f"hydra.run.dir={out}"],
                     nproc=2, timeout_s=120)
    assert other.returncode == 1 and refused_before_any_group(other.stderr, nproc=2), other.stderr[-4000:]
    assert "is not allowed: its journal is of another sweep (grid: " in other.stderr
    assert _files(out) == before
    assert not math.isnan(rec["confidence"])


def test_listed_rates_without_a_target_measure_every_setting_and_decide_nothing(tmp_path: Path) -> None:
    """One replica (no torchrun), two listed rates, no p99 target: every batcher setting is served at each rate (in
    increasing order), the figures are reported and no setting is compared with the baseline."""
    out = tmp_path / "listed"
    proc = run_tune(["+sweep=serving_load", "serving.rate_per_s=[300,150]", "recommend.max_p99_ms=null",
                     "serving.max_batch_sizes=[4]", "serving.max_queue_delays_ms=[0]", "serving.requests_per_rate=400",
                     "serving.service_repeats=5", "wandb=off", f"hydra.run.dir={out}"], timeout_s=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["decision"] is None and rec["reason"].startswith("no p99 target (recommend.max_p99_ms)")
    for s in rec["settings"]:
        serving = s["serving"]
        assert serving["sustainable_rate_per_s"] is None and serving["predicted_rate_per_s"] is None
        rates = [m["rate_per_s"] for m in serving["measured"]]
        assert rates == [150.0, 300.0] or (rates == [150.0] and not serving["measured"][0]["sustainable"])
        assert all(m["check"] == "met" for m in serving["measured"])  # no target: nothing to miss
    assert [s["label"] for s in rec["settings"]] == ["2/0ms", "4/0ms"]
    assert "rates measured, no verdict" in (out / "report.md").read_text()
