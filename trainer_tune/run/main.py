"""Entry point: `python -m trainer_tune` or `torchrun --nproc_per_node=N -m trainer_tune +sweep=batch`.

Also the task of every job of a Hydra multirun (`-m`, see trainer_tune/run/multirun.py), including jobs that a
launcher such as submitit starts in other processes, where `main` never runs: `_task` therefore reads the
rank environment itself.

Order matters: agree on the output directory (before Hydra picks one per rank), compose and convert the
config once, validate everything that can be validated, and only then start the process group. A user
mistake ends every rank with one line and exit code 2, before any rank can wait on another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainer_tune.config.schema import ConfigError, TuneConfig, config_dir, register_configs
from trainer_tune.config.keys import check_keys, check_override_keys
from trainer_tune.platform.distributed import (
    DistSession, RankEnv, choose_backend, choose_device, launch_hint, shared_run_stamp)
from trainer_tune.config.flags import resolve_flags
from trainer_tune.platform.logging_setup import setup_logging
from trainer_tune.run.exits import fail_usage, gate_code, leave_no_go, rank_env_or_fail
from trainer_tune.run.journal import JOURNAL_NAME, check_budget, read_journal, resume_refusal
from trainer_tune.run.multirun import current_job
from trainer_tune.plan import (
    batcher_plan, build_plan, job_plan, serving_definition, sweep_definition, swept_flag_names)
from trainer_tune.sinks.console import ConsoleSink
from trainer_tune.sinks.files import write_config
from trainer_tune.sinks.report import REPORT_MD
from trainer_tune.sinks.wandb_sink import WandbSink
from trainer_tune.workloads.checkpoint import check_checkpoint
from trainer_tune.workloads.targets import check_targets, ignored_settings
from trainer_tune.run.serving_sweep import run_serving_sweep
from trainer_tune.run.sweep import run_sweep

log = logging.getLogger("trainer_tune")

RUN_STAMP_ENV = "TRAINER_TUNE_RUN_STAMP"


def tune(raw: DictConfig, rank_env: RankEnv) -> int:
    try:
        check_keys(raw)  # to_object would drop a key added with + that the schema lacks, without a word
        cfg: TuneConfig = OmegaConf.to_object(raw)  # type: ignore[assignment]
        base_flags = resolve_flags(nsa=cfg.nsa, ddp=cfg.ddp, data=cfg.data, train=cfg.train, environ=os.environ)
        device = choose_device(cfg.dist, rank_env)
        if rank_env.world_size > 1:
            choose_backend(cfg.dist, device)
        multirun = current_job(sweep=cfg.sweep, baseline=cfg.baseline)
        check_checkpoint(cfg.model)  # before the plan, whose keys hold the checkpoint's fingerprint
        if cfg.serving.open_loop:
            if multirun is not None:
                raise ConfigError("serving.rate_per_s is not allowed in a Hydra multirun (-m): a serving-under-load "
                                  "sweep searches its batcher grid itself (serving.max_batch_sizes, "
                                  "serving.max_queue_delays_ms); run it without -m")
            journal = Path(HydraConfig.get().runtime.output_dir) / JOURNAL_NAME
            refusal, _ = resume_refusal(read_journal(journal), journal=journal, fingerprint=None,
                                        definition=serving_definition(cfg, batcher_plan(cfg)[1]),
                                        allow_fingerprint_change=cfg.sweep.allow_fingerprint_change)
            if refusal is not None:
                raise ConfigError(refusal)
        elif multirun is None:
            plan = build_plan(cfg, world_size=rank_env.world_size, base_flags=base_flags, device_type=device.type)
            journal = Path(HydraConfig.get().runtime.output_dir) / JOURNAL_NAME
            # Another sweep's directory is refused before anything in it is touched (config.yaml included).
            refusal, _ = resume_refusal(read_journal(journal), journal=journal, fingerprint=None,
                                        definition=sweep_definition(cfg, plan, swept=swept_flag_names(cfg)),
                                        allow_fingerprint_change=cfg.sweep.allow_fingerprint_change)
            if refusal is not None:
                raise ConfigError(refusal)
            check_budget(cfg.sweep.budget_s, plan=plan, journal=journal)
        else:
            job_plan(cfg, world_size=rank_env.world_size, flags=base_flags, baseline=multirun.baseline.setting(),
                     index=multirun.trial_index, device_type=device.type)
        check_targets(cfg)
    except (ConfigError, OmegaConfBaseException) as exc:
        # Hydra made the run directory before calling us; leave nothing behind for a run that never started.
        with contextlib.suppress(OSError):
            os.rmdir(HydraConfig.get().runtime.output_dir)
        fail_usage(str(exc).splitlines()[0], rank_env)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    setup_logging(rank_env, log_dir=output_dir / "logs")
    if rank_env.is_rank0:
        write_config(output_dir, OmegaConf.to_yaml(raw, resolve=True),
                     overrides=list(HydraConfig.get().overrides.task))
    log.info("%s on %s; output in %s", rank_env.describe(), device, output_dir)
    for note in ignored_settings(cfg):
        log.warning(note)

    session = DistSession.start(cfg.dist, rank_env, namespace="" if multirun is None else f"job_{multirun.job_num}/")
    if cfg.train.max_memory_fraction is not None:
        if session.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(cfg.train.max_memory_fraction, session.device)
        else:
            log.warning("train.max_memory_fraction=%s caps no allocator: it caps the CUDA allocator and the device is "
                        "%s (it still sets the memory prediction's limit)", cfg.train.max_memory_fraction, session.device)
    try:
        # A multirun's jobs log their trial runs next to the multirun's journal, in one wandb group.
        shared_dir = output_dir if multirun is None else multirun.sweep_dir
        wandb_sink = WandbSink(cfg.wandb, enabled=rank_env.is_rank0, output_dir=shared_dir, group=shared_dir.name,
                               config=OmegaConf.to_container(raw, resolve=True, enum_to_str=True))  # type: ignore[arg-type]
        if cfg.serving.open_loop:
            serving = run_serving_sweep(cfg=cfg, session=session, output_dir=output_dir, base_flags=base_flags,
                                        console=ConsoleSink(enabled=rank_env.is_rank0),
                                        launch_hint=launch_hint(rank_env), wandb_sink=wandb_sink)
            decision = serving.recommendation.decision
        else:
            outcome = run_sweep(cfg=cfg, session=session, output_dir=output_dir, base_flags=base_flags,
                                console=ConsoleSink(enabled=rank_env.is_rank0), launch_hint=launch_hint(rank_env),
                                wandb_sink=wandb_sink, multirun=multirun)
            decision = None if outcome.recommendation is None else outcome.recommendation.decision
    except ConfigError as exc:
        session.close()
        fail_usage(str(exc), rank_env)
    session.close()
    code = 0 if decision is None else gate_code(decision, fail_on_no_go=cfg.recommend.fail_on_no_go)
    if code:
        # Every rank holds rank 0's recommendation (published before anyone got here): all exit with this code.
        return leave_no_go(output_dir / REPORT_MD, rank_env, code)
    return 0


def _task(raw: DictConfig) -> None:
    """One run, or one job of a multirun (possibly in a process `main` never ran in)."""
    code = tune(raw, rank_env_or_fail())
    if code:
        sys.exit(code)


def main() -> None:
    rank_env = rank_env_or_fail()
    try:
        if RUN_STAMP_ENV not in os.environ:
            os.environ[RUN_STAMP_ENV] = shared_run_stamp(rank_env, os.environ)
    except ConfigError as exc:
        fail_usage(str(exc), None)
    try:
        # Before Hydra: a misspelt key gets the same did-you-mean (exit 2) with or without `+` (Hydra would answer
        # the unprefixed one with a hint to add `+`, exit 1, and the prefixed one would reach check_keys).
        check_override_keys([a for a in sys.argv[1:] if "=" in a and not a.startswith("-")])
    except ConfigError as exc:
        fail_usage(str(exc), rank_env)
    register_configs()
    hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")(_task)()
    if {"--cfg", "-c"} & set(sys.argv[1:]):
        _check_printed_config(sys.argv[1:], rank_env)


_HYDRA_FLAGS_WITH_VALUES = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                            "--config-dir", "-cd", "--info", "-i"}


def _check_printed_config(argv: list[str], rank_env: RankEnv) -> None:
    """After `--cfg job` printed the configuration (Hydra runs no task then), validate it as a run would, so a
    configuration the run would refuse is not shown as if it were fine: its error follows, exit 2."""
    from hydra import compose, initialize_config_dir

    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _HYDRA_FLAGS_WITH_VALUES:
            skip = True
        elif not arg.startswith("-") and not arg.lstrip("+~").startswith("hydra."):
            overrides.append(arg)
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            raw = compose(config_name="config", overrides=overrides)
        check_keys(raw)
        OmegaConf.to_object(raw)
    except (ConfigError, OmegaConfBaseException) as exc:
        fail_usage(f"this configuration would be refused: {str(exc).splitlines()[0]}", rank_env)
