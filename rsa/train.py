"""Training: one entry point, :func:`train`, for Python and ``python -m rsa train``.

Defaults are the authors' per task (the book's page *The paper*, section 5;
:func:`resolve_config` fills them); the chapters *Copy and denoise* and *Pixel
classification* use this loop.

A run with an output folder writes, atomically (:mod:`rsa.io`):

- ``results.json``: resolved config, history (one row every ``eval_every`` updates:
  step, mean training loss/accuracy since the last row, validation loss/accuracy, wall
  time) and summary (the step at which validation accuracy first reached 100 %, the best
  accuracy with its step, the final validation and, for classification, test loss and
  accuracy of the final weights and of the best-validation weights, which the
  checkpoint keeps); ``history.csv``: the same history as a table;
- ``manifest.json``: parameters, seed, git commit, versions, device, machine, wall
  time, command line and the command that regenerates the run;
- ``checkpoint.pt``: model, optimizer, data-generator and torch RNG states, step,
  history and the running sums of the current interval, every ``checkpoint_every``
  updates, at the end, and when the run is interrupted (Ctrl-C / SIGTERM: the loop
  finishes the current update, saves, then stops). Running the same command again
  resumes from it, and the resumed run is identical, update for update, to an
  uninterrupted one (``tests/test_train.py`` checks this exactly).

Resuming never rewrites the record into something that was not run: a checkpoint that
already holds more updates than ``steps`` is refused (:class:`ResumeError`), and running
a finished run's command again loads it and rewrites nothing (``TrainResult.note`` says
so). A checkpoint that cannot be read, or was made with another configuration, is
refused with a one-line message naming the file and the way out (``--no-resume``, or
another ``--out-dir``). The output folder is recorded relative to the repository root
when it lies inside it (:func:`rsa.io.portable_path`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import pickle
import shlex
import signal
import sys
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsa import io, registry
from rsa.heads import TaskModel, build_task_model
from rsa.tasks import (
    PixelBatches,
    get_task,
    load_pixel_data,
    make_generator,
    synthetic_batch,
    train_size,
)

__all__ = ["TrainConfig", "TrainResult", "DeviceUnavailableError", "ResumeError",
           "resolve_config", "train",
           "train_step", "evaluate", "make_optimizer", "load_trained", "config_command",
           "OPTIMIZERS", "SOLVED_ACCURACY", "SOLVED_CONSECUTIVE", "STALL_FRACTION",
           "solved_at", "stalled_at", "patience_exhausted_at", "memoryless_loss",
           "MODEL_FILE"]

OPTIMIZERS = ("rmsprop", "adam")
CHECKPOINT = "checkpoint.pt"
MODEL_FILE = "model.pt"  # the trained weights alone (small; stored with results in data/)
# A validation set is drawn from its own stream, so training batches never repeat it.
VALIDATION_SEED_OFFSET = 1_000_000
# Fields that must match to resume from a checkpoint (steps may grow; device, output
# folder, progress bar and data folder may change).
_IDENTITY = ("model", "task", "T", "hidden_size", "optimizer", "lr", "clip", "batch", "seed",
             *(o.name for o in registry.config_options()), "eval_every", "eval_batch",
             "stop_when_solved", "stall_updates", "patience_updates")
# identity fields added later, with the value a checkpoint without them was made with
_IDENTITY_DEFAULTS = {"stop_when_solved": False, "stall_updates": 0, "patience_updates": 0}


class DeviceUnavailableError(RuntimeError):
    """A CUDA device was requested but is not available."""


class ResumeError(ValueError):
    """An output folder's checkpoint cannot be resumed as asked: unreadable, made with
    another configuration, or holding more updates than asked for. The message is one
    line naming the file and the way out."""


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

    Defaults that depend on the model, from the table of :mod:`rsa.registry`:

    [generated: rsa.registry.defaults_doc()]

    Stopping before ``steps`` (all off by default; see :func:`solved_at`,
    :func:`stalled_at`, :func:`patience_exhausted_at`):

    - ``stop_when_solved``: stop once the run is *solved* (validation accuracy on the
      answer steps >= 99 % at two consecutive evaluations);
    - ``stall_updates`` (copy/denoise; 0 disables): stop as *stalled* when no
      validation loss of the last ``stall_updates`` updates was below 0.9 x the
      memoryless loss (:func:`memoryless_loss`);
    - ``patience_updates`` (0 disables): stop when the best validation accuracy has not
      improved for ``patience_updates`` updates (early stopping, for the pixel tasks);
    - ``stop_at_perfect``: stop at the first evaluation with 100 % accuracy.

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
    stall_updates: int = 0
    patience_updates: int = 0


if TrainConfig.__doc__:  # (python -OO strips docstrings)
    TrainConfig.__doc__ = TrainConfig.__doc__.replace(
        "    [generated: rsa.registry.defaults_doc()]", registry.defaults_doc())


@dataclass
class TrainResult:
    """What :func:`train` returns: resolved config, history rows, summary, the trained
    :class:`~rsa.heads.TaskModel`, the output folder (None if nothing was written), and a
    ``note`` for the user (e.g. that a finished run was loaded and nothing rewritten)."""

    config: dict
    history: list[dict]
    summary: dict
    model: TaskModel = field(repr=False)
    out_dir: Path | None = None
    note: str | None = None


# -- configuration ------------------------------------------------------------------------

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
    _check_device_name(c.device)
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
    for name in ("progress", "resume", "stop_at_perfect", "stop_when_solved"):
        if not isinstance(getattr(c, name), bool):
            raise ValueError(f"{name} must be a bool, got {getattr(c, name)!r}")
    # the options the model takes and their ranges, checked without building the model
    registry.check_options(c.model, **{o.name: getattr(c, o.name)
                                       for o in registry.config_options()})
    return c


def _check_device_name(device: str) -> None:
    if not isinstance(device, str) or not (device == "cpu" or device == "cuda"
                                           or (device.startswith("cuda:")
                                               and device[5:].isdigit())):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _device(device: str) -> torch.device:
    _check_device_name(device)
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
    skip = {"progress", "resume", "stop_at_perfect", "stop_when_solved"}
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
    return shlex.join(args)


# -- one update and evaluation ----------------------------------------------------------------

def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """RMSprop(alpha=0.99) or Adam with learning rate ``lr``."""
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")


def train_step(model: TaskModel, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, clip: float) -> tuple[float, float]:
    """One training update: forward, loss, backward, clip the gradient norm to ``clip``
    (0: no clipping), optimizer step. Returns (loss, accuracy) of the batch."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = model.loss(logits, y)
    loss.backward()
    if clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.item(), model.accuracy(logits.detach(), y).item()


