"""The output directory: checked before Hydra makes it, and refused with one line naming it and the OS's reason.

Hydra creates hydra.run.dir (hydra.sweep.dir for a multirun) after our config is composed and before the task
runs; a directory it cannot create (a path under a regular file, a read-only file system, no permission)
would end every rank with Hydra's raw traceback and exit 1. This callback (configs/config.yaml,
hydra.callbacks, listed first) looks just before, on every rank, and ends the run like any user mistake.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


def unusable_reason(directory: Path) -> str | None:
    """Why Hydra could not create `directory` or we could not write in it; None if nothing stands in the way.

    Only looks: a run that stops later for a config error leaves no directory behind."""
    for path in (directory, *directory.parents):
        if not path.exists():
            continue
        if not path.is_dir():
            return f"it cannot be created: {path} is a file"
        if not os.access(path, os.W_OK | os.X_OK):
            why = "read-only file system" if os.statvfs(path).f_flag & os.ST_RDONLY else "permission denied"
            return f"{path} is not writable ({why})" if path == directory else \
                f"it cannot be created: {path} is not writable ({why})"
        return None
    return None


def _check(config: DictConfig, key: str) -> None:
    try:
        # Hydra sets this itself right after the callbacks; `${hydra:...}` in the directory needs it now.
        HydraConfig.instance().set_config(config)
        directory = Path(str(OmegaConf.select(config, key, throw_on_missing=True)))
    except OmegaConfBaseException:
        return  # Hydra's own error for an unresolvable directory names the key
    reason = unusable_reason(directory)
    if reason is not None:
        from trainer_tune.run.exits import fail_usage, rank_env_or_fail
        fail_usage(f"{key}={directory} is not allowed: {reason}; an output directory you can write", rank_env_or_fail())


class OutputDirCallback(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "hydra.sweep.dir")
