"""The campaign: the runs that decide the book's verdicts, without the stall rule.

The converged plan (:mod:`rsa.experiments`) stops a copy/denoise run after 20 000
updates, or after 5 000 updates without progress (its stall rule): at least 10 times
fewer than the authors' 200 000 updates. A run it did not solve is *not solved within*
its updates, never a verdict on the model. The campaign trains the cells that decide a
claim of the paper without the stall rule, each until it is solved or its budget is
spent: the authors' 200 000 updates for RelLSTM and RelRNN (cells a, b, c, g), smaller
budgets, stated beside the authors' (:attr:`Job.authors`), for SAB with its release's
training (d), the modReLU cells at lr 2e-4 (e) and MNIST (f). The book's page
*Reproducibility* shows the table of :func:`status_table`; the chapters quote its
outcomes with their regime.

A campaign run takes days of CPU and outlasts the machine it started on: its in-flight
state (the run's whole checkpoint: weights, optimizer, data-stream and RNG states,
history, stopping record) is committed as one file per run,
``data/paper/inflight/<task>/<name>.pt``, replaced in place (:func:`snapshot`), and a
fresh clone resumes it exactly with ``python -m rsa reproduce --scale paper``
(:func:`run`, which first copies a committed state that is ahead of the work folder's
checkpoint into it). A finished run is stored as the converged plan stores its runs,
``data/paper/<task>/<name>/`` (results, history, manifest, weights), and its in-flight
file is removed.

The jobs, their budgets and their ``python -m rsa train`` commands are defined in
:mod:`rsa.experiments.campaign_jobs` (re-exported here); on a SLURM cluster they are
submitted by :func:`rsa.experiments.cluster.submit_campaign`.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from pathlib import Path

from rsa import io
from rsa.experiments.campaign_jobs import (  # noqa: F401  (the campaign's jobs, re-exported)
    AUTHORS_STEPS,
    JOBS,
    SCALE,
    Job,
    job_command,
    job_runs,
)

__all__ = ["Job", "JOBS", "AUTHORS_STEPS", "job_command", "job_runs", "jobs_left", "run",
           "snapshot",
           "status_table", "kernel_parts", "classification_status", "restore_inflight",
           "main"]

INFLIGHT = "inflight"
RESULT_FILES = ("results.json", "history.csv", "manifest.json", "model.pt")


# -- the committed in-flight state -------------------------------------------------------

def _inflight(data: Path, name: str) -> Path:
    return data / SCALE / INFLIGHT / f"{name}.pt"


def _checkpoint_step(path: Path) -> int | None:
    """The updates a checkpoint holds, or None if it cannot be read."""
    import torch

    from rsa.train.checkpoint import UNREADABLE

    try:
        io.check_torch_file(path)
        return int(torch.load(path, map_location="cpu", weights_only=True)["state"]["step"])
    except UNREADABLE:  # an unreadable file is no state to use
        return None


def _stored(data: Path, name: str) -> bool:
    results = data / SCALE / name / "results.json"
    return results.is_file() and io.load_json(results).get("complete") is True


def restore_inflight(job: Job, data: Path, runs: Path, log=print) -> None:
    """Copy each run's committed in-flight state into its work folder when the folder
    has no checkpoint, or one with fewer updates (a fresh clone, another machine)."""
    from rsa.train import CHECKPOINT

    for _, name, work in job_runs(job, runs):
        committed = _inflight(data, name)
        if not committed.is_file():
            continue
        have = _checkpoint_step(work / CHECKPOINT) if (work / CHECKPOINT).is_file() else None
        step = _checkpoint_step(committed)
        if step is None:
            raise ValueError(f"the committed in-flight state {str(committed)!r} cannot be "
                             f"read; restore it from git history (git log -- {committed}) "
                             f"or delete it to start {name} over")
        if have is None or have < step:
            work.mkdir(parents=True, exist_ok=True)
            io.atomic_write_bytes(work / CHECKPOINT, committed.read_bytes())
            log(f"    {name}: resuming from the committed state at update {step}"
                + ("" if have is None else f" (the work folder held {have})"))


def _store(name: str, work: Path, data: Path) -> None:
    """Store a finished run's files in ``data/paper/<name>/`` and drop its in-flight
    file; a run whose manifest records a dirty tree without its diff is refused."""
    io.check_provenance(io.load_json(work / "manifest.json"), str(work / "manifest.json"))
    dest = data / SCALE / name
    for f in RESULT_FILES:
        io.atomic_write_bytes(dest / f, (work / f).read_bytes())
    _inflight(data, name).unlink(missing_ok=True)


def snapshot(data: Path, runs: Path, log=print, jobs=JOBS, wait_s: float = 60) -> int:
    """Bring ``data/paper/`` up to date with the work folders: store every finished run,
    and copy the checkpoint of every unfinished one that is ahead of its committed
    in-flight state. A population's runs are copied at the same update (the snapshot
    waits up to ``wait_s`` for a population that is writing them). Returns the number
    of files written."""
    from rsa.train import CHECKPOINT

    written = 0
    for job in jobs:
        members = []
        for _, name, work in job_runs(job, runs):
            if _stored(data, name):
                continue
            results = work / "results.json"
            if results.is_file() and io.load_json(results).get("complete") is True:
                _store(name, work, data)
                log(f"{name}: finished; stored in {data / SCALE / name}")
                written += 1
            elif (work / CHECKPOINT).is_file():
                members.append((name, work))
        if not members:
            continue
        deadline = time.monotonic() + wait_s
        while True:
            steps = {name: _checkpoint_step(work / CHECKPOINT) for name, work in members}
            if len(set(steps.values())) == 1 and None not in steps.values():
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the population's checkpoints stay at different "
                                   f"updates {steps}; snapshot again")
            time.sleep(1)
        for name, work in members:
            committed = _inflight(data, name)
            have = _checkpoint_step(committed) if committed.is_file() else None
            if have is None or have < steps[name]:
                io.atomic_write_bytes(committed, (work / CHECKPOINT).read_bytes())
                log(f"{name}: in-flight state at update {steps[name]} -> {committed}")
                written += 1
    return written


# -- training -----------------------------------------------------------------------------

def _runnable(args: dict, log=print) -> dict:
    """A job's arguments as this machine can train them: on the torch kernel, said, where
    the compiled kernel is asked for and numba is missing (both compute the same
    function, and each part of a run records its kernel)."""
    from rsa.models.kernels.compiled import available

    if args.get("kernel") == "compiled" and not available():
        log("    numba is not installed here: training on the torch kernel instead of the "
            "compiled one (the same function; pip install -e '.[compiled]' for the "
            "compiled kernel)")
        return {**args, "kernel": "torch"}
    return args


def _selected(job: Job, select) -> bool:
    """Whether ``select`` (cell letters or run names; None: every job) names ``job``."""
    return not select or job.cell in select or bool(
        {job.name(s) for s in job.seeds} & set(select))


def jobs_left(data: Path, select=None, jobs=JOBS) -> list[Job]:
    """The jobs (of ``select``: cell letters or run names) with a run not stored under
    ``data``, in order; a ValueError naming the items of ``select`` that name no job."""
    unknown = [x for x in select or () if not any(_selected(job, [x]) for job in jobs)]
    if unknown:
        raise ValueError(f"--select {' '.join(unknown)} names no campaign job; give cell "
                         f"letters ({', '.join(sorted({j.cell for j in jobs}))}) or run "
                         f"names such as {jobs[0].name(jobs[0].seeds[0])!r} (exact names: "
                         f"no patterns with --scale paper)")
    chosen = [job for job in jobs if _selected(job, select)]
    return [job for job in chosen if any(not _stored(data, job.name(s)) for s in job.seeds)]


def _on_device(args: dict, device: str) -> dict:
    """The job's arguments on ``device`` (``auto``: this machine's GPU if it has one):
    on a GPU with the torch kernel, the compiled one being CPU-only (both compute the
    same function; each part of a run records its device and kernel)."""
    from rsa.experiments.stages import resolve_device

    device = resolve_device(device)
    if device == "cpu":
        return args
    return {**args, "device": device, "kernel": "torch"}


def run(data: Path, runs: Path, select=None, log=print, jobs=JOBS, device: str = "cpu"
        ) -> list[str]:
    """Train the campaign's jobs in order (or those whose cell letter or run name is in
    ``select``) on ``device`` (:func:`_on_device`), each resumed from its work folder or
    its committed in-flight state; a job that another process trains (its lock) is left
    to it. Returns the names of the runs so left."""
    from rsa.train import train
    from rsa.train.lock import claim
    from rsa.train.population import train_population

    left = []
    for k, job in enumerate(jobs, 1):
        if not _selected(job, select):
            continue
        todo = [(s, n, w) for s, n, w in job_runs(job, runs) if not _stored(data, n)]
        label = f"[{job.cell} {k}/{len(jobs)}] {job.title}, seeds {list(job.seeds)}"
        if not todo:
            log(f"{label}: done")
            continue
        with contextlib.ExitStack() as claims:
            owners = [claims.enter_context(claim(w)) for _, _, w in todo]
            if any(o is not None for o in owners):
                log(f"{label}: being trained by "
                    f"{next(o for o in owners if o is not None)}; skipped")
                left += [n for (_, n, _), o in zip(todo, owners, strict=True) if o is not None]
                continue
            restore_inflight(job, data, runs, log)
            log(f"{label}: training up to {job.args['steps']} updates")
            args = _runnable(_on_device(job.args, device), log)
            if job.population:
                train_population(seeds=[s for s, _, _ in todo],
                                 out_dirs=[str(w) for _, _, w in todo], progress=False,
                                 **args)
            else:
                s, _, w = todo[0]
                train(seed=s, out_dir=str(w), progress=False, **args)
            for _, name, work in todo:
                _store(name, work, data)
                log(f"    {name}: stored")
    return left


# -- the campaign table -------------------------------------------------------------------

def _progress(data: Path, name: str) -> dict | None:
    """Where a run stands: from its stored results when finished, else from its
    committed in-flight state; None when neither exists."""
    import torch

    stored = data / SCALE / name / "results.json"
    if stored.is_file() and io.load_json(stored).get("complete") is True:
        record = io.load_json(stored)
        s = record["summary"]
        return {"step": s["steps_done"], "best": s["best_val_accuracy"],
                "wall_s": s["wall_time_s"], "reason": s.get("stop_reason"),
                "solved_step": s.get("solved_step"), "rate": None, "finished": True,
                "kernel": kernel_parts(s.get("segments") or [], record["config"]),
                "exploded": _exploded(record.get("history") or [], record["config"])}
    committed = _inflight(data, name)
    if not committed.is_file():
        return None
    ckpt = torch.load(committed, map_location="cpu", weights_only=True)
    st = ckpt["state"]
    hist = st["history"]
    # seconds per update: the median over the last 20 logged intervals, so that one
    # interval spanning a pause (a stopped or restarted process) does not set the pace;
    # only those since the run last changed kernel or device, once there are three
    pairs = [(a, b) for a, b in zip(hist[:-1], hist[1:], strict=True) if b["step"] > a["step"]]
    segs = st.get("segments") or []
    start = None  # where the trailing parts on the last part's kernel and device begin
    for seg in reversed(segs):
        if _computed_on(seg, {}) != _computed_on(segs[-1], {}):
            break
        start = seg["start_step"]
    current = [(a, b) for a, b in pairs if start is not None and a["step"] >= start]
    rates = [(b["wall_time_s"] - a["wall_time_s"]) / (b["step"] - a["step"])
             for a, b in (current if len(current) >= 3 else pairs)[-20:]]
    rate = statistics.median(rates) if rates else None
    return {"step": st["step"], "best": st["best_val_accuracy"], "wall_s": st["wall_time_s"],
            "reason": None, "solved_step": None, "rate": rate, "finished": False,
            "kernel": kernel_parts(st.get("segments") or [], ckpt.get("config", {})),
            "exploded": _exploded(hist, ckpt.get("config", {}))}


def _exploded(history: list[dict], config: dict) -> int | None:
    """The update at which a copy/denoise run exploded (:func:`rsa.experiments.exploded_at`,
    as the chapter *Copy and denoise* diagnoses it), or None: never, or another task."""
    from rsa.experiments.store import exploded_at
    from rsa.tasks import get_task

    task = config.get("task")
    if task is None or get_task(task).kind != "sequence":
        return None
    return exploded_at(history, get_task(task).n_classes)


def _computed_on(seg: dict, config: dict) -> str:
    """A part's kernel, and its device when that is not the CPU: ``"compiled"``,
    ``"torch on cuda"`` (a part recorded before parts named their kernel ran on its
    config's, absent meaning torch)."""
    kernel = seg.get("kernel", config.get("kernel", "torch"))
    device = seg.get("device", config.get("device", "cpu"))
    return kernel if device == "cpu" else f"{kernel} on {device}"


def kernel_parts(segments: list[dict], config: dict) -> str:
    """The kernel(s) a run trained on, from its parts (``segments``), with the device of
    a part not on the CPU: ``"torch"``, ``"compiled"``, ``"torch, compiled from 47 045"``
    or ``"compiled, torch on cuda from 60 000"``."""
    words: list[str] = []
    last = None
    for seg in segments:
        k = _computed_on(seg, config)
        if k != last:
            words.append(k if last is None else f"{k} from {_n(seg['start_step'])}")
            last = k
    return ", ".join(words) or _computed_on({}, config)


def _n(k: int) -> str:
    """20000 -> "20 000", as the book writes numbers."""
    return f"{int(k):,}".replace(",", " ")


def _finished(reason) -> str:
    """How a finished classification run stopped, in the words of both campaign tables:
    "stopped by patience" (early stopping), "reached its budget", or "stopped: ..."
    (e.g. "stopped: diverged (NaN loss)")."""
    from rsa.train import stop_in_words

    return {"patience": "stopped by patience", "budget": "reached its budget"}.get(
        reason, "stopped: " + stop_in_words(reason, missing="no reason recorded"))


def status_table(data: Path, jobs=JOBS):
    """One row per campaign run (a pandas DataFrame): its cell, title, name, budget and
    the authors', updates done, best validation accuracy so far, CPU-hours spent (one
    thread per job, or of a GPU for the parts of a run on one, which its kernel column
    names; a population's runs share one process, whose time, the clock of its run that
    trained longest, is counted once, on its first run),
    the estimate to finish the budget at the recent speed, the kernel it trained on
    (:func:`kernel_parts`; for a run not started, its job's), and its state (solved at,
    not solved within, in flight, not started; with the update at which a copy/denoise
    run exploded, if it did)."""
    import pandas as pd

    from rsa.tasks import get_task

    rows = []
    for job in jobs:
        progress = [_progress(data, job.name(seed)) for seed in job.seeds]
        # a population's runs train in one process, each until it stops: the process's
        # time is the clock of its run that trained longest
        together = max((p["wall_s"] for p in progress if p is not None), default=None)
        for i, (seed, p) in enumerate(zip(job.seeds, progress, strict=True)):
            name = job.name(seed)
            budget = job.args["steps"]
            row = {"cell": job.cell, "run": name, "what": job.title, "budget": budget,
                   "authors' budget": job.authors or None, "updates done": None,
                   "best val. accuracy": None, "CPU-hours": None, "hours to budget": None,
                   "kernel": job.args.get("kernel", "torch"), "state": "not started"}
            if p is not None:
                shared = job.population and i > 0
                row.update({
                    "updates done": p["step"], "best val. accuracy": p["best"],
                    "CPU-hours": None if shared else
                    (together if job.population else p["wall_s"]) / 3600,
                    "kernel": p["kernel"]})
                if p["finished"] and get_task(job.args["task"]).kind != "sequence":
                    # a classification run (MNIST): no solved rule, early stopping
                    row["state"] = f"finished at {_n(p['step'])}, {_finished(p['reason'])}"
                elif p["finished"]:
                    row["state"] = (f"solved at {_n(p['solved_step'])}" if p["solved_step"]
                                    else f"not solved within {_n(p['step'])} "
                                    f"({'NaN loss' if p['reason'] == 'nan' else p['reason']})")
                else:
                    row["state"] = "in flight"
                    if p["rate"] is not None and not shared:
                        row["hours to budget"] = (budget - p["step"]) * p["rate"] / 3600
                if p["exploded"] is not None:  # the chapter's diagnosis, with where
                    row["state"] += f", exploded at {_n(p['exploded'])}"
            rows.append(row)
    return pd.DataFrame(rows)


def classification_status(data: Path, steps_per_epoch: int, jobs=JOBS) -> list[dict]:
    """The campaign's classification runs (MNIST, cell f), one dict each: model, epochs
    done (None: not started), budget in epochs, best validation accuracy, the test
    accuracy of the best-validation weights (a finished run only), CPU-hours, and the
    state ("stopped by patience", "reached its budget", "in flight", "not started").
    The book's chapter *Sequential digits and MNIST* shows it."""
    import pandas as pd

    from rsa.tasks import get_task

    def value(v):  # the table's missing values (None or NaN) as None
        return None if v is None or pd.isna(v) else v

    table = status_table(data, jobs)
    rows = []
    for job in jobs:
        if get_task(job.args["task"]).kind == "sequence":
            continue
        for seed in job.seeds:
            row = table[table["run"] == job.name(seed)].iloc[0]
            results = data / SCALE / job.name(seed) / "results.json"
            record = io.load_json(results) if results.is_file() else None
            s = record["summary"] if record and record.get("complete") is True else None
            done = value(row["updates done"])
            rows.append({
                "model": job.args["model"],
                "epochs done": None if done is None else done / steps_per_epoch,
                "budget (epochs)": job.args["steps"] / steps_per_epoch,
                "best validation accuracy": value(row["best val. accuracy"]),
                "test accuracy (best weights)": None if s is None
                else s["best_model_test_accuracy"],
                "CPU-hours": value(row["CPU-hours"]),
                "state": row["state"] if s is None else _finished(s["stop_reason"])})
    return rows


def format_status(data: Path, jobs=JOBS, table=None) -> str:
    """:func:`status_table` (or ``table``, some of its columns) as Markdown, with the
    size of the committed in-flight files."""
    table = status_table(data, jobs) if table is None else table
    shown = table.astype(object).where(table.notna(), "—")
    for col, fmt in (("CPU-hours", "{:.1f}"), ("hours to budget", "{:.1f}"),
                     ("best val. accuracy", "{:.3f}")):
        if col in shown:
            shown[col] = [fmt.format(v) if isinstance(v, float) and math.isfinite(v) else v
                      for v in shown[col]]
    for col in ("budget", "authors' budget", "updates done"):
        if col in shown:
            shown[col] = [f"{int(v):,}".replace(",", " ") if isinstance(v, int | float)
                      and v == v else v for v in shown[col]]
    folder = data / SCALE / INFLIGHT
    size = sum(f.stat().st_size for f in folder.rglob("*.pt")) if folder.is_dir() else 0
    files = len(list(folder.rglob("*.pt"))) if folder.is_dir() else 0
    return (shown.to_markdown(index=False) + f"\n\nIn-flight state committed: "
            f"{size / 2**20:.1f} MiB ({files} files, each replaced in place at every "
            f"snapshot: a snapshot adds at most about that much to the repository's "
            f"history; at one snapshot an hour, at most about {8 * size / 2**20:.0f} MiB "
            f"in a working day of 8 hours).")


def main(a, log=print, submit=None) -> int:
    """``python -m rsa reproduce --scale paper`` (:mod:`rsa.experiments`' parser):
    ``--status`` prints the table, ``--dry-run`` the commands of the jobs left, in
    order, ``--snapshot`` copies the in-flight states into ``data/paper/`` (then commit
    them), ``--executor slurm`` submits the jobs left as one job array with ``submit``
    (:func:`rsa.experiments.cluster.submit_campaign` with the command line's request,
    which the parser passes), otherwise the jobs train here on ``--device``
    (``--select``: cell letters or run names)."""
    import dataclasses

    data = Path(a.data_dir) if a.data_dir else io.data_root()
    runs = Path(a.runs_dir) if a.runs_dir else io.runs_root()
    if a.status:
        if not (data / SCALE).is_dir() and a.data_dir:
            raise ValueError(f"--data-dir {a.data_dir!r} holds no {SCALE}/ folder")
        log(format_status(data))
        return 0
    if a.snapshot:
        n = snapshot(data, runs, log)
        log(f"{n} file(s) written under {data / SCALE}")
        return 0
    slurm = submit if a.executor == "slurm" else None
    if a.executor == "slurm" and submit is None:
        raise ValueError("--executor slurm needs the submission (the command line gives "
                         "rsa.experiments.cluster.submit_campaign)")
    if a.dry_run:  # what would run, in order, and nothing else
        # --device auto is resolved where the job runs: on a SLURM node, not here
        later = a.device == "auto" and slurm is not None
        for job in jobs_left(data, a.select):
            left = [n for n in (job.name(s) for s in job.seeds) if not _stored(data, n)]
            here = job if later else dataclasses.replace(job, args=_on_device(job.args,
                                                                              a.device))
            log(f"[{job.cell}] {', '.join(left)}: {job_command(here)}"
                + (" (on a GPU node: --device cuda --kernel torch)" if later else ""))
        if slurm is not None:
            log("\n" + slurm(dry_run=True))
        return 0
    if slurm is not None:
        slurm(log=log)
        return 0
    import torch

    jobs_left(data, a.select)  # a --select that names no job is an error, not a no-op
    torch.set_num_threads(a.threads)
    run(data, runs, a.select, log, device=a.device)
    return 0

