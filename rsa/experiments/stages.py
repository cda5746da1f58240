"""The driver: :func:`reproduce` runs the plan of a scale stage by stage, reading and
writing where it is told (a :class:`~rsa.experiments.store.Store`).
"""

from __future__ import annotations

import os

import torch

from rsa import io
from rsa.experiments.cost import stage_cost
from rsa.experiments.gradients import stage_gradients
from rsa.experiments.plan import PLANS, STAGES, run_name, select_runs, train_runs
from rsa.experiments.population_stage import stage_train_populations
from rsa.experiments.store import Store
from rsa.experiments.train_stage import stage_train
from rsa.experiments.transfer import stage_transfer

_STAGE_FUNCS = {"train": stage_train, "transfer": stage_transfer,
                "gradients": stage_gradients, "cost": stage_cost}


def resolve_device(device: str) -> str:
    """``"auto"``: ``"cuda"`` when a GPU is available, else ``"cpu"``; other names are
    returned as given (:func:`check_device` checks them)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_device(device: str) -> None:
    """A ValueError in the words of ``--device`` when ``device`` is not cpu, cuda, cuda:N
    (or auto), or names a CUDA device this machine does not have."""
    from rsa.train import DeviceUnavailableError, torch_device

    try:
        torch_device(device)
    except ValueError:
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}"
                         ) from None
    except DeviceUnavailableError as e:
        raise ValueError(f"--device {device}: {e}".replace(
            " (device='cpu')", "")) from None


def set_deterministic() -> None:
    """Deterministic algorithms for GPU runs (``reproduce --deterministic``):
    ``torch.use_deterministic_algorithms(True)`` and the cuBLAS workspace setting it
    needs (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, set before CUDA starts). Every manifest
    records whether it was on (``machine.deterministic_algorithms``)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def reproduce(scale: str = "session", stages=STAGES, log=print,
              shard: tuple[int, int] | None = None, select=None,
              device: str = "cpu", data_dir=None, runs_dir=None,
              tensorboard: bool = False, budget: int | None = None,
              populations: bool = False) -> None:
    """Run the plan of ``scale`` stage by stage (skipping what is already stored).

    ``shard=(i, n)`` trains only every n-th run of the train stage, starting at run i
    (0 <= i < n), so that n processes (cores, GPUs) share the stage; it applies to
    ``stages=["train"]`` only, since the later stages read every trained run.
    ``select`` (glob patterns on run names such as ``"copy/*_T100_s0"``) trains only the
    matching runs (shards then split those); it applies to ``stages=["train"]`` only.
    ``device`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``) is where every stage trains
    or measures; each run's summary records where each part of it ran (``segments``),
    each stage's manifest the device. ``data_dir`` and ``runs_dir`` replace ``data/``
    and ``runs/`` (default: :func:`rsa.io.data_root`, :func:`rsa.io.runs_root`; a folder
    inside site-packages is refused). ``tensorboard`` also writes each training run's
    history as TensorBoard events in its folder under ``runs_dir`` (:mod:`rsa.train.scalars`).
    ``budget`` caps the updates of every training run below the plan's (a machine that
    cannot give a run its full budget): a run that reaches it is stored with
    ``stop_reason`` "budget" and ``steps`` = ``budget`` in its config (so it reads as
    not solved within ``budget`` updates), and a later call with a larger budget (or
    none) trains it further from its checkpoint under ``runs/<scale>/``.
    ``populations`` trains the seeds of one configuration as one population
    (:func:`rsa.experiments.population_stage.stage_train_populations`; the same stored files), and
    ``shard`` then splits populations (not with ``budget`` or ``tensorboard``).
    """
    device = resolve_device(device)
    check_device(device)
    if scale not in PLANS:
        raise ValueError(f"scale must be one of {sorted(PLANS)}, got {scale!r}")
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; accepted: {', '.join(STAGES)}")
    if shard is not None:
        i, n = shard
        if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
            raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
        if list(stages) != ["train"]:
            raise ValueError(f"shard applies to stages ['train'] only, got {list(stages)}")
    plan = PLANS[scale]
    if budget is not None:
        if not (isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1):
            raise ValueError(f"budget must be an int >= 1 (updates), got {budget!r}")
        if list(stages) != ["train"]:
            raise ValueError(f"budget applies to stages ['train'] only, got {list(stages)}")
    if select is not None and list(stages) != ["train"]:
        raise ValueError(f"select applies to stages ['train'] only, got {list(stages)}")
    if populations and (budget is not None or tensorboard):
        raise ValueError("populations cannot be combined with budget or tensorboard "
                         "(train those runs one by one)")
    if tensorboard and "train" in stages:
        from rsa.train.scalars import require_tensorboard

        require_tensorboard()
    store = Store(io.check_output_root(io.data_root() if data_dir is None else data_dir,
                                       "--data-dir", io.DATA_ENV),
                  io.check_output_root(io.runs_root() if runs_dir is None else runs_dir,
                                       "--runs-dir", io.RUNS_ENV))
    if select is not None and not select_runs(list(train_runs(plan, scale, store.data)),
                                              select):
        raise ValueError(f"select {list(select)!r} matches no run of the {scale!r} plan; "
                         f"run names look like {run_name('copy', 'relrnn', 100, 0)!r}")
    for s in STAGES:
        if s not in stages:
            continue
        if s == "train" and populations:
            stage_train_populations(scale, plan, store, log, shard or (0, 1), select, device)
        elif s == "train":
            stage_train(scale, plan, store, log, shard or (0, 1), select, device,
                        tensorboard, budget)
        else:
            _STAGE_FUNCS[s](scale, plan, store, log, device)
