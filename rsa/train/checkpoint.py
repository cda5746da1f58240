"""Checkpoints and interruption: what a run saves so that running the same command again
resumes it update for update, how a checkpoint is checked before it is resumed (one
line naming the file and the way out when it cannot be), and the SIGINT/SIGTERM
(and SLURM's SIGUSR1/SIGUSR2) handling that makes the loop stop between two updates.

The checkpoint (``checkpoint.pt``, written atomically by :func:`save_checkpoint`) is a
dict: ``format`` (1), ``config`` (the recorded config), ``model``, ``optimizer``,
``data`` (the training stream's generator), ``torch_rng``, ``cuda_rng`` (None on CPU)
and ``state`` (:meth:`rsa.train.state.RunState.to_checkpoint`: step, history, times,
the running sums of the current interval, best and first perfect step, stopping
record, segments). ``model.pt`` holds the trained weights alone.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import signal
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import torch

from rsa import io
from rsa.models.heads import TaskModel, build_task_model
from rsa.train.config import _IDENTITY, _IDENTITY_DEFAULTS, TrainConfig, torch_device
from rsa.train.state import RunState
from rsa.train.stopping import nan_at

CHECKPOINT = "checkpoint.pt"
MODEL_FILE = "model.pt"  # the trained weights alone (small; stored with results in data/)


class ResumeError(ValueError):
    """An output folder's checkpoint cannot be resumed as asked: unreadable, made with
    another configuration, or holding more updates than asked for. The message is one
    line naming the file and the way out."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class _Interrupt:
    """Turns SIGINT/SIGTERM/SIGUSR1/SIGUSR2 (:data:`STOP_SIGNALS`; SLURM sends USR1 or
    USR2 before a preemption or the time limit) into a flag the loop checks between
    updates (main thread only), so the state saved on interruption is always that of a
    whole number of updates. The run then stops with ``SystemExit(128 + signal)``; the
    handlers that were there before are back by then (:mod:`rsa.experiments.cluster` calls
    submitit's, which requeues the job)."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
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



_WAY_OUT = ("start over with --no-resume (resume=False), or train into another --out-dir "
            "(out_dir)")


def _one_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


# What reading or applying a damaged torch file raises (torch.load, load_state_dict)
UNREADABLE = (RuntimeError, EOFError, OSError, KeyError, TypeError, ValueError,
              AttributeError, pickle.UnpicklingError, zipfile.BadZipFile)


@contextlib.contextmanager
def _checkpoint_errors(path: Path):
    """Turn any failure to read or apply the checkpoint at ``path`` into one line."""
    try:
        yield
    except UNREADABLE as e:
        raise ResumeError(f"checkpoint {str(path)!r} cannot be resumed "
                          f"({type(e).__name__}: {_one_line(e)}); {_WAY_OUT}") from e


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """The checkpoint at ``path``, with the fields resuming needs, or a ResumeError."""
    with _checkpoint_errors(path):
        io.check_torch_file(path)
        ckpt = torch.load(path, map_location=device, weights_only=True)
        missing = [k for k in ("config", "model", "optimizer", "data", "torch_rng", "state")
                   if k not in ckpt]
        if missing:
            raise KeyError(f"no {', '.join(missing)} in it")
        ckpt["state"]["step"]  # noqa: B018 -- fail here, not in the loop
    return ckpt


def _finished_run(out: Path, state: RunState, c: TrainConfig) -> dict | None:
    """The stored results of ``out`` when the checkpoint's run is finished (no update
    left to train) and its results and weights are written, else None."""
    if state.step < c.steps and not state.stopped_early:
        return None
    try:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (results.get("complete") is not True or not (out / MODEL_FILE).is_file()
            or results.get("summary", {}).get("steps_done") != state.step):
        return None
    return results



def resumable_checkpoint(path: Path, c: TrainConfig, config_dict: dict,
                         device: torch.device) -> dict:
    """The checkpoint at ``path`` if it can resume the run ``c`` (recorded as
    ``config_dict``): made with the same values of the identity fields and holding no
    more than ``c.steps`` updates. Else a :class:`ResumeError` naming the file, what
    differs, and the way out."""
    ckpt = load_checkpoint(path, device)
    made = {k: ckpt["config"].get(k, _IDENTITY_DEFAULTS.get(k)) for k in _IDENTITY}
    diff = {k: (made[k], config_dict[k]) for k in _IDENTITY if made[k] != config_dict[k]}
    if diff:
        raise ResumeError(
            f"checkpoint {str(path)!r} was made with a different config "
            f"(field: (checkpoint, now)) {diff}; {_WAY_OUT}")
    fired = nan_fired_without_rule(ckpt) if c.stop_when_nan else None
    if fired is not None:
        raise ResumeError(
            f"checkpoint {str(path)!r} was made without stop_when_nan and its training "
            f"loss was not finite at update {fired}: with the rule the run would have "
            f"stopped there; resume it without --stop-when-nan (stop_when_nan=False), "
            f"or {_WAY_OUT}")
    done = ckpt["state"]["step"]
    if done > c.steps:
        raise ResumeError(
            f"checkpoint {str(path)!r} already holds {done} updates, more than the "
            f"{c.steps} asked for; resume it with --steps {done} or more (steps={done}), "
            f"or {_WAY_OUT}")
    return ckpt


def nan_fired_without_rule(ckpt: dict) -> int | None:
    """For a checkpoint made without ``stop_when_nan``: the update at which the rule would
    already have stopped the run (:func:`nan_at` of its history), else None. The rule is
    not an identity field: turning it on for a run where it would not have fired yet
    describes the same run."""
    if ckpt["config"].get("stop_when_nan", False):
        return None
    return nan_at(ckpt["state"]["history"])


def restore(path: Path, ckpt: dict, model: TaskModel, optimizer: torch.optim.Optimizer,
            stream, device: torch.device) -> dict:
    """Load the model, optimizer, data-stream and RNG states of ``ckpt`` (read from
    ``path``) in place; return its run state (a dict, as stored)."""
    with _checkpoint_errors(path):
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        stream.load_state_dict(ckpt["data"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"].cpu(), device)
        return ckpt["state"]


def save_checkpoint(path: Path, config_dict: dict, model: TaskModel,
                    optimizer: torch.optim.Optimizer, stream, device: torch.device,
                    state: dict) -> None:
    """Write the checkpoint (format 1, see the module docstring) atomically."""
    io.atomic_torch_save({
        "format": 1, "config": config_dict, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "data": stream.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "state": state}, path)


def save_model(path: Path, config_dict: dict, model: TaskModel) -> None:
    """Write the trained weights alone (``model.pt``) atomically."""
    io.atomic_torch_save({"format": 1, "config": config_dict,
                          "model": model.state_dict()}, path)


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
    dev = torch_device(device)
    candidates = [path] + ([Path(out_dir) / MODEL_FILE] if path.name == CHECKPOINT
                           and (Path(out_dir) / MODEL_FILE).is_file() else [])
    failures = []
    for i, candidate in enumerate(candidates):
        try:
            io.check_torch_file(candidate)
            ckpt = torch.load(candidate, map_location=dev, weights_only=True)
            c: dict[str, Any] = ckpt["config"]
            model = build_task_model(c["model"], c["task"], c["hidden_size"], nu=c["nu"],
                                     rho=c["rho"], nonlinearity=c["nonlinearity"],
                                     init=c["init"], score_form=c.get("score_form"))
            model.load_state_dict(ckpt["model"])
        except UNREADABLE as e:
            failures.append(f"{str(candidate)!r} ({type(e).__name__}: {_one_line(e, 80)})")
            continue
        if i > 0:
            print(f"note: {failures[0]} cannot be read; loaded the run's trained weights "
                  f"from {str(candidate)!r}", file=sys.stderr)
        return model.to(dev).eval()
    raise ValueError(f"no readable weights in {str(out_dir)!r}: {'; '.join(failures)}; "
                     f"train the run again (the same command with --no-resume) or restore "
                     f"the file from where it was stored (data/)")
