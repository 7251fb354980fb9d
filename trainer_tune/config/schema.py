"""The typed configuration schema: one dataclass per config group, registered in Hydra's ConfigStore.

Hydra checks key names and value types while it composes; the range checks here run when the entry point
converts the composed config once with `OmegaConf.to_object` (Hydra never calls `__post_init__` itself).
Every check raises `ConfigError` naming the key, the value and what is allowed, before any process group
starts. Downstream code only ever sees these dataclasses, never a DictConfig.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, OmegaConf


class ConfigError(ValueError):
    """A user mistake in the configuration: printed as one line, exit code 2."""


def require(ok: bool, *, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def require_int_at_least(key: str, value: int, minimum: int) -> None:
    if isinstance(value, str) and value.startswith("${"):
        return  # a schema default such as II("train.micro_batch_size"): checked once it is resolved
    require(isinstance(value, int) and value >= minimum, key=key, value=value,
            allowed=f"an integer >= {minimum}")


def require_list_of_int_at_least(key: str, values: Optional[List[int]], minimum: int) -> None:
    if values is None:
        return
    require(len(values) > 0, key=key, value=list(values),
            allowed=f"a non-empty list of integers >= {minimum} (or null to not sweep it)")
    for v in values:
        require(v >= minimum, key=key, value=list(values), allowed=f"every entry an integer >= {minimum}")
    require(len(set(values)) == len(values), key=key, value=list(values), allowed="no repeated entries")


def require_non_empty(key: str, values: Optional[List[Any]]) -> None:
    if values is not None:
        require(len(values) > 0, key=key, value=list(values), allowed="a non-empty list (or null to not sweep it)")


class Attention(Enum):
    dense = "dense"
    """Causal scaled-dot-product attention over every earlier position."""
    nsa = "nsa"
    """Native sparse attention (trainer_tune/workloads/nsa_attention.py): compressed blocks, top-k selected blocks and a
    sliding window, mixed by a learned per-head gate. Switched per trial by nsa.prefill_batched and
    nsa.disable_aux_stats."""


class DataKind(Enum):
    synthetic = "synthetic"
    bytes = "bytes"


def require_target(key: str, target: Optional[str]) -> None:
    """A `_target_` must at least look like a dotted import path; whether it imports is checked by
    trainer_tune.workloads.targets.check_targets before any process group starts."""
    if target is None:
        return
    parts = target.split(".")
    require(len(parts) >= 2 and all(part.isidentifier() for part in parts), key=key, value=target,
            allowed="a dotted import path such as my_pkg.models.build_model (module, then attribute), or null")


class Strategy(Enum):
    grid = "grid"
    """Every setting of the sweep enters the race in the first round."""
    power = "power"
    """Per accumulation (and flag) value, the smallest listed micro-batch enters first; each doubling enters
    once the one before it is faster beyond noise than the chain's best so far, until a setting fails (OOM,
    ...), stops improving, or reaches sweep.max_micro_batch_size."""


class TieBreak(Enum):
    fastest = "fastest"
    """Among settings the measurements cannot order, the highest point estimate of throughput (throughput.unit)."""
    least_change = "least_change"
    """Among them, the baseline's global batch first (another one changes optimisation), then less memory."""


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    """bfloat16 autocast of the forward (weights, gradients and optimizer state stay float32)."""
    fp16 = "fp16"
    """float16 autocast of the forward with a GradScaler (loss scaling keeps small gradients from flushing to 0)."""


class CompileMode(Enum):
    """torch.compile's `mode`."""

    default = "default"
    reduce_overhead = "reduce-overhead"
    """CUDA graphs: fewer kernel launches, more memory."""
    max_autotune = "max-autotune"
    """Autotuned kernels (and CUDA graphs): the longest compile."""
    max_autotune_no_cudagraphs = "max-autotune-no-cudagraphs"


class Mode(Enum):
    train = "train"
    inference = "inference"


class Objective(Enum):
    throughput = "throughput"
    latency = "latency"
    energy = "energy"
    goodput = "goodput"
    """Throughput times statistical efficiency (docs/measurement.md, "Gradient noise scale and goodput")."""


class LrScaling(Enum):
    sqrt = "sqrt"
    """lr x sqrt(B / B0): the square-root rule for Adam-family optimizers (trainer_tune trains with AdamW)."""
    linear = "linear"
    """lr x B / B0: the linear rule for SGD."""
    none = "none"
    """Leave train.lr as it is."""


class Backend(Enum):
    auto = "auto"
    gloo = "gloo"
    nccl = "nccl"


