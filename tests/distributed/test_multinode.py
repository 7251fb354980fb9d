"""Two torchrun agents on this machine, as two nodes would run them: c10d rendezvous on 127.0.0.1, one
process each. The sweep must see world size 2 and write one output directory, journal and set of wandb runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env, read_jsonl

pytestmark = pytest.mark.slow

SWEEP = ["+sweep=batch", "window=quick", "sweep.micro_batch_sizes=[1,2]", "sweep.grad_accums=[1]",
         "sweep.min_rounds=2", "sweep.max_rounds=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_agents_form_one_group_and_write_once(tmp_path: Path) -> None:
    port = _free_port()
    agents = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node_rank}",
               "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
               "--rdzv_id=two_agents", "--max-restarts=0", "-m", "trainer_tune", *SWEEP]
        agents.append(subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True))
    outputs = [agent.communicate(timeout=240) for agent in agents]
    for agent, (_, stderr) in zip(agents, outputs):
        assert agent.returncode == 0, stderr[-3000:]

    # Both agents agreed on one output directory without hydra.run.dir (the stamp is in the rendezvous store).
    (out,) = list((tmp_path / "outputs" / "runs").iterdir())
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["rank-0.log", "rank-1.log"]
    logs = {rank: (out / "logs" / f"rank-{rank}.log").read_text() for rank in (0, 1)}
    assert f"rank 0/2 (node 0 " in logs[0] or f"rank 0/2 (node 1 " in logs[0]
    assert {("(node 0 " in logs[r]) for r in (0, 1)} == {True, False}, "each agent is its own node"

    windows = read_jsonl(out / "trials.jsonl")
    # Two rounds of the two settings, every window across both nodes.
    assert sorted((w["round_id"], w["label"], w["world_size"]) for w in windows) == \
        [("r0", "1x1", 2), ("r0", "2x1", 2), ("r1", "1x1", 2), ("r1", "2x1", 2)]
    for t in windows:
        assert t["status"] == "ok", t["error"]
        assert t["world_size"] == 2 and t["global_batch_size"] == t["micro_batch_size"] * 2
        assert t["tokens_per_step"] == t["global_batch_size"] * 128  # tokens of both nodes counted
        assert t["tokens_per_s"] == pytest.approx(t["tokens_per_step"] * t["num_measured_steps"] / t["measured_s"])

    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["baseline"]["trial_key"] == next(w["setting_key"] for w in windows if w["label"] == "2x1")
    trials = rec["settings"]
    # Written once, by global rank 0: one table on the consoles, one wandb run per trial plus the recommendation.
    assert sum(stdout.count("trainer_tune trials") for stdout, _ in outputs) == 1
    assert len(list((out / "wandb").glob("offline-run-*"))) == len(trials) + 1
