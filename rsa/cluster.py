"""The experiment plan on a cluster (``python -m rsa reproduce --executor slurm``) and
its estimated cost (``reproduce --dry-run``).

- :func:`submit`: through submitit (the optional ``cluster`` extra), the train stage as
  one SLURM job array, one element per run not stored yet (:class:`PlanJob` on the
  run's name), and each later stage (transfer, gradients, cost) as a job that starts
  when every element has succeeded (``--dependency=afterok:<array>``). Jobs get
  SIGUSR2 before their time limit or a preemption (submitit's ``--signal``); the
  training loop (:func:`rsa.train.train`) finishes its update, saves its checkpoint and
  stops, and :class:`PlanJob` hands the signal to submitit, which requeues the job: the
  next attempt resumes from the checkpoint, update for update. With ``cluster="local"``
  or ``"debug"`` (submitit's executors on this machine: the tests) the later stages wait
  for the array instead.
- :func:`dry_run`: the plan's runs with updates x measured time per update on the
  chosen device, from the stored measurements (:func:`update_cost`).

The stages themselves are :func:`rsa.experiments.reproduce`'s: a job runs
``reproduce`` on its part of the plan, so everything it writes (atomically, with
manifests) is what a local run writes.
"""

from __future__ import annotations

import glob
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from rsa import experiments, io

__all__ = ["PlanJob", "submit", "dry_run", "update_cost", "INSTALL", "REQUEUE_SIGNALS"]

INSTALL = "pip install 'rsa[cluster]' (or: pip install submitit)"
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # SLURM's warnings before the end
GPU_BENCH = Path("gpu") / "gpu_session.log"  # under data/: `rsa bench --device cuda`


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ValueError(f"--executor slurm needs the submitit package, which is not "
                         f"installed; install it with {INSTALL}") from None
    return submitit


