"""Hydra multirun: `python -m trainer_tune -m train.micro_batch_size=1,2,4 train.grad_accum=1,2`.

Each job of the multirun measures one setting, its own train.* (with its nsa/ddp flags), against one
baseline pinned for the whole multirun, racing the two in rounds of its own; every job appends to one journal
in hydra.sweep.dir (settings of different jobs share no round). `MultirunCallback` (configs/config.yaml,
hydra.callbacks) pins the baseline when the multirun starts and, when it ends, reads the shared journal
and publishes the one recommendation through the same sinks as a single sweep. Works with any launcher
whose jobs see hydra.sweep.dir: Hydra's basic launcher, hydra/launcher=submitit_slurm, torchrun around
either.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trainer_tune.config.schema import (
    BaselineArgs, ConfigError, DataArgs, DdpArgs, DistArgs, NsaArgs, RecommendArgs, SweepArgs, TrainArgs, WandbArgs)
from trainer_tune.config.keys import check_keys, check_override_keys
from trainer_tune.platform.distributed import DistSession, RankEnv, adopt_slurm_tasks, launch_hint
from trainer_tune.platform.durable import write_atomically
from trainer_tune.config.flags import FLAG_SPECS, TrialFlags, resolve_flags
from trainer_tune.platform.units import count
from trainer_tune.run.journal import JOURNAL_NAME, read_journal
from trainer_tune.measure.record import WindowRecord

if TYPE_CHECKING:
    from trainer_tune.decide.verdict import Decision
    from trainer_tune.evidence.estimate import SettingEstimate

log = logging.getLogger(__name__)

PIN_NAME = "baseline.json"
"""In hydra.sweep.dir: the baseline every job of the multirun is measured against."""


@dataclass(frozen=True)
class BaselinePin:
    micro_batch_size: int
    grad_accum: int
    flags: TrialFlags

    def setting(self) -> tuple[int, int, TrialFlags]:
        return self.micro_batch_size, self.grad_accum, self.flags

    def to_json_dict(self) -> dict[str, Any]:
        return {"baseline": {"micro_batch_size": self.micro_batch_size, "grad_accum": self.grad_accum,
                             "flags": self.flags.as_dict()}}

    @staticmethod
    def from_json_dict(data: dict[str, Any]) -> "BaselinePin":
        base = data["baseline"]
        return BaselinePin(micro_batch_size=int(base["micro_batch_size"]), grad_accum=int(base["grad_accum"]),
                           flags=TrialFlags(**base["flags"]))


@dataclass(frozen=True)
class MultirunJob:
    """What one job of a multirun needs beyond its config."""

    sweep_dir: Path
    """hydra.sweep.dir: the journal, the recommendation and the wandb runs of the whole multirun."""
    job_num: int
    baseline: BaselinePin

    @property
    def journal_path(self) -> Path:
        return self.sweep_dir / JOURNAL_NAME

    @property
    def trial_index(self) -> int:
        """The job's trial in the shared journal: job 0 is trial 1, trial 0 being the baseline (job_of_trial
        undoes this)."""
        return self.job_num + 1


def job_of_trial(index: int) -> Optional[int]:
    """The job whose own setting is trial `index` (MultirunJob.trial_index); None for the baseline, trial 0,
    which every job measures."""
    return index - 1 if index > 0 else None


ALL_JOBS = "all"


def jobs_by_key(results: Sequence["SettingEstimate"]) -> dict[str, str]:
    """The table's `job` column, by trial key: the job that measured each setting, as Hydra numbers it when it
    launches (`#2 : train.micro_batch_size=4`) and names its folder in hydra.sweep.dir (`2/`: its config and
    logs); `all` for the baseline, measured in every job."""
    jobs = {}
    for result in results:
        job = None if result.is_baseline else job_of_trial(result.index)
        jobs[result.trial_key] = ALL_JOBS if job is None else str(job)
    return jobs


def current_job(*, sweep: SweepArgs, baseline: BaselineArgs) -> Optional[MultirunJob]:
    """The running multirun job, or None outside a multirun. Raises ConfigError for a multirun this module
    cannot run: sweep axes (they belong to a single run), or no pinned baseline."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    axes = {name: value for name, value in vars(sweep).items()
            if name in _SWEEP_AXES and value is not None}
    if axes:
        name, value = next(iter(axes.items()))
        raise ConfigError(f"sweep.{name}={value} is not allowed in a Hydra multirun (-m): each job measures its "
                          f"own train.* setting; sweep with -m train.micro_batch_size=1,2,4 train.grad_accum=1,2 "
                          f"instead, or drop -m to run the sweep.* grid in one run")
    sweep_dir = Path(hydra_cfg.sweep.dir).absolute()
    pin_path = sweep_dir / PIN_NAME
    try:
        pin = BaselinePin.from_json_dict(json.loads(pin_path.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"hydra.callbacks={list(hydra_cfg.callbacks)} is not allowed for a multirun: "
                          f"trainer_tune.run.multirun.MultirunCallback pins the baseline in {pin_path} when the "
                          f"multirun starts and writes the recommendation when it ends; keep it in "
                          f"hydra.callbacks (configs/config.yaml has it)") from None
    if (baseline.micro_batch_size, baseline.grad_accum) != (pin.micro_batch_size, pin.grad_accum) and \
            any(o.split("=")[0].lstrip("+~").startswith("baseline.") for o in hydra_cfg.overrides.task):
        raise ConfigError(f"baseline.micro_batch_size={baseline.micro_batch_size} baseline.grad_accum="
                          f"{baseline.grad_accum} is not allowed as a job's override in a multirun: every job is "
                          f"measured against one baseline ({pin.micro_batch_size}x{pin.grad_accum}); set "
                          f"baseline.* once, without sweeping it")
    return MultirunJob(sweep_dir=sweep_dir, job_num=int(hydra_cfg.job.num), baseline=pin)


_SWEEP_AXES = {"micro_batch_sizes", "grad_accums", "global_batch_size", *(spec.sweep_key for spec in FLAG_SPECS)}


def _typed(node: Any, schema: type) -> Any:
    """A config group as its schema dataclass, its interpolations resolved against the whole config."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(node, resolve=True)))


def rank_env_here() -> RankEnv:
    """This process's rank, as the jobs see theirs; a plain single process where the environment says nothing
    usable (the jobs themselves report that)."""
    adopt_slurm_tasks(os.environ)
    try:
        return RankEnv.from_environ(os.environ)
    except ConfigError:
        return RankEnv.from_environ({})


class MultirunCallback(Callback):
    """Pins the baseline when a multirun starts; publishes the recommendation when it ends.

    Under torchrun every rank runs the whole multirun and this callback; only global rank 0 writes.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            # Before anything is written: a key no job would read, swept ones included, ends the multirun here.
            check_override_keys(list(config.hydra.overrides.task))
            check_keys(config)
        except ConfigError as exc:
            from trainer_tune.run.exits import fail_usage, rank_env_or_fail
            fail_usage(str(exc), rank_env_or_fail())
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        # The multirun's own config has no sweep values in it: train.* here is the setting the jobs'
        # train.* sweep moves away from, and baseline.* (train.* unless set) is what they are measured against.
        baseline: BaselineArgs = _typed(config.baseline, BaselineArgs)
        flags = resolve_flags(nsa=_typed(config.nsa, NsaArgs), ddp=_typed(config.ddp, DdpArgs),
                              data=_typed(config.data, DataArgs), train=_typed(config.train, TrainArgs),
                              environ=os.environ)
        pin = BaselinePin(micro_batch_size=baseline.micro_batch_size, grad_accum=baseline.grad_accum, flags=flags)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        pin_path = sweep_dir / PIN_NAME
        if pin_path.exists():
            # The same multirun again (hydra.sweep.dir given): keep the baseline its journal was measured with.
            existing = BaselinePin.from_json_dict(json.loads(pin_path.read_text()))
            if existing != pin:
                log.warning("%s pins baseline %dx%d from an earlier multirun in this directory; this one asked for "
                            "%dx%d, which is not used", pin_path, existing.micro_batch_size, existing.grad_accum,
                            pin.micro_batch_size, pin.grad_accum)
            return
        write_atomically(pin_path, json.dumps(pin.to_json_dict(), indent=2) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Rank 0 publishes; every rank waits for it to finish, then all exit with its code (under torchrun, a
        rank leaving first with a code would make torchrun end rank 0 mid-publish, and one leaving with 0
        would hide the gate's verdict from the rank's own exit status). The rule of a single run
        (DistSession.from_rank0_when_done), in a process group of its own: the jobs' groups are closed."""
        # Imported here: main imports this module, and the sinks load only when a multirun ends.
        from trainer_tune.run.exits import EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_NO_GO, leave_no_go
        from trainer_tune.sinks.report import REPORT_MD
        rank_env = rank_env_here()
        if rank_env.world_size == 1:
            # `python -m`, or the launching process of a launcher such as submitit (no GPU there, maybe): no
            # one to wait for, and no device to choose.
            code = publish_multirun(config, rank_env=rank_env)
        else:
            session = DistSession.start(_typed(config.dist, DistArgs), rank_env, namespace="multirun_end/")
            try:
                code = 0
                if rank_env.is_rank0:
                    try:
                        code = publish_multirun(config, rank_env=rank_env)
                    except BaseException:
                        session.from_rank0_when_done(EXIT_FAILED)  # the others leave with the failure at once
                        raise
                code = session.from_rank0_when_done(code)
            finally:
                session.close()
        if code in (EXIT_NO_GO, EXIT_INCONCLUSIVE):
            sys.exit(leave_no_go(Path(str(config.hydra.sweep.dir)).absolute() / REPORT_MD, rank_env, code))
        if code:
            sys.exit(code)


def publish_multirun(config: DictConfig, *, rank_env: RankEnv) -> int:
    """Read the multirun's journal, decide, and write the recommendation (files, console, wandb) into
    hydra.sweep.dir; `rank_env` is how this process was started (for the launch hint). Returns the exit code:
    with recommend.fail_on_no_go 3 for NO-GO and 5 for INCONCLUSIVE, else 0."""
    # Imported here: the callback is instantiated for every Hydra start, even `--help`.
    from trainer_tune.run.exits import gate_code
    from trainer_tune.sinks.console import ConsoleSink
    from trainer_tune.explain.report import build_report
    from trainer_tune.sinks.publish import publish
    from trainer_tune.sinks.wandb_sink import WandbSink

    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    contents = read_journal(sweep_dir / JOURNAL_NAME)
    for problem in contents.problems:
        log.warning(problem)
    recommend_args: RecommendArgs = _typed(config.recommend, RecommendArgs)
    recommendation = decide_multirun(contents.results, args=recommend_args, lr=float(config.train.lr),
                                     journal=sweep_dir / JOURNAL_NAME)
    results = list(recommendation.settings)  # the same settings, with their efficiency and goodput
    console = ConsoleSink(enabled=True)
    if not results:
        console.console.print(f"trainer_tune: no trial in {sweep_dir / JOURNAL_NAME}; no recommendation")
        return 0
    console.console.print(f"trainer_tune: multirun finished, {count(len(results), 'setting')} in {sweep_dir / JOURNAL_NAME}")
    plain = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}  # type: ignore
    wandb_sink = WandbSink(_typed(config.wandb, WandbArgs), enabled=True, output_dir=sweep_dir,
                           group=sweep_dir.name, config=_resolved(plain))
    publish(sweep_dir, build_report(recommendation), launch_hint=launch_hint(rank_env), console=console,
            wandb_sink=wandb_sink, jobs=jobs_by_key(results))
    return gate_code(recommendation.decision, fail_on_no_go=recommend_args.fail_on_no_go)


def decide_multirun(windows: Sequence[WindowRecord], *, args: RecommendArgs, lr: float, journal: Path) -> "Decision":
    """The decision of a multirun from its journal's windows. Every job measured its setting and the baseline in
    rounds of its own (job-prefixed round ids), so each setting pairs with the baseline windows of its own job."""
    from trainer_tune.decide.verdict import decide
    from trainer_tune.evidence.estimate import aggregate_by_setting

    results = aggregate_by_setting(windows)
    baselines = [r for r in results if r.is_baseline]
    if len(baselines) > 1:
        # Jobs that differ in more than the setting (say model=... swept) each measured their own baseline.
        log.warning("%d baselines in %s (the multirun swept keys that change what a trial measures); the "
                    "recommendation compares against the first", len(baselines), journal)
        results = [r for r in results if not r.is_baseline or r is baselines[0]]
    return decide(results, args=args, lr=lr)


def _resolved(plain: dict[str, Any]) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(OmegaConf.create(plain), resolve=True, enum_to_str=True)  # type: ignore
    except Exception:  # noqa: BLE001 - an unresolvable value must not cost the recommendation
        return plain