class DeviceKind(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class ModelArgs:
    """The built-in decoder-only GPT, or the user's own model through `_target_`."""

    name: str = "${trainer_tune.model_name:tiny}"
    """Preset name, recorded with every trial: `${trainer_tune.model_name:PRESET}` is model._target_ when one is
    set (a model given by its import path), else PRESET."""
    _target_: Optional[str] = None
    """null: the built-in GPT. Else the import path of a class or factory that returns the nn.Module to train,
    built with hydra.utils.instantiate and model.kwargs; the batches decide how it is called (step._target_,
    docs/your-model.md). The built-in GPT's shape keys below are then unused; vocab_size and seq_len only
    serve models of tokens (the language-model path checks logits against them; a source may take them)."""
    kwargs: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for model._target_ (add one with +model.kwargs.NAME=VALUE; nested `_target_` nodes
    are instantiated too, e.g. a Hugging Face config object)."""
    checkpoint: Optional[str] = None
    """null: every trial starts from the model's random initialisation. Else the weights every trial starts
    from, so a sweep measures where training will be (the gradient noise scale at initialisation is not the one
    later in training): a state dict file (`torch.save(model.state_dict(), PATH)`), loaded strictly into the
    built-in GPT or the model._target_ builds; for a Hugging Face model._target_ (a class with from_pretrained)
    a `save_pretrained` directory, loaded by that class's from_pretrained with model.kwargs (a config there is
    the architecture the weights must fit). Relative to the working directory. Trials are keyed by its size
    and a sample of its bytes: a changed checkpoint is measured again."""
    vocab_size: int = 256
    """Token ids run from 0 to vocab_size - 1: the embedding and LM-head size, and the range of synthetic data."""
    seq_len: int = 128
    """Tokens per sample; the model's maximum context."""
    d_model: int = 128
    """Width of the residual stream (embedding size)."""
    n_layers: int = 2
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads per block; d_model must be a multiple of it."""
    mlp_ratio: int = 4
    """Hidden width of each MLP as a multiple of d_model."""
    attention: Attention = Attention.dense
    """dense or nsa (native sparse attention; the nsa_* keys below shape it)."""
    nsa_block_size: int = 16
    """attention=nsa: tokens per block, for both the compressed and the selected branch."""
    nsa_num_selected_blocks: int = 4
    """attention=nsa: blocks each query attends to at full resolution (its own block included)."""
    nsa_window_size: int = 32
    """attention=nsa: positions of the causal sliding window (the query's own included)."""

    def __post_init__(self) -> None:
        require_target("model._target_", self._target_)
        require(self.checkpoint is None or self.checkpoint.strip() != "", key="model.checkpoint",
                value=self.checkpoint, allowed="a path to a state dict file or a save_pretrained directory, or null")
        for key in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads", "mlp_ratio", "nsa_block_size",
                    "nsa_num_selected_blocks", "nsa_window_size"):
            require_int_at_least(f"model.{key}", getattr(self, key), 1)
        require(self.d_model % self.n_heads == 0, key="model.d_model", value=self.d_model,
                allowed=f"a multiple of model.n_heads={self.n_heads}")
        if self.attention == Attention.nsa and self._target_ is None:
            require(self.nsa_block_size <= self.seq_len, key="model.nsa_block_size", value=self.nsa_block_size,
                    allowed=f"at most model.seq_len={self.seq_len}: with no complete block the compressed and "
                            f"selected branches have nothing to attend to")


def _model_name(preset: str, *, _parent_: Any) -> str:
    """The resolver behind model.name: a preset's name names the built-in GPT, never a `_target_` model."""
    target = _parent_.get("_target_")
    return preset if target is None else str(target)


# At import, so every process that composes or resolves a config (torchrun ranks, submitit jobs) has it.
OmegaConf.register_new_resolver("trainer_tune.model_name", _model_name, replace=True)


@dataclass
class DataArgs:
    kind: DataKind = DataKind.synthetic
    """synthetic: uniformly random token ids, generated on the device (no input pipeline cost); bytes: the small
    text corpus shipped in the package, one token per byte (needs model.vocab_size >= 256)."""
    seed: int = 1234
    """Seed of the token stream; every trial sees the same tokens."""
    _target_: Optional[str] = None
    """null: data.kind. Else the import path of the user's batch source (trainer_tune.workloads.data.BatchSource),
    called with data.kwargs plus whichever of micro_batch_size, seq_len, vocab_size, rank, world_size, seed and
    device it takes; it returns a map-style Dataset (trainer_tune builds the DataLoader), an IterableDataset, a
    DataLoader, or any iterable of batches."""
    kwargs: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for data._target_."""
    num_workers: int = 0
    """DataLoader worker processes for a Dataset source (0: batches are made in the training process);
    sweep.num_workers makes it an axis."""
    pin_memory: Optional[bool] = None
    """Page-locked host batches for a Dataset source, so copies to the GPU run asynchronously; null: true on
    CUDA, false on CPU."""
    prefetch_factor: Optional[int] = None
    """Batches each worker loads ahead (num_workers > 0); null: the DataLoader's default (2)."""
    persistent_workers: bool = True
    """Keep a Dataset source's workers alive from epoch to epoch (num_workers > 0), as long training runs do;
    false starts them again at every epoch, and that start is then measured."""

    def __post_init__(self) -> None:
        require_target("data._target_", self._target_)
        require_int_at_least("data.num_workers", self.num_workers, 0)
        if self.prefetch_factor is not None:
            require_int_at_least("data.prefetch_factor", self.prefetch_factor, 1)


@dataclass
class StepArgs:
    """How one micro-step turns a batch into a loss (trainer_tune/workloads/step.py)."""

    _target_: Optional[str] = None
    """null: the default rule for the batch's type (a dict calls model(**batch) and uses its .loss; a pair
    (inputs, targets) computes loss(model(inputs), targets); token ids are the language-model path). Else the
    import path of a function step(model, batch, **step.kwargs) -> scalar loss tensor; trainer_tune runs
    backward."""
    kwargs: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for step._target_."""

    def __post_init__(self) -> None:
        require_target("step._target_", self._target_)


class ThroughputUnit(Enum):
    auto = "auto"
    samples = "samples"
    tokens = "tokens"


@dataclass
class CountArgs:
    """A count of your own unit per batch, in place of the token rule (trainer_tune/workloads/batch.py)."""

    _target_: Optional[str] = None
    """null: tokens are counted by the rule (attention_mask sum, else the token ids). Else the import path of a
    function count(batch, **kwargs) -> int, whose total per second is recorded as tokens_per_s and named
    throughput.count.unit."""
    kwargs: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for throughput.count._target_."""
    unit: str = "tokens"
    """What the count counts, as the verdict, tables and charts name it (e.g. frames, patches)."""

    def __post_init__(self) -> None:
        require_target("throughput.count._target_", self._target_)
        require(bool(self.unit.strip()) and "/" not in self.unit, key="throughput.count.unit", value=self.unit,
                allowed="a plural noun such as tokens or frames")


@dataclass
class ThroughputArgs:
    """What a sweep's decision compares: samples/s or tokens/s."""

    unit: ThroughputUnit = ThroughputUnit.auto
    """auto: tokens when the batches carry tokens (or throughput.count._target_ counts them), else samples."""
    count: CountArgs = field(default_factory=CountArgs)


