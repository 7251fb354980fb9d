"""`model.checkpoint`: the weights every trial starts from, so a sweep measures where training will be.

Three moments, as for `_target_` (targets.py):
- before any process group starts, `check_checkpoint` checks what can be checked without loading: the path
  exists and is of the kind the model loads (a state dict file, or a `save_pretrained` directory for a Hugging
  Face class); a mistake ends every rank with one line naming model.checkpoint (exit code 2);
- the plan keys every trial on `checkpoint_fingerprint`, so a changed checkpoint is measured again;
- when a trial builds its model, `load_checkpoint` loads the weights on the CPU, before the model moves to its
  device and before DDP wraps it; weights that do not fit the model are the trial's one-line error.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from hydra.utils import instantiate
from torch import nn

from trainer_tune.config.schema import ConfigError, ModelArgs
from trainer_tune.workloads.targets import TargetError, locate, one_line

log = logging.getLogger(__name__)

SAMPLE_CHUNKS = 16
SAMPLE_CHUNK_BYTES = 64 * 1024
"""A fingerprint hashes 16 chunks of 64 KiB spread evenly over each file (all of a file under 1 MiB)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin")
"""What save_pretrained writes weights as (a sharded model adds a *.index.json beside the shards)."""
NUM_KEYS_SHOWN = 3


def pretrained_class(args: ModelArgs) -> Optional[type]:
    """The model._target_ class when it loads `save_pretrained` directories (it has from_pretrained), else None."""
    if args._target_ is None:
        return None
    found = locate("model._target_", args._target_)
    return found if inspect.isclass(found) and callable(getattr(found, "from_pretrained", None)) else None


def _not_allowed(args: ModelArgs, why: str) -> ConfigError:
    return ConfigError(f"model.checkpoint={args.checkpoint!r} is not allowed: {why}")


def check_checkpoint(args: ModelArgs) -> None:
    """Every mistake about model.checkpoint that shows without loading it, as a ConfigError (exit 2)."""
    if args.checkpoint is None:
        return
    path = Path(args.checkpoint)
    if not path.exists():
        raise _not_allowed(args, f"there is no such file or directory (a relative path is read from the working "
                                 f"directory {Path.cwd()})")
    hf_class = pretrained_class(args)
    if hf_class is not None:
        if not path.is_dir():
            raise _not_allowed(args, f"it is a file, and model._target_={args._target_!r} loads a save_pretrained "
                                     f"directory (model.save_pretrained(DIR), then model.checkpoint=DIR)")
        if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
            raise _not_allowed(args, f"the directory holds no weights (no *{' or *'.join(WEIGHT_SUFFIXES)} file): "
                                     f"give the directory that save_pretrained wrote")
    elif path.is_dir():
        who = "the built-in GPT" if args._target_ is None else f"model._target_={args._target_!r}"
        raise _not_allowed(args, f"it is a directory, and {who} loads a state dict file "
                                 f"(torch.save(model.state_dict(), PATH)); a save_pretrained directory needs a Hugging "
                                 f"Face model._target_ (a class with from_pretrained)")


def _file_fingerprint(path: Path) -> dict[str, Any]:
    size_bytes = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size_bytes <= SAMPLE_CHUNKS * SAMPLE_CHUNK_BYTES:
            digest.update(f.read())
        else:
            stride = (size_bytes - SAMPLE_CHUNK_BYTES) / (SAMPLE_CHUNKS - 1)
            for i in range(SAMPLE_CHUNKS):
                f.seek(round(i * stride))
                digest.update(f.read(SAMPLE_CHUNK_BYTES))
    return {"size_bytes": size_bytes, "sample_sha256": digest.hexdigest()[:16]}


def checkpoint_fingerprint(args: ModelArgs) -> Optional[dict[str, Any]]:
    """What a trial key holds of model.checkpoint: each file's size and a hash of a sample of its bytes.

    Not the modification time: copies of one checkpoint on several nodes differ in it, and every rank must
    compute the same keys. Not the whole contents either: a checkpoint can be tens of gigabytes, and weights
    that changed (more training, another run) change bytes all over the file."""
    if args.checkpoint is None:
        return None
    path = Path(args.checkpoint)
    if path.is_file():
        return _file_fingerprint(path)
    if path.is_dir():
        return {p.relative_to(path).as_posix(): _file_fingerprint(p) for p in sorted(path.rglob("*")) if p.is_file()}
    raise _not_allowed(args, "there is no such file or directory")


