"""``python -m rsa reproduce``: the command line of
:func:`~rsa.experiments.stages.reproduce`, ``--status``, ``--dry-run``, SLURM and the
campaign.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rsa import io
from rsa.experiments.plan import PLANS, STAGES
from rsa.experiments.report import dry_run, plan_status
from rsa.experiments.stages import reproduce, set_deterministic


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shard must look like i/n (e.g. 0/2), got {text!r}") from None
    return i, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rsa reproduce", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Regenerate the stored results under data/<scale>/<stage>/, stage by "
                    "stage, each with a\nmanifest.json. Resumable: what is finished is "
                    "skipped (a run whose results are\ncomplete, a stage whose result file "
                    "exists), and training runs resume from their\ncheckpoints under "
                    "runs/<scale>/. Scales: session (this repository's data/ at\n300 "
                    "updates, hours on a CPU), converged (train until solved or stalled, up to "
                    "20 000\nupdates), full (the authors' settings where a machine allows; "
                    "a GPU or days of CPU).")
    p.add_argument("--scale", default="converged", choices=sorted(PLANS) + ["paper"],
                   help="which plan (default: converged, what the experiment chapters read); "
                        "paper: the campaign (rsa.experiments.campaign: the cells that decide "
                        "a verdict, at the authors' budget or a stated one, without the stall "
                        "rule, resumed from the in-flight state committed under "
                        "data/paper/inflight/)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                   metavar="STAGE",
                   help="stages to run, in this order: " + ", ".join(STAGES)
                        + " (default: all four)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per process (default: 1)")
    p.add_argument("--shard", type=_parse_shard, metavar="i/n",
                   help="with --stages train: train every n-th run from run i (0-based), "
                        "to share the stage between n processes (default: 0/1, every run)")
    p.add_argument("--select", nargs="+", metavar="GLOB",
                   help="with --stages train: train only the runs whose name matches one "
                        "of these patterns, e.g. 'copy/*_T100_s0' 'digits/*' (default: "
                        "every run of the plan)")
    p.add_argument("--budget", type=int, metavar="UPDATES",
                   help="with --stages train: cap every run at this many updates, below "
                        "the plan's (stored as stopped by the budget; a later call without "
                        "it trains such runs further; default: the plan's budget)")
    p.add_argument("--device", default="cpu",
                   help="where every stage trains or measures: cpu, cuda, cuda:N, or auto "
                        "for cuda when available (default: cpu)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (torch.use_deterministic_algorithms, "
                        "CUBLAS_WORKSPACE_CONFIG=:4096:8), for GPU runs; recorded in every "
                        "manifest (default: off)")
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"where results are stored and read (default: ${io.DATA_ENV} if "
                        f"set, else data/ of the checkout; the chapters read the same "
                        f"variable)")
    p.add_argument("--runs-dir", metavar="DIR",
                   help=f"where training runs work, with their checkpoints (default: "
                        f"${io.RUNS_ENV} if set, else runs/ of the checkout)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write each run's history as TensorBoard event files next to "
                        "its history.csv under the runs folder (needs tensorboard: pip "
                        "install -e '.[cluster]' in the checkout; default: off)")
    p.add_argument("--populations", action="store_true",
                   help="train the seeds of one configuration as one population "
                        "(rsa.train.population; the same results; default: run by run)")
    p.add_argument("--status", action="store_true",
                   help="print how far the plan has run (runs stored, solved, not run "
                        "yet) and exit")
    p.add_argument("--snapshot", action="store_true",
                   help="with --scale paper: copy every unfinished campaign run's checkpoint "
                        "into data/paper/inflight/ (one file per run, replaced in place) and "
                        "store the finished ones, for a commit; then exit (default: off)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the plan's runs (or those of --select) with their estimated "
                        "cost on --device (updates x measured time per update), the totals "
                        "in hours, and exit without running anything (default: off)")
    cluster = p.add_argument_group(
        "cluster", "--executor slurm submits the train stage as one SLURM job array (one\n"
        "element per run not stored yet) and each later stage as a job that starts when\n"
        "the array has succeeded (afterok), through submitit (pip install -e '.[cluster]'\n"
        "in the checkout).\n"
        "Jobs get SIGUSR2 before their time limit or a preemption: the run finishes its\n"
        "update, saves its checkpoint, is requeued and resumes from it.")
    cluster.add_argument("--executor", choices=("local", "slurm"), default="local",
                         help="local: run here, in this process (default); slurm: submit "
                              "to SLURM and exit")
    cluster.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    cluster.add_argument("--gpus", type=int, default=None, metavar="N",
                         help="GPUs per job (default: 1 when --device is cuda, cuda:N or "
                              "auto, else 0)")
    cluster.add_argument("--cpus", type=int, default=None, metavar="N",
                         help="CPUs per job (default: --threads)")
    cluster.add_argument("--mem-gb", type=float, default=8, metavar="GB",
                         help="memory per job (default: 8)")
    cluster.add_argument("--time-min", type=int, default=24 * 60, metavar="MIN",
                         help="time limit per job in minutes; a run that needs more is "
                              "requeued and resumes (default: 1440)")
    cluster.add_argument("--max-timeouts", type=int, default=10, metavar="N",
                         help="requeue a job at most N times after reaching --time-min "
                              "(preemptions do not count; default: 10)")
    cluster.add_argument("--max-parallel", type=int, default=None, metavar="N",
                         help="at most N array elements at a time (default: no limit)")
    cluster.add_argument("--slurm-dir", metavar="DIR",
                         help="submitit's folder: job scripts, logs, pickles (default: "
                              "<runs-dir>/slurm/<scale>)")
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error(f"--threads must be 1 or more (torch CPU threads), got {a.threads}")
    if a.snapshot and a.scale != "paper":
        p.error(f"--snapshot applies to --scale paper, got --scale {a.scale}")
    if a.scale == "paper":
        from rsa.experiments import campaign

        if a.stages != list(STAGES) or a.budget or a.shard:
            p.error("--scale paper (the campaign) trains its jobs in order, with "
                    "--device, --threads, --select, --data-dir, --runs-dir, --status, "
                    "--dry-run, --snapshot and the cluster options only (not --stages, "
                    "--budget or --shard); start one process per core (the run locks "
                    "share the jobs out), or submit them with --executor slurm")

        submit = None
        if a.executor == "slurm":  # the campaign's jobs left as one job array
            import functools

            from rsa.experiments.cluster import submit_campaign

            submit = functools.partial(
                submit_campaign, select=a.select, device=a.device, threads=a.threads,
                data_dir=a.data_dir, runs_dir=a.runs_dir, folder=a.slurm_dir,
                partition=a.partition, gpus=a.gpus, cpus=a.cpus, mem_gb=a.mem_gb,
                time_min=a.time_min, max_parallel=a.max_parallel,
                max_timeouts=a.max_timeouts)
        try:
            return campaign.main(a, log=lambda s: print(s, flush=True), submit=submit)
        except (ValueError, RuntimeError) as e:
            p.error(str(e))
    if a.data_dir and (a.status or a.dry_run) and not Path(a.data_dir).is_dir():
        p.error(f"--data-dir {a.data_dir!r} is not a folder; name the folder that holds "
                f"<scale>/ (default: data/ of the checkout)")
    if a.status:
        print(plan_status(a.scale, a.data_dir))
        return 0
    log = lambda s: print(s, flush=True)  # noqa: E731
    try:
        if a.dry_run:
            print(dry_run(a.scale, a.device, a.select, a.data_dir))
            if a.executor == "slurm":  # and what would be submitted
                from rsa.experiments.cluster import submit

                print("\n" + submit(
                    a.scale, a.stages, select=a.select, device=a.device,
                    threads=a.threads, data_dir=a.data_dir, runs_dir=a.runs_dir,
                    folder=a.slurm_dir, partition=a.partition, gpus=a.gpus, cpus=a.cpus,
                    mem_gb=a.mem_gb, time_min=a.time_min, max_parallel=a.max_parallel,
                    max_timeouts=a.max_timeouts, shard=a.shard, dry_run=True))
            return 0
        if a.executor == "slurm":
            from rsa.experiments.cluster import submit

            submit(a.scale, a.stages, select=a.select, device=a.device,
                   deterministic=a.deterministic, tensorboard=a.tensorboard,
                   threads=a.threads, data_dir=a.data_dir, runs_dir=a.runs_dir,
                   folder=a.slurm_dir, partition=a.partition, gpus=a.gpus, cpus=a.cpus,
                   mem_gb=a.mem_gb, time_min=a.time_min, max_parallel=a.max_parallel,
                   max_timeouts=a.max_timeouts, shard=a.shard, log=log)
            return 0
        torch.set_num_threads(a.threads)
        if a.deterministic:
            set_deterministic()
        reproduce(a.scale, a.stages, log=log, shard=a.shard, select=a.select,
                  device=a.device, data_dir=a.data_dir, runs_dir=a.runs_dir,
                  tensorboard=a.tensorboard, budget=a.budget,
                  populations=a.populations)
    except ValueError as e:
        p.error(str(e))
    return 0