@dataclass
class LossArgs:
    """The loss the default step computes; cross-entropy unless `_target_` names another."""

    _target_: Optional[str] = None
    """null: cross-entropy (a dict batch's model may compute its own .loss). Else the import path of a function
    loss(outputs, targets, **loss.kwargs) -> scalar tensor: (model(inputs), targets) for a pair batch,
    (outputs, batch) for a dict batch whose model returns no .loss, (logits, next token ids) for token ids."""
    kwargs: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for loss._target_."""

    def __post_init__(self) -> None:
        require_target("loss._target_", self._target_)


@dataclass
class TrainArgs:
    """The training setting itself: what a single run measures and what a recommendation sets."""

    micro_batch_size: int = 2
    """Samples per rank per forward/backward pass."""
    grad_accum: int = 1
    """Micro-steps per optimizer step (gradient sync only on the last one)."""
    lr: float = 3.0e-4
    """AdamW learning rate (the same for every trial; speed does not depend on it)."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    seed: int = 0
    """Seed for model initialisation; the same for every trial."""
    precision: Precision = Precision.fp32
    """fp32; bf16 autocast (on CPU valid but usually slower); or fp16 autocast with a GradScaler (meant for
    CUDA). sweep.precision makes it an axis."""
    compile: bool = False
    """torch.compile the model (train.compile_mode) before its first warm-up step: compilation happens in the
    warm-up, is never counted in throughput, and is recorded as the trial's compile_s. sweep.compile makes it an
    axis."""
    compile_mode: CompileMode = CompileMode.default
    """torch.compile's mode: default, reduce-overhead (CUDA graphs), max-autotune, max-autotune-no-cudagraphs."""
    num_threads: Optional[int] = None
    """torch.set_num_threads on every rank while a setting is measured; null leaves torch's own (OMP_NUM_THREADS,
    which torchrun sets to 1 per worker, else one per core). sweep.num_threads makes it an axis. Every rank's
    threads are recorded (the fingerprint), and the report warns when ranks x threads exceed the usable cores."""
    compile_dynamic: bool = False
    """torch.compile's `dynamic`: false compiles static shapes, one graph per setting (dynamo is reset before each
    compiled build, so a second micro-batch size is never marked dynamic and no earlier setting's graphs count
    towards its recompile limit); true marks shapes dynamic from the first call."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward instead of keeping them (less memory, more compute):
    per block for the built-in GPT; through the model's activation_checkpointing_enable() (or
    gradient_checkpointing_enable()) for Hugging Face models and your own (docs/your-model.md). Non-reentrant.
    sweep.activation_checkpointing makes it an axis."""
    max_memory_fraction: Optional[float] = None
    """CUDA only: cap this process's allocator at this share of the device, so a setting that would not fit
    next to another job runs out of memory here, at the real limit, and is recorded as oom. Also the memory
    prediction's limit when set (docs/measurement.md, "Memory, predicted")."""

    def __post_init__(self) -> None:
        if self.max_memory_fraction is not None:
            require(0 < self.max_memory_fraction <= 1, key="train.max_memory_fraction",
                    value=self.max_memory_fraction, allowed="a share of the device in (0, 1], or null")
        require_int_at_least("train.micro_batch_size", self.micro_batch_size, 1)
        require_int_at_least("train.grad_accum", self.grad_accum, 1)
        require(self.lr > 0, key="train.lr", value=self.lr, allowed="a number > 0")
        require(self.weight_decay >= 0, key="train.weight_decay", value=self.weight_decay,
                allowed="a number >= 0")