@dataclass
class PlanJob:
    """One job: ``reproduce`` of ``stages`` of the plan ``scale`` (the :class:`Plan`
    travels with the job, so a plan defined in Python runs as well), with ``select`` the
    run's name when called on one (an array element). Checkpointable for submitit: on
    preemption or time-out the job is submitted again as it was, and the training run
    resumes from its checkpoint."""

    scale: str
    plan: experiments.Plan
    stages: tuple[str, ...]
    device: str
    data_dir: str
    runs_dir: str
    tensorboard: bool = False
    deterministic: bool = False
    threads: int = 1

    def __call__(self, name: str | None = None):
        import torch

        torch.set_num_threads(self.threads)
        if self.deterministic:
            experiments.set_deterministic()
        experiments.PLANS.setdefault(self.scale, self.plan)
        select = None if name is None else [glob.escape(name)]
        try:
            experiments.reproduce(self.scale, list(self.stages), log=_log, select=select,
                                  device=self.device, data_dir=self.data_dir,
                                  runs_dir=self.runs_dir, tensorboard=self.tensorboard)
        except SystemExit as e:  # stopped by a signal, its checkpoint saved
            signum = e.code - 128 if isinstance(e.code, int) else None
            if signum in REQUEUE_SIGNALS:
                handler = signal.getsignal(signum)  # submitit's again: requeue and exit
                if callable(handler):
                    handler(signum, None)
            raise
        return name if name is not None else list(self.stages)

    def checkpoint(self, *args, **kwargs):
        """What submitit resubmits after a preemption or time-out: the same call (the
        run's checkpoint makes it resume)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _log(line: str) -> None:
    print(line, flush=True)


def _todo(scale: str, select, data: Path) -> list[str]:
    """Names of the plan's runs (matching ``select``) whose results are not stored
    complete under ``data``."""
    runs = experiments.plan_runs(scale)
    runs = experiments._selected(runs, select)
    if select is not None and not runs:
        raise ValueError(f"--select {' '.join(select)} matches no run of the {scale!r} "
                         f"plan; run names look like "
                         f"{experiments.run_name('copy', 'relrnn', 100, 0)!r}")
    todo = []
    for r in runs:
        results = data / scale / r["name"] / "results.json"
        if not (results.is_file() and io.load_json(results).get("complete", False)):
            todo.append(r["name"])
    return todo


def submit(scale: str, stages=experiments.STAGES, *, cluster: str = "slurm",
           select=None, device: str = "auto", deterministic: bool = False,
           tensorboard: bool = False, threads: int = 1, data_dir=None, runs_dir=None,
           folder=None, partition: str | None = None, gpus: int | None = None,
           cpus: int | None = None, mem_gb: float = 8, time_min: int = 24 * 60,
           max_parallel: int | None = None, max_timeouts: int = 10, shard=None,
           log=_log) -> dict:
    """Submit the plan of ``scale`` through submitit; returns ``{"array": [jobs],
    "stages": {stage: job}}`` (submitit ``Job`` objects).

    ``cluster``: ``"slurm"`` (``reproduce --executor slurm``), or submitit's ``"local"``
    and ``"debug"`` executors, which run here (the later stages then wait for the
    array). ``device`` is resolved on the node (``auto``: its GPU if it has one), so the
    machine that submits needs none. ``gpus`` (default 1 for a CUDA or auto device),
    ``cpus`` (default ``threads``), ``mem_gb``, ``time_min``, ``partition`` and
    ``max_parallel`` (array elements at a time) are the SLURM request of every job;
    a job that reaches ``time_min`` is requeued up to ``max_timeouts`` times
    (preemptions do not count);
    ``folder`` is submitit's (scripts, logs; default ``<runs>/slurm/<scale>``).
    """
    from rsa.train import _check_device_name

    if shard is not None:
        raise ValueError("--shard is for processes started by hand; with --executor slurm "
                         "every run is an element of the job array: leave --shard out")
    if scale not in experiments.PLANS:
        raise ValueError(f"--scale must be one of {sorted(experiments.PLANS)}, got {scale!r}")
    bad = [s for s in stages if s not in experiments.STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; accepted: {', '.join(experiments.STAGES)}")
    if device != "auto":
        try:
            _check_device_name(device)
        except ValueError:
            raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}"
                             ) from None
    for name, value, low in (("--gpus", gpus, 0), ("--cpus", cpus, 1), ("--threads", threads, 1),
                             ("--time-min", time_min, 1), ("--max-parallel", max_parallel, 1),
                             ("--max-timeouts", max_timeouts, 0)):
        if value is not None and value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if mem_gb <= 0:
        raise ValueError(f"--mem-gb must be > 0, got {mem_gb}")
    if tensorboard and "train" in stages:
        from rsa.scalars import require_tensorboard

        require_tensorboard()
    submitit = _submitit()
    data = io.check_output_root(experiments.DATA if data_dir is None else data_dir,
                                "--data-dir", io.DATA_ENV)
    runs = io.check_output_root(experiments.RUNS if runs_dir is None else runs_dir,
                                "--runs-dir", io.RUNS_ENV)
    folder = Path(folder) if folder is not None else runs / "slurm" / scale
    if gpus is None:
        gpus = 0 if device == "cpu" else 1
    job = PlanJob(scale, experiments.PLANS[scale], ("train",), device, str(data), str(runs),
                  tensorboard, deterministic, threads)
    extra = {"slurm_max_num_timeout": max_timeouts} if cluster == "slurm" else {}
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **extra)
    except RuntimeError as e:  # submitit finds no srun: not a SLURM machine
        raise ValueError(f"--executor {cluster}: {e} (submit from a machine of the "
                         f"cluster, where srun and sbatch are on PATH)") from None
    params = {"name": f"rsa-{scale}-train", "timeout_min": time_min, "mem_gb": mem_gb,
              "cpus_per_task": cpus or threads, "tasks_per_node": 1, "nodes": 1}
    if cluster == "slurm":
        if gpus:
            params["gpus_per_node"] = gpus
        if partition:
            params["slurm_partition"] = partition
        if max_parallel:
            params["slurm_array_parallelism"] = max_parallel
    executor.update_parameters(**params)

    out = {"array": [], "stages": {}}
    if "train" in stages:
        names = _todo(scale, select, data)
        if names:
            with executor.batch():  # one array: one element per run
                out["array"] = [executor.submit(job, name) for name in names]
            array_id = out["array"][0].job_id.split("_")[0]
            log(f"[submit] train: {len(names)} run(s) as job "
                f"{'array ' if len(names) > 1 else ''}{array_id} ({folder})")
        else:
            log("[submit] train: every selected run is stored; no array")
    later = [s for s in experiments.STAGES if s in stages and s != "train"]
    if later and out["array"]:
        if cluster == "slurm":
            array_id = out["array"][0].job_id.split("_")[0]
            executor.update_parameters(
                slurm_additional_parameters={"dependency": f"afterok:{array_id}"})
        else:  # here: wait for the array (raises if a run failed)
            for j in out["array"]:
                j.result()
    for s in later:
        executor.update_parameters(name=f"rsa-{scale}-{s}")
        out["stages"][s] = executor.submit(
            PlanJob(scale, job.plan, (s,), device, str(data), str(runs), False,
                    deterministic, threads))
        log(f"[submit] {s}: job {out['stages'][s].job_id}"
            + (" (after the array)" if out["array"] and cluster == "slurm" else ""))
    if cluster != "slurm":
        for j in out["stages"].values():
            j.result()
    return out


# -- cost estimates (--dry-run) ---------------------------------------------------------

def _interp(points: dict[int, float], T: int) -> tuple[float, str]:
    """Time per update at ``T`` from measurements ``{T: ms}``: the measured value, or
    linear interpolation between the nearest two (extrapolation beyond the ends)."""
    if T in points:
        return points[T], "measured"
    Ts = sorted(points)
    if len(Ts) == 1:
        return points[Ts[0]] * T / Ts[0], f"scaled from T={Ts[0]}"
    lo = max([t for t in Ts if t < T], default=Ts[0])
    hi = min([t for t in Ts if t > T], default=Ts[-1])
    if lo == hi:  # outside the range: the two nearest points
        lo, hi = (Ts[0], Ts[1]) if T < Ts[0] else (Ts[-2], Ts[-1])
    ms = points[lo] + (points[hi] - points[lo]) * (T - lo) / (hi - lo)
    return ms, f"interpolated from T={lo},{hi}"


def _cpu_bench(data: Path, scale: str) -> tuple[dict, str | None]:
    for s in (scale, "converged", "session"):
        path = data / s / "cost" / "cost.csv"
        if path.is_file():
            table = io.load_csv(path)
            table = table[table["batch"] == 10]
            points: dict = {}
            for r in table.itertuples():
                if r.time_ms == r.time_ms:  # not a skipped (NaN) row
                    points.setdefault(r.model, {})[int(r.T)] = float(r.time_ms)
            return points, str(Path(s) / "cost" / "cost.csv")
    return {}, None


def _gpu_bench(data: Path) -> tuple[dict, str | None]:
    """The CUDA bench table in ``data/gpu/gpu_session.log`` (``rsa bench --device cuda``:
    ``| model | T | B | median ms | ...``), batch 10 rows."""
    path = data / GPU_BENCH
    if not path.is_file():
        return {}, None
    points: dict = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\|\s*(\w+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|", line)
        if m and int(m[3]) == 10:
            points.setdefault(m[1], {})[int(m[2])] = float(m[4])
    return points, str(GPU_BENCH)


def update_cost(scale: str, device: str, data=None) -> dict:
    """Where the time per update of each run comes from, on ``device`` (``cpu``, or any
    CUDA device): ``{"sequence": {model: {T: ms}}, "sequence_source": file,
    "pixel": {(task, model): ms}, "pixel_source": str}``.

    Copy and denoise (batch 10, n = 128): on the CPU the cost stage's ``cost.csv`` (one
    thread), on a GPU the CUDA bench in ``data/gpu/gpu_session.log`` (one H200, alone).
    Pixel tasks (batch 100, n = 100): on the CPU the median training time per update of
    the stored runs of the same task and model; no measurement on a GPU."""
    data = Path(experiments.DATA if data is None else data)
    gpu = device.startswith("cuda")
    seq, seq_source = _gpu_bench(data) if gpu else _cpu_bench(data, scale)
    pixel: dict = {}
    pixel_source = None
    if not gpu:
        for s in (scale, "converged", "session"):
            if s not in experiments.PLANS or not (data / s).is_dir():
                continue
            stored, _ = experiments.load_stored_runs(s, tasks=("digits", "pdigits"),
                                                     data=data)
            table = experiments.runs_table(stored)
            if len(table):
                for (task, model), g in table.groupby(["task", "model"]):
                    pixel[(task, model)] = float(g["ms_per_update"].median())
                pixel_source = f"stored runs of {s}/digits, {s}/pdigits"
                break
    return {"sequence": seq, "sequence_source": seq_source, "pixel": pixel,
            "pixel_source": pixel_source}


def estimate(scale: str, device: str = "cpu", select=None, data=None) -> list[dict]:
    """One row per run of the plan (or of ``select``): name, updates (the budget: runs
    with stopping rules may stop earlier), ms per update and where it comes from, the
    estimated hours of training updates (evaluations excluded), and whether the run is
    already stored complete for its budget (then nothing is left to run; a run stopped
    by a smaller ``--budget`` is not: the train stage trains it further)."""
    data = Path(experiments.DATA if data is None else data)
    cost = update_cost(scale, device, data)
    states = experiments.run_states(scale, data)  # the one rule (status, stages)
    rows = []
    for r in experiments._selected(experiments.plan_runs(scale), select):
        stored = states[r["name"]] == "done"
        ms, source = None, "no measurement"
        if r["task"] in ("copy", "denoise"):
            points = cost["sequence"].get(r["model"])
            if points:
                ms, how = _interp(points, r["T"])
                source = f"{how} ({cost['sequence_source']})"
        elif (r["task"], r["model"]) in cost["pixel"]:
            ms, source = cost["pixel"][(r["task"], r["model"])], cost["pixel_source"]
        rows.append({"name": r["name"], "updates": r["steps"], "ms_per_update": ms,
                     "source": source, "stored": bool(stored),
                     "reduced": states[r["name"]] == "reduced",
                     "hours": None if ms is None else r["steps"] * ms / 3.6e6})
    return rows


def dry_run(scale: str, device: str = "cpu", select=None, data_dir=None) -> str:
    """``reproduce --dry-run``: :func:`estimate` as a Markdown table and the totals in
    hours, for the runs not stored yet and for the whole plan."""
    import pandas as pd

    if scale not in experiments.PLANS:
        raise ValueError(f"--scale must be one of {sorted(experiments.PLANS)}, got {scale!r}")
    device = experiments.resolve_device(device)
    if device != "cpu":
        from rsa.train import _check_device_name

        try:
            _check_device_name(device)
        except ValueError:
            raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}"
                             ) from None
    rows = estimate(scale, device, select, data_dir)
    if select is not None and not rows:
        raise ValueError(f"--select {' '.join(select)} matches no run of the {scale!r} plan")
    table = pd.DataFrame(rows)
    shown = table.assign(
        ms_per_update=table["ms_per_update"].map(lambda v: "—" if v != v or v is None
                                                 else f"{v:.1f}"),
        hours=table["hours"].map(lambda v: "—" if v != v or v is None else f"{v:.2f}"),
        stored=table["stored"].map({True: "yes", False: ""}))
    todo = table[~table["stored"]]
    known = todo[todo["hours"].notna()]
    unknown = todo[todo["hours"].isna()]
    kind = "GPU" if device.startswith("cuda") else "CPU"
    reduced = int(todo["reduced"].sum())
    lines = [f"Plan {scale!r} on {device}: {len(table)} runs, {len(table) - len(todo)} "
             f"stored, {len(todo)} to run" + (
                 f" ({reduced} of them stored at a reduced budget, to train further)"
                 if reduced else "") + ".", "", shown.drop(columns=["reduced"])
             .to_markdown(index=False), "",
             f"Estimated {kind} time of the {len(known)} runs to run that have a "
             f"measurement: {known['hours'].sum():.1f} {kind}-hours "
             f"(whole plan: {table['hours'].sum():.1f}), for their full budget of "
             f"updates (runs with stopping rules may stop earlier; evaluations are not "
             f"counted), one run per {kind}."]
    if len(unknown):
        lines.append(f"No measurement of the time per update on {device} for "
                     f"{len(unknown)} run(s) to run: "
                     + ", ".join(sorted({n.split('/')[0] + '/' + n.split('/')[1].split('_')[0]
                                         for n in unknown['name']})) + ".")
    return "\n".join(lines)