@torch.no_grad()
def evaluate(model: TaskModel, batches) -> dict[str, float]:
    """Loss and accuracy over an iterable of (x, y) batches, weighted by batch size."""
    was_training = model.training
    model.eval()
    loss = acc = 0.0
    count = 0
    try:
        for x, y in batches:
            logits = model(x)
            b = x.shape[1]
            loss += model.loss(logits, y).item() * b
            acc += model.accuracy(logits, y).item() * b
            count += b
    finally:
        model.train(was_training)
    return {"loss": loss / count, "accuracy": acc / count}


class _SyntheticStream:
    """Fresh copy/denoise batches from one seeded generator (state saved for resume)."""

    def __init__(self, task, T, batch, seed, device):
        self.task, self.T, self.batch, self.device = task, T, batch, device
        self.generator = make_generator(seed)

    def __iter__(self):
        return self

    def __next__(self):
        return synthetic_batch(self.task, self.T, self.batch, self.generator, self.device)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def _data(c: TrainConfig, device):
    """(training stream, validation batches (a list), test batches or None, steps/epoch)."""
    spec = get_task(c.task)
    if spec.kind == "sequence":
        stream = _SyntheticStream(spec, c.T, c.batch, c.seed, device)
        val = [synthetic_batch(spec, c.T, c.eval_batch,
                               make_generator(c.seed + VALIDATION_SEED_OFFSET), device)]
        return stream, val, None, None
    data = load_pixel_data(spec, c.data_dir)
    stream = PixelBatches(*data.train, c.batch, make_generator(c.seed), device)
    val = list(data.batches("validation", c.eval_batch, device))
    test = list(data.batches("test", c.eval_batch, device))
    return stream, val, test, stream.steps_per_epoch


# -- interruption --------------------------------------------------------------------------

