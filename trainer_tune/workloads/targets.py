"""The user's own code behind `model._target_`, `data._target_` and `loss._target_`.

Three moments, three kinds of error, none of them a hang:
- before any process group starts, `check_targets` imports each target and binds its keyword arguments to
  its signature, so a typo ends every rank with one line (exit code 2);
- when a trial builds the model, `instantiate_target` calls `hydra.utils.instantiate`; a target that raises
  or returns something that is not an `nn.Module` is a trial error with one line;
- at every forward, `logits_of` checks the output's shape against `[batch, seq_len, vocab_size]`; a wrong
  one raises `TargetError` on every rank alike (each rank runs the same model), so it is recorded as the
  trial's error and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, Callable, Iterator, Optional

import torch
from hydra.utils import get_object, instantiate
from torch import nn

from trainer_tune.config.schema import Attention, ConfigError, DataKind, Mode, ModelArgs, TuneConfig
from trainer_tune.config.flags import format_flag

DATA_RUNTIME_KWARGS = ("micro_batch_size", "seq_len", "vocab_size", "rank", "world_size", "seed", "device")
"""What a batch source may take besides data.kwargs (trainer_tune.workloads.data.BatchSource); it is given those
its signature names (all of them when it takes **kwargs), so a Dataset class that needs none of them is called
with data.kwargs alone."""


class TargetError(RuntimeError):
    """User code behind a `_target_` could not be built or broke its contract; the message is one line."""


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and message. An exception re-raised from a DataLoader worker carries
    the worker's whole traceback in its message; its last line is the original error."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        return f"in a DataLoader worker: {last}"
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def _quiet_hydra_utils() -> Iterator[None]:
    """hydra.utils logs a multi-line error before raising; our own one-line message says it all."""
    logger = logging.getLogger("hydra.utils")
    was_disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was_disabled


EXTRAS = {"transformers": "hf"}
"""Top-level packages our example configs name that an extra of pyproject.toml installs."""


def locate(key: str, target: str) -> Any:
    """Import `target` (a dotted path) or raise ConfigError naming the key."""
    try:
        with _quiet_hydra_utils():
            found = get_object(target)
    except Exception as exc:  # noqa: BLE001 - ImportError, or whatever the user's module raises on import
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        extra = EXTRAS.get(target.split(".")[0])
        if extra is not None and isinstance(cause, ImportError):
            raise ConfigError(f"{key}={target!r} needs {target.split('.')[0]}, which is not installed: "
                              f"pip install -e '.[{extra}]' (or pip install {target.split('.')[0]})") from exc
        raise ConfigError(f"{key}={target!r} is not allowed: it cannot be imported ({one_line(cause)}); "
                          f"give a dotted path importable from the working directory or PYTHONPATH") from exc
    if not callable(found):
        raise ConfigError(f"{key}={target!r} is not allowed: it names a {type(found).__name__}, not a class or "
                          f"function")
    return found


def _check_binds(key: str, target: str, found: Any, user_kwargs: dict[str, Any], *args: Any,
                 **runtime: Any) -> None:
    try:
        signature = inspect.signature(found)
    except (TypeError, ValueError):
        return  # builtins and some extension types have no readable signature: checked when called
    try:
        signature.bind(*args, **user_kwargs, **runtime)
    except TypeError as exc:
        prefix = key.removesuffix("._target_")
        raise ConfigError(f"{key}={target!r} is not allowed with {prefix}.kwargs={user_kwargs}: {exc} "
                          f"(its signature is {signature})") from exc


def runtime_kwargs_taken(found: Any, runtime: dict[str, Any]) -> dict[str, Any]:
    """The runtime arguments `found`'s signature takes (all of them with **kwargs, or when it has none we can
    read)."""
    try:
        parameters = inspect.signature(found).parameters.values()
    except (TypeError, ValueError):
        return runtime
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters):
        return runtime
    names = {p.name for p in parameters if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                      inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    return {name: value for name, value in runtime.items() if name in names}


def check_targets(cfg: TuneConfig) -> None:
    """Import every `_target_` and bind its arguments, on every rank, before any process group starts."""
    if cfg.model._target_ is not None:
        found = locate("model._target_", cfg.model._target_)
        _check_binds("model._target_", cfg.model._target_, found, cfg.model.kwargs)
    if cfg.data._target_ is not None:
        clash = sorted(set(cfg.data.kwargs) & set(DATA_RUNTIME_KWARGS))
        if clash:
            raise ConfigError(f"data.kwargs={cfg.data.kwargs} is not allowed: {clash} are given to every batch "
                              f"source by trainer_tune (from model.*, data.seed and the trial), not by data.kwargs")
        found = locate("data._target_", cfg.data._target_)
        _check_binds("data._target_", cfg.data._target_, found, cfg.data.kwargs,
                     **runtime_kwargs_taken(found, {name: None for name in DATA_RUNTIME_KWARGS}))
    # A loss, a step and a count are called with two, two and one positional arguments.
    for key, args, positional in (("loss._target_", cfg.loss, 2), ("step._target_", cfg.step, 2),
                                  ("throughput.count._target_", cfg.throughput.count, 1)):
        if args._target_ is not None:
            found = locate(key, args._target_)
            _check_binds(key, args._target_, found, args.kwargs, *([None] * positional))


def ignored_settings(cfg: TuneConfig) -> list[str]:
    """Settings that this configuration does not read, each as a one-line warning."""
    notes = []
    if cfg.model._target_ is not None and cfg.model.attention == Attention.nsa:
        notes.append(f"model.attention=nsa is ignored: model._target_={cfg.model._target_!r} builds the model "
                     f"(the built-in GPT's shape keys are not used)")
    if cfg.data._target_ is not None and cfg.data.kind != DataKind.synthetic:
        notes.append(f"data.kind={cfg.data.kind.value} is ignored: data._target_={cfg.data._target_!r} gives the "
                     f"batches")
    if cfg.model._target_ is None and cfg.model.attention == Attention.dense:
        for key in ("nsa_prefill_batched", "nsa_disable_aux_stats"):
            if getattr(cfg.sweep, key) is not None:
                notes.append(f"sweep.{key} multiplies the grid but changes nothing the built-in GPT does with "
                             f"model.attention=dense (use model=tiny_nsa, or a model that reads NSA_* itself)")
    if cfg.data._target_ is None:
        # A source that returns something else than a Dataset is only known once called: data.py warns then.
        if cfg.sweep.num_workers is not None:
            notes.append(f"sweep.num_workers={cfg.sweep.num_workers} multiplies the grid but changes nothing with the "
                         f"built-in data (data.kind={cfg.data.kind.value}, made without a DataLoader): workers only "
                         f"load a Dataset that data._target_ returns")
        elif cfg.data.num_workers > 0:
            notes.append(f"data.num_workers={cfg.data.num_workers} is ignored: the built-in data "
                         f"(data.kind={cfg.data.kind.value}) is made without a DataLoader; workers only load a "
                         f"Dataset that data._target_ returns")
    if cfg.mode == Mode.inference:
        if cfg.loss._target_ is not None:
            notes.append(f"loss._target_={cfg.loss._target_!r} is ignored with mode=inference: a served batch has "
                         f"no loss")
        for key in ("static_graph", "find_unused_parameters", "bucket_cap_mb"):
            value = getattr(cfg.ddp, key)
            if value is not None:
                notes.append(f"ddp.{key}={format_flag(value)} is ignored with mode=inference: there is no DDP, each "
                             f"rank serves on its own")
    return notes


def instantiate_target(key: str, target: str, kwargs: dict[str, Any], *, partial: bool = False,
                       **runtime: Any) -> Any:
    """`hydra.utils.instantiate` of target with kwargs (nested `_target_` nodes too) plus runtime arguments;
    what it raises becomes a one-line TargetError naming the key."""
    node = {"_target_": target, "_convert_": "all", **({"_partial_": True} if partial else {}), **kwargs}
    try:
        with _quiet_hydra_utils():
            return instantiate(node, **runtime)
    except Exception as exc:  # noqa: BLE001 - anything user code raises is reported as this trial's error
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise TargetError(f"{key}={target!r} failed when called: {one_line(cause)}") from exc


def instantiate_model(args: ModelArgs) -> nn.Module:
    assert args._target_ is not None
    model = instantiate_target("model._target_", args._target_, args.kwargs)
    if not isinstance(model, nn.Module):
        raise TargetError(f"model._target_={args._target_!r} returned a {type(model).__name__}, not a "
                          f"torch.nn.Module")
    return model


def logits_of(output: Any, *, input_ids: torch.Tensor, vocab_size: int, target: Optional[str]) -> torch.Tensor:
    """The logits in a model's output (a tensor, or an object with `.logits` such as a Hugging Face
    CausalLMOutput), checked to be [batch, seq, vocab_size] for input_ids [batch, seq]."""
    logits = getattr(output, "logits", output)
    expected = (*input_ids.shape, vocab_size)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        what = (f"logits of shape {list(logits.shape)}" if isinstance(logits, torch.Tensor)
                else f"a {type(output).__name__} with no tensor .logits")
        source = f"model._target_={target!r}" if target is not None else "the model"
        raise TargetError(f"{source} returned {what} for input_ids of shape {list(input_ids.shape)}; expected "
                          f"{list(expected)} (batch, seq, model.vocab_size={vocab_size})")
    return logits


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
