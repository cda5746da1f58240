"""The experiment plan on a SLURM cluster (``python -m rsa reproduce --executor slurm``;
its cost before submitting: ``--dry-run``, :mod:`rsa.experiments.report`).

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
The stages themselves are :func:`rsa.experiments.reproduce`'s: a job runs
``reproduce`` on its part of the plan, so everything it writes (atomically, with
manifests) is what a local run writes.
"""

from __future__ import annotations

import contextlib
import glob
import signal
from dataclasses import dataclass
from pathlib import Path

from rsa import io
from rsa.experiments.plan import PLANS, STAGES, Plan, plan_runs, run_name, select_runs
from rsa.experiments.stages import reproduce, set_deterministic
from rsa.experiments.store import run_states
from rsa.train.lock import RunLockedError

__all__ = ["PlanJob", "CampaignJob", "submit", "submit_campaign", "INSTALL", "REQUEUE_SIGNALS"]

INSTALL = ("pip install -e '.[cluster]' in the checkout (or: pip install submitit; "
           "not pip install rsa, an unrelated package)")
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # SLURM's warnings before the end


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
    plan: Plan
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
            set_deterministic()
        PLANS.setdefault(self.scale, self.plan)
        select = None if name is None else [glob.escape(name)]
        with _requeued_on_signal():
            reproduce(self.scale, list(self.stages), log=_log, select=select,
                      device=self.device, data_dir=self.data_dir,
                      runs_dir=self.runs_dir, tensorboard=self.tensorboard)
        return name if name is not None else list(self.stages)

    def checkpoint(self, *args, **kwargs):
        """What submitit resubmits after a preemption or time-out: the same call (the
        run's checkpoint makes it resume)."""
        return _resubmission(self, *args, **kwargs)


@dataclass
class CampaignJob:
    """One job of the campaign (:mod:`rsa.experiments.campaign`) as an array element:
    :func:`rsa.experiments.campaign.run` of the job whose first run is ``name``, on
    ``device`` (``auto``: the node's GPU if it has one; on a GPU the job trains with the
    torch kernel, the compiled one being CPU-only, and each part of the run records its
    device and kernel), resumed from its work folder or its committed in-flight state.
    Requeued like :class:`PlanJob`; fails (:class:`rsa.train.lock.RunLockedError`) when
    another process holds a run of the job, rather than end as if it had trained it."""

    device: str
    data_dir: str
    runs_dir: str
    threads: int = 1
    jobs: tuple | None = None  # the campaign's jobs (None: campaign.JOBS)

    def __call__(self, name: str) -> str:
        import torch

        from rsa.experiments import campaign

        jobs = self.jobs or campaign.JOBS
        campaign.jobs_left(Path(self.data_dir), [name], jobs)  # a name of no job: an error
        torch.set_num_threads(self.threads)
        with _requeued_on_signal():
            left = campaign.run(Path(self.data_dir), Path(self.runs_dir), select=[name],
                                log=_log, jobs=jobs, device=self.device)
        if left:  # the element must not end as if it had trained them
            raise RunLockedError(f"{', '.join(left)}: trained by another process (its "
                                 f"run lock); this element trained nothing; submit it "
                                 f"again when that process has stopped")
        return name

    def checkpoint(self, *args, **kwargs):
        """The same call again: the run resumes from its checkpoint."""
        return _resubmission(self, *args, **kwargs)


@contextlib.contextmanager
def _requeued_on_signal():
    """A job stopped by SLURM's warning (the training loop finished its update, saved its
    checkpoint and raised SystemExit(128 + signal)) hands the signal to the handler that
    was there before, submitit's, which requeues the job; then it exits."""
    try:
        yield
    except SystemExit as e:
        signum = e.code - 128 if isinstance(e.code, int) else None
        if signum in REQUEUE_SIGNALS:
            handler = signal.getsignal(signum)  # submitit's again: requeue and exit
            if callable(handler):
                handler(signum, None)
        raise


def _resubmission(job, *args, **kwargs):
    """What submitit resubmits after a preemption or time-out: the same call."""
    from submitit.helpers import DelayedSubmission

    return DelayedSubmission(job, *args, **kwargs)


def _log(line: str) -> None:
    print(line, flush=True)


def _todo(scale: str, select, data: Path) -> list[str]:
    """Names of the plan's runs (matching ``select``) whose results are not stored
    complete under ``data``."""
    runs = select_runs(plan_runs(scale, data), select)
    if select is not None and not runs:
        raise ValueError(f"--select {' '.join(select)} matches no run of the {scale!r} "
                         f"plan; run names look like "
                         f"{run_name('copy', 'relrnn', 100, 0)!r}")
    states = run_states(scale, data)  # the one rule (status, dry run, stages)
    return [r["name"] for r in runs if states[r["name"]] != "done"]


