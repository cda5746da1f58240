"""Configuration of a training run: :class:`TrainConfig` (every field a run depends on),
:func:`resolve_config` (the task's and the model's defaults filled in, every value
checked), the device check and :func:`config_command` (the command that regenerates a
run). The defaults are the authors' per task (the book's page *The paper*, section 5)
and, per model, the table of :mod:`rsa.models.registry`.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass, fields

import torch

from rsa.models import describe, registry
from rsa.models.heads import check_model_kernel
from rsa.tasks import get_task, train_size

OPTIMIZERS = ("rmsprop", "adam")
# Fields that must match to resume from a checkpoint (steps may grow; device, kernel,
# SAB's score_form, output folder, progress bar and data folder may change: the device,
# the kernel and the score form compute the same function, and each part of a run
# records where and on which kernel (and score form) it ran, in its segment).
_IDENTITY = ("model", "task", "T", "hidden_size", "optimizer", "lr", "clip", "batch", "seed",
             *(o.name for o in registry.config_options() if o.identity), "eval_every",
             "eval_batch", "stop_when_solved", "stall_updates", "patience_updates")
# fields added later, with the value a checkpoint without them was made with
_IDENTITY_DEFAULTS = {"stop_when_solved": False, "stall_updates": 0, "patience_updates": 0,
                      "kernel": "torch"}


class DeviceUnavailableError(RuntimeError):
    """A CUDA device was requested but is not available."""



@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` means "the task's default" (the authors'
    settings, the book's page *The paper*, section 5).

    Defaults for copy / denoise, then for the pixel tasks (digits, pdigits, mnist10k,
    pmnist10k, mnist, pmnist):

    - ``T``: 100 (the delay; sequences have T + 20 steps) / fixed by the data (64, 784)
    - ``hidden_size``: 128 / 100
    - ``optimizer``: "rmsprop" (alpha = 0.99) / "adam"
    - ``clip`` (gradient norm; 0 disables): 1.0 / 1.0
    - ``batch``: 10 / 100
    - ``steps`` (updates): 200000 / 200 epochs
    - ``eval_every``: 100 / one epoch
    - ``eval_batch``: 100 validation sequences / 500 (evaluation chunk size)
    - ``checkpoint_every``: ``eval_every``; ``seed``: 0; ``device``: "cpu".

    Defaults that depend on the model, from the table of :mod:`rsa.models.registry`:

    [generated: rsa.models.describe.defaults_doc()]

    Stopping before ``steps`` (all off by default; see :func:`solved_at`,
    :func:`stalled_at`, :func:`patience_exhausted_at`):

    - ``stop_when_solved``: stop once the run is *solved* (validation accuracy on the
      answer steps >= 99 % at two consecutive evaluations);
    - ``stall_updates`` (copy/denoise; 0 disables): stop as *stalled* when no
      validation loss of the last ``stall_updates`` updates was below 0.9 x the
      memoryless loss (:func:`memoryless_loss`);
    - ``patience_updates`` (0 disables): stop when the best validation accuracy has not
      improved for ``patience_updates`` updates (early stopping, for the pixel tasks);
    - ``stop_at_perfect``: stop at the first evaluation with 100 % accuracy;
    - ``stop_when_nan``: stop at the first evaluation whose training loss (the mean over
      the updates since the last one) is not finite (:func:`nan_at`): a non-finite loss
      gives a non-finite gradient, the clipped update makes weights NaN, and no later
      update can change them. Not an identity field: a run may resume with it turned on
      if it would not have fired yet (:func:`rsa.train.checkpoint.resumable_checkpoint`).

    ``kernel``: ``"torch"`` (default: the reference, CPU and GPU) or ``"compiled"``
    (the compiled CPU kernel of :mod:`rsa.models.kernels.compiled`, and
    :mod:`rsa.models.kernels.compiled_screened` for the RelRNN and the MemRNN,
    :mod:`rsa.models.kernels.compiled_rellstm` for the RelLSTM, for the models that have
    one). Both kernels compute the same function (equal to 1e-10 in float64; float32
    differs in the last bits, as between two CPUs), so, like ``device``, it may change
    when a run resumes: each segment of the run records its kernel, a stored run without
    it reads as ``"torch"``, and resuming on the same kernel continues exactly.

    ``out_dir=None`` writes nothing. ``data_dir`` is the MNIST folder (default
    ``data/mnist``).
    """

    model: str = "relrnn"
    task: str = "copy"
    T: int | None = None
    hidden_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    clip: float | None = None
    batch: int | None = None
    steps: int | None = None
    eval_every: int | None = None
    eval_batch: int | None = None
    checkpoint_every: int | None = None
    seed: int = 0
    device: str = "cpu"
    nu: int | None = None
    rho: int | None = None
    nonlinearity: str | None = None
    init: str | None = None
    out_dir: str | None = None
    data_dir: str | None = None
    progress: bool = True
    resume: bool = True
    stop_at_perfect: bool = False
    stop_when_solved: bool = False
    stop_when_nan: bool = False
    stall_updates: int = 0
    patience_updates: int = 0
    kernel: str = "torch"
    score_form: str | None = None


if TrainConfig.__doc__:  # (python -OO strips docstrings)
    TrainConfig.__doc__ = TrainConfig.__doc__.replace(
        "    [generated: rsa.models.describe.defaults_doc()]", describe.defaults_doc())