class _Interrupt:
    """Turns SIGINT/SIGTERM into a flag the loop checks between updates (main thread only),
    so the state saved on interruption is always that of a whole number of updates."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal stops at once
            old = self._old.get(signum)
            if callable(old):
                old(signum, frame)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def raise_(self):
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt("training interrupted; checkpoint saved")
        raise SystemExit(128 + self.signum)


# -- stopping rules ---------------------------------------------------------------------
# Defined once here; the chapter *Copy and denoise* states them and the experiment plan
# (rsa.experiments, scale "converged") trains by them.

SOLVED_ACCURACY = 0.99   # validation accuracy on the answer steps ...
SOLVED_CONSECUTIVE = 2   # ... at this many consecutive evaluations
STALL_FRACTION = 0.9     # "better than memoryless": loss below 0.9 x the memoryless loss


def memoryless_loss(task: str, T: int) -> float:
    """Validation loss (mean cross-entropy over all T + 20 steps) of the best predictor
    that remembers nothing: exact on the blank steps, uniform over the 8 data symbols on
    the 10 answer steps, so 10 ln 8 / (T + 20), for copy and denoise alike."""
    from rsa.tasks import N_DATA, N_SYMBOLS, sequence_length

    return N_DATA * math.log(N_SYMBOLS) / sequence_length(task, T)


def solved_at(history: list[dict]) -> int | None:
    """The update at which a run is *solved*: the first evaluation with validation
    accuracy >= :data:`SOLVED_ACCURACY` that the next :data:`SOLVED_CONSECUTIVE` - 1
    evaluations confirm (also >= it). None if no such evaluation is in ``history``."""
    acc = [row["val_accuracy"] for row in history]
    k = SOLVED_CONSECUTIVE
    for i in range(len(acc) - k + 1):
        if all(a is not None and a >= SOLVED_ACCURACY for a in acc[i:i + k]):
            return history[i]["step"]
    return None


def stalled_at(history: list[dict], window: int, baseline: float) -> int | None:
    """The first evaluation step s >= ``window`` at which no validation loss of the
    evaluations in (s - window, s] was below ``STALL_FRACTION * baseline``: the run has
    learned nothing a memoryless predictor does not know for ``window`` updates. None
    if that never happened (or ``window`` is 0)."""
    if window <= 0:
        return None
    bar = STALL_FRACTION * baseline
    for row in history:
        s = row["step"]
        if s < window:
            continue
        recent = [r["val_loss"] for r in history if s - window < r["step"] <= s]
        if not any(v is not None and math.isfinite(v) and v < bar for v in recent):
            return s
    return None


def patience_exhausted_at(history: list[dict], patience: int) -> int | None:
    """The first evaluation step at which the best validation accuracy so far was last
    improved ``patience`` or more updates earlier. None if never (or ``patience`` is 0)."""
    if patience <= 0:
        return None
    best, best_step = None, 0
    for row in history:
        a = row["val_accuracy"]
        if a is not None and (best is None or a > best):
            best, best_step = a, row["step"]
        elif row["step"] - best_step >= patience:
            return row["step"]
    return None


def _stop_reason(c: TrainConfig, history: list[dict]) -> str | None:
    """Why training stops after the last row of ``history`` (None: it goes on)."""
    if not history:
        return None
    last = history[-1]["step"]
    solved = solved_at(history)
    if c.stop_when_solved and solved is not None:
        return "solved"
    if c.stop_at_perfect and history[-1]["val_accuracy"] >= 1.0 and all(
            r["val_accuracy"] < 1.0 for r in history[:-1]):
        return "perfect"
    if c.stall_updates and stalled_at(history, c.stall_updates,
                                      memoryless_loss(c.task, c.T)) == last:
        return "stalled"
    if c.patience_updates and patience_exhausted_at(history, c.patience_updates) == last:
        return "patience"
    return None


# -- the loop ----------------------------------------------------------------------------

def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where tqdm would draw a widget)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _progress_bar(enabled: bool, **kwargs):
    """A tqdm progress bar: a widget in a notebook that has ipywidgets, none in one that
    has not (instead of tqdm's "IProgress not found" warning in the chapter's output),
    text on a terminal."""
    from tqdm import tqdm

    if enabled and _in_notebook():
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            enabled = False
        else:
            from tqdm.notebook import tqdm
    return tqdm(disable=not enabled, **kwargs)


def _summary(history, state, steps_per_epoch, n_params, config: TrainConfig):
    solved = solved_at(history)
    solved_row = next((r for r in history if r["step"] == solved), None)
    s = {
        "steps_done": state["step"],
        "first_perfect_step": state["first_perfect_step"],
        "best_val_accuracy": state["best_val_accuracy"],
        "best_step": state["best_step"],
        "final_val_loss": history[-1]["val_loss"] if history else None,
        "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "wall_time_s": state["wall_time_s"],
        "train_time_s": state["train_time_s"],
        "stopped_early": state["stopped_early"],
        "stop_reason": state.get("stop_reason"),
        "solved": solved is not None,
        "solved_step": solved,
        "solved_wall_time_s": solved_row["wall_time_s"] if solved_row else None,
        "solved_train_time_s": solved_row["train_time_s"] if solved_row else None,
        "n_parameters": n_params,
        "segments": state.get("segments", []),
    }
    if get_task(config.task).kind == "sequence":
        s["memoryless_loss"] = memoryless_loss(config.task, config.T)
    if steps_per_epoch:
        s["epochs"] = state["step"] / steps_per_epoch
    return s


def train(config: TrainConfig | dict | None = None, *, argv: list[str] | None = None,
          **overrides) -> TrainResult:
    """Train a model on a task; see :class:`TrainConfig` for the fields and defaults.

    ``train(model="relrnn", task="copy", T=100, steps=2000, out_dir="runs/x")`` or
    ``train(TrainConfig(...))``. With ``out_dir`` and ``resume=True`` an existing
    checkpoint there is resumed (its config must match on the fields that determine the
    result; ``steps`` may be larger). ``argv`` is the command line recorded in the
    manifest (defaults to ``sys.argv``).
    """
    c = resolve_config(config, **overrides)
    device = _device(c.device)
    spec = get_task(c.task)
    out = Path(c.out_dir) if c.out_dir is not None else None

    torch.manual_seed(c.seed)  # model initialisation
    model = build_task_model(c.model, spec, c.hidden_size, nu=c.nu, rho=c.rho,
                             nonlinearity=c.nonlinearity, init=c.init).to(device)
    optimizer = make_optimizer(c.optimizer, model.parameters(), c.lr)
    stream, val, test, steps_per_epoch = _data(c, device)
    n_params = sum(p.numel() for p in model.parameters())
    state = {"step": 0, "history": [], "wall_time_s": 0.0, "train_time_s": 0.0,
             "interval": {"loss": 0.0, "accuracy": 0.0, "count": 0},
             "first_perfect_step": None, "best_val_accuracy": None, "best_step": None,
             "stopped_early": False}
    # what is recorded: paths inside the repository relative to its root
    recorded = copy.copy(c)
    recorded.out_dir = None if c.out_dir is None else io.portable_path(c.out_dir)
    recorded.data_dir = None if c.data_dir is None else io.portable_path(c.data_dir)
    config_dict = asdict(recorded)

    ckpt_path = out / CHECKPOINT if out is not None else None
    if ckpt_path is not None and c.resume and ckpt_path.is_file():
        ckpt = _load_checkpoint(ckpt_path, device)
        made = {k: ckpt["config"].get(k, _IDENTITY_DEFAULTS.get(k)) for k in _IDENTITY}
        diff = {k: (made[k], config_dict[k]) for k in _IDENTITY if made[k] != config_dict[k]}
        if diff:
            raise ResumeError(
                f"checkpoint {str(ckpt_path)!r} was made with a different config "
                f"(field: (checkpoint, now)) {diff}; {_WAY_OUT}")
        done = ckpt["state"]["step"]
        if done > c.steps:
            raise ResumeError(
                f"checkpoint {str(ckpt_path)!r} already holds {done} updates, more than the "
                f"{c.steps} asked for; resume it with --steps {done} or more (steps={done}), "
                f"or {_WAY_OUT}")
        with _checkpoint_errors(ckpt_path):
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            stream.load_state_dict(ckpt["data"])
            torch.set_rng_state(ckpt["torch_rng"].cpu())
            if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(ckpt["cuda_rng"].cpu(), device)
            state = ckpt["state"]
        finished = _finished_run(out, state, c)
        if finished is not None:  # nothing to train: the record stays as it is
            model.eval()
            return TrainResult(finished["config"], finished["history"], finished["summary"],
                               model, out, note=(
                                   f"{out} already holds this run, finished after "
                                   f"{state['step']} updates; nothing was trained or "
                                   f"rewritten (--no-resume starts it over)"))

    manifest = None
    command = config_command(recorded)
    if out is not None:
        manifest = io.build_manifest(
            config_dict, seed=c.seed, device=str(device), command=command, argv=argv,
            files=["results.json", "history.csv", "manifest.json", CHECKPOINT,
                   MODEL_FILE])

    def save_checkpoint():
        if ckpt_path is None:
            return
        io.atomic_torch_save({
            "format": 1, "config": config_dict, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "data": stream.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "state": state}, ckpt_path)

    def write_results(complete, summary=None):
        if out is None:
            return
        if summary is None:
            summary = _summary(state["history"], state, steps_per_epoch, n_params, c)
        io.write_json(out / "results.json", {"config": config_dict, "complete": complete,
                                             "history": state["history"],
                                             "summary": summary})
        io.write_csv(out / "history.csv", state["history"])
        manifest["wall_time_s"] = state["wall_time_s"]
        manifest["complete"] = complete
        io.write_json(out / "manifest.json", manifest)

    bar = _progress_bar(c.progress, total=c.steps, initial=state["step"],
                        desc=f"{c.model} {c.task} T={c.T}", unit="upd", leave=False)
    wall0, train0 = state["wall_time_s"], state["train_time_s"]
    # one segment per call that trains: where each part of a resumed run ran
    segment = {"start_step": state["step"], "end_step": state["step"],
               "wall_time_s": 0.0, "device": str(device), "cpu": io._cpu_model(),
               "torch_threads": torch.get_num_threads()}
    state.setdefault("segments", [])
    if state["step"] < c.steps and not state["stopped_early"]:
        state["segments"].append(segment)
    t_start = time.perf_counter()
    model.train()
    with _Interrupt() as interrupt, contextlib.closing(bar):
        while state["step"] < c.steps and not state["stopped_early"]:
            x, y = next(stream)
            t0 = time.perf_counter()
            loss, acc = train_step(model, optimizer, x, y, c.clip)
            train0 += time.perf_counter() - t0
            iv = state["interval"]
            iv["loss"] += loss
            iv["accuracy"] += acc
            iv["count"] += 1
            state["step"] += 1
            step = state["step"]
            bar.update(1)
            state["train_time_s"] = train0
            state["wall_time_s"] = wall0 + time.perf_counter() - t_start
            segment["end_step"] = step
            segment["wall_time_s"] = time.perf_counter() - t_start
            if step % c.eval_every == 0:
                ev = evaluate(model, val)
                state["wall_time_s"] = wall0 + time.perf_counter() - t_start
                row = {"step": step}
                if steps_per_epoch:
                    row["epoch"] = step / steps_per_epoch
                row.update({
                    "train_loss": iv["loss"] / iv["count"],
                    "train_accuracy": iv["accuracy"] / iv["count"],
                    "val_loss": ev["loss"], "val_accuracy": ev["accuracy"],
                    "wall_time_s": state["wall_time_s"], "train_time_s": train0})
                state["history"].append(row)
                state["interval"] = {"loss": 0.0, "accuracy": 0.0, "count": 0}
                best = state["best_val_accuracy"]
                if best is None or ev["accuracy"] > best:
                    state["best_val_accuracy"], state["best_step"] = ev["accuracy"], step
                    if test is not None:  # pixel tasks: keep the best-validation weights
                        state["best_model"] = {k: v.detach().cpu().clone()
                                               for k, v in model.state_dict().items()}
                if ev["accuracy"] >= 1.0 and state["first_perfect_step"] is None:
                    state["first_perfect_step"] = step
                reason = _stop_reason(c, state["history"])
                if reason is not None:
                    state["stop_reason"] = reason
                    state["stopped_early"] = step < c.steps
                bar.set_postfix(loss=f"{ev['loss']:.4f}", acc=f"{ev['accuracy']:.3f}")
                write_results(complete=False)
            if step % c.checkpoint_every == 0 or interrupt.signum is not None:
                save_checkpoint()
            if interrupt.signum is not None:
                write_results(complete=False)
                interrupt.raise_()
        save_checkpoint()

    if state.get("stop_reason") is None and state["step"] >= c.steps:
        state["stop_reason"] = "budget"
    summary = _summary(state["history"], state, steps_per_epoch, n_params, c)
    if not state["history"] or state["history"][-1]["step"] != state["step"]:
        # a final evaluation off the eval_every grid: reported in the summary only, so
        # that extending the run later gives the same history as a longer run
        ev = evaluate(model, val)
        summary["final_val_loss"], summary["final_val_accuracy"] = ev["loss"], ev["accuracy"]
    if test is not None:
        ev = evaluate(model, test)
        summary["test_loss"], summary["test_accuracy"] = ev["loss"], ev["accuracy"]
        summary.update(_best_model_test(model, state, test))
    write_results(complete=True, summary=summary)
    if out is not None:
        io.atomic_torch_save({"format": 1, "config": config_dict,
                              "model": model.state_dict()}, out / MODEL_FILE)
    return TrainResult(config_dict, copy.deepcopy(state["history"]), summary, model, out)


def _best_model_test(model: TaskModel, state: dict, test) -> dict:
    """Test loss and accuracy of the best-validation weights (``best_model_test_*``;
    None when they were not kept, e.g. a run resumed from a checkpoint made before they
    were), without changing ``model``."""
    best = state.get("best_model")
    if best is None:
        return {"best_model_test_loss": None, "best_model_test_accuracy": None}
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(best)
        ev = evaluate(model, test)
    finally:
        model.load_state_dict(final)
    return {"best_model_test_loss": ev["loss"], "best_model_test_accuracy": ev["accuracy"]}


_WAY_OUT = ("start over with --no-resume (resume=False), or train into another --out-dir "
            "(out_dir)")


def _one_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def _checkpoint_errors(path: Path):
    """Turn any failure to read or apply the checkpoint at ``path`` into one line."""
    try:
        yield
    except (RuntimeError, EOFError, OSError, KeyError, TypeError, ValueError, AttributeError,
            pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise ResumeError(f"checkpoint {str(path)!r} cannot be resumed "
                          f"({type(e).__name__}: {_one_line(e)}); {_WAY_OUT}") from e


def _load_checkpoint(path: Path, device: torch.device) -> dict:
    """The checkpoint at ``path``, with the fields resuming needs, or a ResumeError."""
    with _checkpoint_errors(path):
        ckpt = torch.load(path, map_location=device, weights_only=True)
        missing = [k for k in ("config", "model", "optimizer", "data", "torch_rng", "state")
                   if k not in ckpt]
        if missing:
            raise KeyError(f"no {', '.join(missing)} in it")
        ckpt["state"]["step"]  # noqa: B018 -- fail here, not in the loop
    return ckpt


def _finished_run(out: Path, state: dict, c: TrainConfig) -> dict | None:
    """The stored results of ``out`` when the checkpoint's run is finished (no update
    left to train) and its results and weights are written, else None."""
    if state["step"] < c.steps and not state["stopped_early"]:
        return None
    try:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (results.get("complete") is not True or not (out / MODEL_FILE).is_file()
            or results.get("summary", {}).get("steps_done") != state["step"]):
        return None
    return results


def load_trained(out_dir: str | Path, device: str = "cpu") -> TaskModel:
    """The model saved in ``out_dir/checkpoint.pt``, or in ``out_dir/model.pt`` (the
    trained weights a finished run writes, and what ``data/`` stores), in eval mode,
    e.g. for :func:`rsa.tasks.evaluate_transfer`. FileNotFoundError with the command
    that regenerates it when neither file exists."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file() and (Path(out_dir) / MODEL_FILE).is_file():
        path = Path(out_dir) / MODEL_FILE
    if not path.is_file():
        regenerate = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            regenerate = io.load_manifest(out_dir).get("command")
        how = f"regenerate it with:\n    {regenerate}" if regenerate else \
            "train a model with `python -m rsa train --out DIR` first"
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found; {how}")
    dev = _device(device)
    ckpt = torch.load(path, map_location=dev, weights_only=True)
    c: dict[str, Any] = ckpt["config"]
    model = build_task_model(c["model"], c["task"], c["hidden_size"], nu=c["nu"],
                             rho=c["rho"], nonlinearity=c["nonlinearity"], init=c["init"])
    model.load_state_dict(ckpt["model"])
    return model.to(dev).eval()