@dataclass
class SweepArgs:
    """Axes of the sweep; null means the axis is not swept and the value from train/nsa/ddp is used."""

    micro_batch_sizes: Optional[List[int]] = None
    """Micro-batch sizes to measure (grid, adaptive); with strategy=power only the smallest is used, as the start."""
    grad_accums: Optional[List[int]] = None
    """Gradient-accumulation values to measure with each micro-batch size."""
    global_batch_size: Optional[int] = None
    """Keep only pairs with micro_batch_size * grad_accum * world_size equal to this (samples); wins over
    sweep.hold_global_batch."""
    hold_global_batch: bool = False
    """Keep only pairs with the baseline's global batch (baseline micro-batch x accumulation x world size), so
    no setting changes the optimisation (+sweep=global_batch sets it)."""
    strategy: Strategy = Strategy.grid
    """grid: every setting from the first round; power: double the micro-batch until failure or no gain. The
    verdict lists what was not measured, and why."""
    max_micro_batch_size: int = 1024
    """strategy=power doubles the micro-batch up to this size."""
    power_patience: int = 1
    """strategy=power stops after this many doublings in a row that were not faster beyond noise."""
    min_rounds: int = 3
    """The first round after which the evidence may stop the sweep (GO or NO-GO) and settings may leave the race:
    one window per round, the baseline in every round (unless sweep.budget_s ends the sweep first)."""
    max_rounds: int = 10
    """The most rounds: the sweep ends after this many even when the evidence has not decided (INCONCLUSIVE). The
    verdict's error is spread over the looks from sweep.min_rounds to this (decide/sequential.py), so a larger
    value widens every interval a little."""
    budget_s: Optional[float] = 45.0
    """Measuring time of the sweep (windows, warm-ups, model builds), the first rounds included: no round starts
    that would end past it (estimated from the last round's windows, without the builds of first windows); a sweep
    it stops before the evidence decides answers
    INCONCLUSIVE. null: no limit but sweep.max_rounds."""
    race: bool = True
    """After each round from sweep.min_rounds on, stop the sweep when the evidence decides, and stop measuring the
    settings behind the leader beyond noise at the corrected level (recommend.objective=throughput or goodput)
    and those that may never be chosen (over memory, over recommend.max_batch_latency_ms); false measures every setting
    in every round up to sweep.max_rounds or sweep.budget_s."""
    seed: int = 0
    """Seed of each round's shuffled order (the same on every rank and on resume)."""
    allow_fingerprint_change: bool = False
    """Resuming an output directory whose journal was measured on another machine or software (its last window's
    fingerprint differs in what decides speed: hardware, versions, world size, threads; not the host name) is
    refused (exit 2, naming what differs); true continues it anyway, with a warning (the earlier windows keep
    their fingerprint, and comparisons still pair across the change)."""
    trust_memory_prediction: bool = True
    """A setting whose peak memory, predicted from its step traced under fake tensors before anything is built
    (measure/memory_trace.py), is over the memory limit (train.max_memory_fraction, else
    recommend.max_memory_fraction, of the device or on a CPU of the host memory per rank) is not measured, and the
    verdict says so with both figures; false measures it anyway. The baseline is always measured."""
    screen: Optional[bool] = None
    """Screening for large spaces (decide/race.py): the first 2 rounds measure every setting in short windows
    (a quarter of window.measure_s, without the comm split and noise steps), with the baseline repeated every 8 windows
    so each setting pairs with a baseline window measured near it; after each, settings far behind the leader
    leave by the race's rule (after the first with the noise of the baseline's repeats, after the second with the
    noise pooled over every setting), each a look in the error budget. null: screen when more than 16 settings enter the first round (strategy=grid, race on,
    recommend.objective=throughput, no recommend.max_batch_latency_ms); true: screen whenever those hold; false: never."""
    nsa_prefill_batched: Optional[List[bool]] = None
    """Values of nsa.prefill_batched to measure, multiplying the grid."""
    nsa_disable_aux_stats: Optional[List[bool]] = None
    """Values of nsa.disable_aux_stats to measure, multiplying the grid."""
    ddp_static_graph: Optional[List[bool]] = None
    """Values of ddp.static_graph to measure, multiplying the grid."""
    ddp_find_unused_parameters: Optional[List[bool]] = None
    """Values of ddp.find_unused_parameters to measure, multiplying the grid."""
    ddp_bucket_cap_mb: Optional[List[Optional[float]]] = None
    """MiB per DDP bucket; null in the list is DDP's default."""
    num_workers: Optional[List[int]] = None
    """Values of data.num_workers to measure, multiplying the grid (with a data._target_ that returns a
    Dataset: trainer_tune builds its DataLoader); e.g. [0, 2, 4] shows whether more workers end an input-bound
    setting's wait for batches."""
    compile: Optional[List[bool]] = None
    """Values of train.compile to measure, multiplying the grid: [false, true] shows what torch.compile gains and
    after how many steps its compile time pays back."""
    activation_checkpointing: Optional[List[bool]] = None
    """Values of train.activation_checkpointing to measure, multiplying the grid (training only)."""
    precision: Optional[List[Precision]] = None
    """Values of train.precision to measure, multiplying the grid, e.g. [fp32, bf16]."""
    num_threads: Optional[List[int]] = None
    """Values of train.num_threads to measure, multiplying the grid, e.g. [1, 2]: on a CPU the threads each rank
    runs decide its speed as much as the batch does."""

    @property
    def fixes_global_batch(self) -> bool:
        """Every setting of the sweep has one global batch (sweep.global_batch_size or hold_global_batch)."""
        return self.global_batch_size is not None or self.hold_global_batch

    def __post_init__(self) -> None:
        require_list_of_int_at_least("sweep.micro_batch_sizes", self.micro_batch_sizes, 1)
        require_list_of_int_at_least("sweep.grad_accums", self.grad_accums, 1)
        require_int_at_least("sweep.max_micro_batch_size", self.max_micro_batch_size, 1)
        require_int_at_least("sweep.power_patience", self.power_patience, 1)
        require_int_at_least("sweep.min_rounds", self.min_rounds, 1)
        require_int_at_least("sweep.max_rounds", self.max_rounds, self.min_rounds)
        if self.budget_s is not None:
            require(self.budget_s > 0, key="sweep.budget_s", value=self.budget_s, allowed="seconds > 0, or null")
        if self.global_batch_size is not None:
            require_int_at_least("sweep.global_batch_size", self.global_batch_size, 1)
        for key in ("nsa_prefill_batched", "nsa_disable_aux_stats", "ddp_static_graph",
                    "ddp_find_unused_parameters", "ddp_bucket_cap_mb", "compile", "activation_checkpointing",
                    "precision"):
            require_non_empty(f"sweep.{key}", getattr(self, key))
        require_list_of_int_at_least("sweep.num_workers", self.num_workers, 0)
        require_list_of_int_at_least("sweep.num_threads", self.num_threads, 1)
        for mb in self.ddp_bucket_cap_mb or []:
            require(mb is None or mb > 0, key="sweep.ddp_bucket_cap_mb", value=list(self.ddp_bucket_cap_mb or []),
                    allowed="every entry a number of MiB > 0, or null for DDP's default")


@dataclass
class WindowArgs:
    """One measurement window of a setting (one per round), counted in optimizer steps."""

    warmup_steps: int = 3
    """Steps run first and not counted (allocator, autotuning, caches)."""
    measure_steps: int = 4
    """The fewest measured steps a window has."""
    measure_s: float = 1.0
    """How long a window's measured steps aim to take: the step count is fixed before the first measured step,
    from the last warm-up step's time (the slowest rank's), to fill this (at least measure_steps, at most
    max_measure_steps), so the window synchronises only at its two ends. Long enough to average out step-to-step
    noise; windows are short on purpose beyond that: precision comes from several windows spread over the sweep
    (sweep.min_rounds), which see the machine's slow changes of speed that no single window can."""
    max_measure_steps: int = 200
    """Cap on measured steps per window (fast steps would otherwise make very long windows)."""
    keep_models: Optional[bool] = None
    """Keep each setting's model, optimizer and data stream alive between its windows, so it is built and warmed
    up once (later windows re-warm with one step). null decides: yes on CPU while every setting's training
    state fits in a quarter of the free memory; no on CUDA, where the memory kept models hold would change
    which micro-batches fit and the peak memory measured."""
    comm_split_steps: int = 5
    """After the measured steps of a setting's first window, this many extra steps with gradient sync switched
    off (DDP no_sync on every micro-step), timed apart: their median against the synced median is the exposed
    communication time.
    Not counted in any throughput figure; 0 switches it off; ignored with one rank (no sync to remove)."""
    noise_steps: int = 4
    """After the measured steps of a setting's first training window, this many extra optimizer steps, untimed
    (but counted by sweep.budget_s), that read
    the gradient's squared norm at two or three batch sizes (a micro-batch, a rank's accumulated batch, the
    global batch) for the gradient noise scale B_noise; needs two ranks or grad_accum >= 2. 0 switches it off
    (and with it goodput)."""

    def __post_init__(self) -> None:
        require_int_at_least("window.warmup_steps", self.warmup_steps, 0)
        require_int_at_least("window.measure_steps", self.measure_steps, 2)
        require_int_at_least("window.comm_split_steps", self.comm_split_steps, 0)
        require_int_at_least("window.noise_steps", self.noise_steps, 0)
        require_int_at_least("window.max_measure_steps", self.max_measure_steps, self.measure_steps)
        require(self.measure_s > 0, key="window.measure_s", value=self.measure_s, allowed="seconds > 0")


