"""The stored results under ``data/<scale>/``: one rule for when a run is done
(:func:`is_done`), loading the stored runs, the runs table, and writing a stage's result
with its manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rsa import io
from rsa.experiments.plan import plan_runs
from rsa.tasks import get_task


@dataclass(frozen=True)
class Store:
    """Where the experiments read and write: ``data`` (the stored results, ``data/``)
    and ``runs`` (training runs with their checkpoints, ``runs/``). Every stage, the
    status and the dry run take one; nothing is read from module globals."""

    data: Path
    runs: Path

    @classmethod
    def default(cls) -> Store:
        """``$RSA_DATA_DIR`` and ``$RSA_RUNS_DIR`` when set, else ``data/`` and ``runs/``
        of the checkout (:func:`rsa.io.data_root`, :func:`rsa.io.runs_root`), read now."""
        return cls(io.data_root(), io.runs_root())


RESULT_FILES = ("results.json", "history.csv", "manifest.json")


def load_stored_runs(scale: str, tasks=None, data=None,
                     variants: bool = False) -> tuple[dict, list[dict]]:
    """The plan's runs that ``data/<scale>/`` holds, complete: ``(stored, missing)``, with
    ``stored`` {name: :func:`rsa.io.load_run` dict + ``"spec"``} and ``missing`` the
    specs (:func:`plan_runs`) of the runs not stored yet (or stored unfinished). Only
    ``tasks`` (default all) are read. A plan that is still being run is read as far as
    it goes; the chapters say what is missing. The alternatives (runs with a
    ``variant``, :data:`ALTERNATIVES`) are read only with ``variants=True``."""
    data = io.data_root() if data is None else Path(data)
    stored, missing = {}, []
    for spec in plan_runs(scale, data):
        if tasks is not None and spec["task"] not in tasks:
            continue
        if spec.get("variant") is not None and not variants:
            continue
        folder = data / scale / spec["name"]
        if (folder / "results.json").is_file():
            run = io.load_run(folder)
            if run["complete"]:
                stored[spec["name"]] = {**run, "spec": spec}
                continue
        missing.append(spec)
    return stored, missing


# A run *exploded* at an evaluation whose validation loss is not finite or above this
# many times ln C, the loss of a uniform guess over the C classes (an untrained network
# has about ln C): only outputs that have blown up reach it. With modReLU nothing bounds
# the hidden state, and nothing keeps V orthogonal during training.
EXPLOSION_FACTOR = 10


def exploded_at(history: list[dict], n_classes: int) -> int | None:
    """The first evaluation step at which the run had *exploded*: a validation loss not
    finite or above :data:`EXPLOSION_FACTOR` x ln ``n_classes``. None if none."""
    bound = EXPLOSION_FACTOR * math.log(n_classes)
    for row in history:
        v = row["val_loss"]
        if v is None or not math.isfinite(v) or v > bound:
            return int(row["step"])
    return None


def runs_table(stored: dict):
    """One row per stored run (a pandas DataFrame): task, model, T, rho, seed, how it
    ended (``stop_reason``: solved, stalled, patience, budget), whether and when it was
    solved (update, wall and training time), the updates done, best and final
    validation accuracy and loss, test accuracy (pixel tasks), the training time per
    update, where it ran (device and CPU of its first part), its ``nonlinearity`` (None
    for the LSTM cells and the baselines) and ``exploded_step`` (:func:`exploded_at`;
    None if it never exploded)."""
    import pandas as pd

    rows = []
    for name, r in stored.items():
        c, s = r["config"], r["summary"]
        seg = (s.get("segments") or [{}])[0]
        rows.append({
            "nonlinearity": c.get("nonlinearity"),
            "exploded_step": exploded_at(r["history"].to_dict("records"),
                                         get_task(c["task"]).n_classes),
            "name": name, "task": c["task"], "model": c["model"], "T": c["T"],
            "rho": r["spec"].get("rho"), "seed": c["seed"], "budget": c["steps"],
            "stop_reason": s.get("stop_reason"), "solved": bool(s.get("solved")),
            "solved_step": s.get("solved_step"),
            "solved_wall_time_s": s.get("solved_wall_time_s"),
            "solved_train_time_s": s.get("solved_train_time_s"),
            "steps_done": s["steps_done"], "best_val_accuracy": s["best_val_accuracy"],
            "best_step": s["best_step"], "final_val_accuracy": s["final_val_accuracy"],
            "final_val_loss": s["final_val_loss"], "test_accuracy": s.get("test_accuracy"),
            "wall_time_s": s["wall_time_s"],
            "ms_per_update": 1e3 * s["train_time_s"] / max(1, s["steps_done"]),
            "device": seg.get("device"), "cpu": seg.get("cpu"),
            "parts": len(s.get("segments") or []),
        })
    return pd.DataFrame(rows)


def is_done(results: Path, steps: int) -> bool:
    """Whether the run stored at ``results`` is complete for a budget of ``steps``: it is
    complete and did not stop at a smaller budget (a run stopped by a reduced budget,
    ``reproduce(budget=...)``, is trained further from its checkpoint when the budget
    grows)."""
    if not results.is_file():
        return False
    stored = io.load_json(results)
    if not stored.get("complete", False):
        return False
    return not (stored.get("summary", {}).get("stop_reason") == "budget"
                and stored["config"]["steps"] < steps)


def run_states(scale: str, data=None) -> dict[str, str]:
    """Where each run of the plan of ``scale`` stands, by the one rule the train stage,
    ``--status`` and ``--dry-run`` all use (:func:`is_done`): ``"done"`` (stored
    complete for its budget), ``"reduced"`` (stored complete, but stopped by a smaller
    ``--budget``: the train stage trains it further) or ``"missing"`` (not stored, or
    stored unfinished). The authors' alternatives (runs with a ``variant``) included."""
    data = io.data_root() if data is None else Path(data)
    states = {}
    for r in plan_runs(scale, data):
        results = data / scale / r["name"] / "results.json"
        if is_done(results, r["steps"]):
            states[r["name"]] = "done"
        elif results.is_file() and io.load_json(results).get("complete", False):
            states[r["name"]] = "reduced"
        else:
            states[r["name"]] = "missing"
    return states


def write_stage(out: Path, scale: str, stage: str, parameters: dict, *, seed: int,
                 wall_time_s: float, tables: dict | None = None,
                 files: list[str] | None = None, extra: dict | None = None,
                 device: str = "cpu") -> None:
    """Write a stage's tables, then its ``manifest.json``, each atomically
    (:mod:`rsa.io`), so that the manifest never describes a table not yet written.

    ``tables``: {file name: rows} or {file name: (rows, fieldnames)}; ``files``: what
    the manifest lists (default: the tables and the manifest). The manifest records
    ``parameters``, ``seed``, ``wall_time_s``, ``extra``, the ``device`` it ran on and
    the command that regenerates the stage."""
    tables = tables or {}
    for name, rows in tables.items():
        rows, fieldnames = rows if isinstance(rows, tuple) else (rows, None)
        io.write_csv(out / name, rows, fieldnames=fieldnames)
    io.write_json(out / "manifest.json", io.build_manifest(
        parameters, seed=seed, wall_time_s=wall_time_s, device=device,
        command=f"python -m rsa reproduce --scale {scale} --stages {stage}",
        files=files if files is not None else [*tables, "manifest.json"], extra=extra))