def load_checkpoint(args: ModelArgs, build: Callable[[], nn.Module]) -> nn.Module:
    """The model a trial starts from, on the CPU: `build()` given the state dict in model.checkpoint, or a
    Hugging Face class's from_pretrained of that directory. Raises TargetError (one line) when the weights do
    not fit the model."""
    assert args.checkpoint is not None
    hf_class = pretrained_class(args)
    if hf_class is not None:
        return _from_pretrained(args, hf_class)
    model = build()
    state = _read_state_dict(args.checkpoint)
    problems = fit_problems(expected={k: tuple(v.shape) for k, v in model.state_dict().items()},
                            given={k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise TargetError(f"model.checkpoint={args.checkpoint!r} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
    log.info("model.checkpoint=%s: %d tensors loaded", args.checkpoint, len(state))
    return model


def _read_state_dict(path: str) -> Mapping[str, torch.Tensor]:
    try:
        # weights_only: a checkpoint is data, and unpickling arbitrary objects would run code from the file.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated file, a pickled module, another format
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TargetError(f"model.checkpoint={path!r} could not be read as a state dict by torch.load"
                          f"(weights_only=True): {type(exc).__name__}: {first}") from exc
    if isinstance(state, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return state
    if isinstance(state, Mapping):
        what = f"a dict whose entries are not all tensors ({_first([str(k) for k in state])})"
    else:
        what = f"a {type(state).__name__}"
    raise TargetError(f"model.checkpoint={path!r} holds {what}, not a state dict: save the model's own "
                      f"(torch.save(model.state_dict(), PATH))")


def _first(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:NUM_KEYS_SHOWN])
    return shown + (f" and {len(keys) - NUM_KEYS_SHOWN} more" if len(keys) > NUM_KEYS_SHOWN else "")


def fit_problems(*, expected: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]]) -> list[str]:
    """How a state dict's keys and shapes (`given`) differ from the model's (`expected`), the first few keys
    of each kind named; empty when it fits."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [f"{k} {list(given[k])} in the checkpoint, {list(expected[k])} in the model"
                  for k in expected if k in given and given[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
        for prefix in ("module.", "_orig_mod."):  # what DDP and torch.compile put before every name
            if all(k.startswith(prefix) for k in unexpected) and \
                    {k.removeprefix(prefix) for k in unexpected} == set(missing):
                problems.append(f"every key starts with {prefix!r}: save the wrapped model's own state_dict() "
                                f"(model.module for DDP, model._orig_mod for torch.compile)")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + ", ".join(mismatched[:NUM_KEYS_SHOWN])
                        + (f" and {len(mismatched) - NUM_KEYS_SHOWN} more" if len(mismatched) > NUM_KEYS_SHOWN else ""))
    return problems


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """from_pretrained draws a progress bar per load: noise in a sweep's console, restored afterwards."""
    from transformers.utils import logging as hf_logging
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _from_pretrained(args: ModelArgs, hf_class: type) -> nn.Module:
    """from_pretrained with model.kwargs (nested `_target_` nodes built, so a config there is the architecture).

    Hugging Face's own rule for keys is kept where it is a feature: a task head the directory lacks (a classifier
    on a pretrained base) is newly initialised, with a warning. A shape mismatch, or a missing weight of the base
    model (`base_model_prefix`), means the directory is not this model: the trial's error."""
    path = args.checkpoint
    try:
        kwargs = instantiate({"_convert_": "all", **args.kwargs})
        with _no_progress_bars():
            model, info = hf_class.from_pretrained(path, **kwargs, output_loading_info=True,
                                                   ignore_mismatched_sizes=True)
    except Exception as exc:  # noqa: BLE001 - whatever the library raises is this trial's error
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise TargetError(f"model.checkpoint={path!r} could not be loaded by {args._target_}.from_pretrained: "
                          f"{one_line(cause)}") from exc
    prefix = getattr(model, "base_model_prefix", "")
    missing = sorted(info.get("missing_keys", ()))
    base_missing = [k for k in missing if not prefix or k.startswith(f"{prefix}.")]
    problems = []
    if base_missing:
        problems.append(f"{len(base_missing)} missing key(s) of the model: {_first(base_missing)}")
    mismatched = [f"{k} {list(a)} in the checkpoint, {list(b)} in the model"
                  for k, a, b in sorted(info.get("mismatched_keys", ()))]
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + ", ".join(mismatched[:NUM_KEYS_SHOWN]))
    if problems:
        raise TargetError(f"model.checkpoint={path!r} does not fit model._target_={args._target_!r} with "
                          f"model.kwargs: {'; '.join(problems)}")
    head_missing = [k for k in missing if k not in base_missing]
    if head_missing:
        log.warning("model.checkpoint=%s has no %s: newly initialised, as from_pretrained does for a new task head",
                    path, _first(head_missing))
    if info.get("unexpected_keys"):
        log.warning("model.checkpoint=%s: %s not used by %s", path, _first(sorted(info["unexpected_keys"])),
                    args._target_)
    if not {"dtype", "torch_dtype"} & set(kwargs):
        # As built: transformers >= 5 keeps the saved dtype (bf16 weights would make a bf16 model), older ones and
        # a model built from its config give float32; train.precision=bf16 autocasts float32 weights.
        model = model.to(torch.get_default_dtype())
    model.train()  # from_pretrained returns the model in eval mode; a built one trains (dropout on)
    log.info("model.checkpoint=%s loaded by %s.from_pretrained", path, args._target_)
    return model