def submit(scale: str, stages=STAGES, *, cluster: str = "slurm",
           select=None, device: str = "auto", deterministic: bool = False,
           tensorboard: bool = False, threads: int = 1, data_dir=None, runs_dir=None,
           folder=None, partition: str | None = None, gpus: int | None = None,
           cpus: int | None = None, mem_gb: float = 8, time_min: int = 24 * 60,
           max_parallel: int | None = None, max_timeouts: int = 10, shard=None,
           log=_log, dry_run: bool = False) -> dict | str:
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
    ``dry_run``: check everything, submit nothing, and return what would be submitted
    (the array, its elements and every job's request) in words; submitit is not needed.
    """
    if shard is not None:
        raise ValueError("--shard is for processes started by hand; with --executor slurm "
                         "every run is an element of the job array: leave --shard out")
    if scale not in PLANS:
        raise ValueError(f"--scale must be one of {sorted(PLANS)}, got {scale!r}")
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; accepted: {', '.join(STAGES)}")
    _check_request(device, gpus=gpus, cpus=cpus, threads=threads, time_min=time_min,
                   max_parallel=max_parallel, max_timeouts=max_timeouts, mem_gb=mem_gb)
    if tensorboard and "train" in stages:
        from rsa.train.scalars import require_tensorboard

        require_tensorboard()
    data = io.check_output_root(io.data_root() if data_dir is None else data_dir,
                                "--data-dir", io.DATA_ENV)
    runs = io.check_output_root(io.runs_root() if runs_dir is None else runs_dir,
                                "--runs-dir", io.RUNS_ENV)
    folder = Path(folder) if folder is not None else runs / "slurm" / scale
    if gpus is None:
        gpus = 0 if device == "cpu" else 1
    if dry_run:
        return _would_submit(scale, stages, _todo(scale, select, data) if "train" in stages
                             else [], folder, partition=partition, gpus=gpus,
                             cpus=cpus or threads, mem_gb=mem_gb, time_min=time_min,
                             max_timeouts=max_timeouts, max_parallel=max_parallel,
                             device=device)
    job = PlanJob(scale, PLANS[scale], ("train",), device, str(data), str(runs),
                  tensorboard, deterministic, threads)
    executor = _executor(cluster, folder, f"rsa-{scale}-train", time_min=time_min,
                         mem_gb=mem_gb, cpus=cpus or threads, gpus=gpus,
                         partition=partition, max_parallel=max_parallel,
                         max_timeouts=max_timeouts)

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
    later = [s for s in STAGES if s in stages and s != "train"]
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


def _would_submit(scale, stages, names, folder, *, partition, gpus, cpus, mem_gb, time_min,
                  max_timeouts, max_parallel, device) -> str:
    """What :func:`submit` would submit, in words (``--executor slurm --dry-run``)."""
    request = _request_words(partition, gpus, cpus, mem_gb, time_min, max_timeouts, device)
    lines = [f"--executor slurm would submit, for the plan {scale!r} (nothing was "
             f"submitted):"]
    if "train" in stages:
        if names:
            shown = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)"
                                            if len(names) > 5 else "")
            lines.append(f"- train: one job array 'rsa-{scale}-train' of {len(names)} "
                         f"element(s), one per run not stored ({shown})"
                         + (f", at most {max_parallel} at a time" if max_parallel else "")
                         + f"; each element requests {request}")
        else:
            lines.append("- train: every selected run is stored; no array")
    later = [s for s in STAGES if s in stages and s != "train"]
    for st in later:
        lines.append(f"- {st}: one job 'rsa-{scale}-{st}' requesting {request}"
                     + (", started when every element of the array has succeeded "
                        "(--dependency=afterok:<array>)" if names else ""))
    lines.append(f"Job scripts and logs would go to {io.portable_path(folder)}.")
    return "\n".join(lines)


# -- what both submissions share ----------------------------------------------------------

def _check_request(device, *, gpus, cpus, threads, time_min, max_parallel, max_timeouts,
                   mem_gb) -> None:
    """A ValueError in the words of the command line for a device or request that
    SLURM could not run."""
    from rsa.train import check_device_name

    if device != "auto":
        try:
            check_device_name(device)
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


def _executor(cluster: str, folder: Path, name: str, *, time_min, mem_gb, cpus, gpus,
              partition, max_parallel, max_timeouts):
    """submitit's executor for ``cluster`` with every job's request."""
    submitit = _submitit()
    extra = {"slurm_max_num_timeout": max_timeouts} if cluster == "slurm" else {}
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **extra)
    except RuntimeError as e:  # submitit finds no srun: not a SLURM machine
        raise ValueError(f"--executor {cluster}: {e} (submit from a machine of the "
                         f"cluster, where srun and sbatch are on PATH)") from None
    params = {"name": name, "timeout_min": time_min, "mem_gb": mem_gb,
              "cpus_per_task": cpus, "tasks_per_node": 1, "nodes": 1}
    if cluster == "slurm":
        if gpus:
            params["gpus_per_node"] = gpus
        if partition:
            params["slurm_partition"] = partition
        if max_parallel:
            params["slurm_array_parallelism"] = max_parallel
    executor.update_parameters(**params)
    return executor


def _request_words(partition, gpus, cpus, mem_gb, time_min, max_timeouts, device) -> str:
    return (f"partition {partition or 'the cluster default'}, {gpus} GPU(s), {cpus} "
            f"CPU(s), {mem_gb:g} GB, {time_min} min (requeued up to {max_timeouts} "
            f"times at the time limit; preemptions do not count), device {device}")


# -- the campaign on SLURM ----------------------------------------------------------------

def submit_campaign(*, cluster: str = "slurm", select=None, device: str = "auto",
                    threads: int = 1, data_dir=None, runs_dir=None, folder=None,
                    partition: str | None = None, gpus: int | None = None,
                    cpus: int | None = None, mem_gb: float = 8, time_min: int = 24 * 60,
                    max_parallel: int | None = None, max_timeouts: int = 10, log=_log,
                    dry_run: bool = False, jobs=None) -> list | str:
    """Submit the campaign's jobs not stored yet (or those of ``select``: cell letters
    or run names) as one SLURM job array, one element per job (:class:`CampaignJob`),
    through submitit (``python -m rsa reproduce --scale paper --executor slurm``);
    returns the submitit ``Job`` objects. The request is :func:`submit`'s (the same
    arguments). Each element resumes its runs from their work folder under
    ``runs_dir`` or from the in-flight state committed under ``data_dir``; a job that
    reaches ``time_min`` is requeued and resumes. ``dry_run``: check everything, submit
    nothing, and return what would be submitted, in words. ``jobs``: the campaign's
    (default :data:`rsa.experiments.campaign.JOBS`)."""
    from rsa.experiments import campaign

    _check_request(device, gpus=gpus, cpus=cpus, threads=threads, time_min=time_min,
                   max_parallel=max_parallel, max_timeouts=max_timeouts, mem_gb=mem_gb)
    data = io.check_output_root(io.data_root() if data_dir is None else data_dir,
                                "--data-dir", io.DATA_ENV)
    runs = io.check_output_root(io.runs_root() if runs_dir is None else runs_dir,
                                "--runs-dir", io.RUNS_ENV)
    folder = Path(folder) if folder is not None else runs / "slurm" / campaign.SCALE
    if gpus is None:
        gpus = 0 if device == "cpu" else 1
    jobs = tuple(jobs) if jobs is not None else campaign.JOBS
    names = [job.name(job.seeds[0]) for job in campaign.jobs_left(data, select, jobs)]
    if dry_run:
        request = _request_words(partition, gpus, cpus or threads, mem_gb, time_min,
                                 max_timeouts, device)
        lines = ["--executor slurm would submit, for the campaign (nothing was submitted):"]
        lines.append(f"- one job array 'rsa-{campaign.SCALE}' of {len(names)} element(s), "
                     f"one per job not stored ({', '.join(names)})"
                     + (f", at most {max_parallel} at a time" if max_parallel else "")
                     + f"; each element requests {request}" if names else
                     "- every selected job is stored; no array")
        lines.append(f"Job scripts and logs would go to {io.portable_path(folder)}.")
        return "\n".join(lines)
    if not names:
        log("[submit] campaign: every selected job is stored; no array")
        return []
    executor = _executor(cluster, folder, f"rsa-{campaign.SCALE}", time_min=time_min,
                         mem_gb=mem_gb, cpus=cpus or threads, gpus=gpus,
                         partition=partition, max_parallel=max_parallel,
                         max_timeouts=max_timeouts)
    job = CampaignJob(device, str(data), str(runs), threads,
                      None if jobs is campaign.JOBS else jobs)
    with executor.batch():  # one array: one element per job
        out = [executor.submit(job, name) for name in names]
    log(f"[submit] campaign: {len(names)} job(s) as job "
        f"{'array ' if len(names) > 1 else ''}{out[0].job_id.split('_')[0]} ({folder})")
    if cluster != "slurm":  # here (the tests): wait for them
        for j in out:
            j.result()
    return out
