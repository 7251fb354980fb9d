"""What a new user trips on at the command line (issue 27): one line, exit 2, before any process group or output."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_tune

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("override", ["sweep.micro_batch_size=[1,2]", "+sweep.micro_batch_size=[1,2]"])
def test_a_misspelt_key_gets_did_you_mean_and_exit_2_with_or_without_plus(override: str, tmp_path: Path) -> None:
    proc = run_tune(["+sweep=batch", override, f"hydra.run.dir={tmp_path / 'never'}"], timeout_s=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip() == ("trainer_tune: error: sweep.micro_batch_size is not a configuration key; did you "
                                   "mean sweep.micro_batch_sizes?")
    assert not (tmp_path / "never").exists()


def test_a_removed_key_says_what_replaced_it(tmp_path: Path) -> None:
    proc = run_tune(["+sweep=batch", "window.target_rel_ci=0.02", f"hydra.run.dir={tmp_path / 'never'}"], timeout_s=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("trainer_tune: error: window.target_rel_ci was removed: ")
    assert "window.measure_s" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cfg_job_prints_the_configuration_and_then_why_a_run_would_refuse_it() -> None:
    bad = run_tune(["+sweep=batch", "sweep.micro_batch_sizes=[0,2]", "--cfg", "job"], timeout_s=60)
    assert bad.returncode == 2 and "micro_batch_sizes:" in bad.stdout
    assert bad.stderr.strip() == ("trainer_tune: error: this configuration would be refused: "
                                  "sweep.micro_batch_sizes=[0, 2] is not allowed: every entry an integer >= 1")
    good = run_tune(["+sweep=batch", "--cfg", "job"], timeout_s=60)
    assert good.returncode == 0 and good.stderr == "" and "micro_batch_sizes:" in good.stdout


def test_a_hugging_face_model_without_transformers_names_the_extra_to_install(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "transformers"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named transformers')\n")
    proc = run_tune(["+sweep=batch", "model=distilbert_cls", "data=text_cls", f"hydra.run.dir={tmp_path / 'never'}"],
                    env={"PYTHONPATH": str(tmp_path / "shim")}, timeout_s=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("trainer_tune: error: model._target_='transformers.DistilBertForSequenceClassification' "
                                   "needs transformers, which is not installed: pip install -e '.[hf]' (or pip install "
                                   "transformers)")