@dataclass
class NsaArgs:
    """Native-sparse-attention flags; null takes the environment variable, else the built-in default."""

    prefill_batched: Optional[bool] = None
    """NSA_PREFILL_BATCHED (default true): vectorised block selection instead of a per-position loop."""
    disable_aux_stats: Optional[bool] = None
    """NSA_DISABLE_AUX_STATS (default false): skip the per-step auxiliary statistics."""


@dataclass
class DdpArgs:
    """DistributedDataParallel flags; null takes the environment variable, else DDP's own default."""

    static_graph: Optional[bool] = None
    """NSA_DDP_STATIC_GRAPH (default false)."""
    find_unused_parameters: Optional[bool] = None
    """NSA_DDP_FIND_UNUSED (default false)."""
    bucket_cap_mb: Optional[float] = None
    """NSA_DDP_BUCKET_MB; unset: DDP's default (25 MiB buckets after a 1 MiB first bucket)."""

    def __post_init__(self) -> None:
        if self.bucket_cap_mb is not None:
            require(self.bucket_cap_mb > 0, key="ddp.bucket_cap_mb", value=self.bucket_cap_mb,
                    allowed="a number of MiB > 0")


@dataclass
class BaselineArgs:
    """The production setting to beat; always measured. Defaults to train.*; flags come from nsa/ddp."""

    micro_batch_size: int = II("train.micro_batch_size")
    """The baseline's micro-batch size (train.micro_batch_size unless set)."""
    grad_accum: int = II("train.grad_accum")
    """The baseline's gradient accumulation (train.grad_accum unless set)."""

    def __post_init__(self) -> None:
        require_int_at_least("baseline.micro_batch_size", self.micro_batch_size, 1)
        require_int_at_least("baseline.grad_accum", self.grad_accum, 1)


@dataclass
class RecommendArgs:
    min_speedup: float = 1.05
    """GO only when the lower end of the leader's interval of throughput over the baseline's reaches this, at the
    level that corrects for every setting and every look (decide/sequential.py); NO-GO only when every setting's
    upper end is below it; otherwise INCONCLUSIVE."""
    indifference: float = 0.05
    """GO also needs every other setting still in the race to be, at the same level, at most this much faster than
    the leader (0.05: within 5%), so a sweep does not stop on the first setting that clears the margin while
    another is clearly faster."""
    fail_on_no_go: bool = False
    """Exit with code 3 on NO-GO and 5 on INCONCLUSIVE (for CI gates); otherwise a finished sweep exits 0."""
    max_memory_fraction: float = 0.9
    """A setting whose peak memory exceeds this share of the device is never recommended (CUDA only); the
    memory prediction's limit without train.max_memory_fraction (of host memory per rank on a CPU)."""
    target_throughput_per_s: Optional[float] = None
    """GO also needs at least this rate, in the decision's unit per second (see throughput.unit)."""
    confirms: Optional[str] = None
    """Set by a confirm command (recommendation.yaml's confirm_overrides): what the first sweep said, its verdict
    and setting ("GO 8x1"); this sweep's verdict then says whether that holds."""
    max_p99_ms: Optional[float] = None
    """Serving under load (serving.rate_per_s): the p99 request latency target in milliseconds, from arrival to
    outputs; each setting's highest rate that meets it with confidence decides. null: no target (rates listed in
    serving.rate_per_s are measured and reported, and no verdict compares settings)."""
    max_batch_latency_ms: Optional[float] = None
    """mode=inference: the p99 latency budget per batch (slowest replica), in milliseconds. A batch size over it
    is listed as over budget and never chosen (the race stops measuring it after its sweep.min_rounds windows);
    null: no budget."""
    objective: Objective = Objective.throughput
    """What the GO optimises: throughput (the highest rate within the latency budget, against the baseline by
    the usual rule), goodput (training only: throughput times statistical efficiency from the gradient noise
    scale, by the same rule), latency (the lowest p99 per batch) or energy (the least energy per sample; where
    energy is not measured, NO-GO says so). Every objective's winner is shown in the decision matrix."""
    lr_scaling: LrScaling = LrScaling.sqrt
    """When a GO changes the global batch: sqrt (lr x sqrt(B/B0), for Adam-family optimizers), linear (lr x B/B0,
    for SGD) or none. recommendation.yaml's overrides then carry the scaled train.lr."""
    tie_break: TieBreak = TieBreak.fastest
    """fastest: among settings the measurements cannot order, the highest paired ratio to the baseline; least_change: the
    baseline's global batch first, then less memory. The verdict names the tie and its worst-case cost."""
    input_bound_fraction: Optional[float] = 0.1
    """A setting whose slowest rank waited for its batches more than this share of the measured time is named
    input-bound, with what to try (it never blocks a GO). 0.1: removing such a wait would gain at least 11%,
    more than twice the margin recommend.min_speedup asks by default; null names none."""

    def __post_init__(self) -> None:
        require(0 < self.max_memory_fraction <= 1, key="recommend.max_memory_fraction",
                value=self.max_memory_fraction, allowed="a share of the device in (0, 1]")
        if self.max_p99_ms is not None:
            require(0 < self.max_p99_ms < math.inf, key="recommend.max_p99_ms", value=self.max_p99_ms,
                    allowed="finite milliseconds > 0, or null")
        if self.max_batch_latency_ms is not None:
            require(self.max_batch_latency_ms > 0, key="recommend.max_batch_latency_ms", value=self.max_batch_latency_ms,
                    allowed="milliseconds > 0, or null")
        if self.target_throughput_per_s is not None:
            require(self.target_throughput_per_s > 0, key="recommend.target_throughput_per_s",
                    value=self.target_throughput_per_s, allowed="a rate > 0 in the decision's unit per second, or null")
        require(self.min_speedup > 0, key="recommend.min_speedup", value=self.min_speedup,
                allowed="a number > 0 (1.05 means at least 5% faster)")
        require(0 <= self.indifference < 1, key="recommend.indifference", value=self.indifference,
                allowed="a share in [0, 1) (0.05: the chosen setting within 5% of the fastest)")
        if self.input_bound_fraction is not None:
            require(0 < self.input_bound_fraction < 1, key="recommend.input_bound_fraction",
                    value=self.input_bound_fraction, allowed="a share of the step time in (0, 1), or null")