def _int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _n_train(task: str) -> int:
    return train_size(task)


def resolve_config(config: TrainConfig | dict | None = None, **overrides) -> TrainConfig:
    """A copy of ``config`` (a :class:`TrainConfig`, a dict, or None) with ``overrides``
    applied, every ``None`` replaced by the task's default, and every value checked.

    Raises ValueError naming the bad value and what is accepted.
    """
    if config is None:
        config = {}
    if isinstance(config, TrainConfig):
        config = asdict(config)
    config = {**config, **overrides}
    names = [f.name for f in fields(TrainConfig)]
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; accepted: {', '.join(names)}")
    c = TrainConfig(**config)

    model = registry.get(c.model)  # ValueError for an unknown model
    spec = get_task(c.task)
    if spec.kind == "sequence":
        c.T = 100 if c.T is None else _int("T", c.T)
    elif c.T is not None and c.T != spec.length:
        raise ValueError(f"task {c.task!r} has fixed length {spec.length}; T must be None "
                         f"or {spec.length}, got {c.T!r}")
    else:
        c.T = spec.length
    seq = spec.kind == "sequence"
    c.hidden_size = _int("hidden_size", (128 if seq else 100) if c.hidden_size is None
                         else c.hidden_size)
    c.optimizer = c.optimizer or ("rmsprop" if seq else "adam")
    if c.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {c.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
    if c.lr is None:
        c.lr = registry.task_default(c.model, "lr", c.task, c.T)
    if isinstance(c.lr, bool) or not isinstance(c.lr, int | float) or not (
            math.isfinite(c.lr) and c.lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {c.lr!r}")
    c.lr = float(c.lr)
    c.clip = 1.0 if c.clip is None else c.clip
    if isinstance(c.clip, bool) or not isinstance(c.clip, int | float) or not (
            math.isfinite(c.clip) and c.clip >= 0):
        raise ValueError(f"clip must be a finite number >= 0 (0 disables clipping), "
                         f"got {c.clip!r}")
    c.clip = float(c.clip)
    c.batch = _int("batch", (10 if seq else 100) if c.batch is None else c.batch)
    per_epoch = None if seq else math.ceil(_n_train(c.task) / c.batch)
    c.steps = _int("steps", (200_000 if seq else 200 * per_epoch) if c.steps is None
                   else c.steps)
    c.eval_every = _int("eval_every", (100 if seq else per_epoch) if c.eval_every is None
                        else c.eval_every)
    c.eval_batch = _int("eval_batch", (100 if seq else 500) if c.eval_batch is None
                        else c.eval_batch)
    c.checkpoint_every = _int("checkpoint_every", c.eval_every if c.checkpoint_every is None
                              else c.checkpoint_every)
    c.seed = _int("seed", c.seed, 0)
    check_device_name(c.device)
    for name in model.defaults:  # the model's options with a per-task default
        if name in registry.OPTIONS and getattr(c, name) is None:
            setattr(c, name, registry.task_default(c.model, name, c.task, c.T))
    for name in ("stall_updates", "patience_updates"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0 (0 disables), got {value!r}")
    if c.stall_updates and spec.kind != "sequence":
        raise ValueError(f"stall_updates applies to copy and denoise only (it compares "
                         f"with the memoryless loss); task {c.task!r} got "
                         f"stall_updates={c.stall_updates!r}; use patience_updates")
    for name in ("progress", "resume", "stop_at_perfect", "stop_when_solved", "stop_when_nan"):
        if not isinstance(getattr(c, name), bool):
            raise ValueError(f"{name} must be a bool, got {getattr(c, name)!r}")
    check_model_kernel(c.model, c.kernel)  # ValueError naming the kernel and the models
    if c.kernel == "compiled" and c.device != "cpu":
        raise ValueError(f"kernel='compiled' runs on the CPU only, got device={c.device!r}; "
                         f"use kernel='torch' on a GPU")
    # the options the model takes and their ranges, checked without building the model
    registry.check_options(c.model, **{o.name: getattr(c, o.name)
                                       for o in registry.config_options()})
    return c


def check_device_name(device: str) -> None:
    if not isinstance(device, str) or not (device == "cpu" or device == "cuda"
                                           or (device.startswith("cuda:")
                                               and device[5:].isdigit())):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def torch_device(device: str) -> torch.device:
    check_device_name(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {device!r} requested but CUDA is not available "
                f"(torch {torch.__version__}); use --device cpu (device='cpu')")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                f"device(s) exist")
    return torch.device(device)


def config_command(config: TrainConfig) -> str:
    """The ``python -m rsa train ...`` command equivalent to a resolved config."""
    args = ["python", "-m", "rsa", "train"]
    skip = {"progress", "resume", "stop_at_perfect", "stop_when_solved", "stop_when_nan"}
    for f in fields(TrainConfig):
        v = getattr(config, f.name)
        if f.name in skip or v is None or (f.name in _IDENTITY_DEFAULTS
                                          and v == _IDENTITY_DEFAULTS[f.name]):
            continue
        args += [f"--{f.name.replace('_', '-')}", str(v)]
    if not config.progress:
        args.append("--no-progress")
    if config.stop_at_perfect:
        args.append("--stop-at-perfect")
    if config.stop_when_solved:
        args.append("--stop-when-solved")
    if config.stop_when_nan:
        args.append("--stop-when-nan")
    return shlex.join(args)