@dataclass
class ServingArgs:
    """Serving under open-loop load (mode=inference, `+sweep=serving_load`; docs/inference.md, "Under load"): requests
    of one sample arrive per replica on a seeded Poisson process, a dynamic batcher serves up to a largest batch or
    after a largest queue delay, whichever comes first, and each request's latency runs from its scheduled arrival
    to its outputs. null rate_per_s: no open-loop load (batches back to back, as `+sweep=serving`)."""

    rate_per_s: Any = None
    """Offered requests per second per replica: `auto` (with recommend.max_p99_ms: each confirmed setting's highest
    sustainable rate by bisection, starting from rates its simulation predicts), a list (each confirmed setting
    served at each rate in increasing order until its queue keeps growing; without recommend.max_p99_ms every
    setting is confirmed and no verdict is given), or null (no open-loop load)."""
    max_batch_sizes: List[int] = field(default_factory=lambda: [4, 8, 16])
    """The batcher's largest batch (requests), one axis of the settings."""
    max_queue_delays_ms: List[float] = field(default_factory=lambda: [0.0, 2.0])
    """The batcher's longest wait for a batch to fill (milliseconds from the oldest queued request's arrival), the
    other axis; 0 serves whatever is queued as soon as the replica is free. The baseline serves
    baseline.micro_batch_size with no wait (the batch served today)."""
    requests_per_rate: int = 20000
    """Requests at each measured rate over all replicas, each replica serving its share (fewer when
    serving.max_s_per_rate runs out first). A p99 interval needs at least 5,000 (5 sections of 1,000, each with
    about 10 requests beyond the p99): with fewer, the target check says "unknown" and how many more would tell."""
    max_s_per_rate: float = 8.0
    """How long one measured rate's arrivals may run per replica, in seconds: a low rate gets fewer requests, but
    never fewer than a p99 interval needs (5,000 over all replicas, or serving.requests_per_rate if smaller), however
    long that takes."""
    max_rates: int = 6
    """The most rates the real search measures per setting (each a look in the error budget)."""
    confirm_settings: int = 2
    """How many of the settings the simulation ranks highest are measured for real, besides the baseline; the
    rest are reported with their simulated rate only and are never chosen."""
    service_repeats: int = 20
    """Closed-loop samples of each batch size's service time per replica, which drive the simulation."""
    seed: int = 0
    """Seed of the arrival streams (each setting, rate and replica its own) and the simulation's draws."""

    def __post_init__(self) -> None:
        rates = self.rate_per_s
        if rates is not None and rates != "auto":
            values = list(rates) if isinstance(rates, (list, tuple)) else [rates]
            ok = len(values) > 0 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf
                                         for v in values)
            require(ok and len(set(values)) == len(values), key="serving.rate_per_s", value=rates,
                    allowed="auto, null, or a non-empty list of distinct finite rates > 0 (requests per second per "
                            "replica)")
            self.rate_per_s = sorted(float(v) for v in values)
        require_list_of_int_at_least("serving.max_batch_sizes", self.max_batch_sizes, 1)
        require(len(self.max_queue_delays_ms) > 0 and all(0 <= d < math.inf for d in self.max_queue_delays_ms)
                and len(set(self.max_queue_delays_ms)) == len(self.max_queue_delays_ms),
                key="serving.max_queue_delays_ms", value=list(self.max_queue_delays_ms),
                allowed="a non-empty list of distinct finite delays >= 0 milliseconds")
        require_int_at_least("serving.requests_per_rate", self.requests_per_rate, 200)
        require(0 < self.max_s_per_rate < math.inf, key="serving.max_s_per_rate", value=self.max_s_per_rate,
                allowed="finite seconds > 0")
        require_int_at_least("serving.max_rates", self.max_rates, 2)
        require_int_at_least("serving.confirm_settings", self.confirm_settings, 1)
        require_int_at_least("serving.service_repeats", self.service_repeats, 5)

    @property
    def open_loop(self) -> bool:
        """Whether this is a serving-under-load sweep."""
        return self.rate_per_s is not None


@dataclass
class DistArgs:
    backend: Backend = Backend.auto
    """auto: nccl when the device is CUDA, else gloo."""
    device: DeviceKind = DeviceKind.auto
    """auto: cuda:LOCAL_RANK when CUDA is available, else cpu."""
    timeout_s: float = 600.0
    """Process-group timeout: how long a collective may wait for a missing rank."""

    def __post_init__(self) -> None:
        require(self.timeout_s > 0, key="dist.timeout_s", value=self.timeout_s, allowed="a number of seconds > 0")
        require(not (self.backend == Backend.nccl and self.device == DeviceKind.cpu), key="dist.backend",
                value="nccl", allowed="gloo or auto when dist.device=cpu (nccl needs CUDA tensors)")


@dataclass
class WatchdogArgs:
    """Stall detection on every rank (see trainer_tune/run/watchdog.py)."""

    enabled: bool = True
    """Run the stall watchdog on every rank."""
    stall_s: Optional[float] = None
    """Seconds without a finished micro-step before stacks are dumped; null: floor_s + step_multiple x the
    median micro-step time seen so far."""
    floor_s: float = 60.0
    """With stall_s=null: the fixed part of the stall threshold, in seconds."""
    step_multiple: float = 10.0
    """With stall_s=null: the threshold grows by this many median micro-step times."""
    dump_interval_s: float = 30.0
    """While a stall lasts, dump the stacks again this often."""
    abort_after_s: float = 300.0
    """Seconds without progress before the trial is recorded as stalled and the process exits (code 4).
    Must stay below dist.timeout_s, or a collective times out first."""

    def __post_init__(self) -> None:
        if self.stall_s is not None:
            require(self.stall_s > 0, key="watchdog.stall_s", value=self.stall_s, allowed="seconds > 0, or null")
        for key in ("floor_s", "dump_interval_s", "abort_after_s"):
            require(getattr(self, key) > 0, key=f"watchdog.{key}", value=getattr(self, key), allowed="seconds > 0")
        require(self.step_multiple >= 0, key="watchdog.step_multiple", value=self.step_multiple,
                allowed="a number >= 0")
        threshold_s = self.stall_s if self.stall_s is not None else self.floor_s
        require(self.abort_after_s >= threshold_s, key="watchdog.abort_after_s", value=self.abort_after_s,
                allowed=f"at least the stall threshold ({threshold_s:g} s)")


class FaultKind(Enum):
    none = "none"
    stall = "stall"
    oom = "oom"
    nan_loss = "nan_loss"
    error = "error"
    exit = "exit"


@dataclass
class FaultArgs:
    """Rehearse a failure: make one rank misbehave at one trial and step (see trainer_tune/platform/faults.py)."""

    kind: FaultKind = FaultKind.none
    """stall: sleep forever; oom: run out of memory (for real on CUDA); nan_loss: poison the loss; error: raise in
    model code; exit: SIGKILL the process."""
    rank: int = 0
    """Global rank that misbehaves."""
    trial: int = 1
    """Setting index as in the plan (0 is the baseline)."""
    step: int = 1
    """Optimizer step of the setting's model, warm-up steps counted from 0 (a model kept between windows,
    window.keep_models, counts on across them), so the fault strikes in the setting's first window."""
    first_attempt_only: bool = True
    """Do not inject again after torchrun restarted the group, as a transient fault would behave."""

    def __post_init__(self) -> None:
        for key in ("rank", "trial", "step"):
            require_int_at_least(f"fault.{key}", getattr(self, key), 0)


@dataclass
class TelemetryArgs:
    """What every rank samples during measured steps (see trainer_tune/measure/telemetry.py)."""

    gpu_sampling: bool = True
    """Sample the rank's GPU through NVML: utilization, memory, power, energy. Off by itself without a GPU."""
    sample_hz: float = 10.0
    """GPU samples per second during measured steps."""
    peak_tflops: Optional[float] = None
    """Dense peak TFLOP/s of one device for MFU; null looks the device up in trainer_tune/measure/flops.py."""

    def __post_init__(self) -> None:
        require(0 < self.sample_hz <= 100, key="telemetry.sample_hz", value=self.sample_hz,
                allowed="samples per second in (0, 100]")
        if self.peak_tflops is not None:
            require(self.peak_tflops > 0, key="telemetry.peak_tflops", value=self.peak_tflops,
                    allowed="TFLOP/s > 0, or null")


class WandbMode(Enum):
    auto = "auto"
    online = "online"
    offline = "offline"


@dataclass
class WandbArgs:
    """Weights & Biases: one run per trial and one recommendation run per sweep, from rank 0 only."""

    enabled: bool = True
    """Log to Weights & Biases (wandb=off sets false)."""
    mode: WandbMode = WandbMode.auto
    """auto: online when credentials are configured (WANDB_API_KEY or a netrc entry), else offline files
    that `wandb sync` uploads later. WANDB_MODE in the environment wins over auto."""
    project: str = "trainer_tune"
    """wandb project of every run."""
    entity: Optional[str] = None
    """wandb entity (team or user); null: the account's default."""
    tags: List[str] = field(default_factory=list)
    """Tags on every run."""


@dataclass
class TuneConfig:
    mode: Mode = Mode.train
    """train: DDP training windows (forward, backward, optimizer step). inference: every rank is an independent
    serving replica (no DDP, no gradients, eval mode under torch.inference_mode), timing each batch to its
    outputs; sweep.micro_batch_sizes is the serving batch (docs/inference.md)."""
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    loss: LossArgs = field(default_factory=LossArgs)
    step: StepArgs = field(default_factory=StepArgs)
    throughput: ThroughputArgs = field(default_factory=ThroughputArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    sweep: SweepArgs = field(default_factory=SweepArgs)
    window: WindowArgs = field(default_factory=WindowArgs)
    nsa: NsaArgs = field(default_factory=NsaArgs)
    ddp: DdpArgs = field(default_factory=DdpArgs)
    baseline: BaselineArgs = field(default_factory=BaselineArgs)
    recommend: RecommendArgs = field(default_factory=RecommendArgs)
    dist: DistArgs = field(default_factory=DistArgs)
    watchdog: WatchdogArgs = field(default_factory=WatchdogArgs)
    fault: FaultArgs = field(default_factory=FaultArgs)
    telemetry: TelemetryArgs = field(default_factory=TelemetryArgs)
    wandb: WandbArgs = field(default_factory=WandbArgs)
    serving: ServingArgs = field(default_factory=ServingArgs)

    def __post_init__(self) -> None:
        _require_mode_keys(self)
        _require_serving_keys(self)
        if self.mode == Mode.inference:
            require(self.recommend.objective != Objective.goodput, key="recommend.objective", value="goodput",
                    allowed="throughput, latency or energy with mode=inference (goodput is a training figure)")
        if self.data.kind == DataKind.bytes and self.data._target_ is None:
            require(self.model.vocab_size >= 256, key="model.vocab_size", value=self.model.vocab_size,
                    allowed="at least 256 with data=bytes (one token per byte value)")
        if self.sweep.screen:
            why = ("with sweep.strategy=grid, sweep.race=true, recommend.objective=throughput and no "
                   "recommend.max_batch_latency_ms (screening drops on throughput alone, after two short rounds)")
            require(self.sweep.strategy == Strategy.grid and self.sweep.race
                    and self.recommend.objective == Objective.throughput and self.recommend.max_batch_latency_ms is None,
                    key="sweep.screen", value=True, allowed=f"null or false, or true only {why}")
        if self.watchdog.enabled:
            require(self.watchdog.abort_after_s < self.dist.timeout_s, key="watchdog.abort_after_s",
                    value=self.watchdog.abort_after_s,
                    allowed=f"less than dist.timeout_s={self.dist.timeout_s:g}, so the watchdog acts before a "
                            f"collective times out")


@dataclass(frozen=True)
class ModeOnlyKey:
    """A key that means something in one mode only: set away from `unset` in the other mode, it is refused."""

    key: str
    mode: "Mode"
    unset: Any
    why: str
    """Why it means nothing in the other mode."""


_NO_TRAINING = "no gradients, no DDP: each rank serves on its own"
_NO_BACKWARD = "there is no backward to recompute activations for"
_NO_OPTIMIZER = "no optimizer step to hold a batch for; sweep.micro_batch_sizes is the serving batch"
_NO_REQUESTS = "a training step serves no requests: nothing arrives, queues or waits"
_SERVING_DEFAULTS = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                     for f in dataclasses.fields(ServingArgs)}
"""Each serving.* key's default: set to anything else in training, it is refused."""
MODE_ONLY_KEYS: tuple[ModeOnlyKey, ...] = (
    ModeOnlyKey("sweep.grad_accums", Mode.train, None, _NO_TRAINING),
    ModeOnlyKey("sweep.ddp_static_graph", Mode.train, None, _NO_TRAINING),
    ModeOnlyKey("sweep.ddp_find_unused_parameters", Mode.train, None, _NO_TRAINING),
    ModeOnlyKey("sweep.ddp_bucket_cap_mb", Mode.train, None, _NO_TRAINING),
    ModeOnlyKey("sweep.activation_checkpointing", Mode.train, None, _NO_BACKWARD),
    ModeOnlyKey("train.activation_checkpointing", Mode.train, False, _NO_BACKWARD),
    ModeOnlyKey("sweep.global_batch_size", Mode.train, None, _NO_OPTIMIZER),
    ModeOnlyKey("sweep.hold_global_batch", Mode.train, False, _NO_OPTIMIZER),
    ModeOnlyKey("recommend.max_batch_latency_ms", Mode.inference, None,
                "a training step is not a served request: nothing would check the budget"),
    ModeOnlyKey("recommend.max_p99_ms", Mode.inference, None, _NO_REQUESTS),
    *(ModeOnlyKey(f"serving.{name}", Mode.inference, value, _NO_REQUESTS)
      for name, value in _SERVING_DEFAULTS.items()),
)
"""Every key that one mode ignores, in one place: TuneConfig refuses each (exit 2, naming the key and the mode)."""


def _value_at(cfg: "TuneConfig", key: str) -> Any:
    group, name = key.split(".")
    return getattr(getattr(cfg, group), name)


def _require_mode_keys(cfg: "TuneConfig") -> None:
    """Refuse a key set in the mode that ignores it (MODE_ONLY_KEYS), and in inference a gradient accumulation."""
    for only in MODE_ONLY_KEYS:
        value = _value_at(cfg, only.key)
        unset = "null" if only.unset is None else str(only.unset).lower()
        require(cfg.mode == only.mode or value == only.unset, key=only.key, value=value,
                allowed=f"{unset} with mode={cfg.mode.value} ({only.why}); it applies with mode={only.mode.value}")
    if cfg.mode != Mode.inference:
        return
    for key, value in (("train.grad_accum", cfg.train.grad_accum), ("baseline.grad_accum", cfg.baseline.grad_accum)):
        # An unresolved ${train.grad_accum} (a dataclass built by hand) is checked through train.grad_accum.
        require(not isinstance(value, int) or value == 1, key=key, value=value,
                allowed="1 with mode=inference (there is nothing to accumulate)")


def _require_serving_keys(cfg: "TuneConfig") -> None:
    """What a serving-under-load sweep needs, and the keys that mean nothing without it (or in it)."""
    serving, recommend = cfg.serving, cfg.recommend
    if not serving.open_loop:
        for name, default in _SERVING_DEFAULTS.items():
            value = getattr(serving, name)
            require(value == default, key=f"serving.{name}", value=value,
                    allowed=f"{default!r} without serving.rate_per_s (no open-loop load: +sweep=serving_load sets it)")
        require(recommend.max_p99_ms is None, key="recommend.max_p99_ms", value=recommend.max_p99_ms,
                allowed="null without serving.rate_per_s (the p99 of a request needs requests arriving: "
                        "+sweep=serving_load; recommend.max_batch_latency_ms caps one batch's time)")
        return
    require(serving.rate_per_s != "auto" or recommend.max_p99_ms is not None, key="serving.rate_per_s",
            value="auto", allowed="auto only with recommend.max_p99_ms (the rate search looks for the highest rate "
                                  "that meets it), or a list of rates")
    require(recommend.max_batch_latency_ms is None, key="recommend.max_batch_latency_ms",
            value=recommend.max_batch_latency_ms,
            allowed="null with serving.rate_per_s (under load the budget is a request's p99: recommend.max_p99_ms)")
    require(recommend.objective == Objective.throughput, key="recommend.objective", value=recommend.objective.value,
            allowed="throughput with serving.rate_per_s (the highest sustainable rate within recommend.max_p99_ms)")
    require(cfg.sweep.micro_batch_sizes is None, key="sweep.micro_batch_sizes", value=cfg.sweep.micro_batch_sizes,
            allowed="null with serving.rate_per_s (the batcher's largest batches are serving.max_batch_sizes)")


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore so configs/config.yaml can extend it (and be type-checked)."""
    ConfigStore.instance().store(name="tune_schema", node=TuneConfig)


def config_dir() -> str:
    """configs/ beside the package in a source checkout, or the copy packed inside an installed wheel."""
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "configs"
    return str(checkout if (checkout / "config.yaml").exists() else package / "configs")
