"""``python -m rsa bench population``: throughput of population training
(:mod:`rsa.train.population`).

For each model, T, population size P and torch thread count: the wall time of one
population update of P runs (:func:`rsa.models.kernels.population.population_step`) and
of P single-run updates one after the other (:func:`rsa.train.train_step` on each run), on the copy
task at B = 10, n = 128, with each run's own weights and batch. The two are timed in the
same interleaved rounds (every configuration once per round, population and sequential
back to back), so that a slow period of a shared machine falls on both; the table gives
the median over rounds of

- run-updates/s of the population, P / (time of a population update), and
- the ratio to sequential runs, (time of P single updates) / (time of a population
  update), measured in the same round.

Printed as a Markdown table; ``--out DIR`` also writes the rows as JSON with a manifest.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from rsa import io
from rsa.models.heads import MODELS, build_task_model
from rsa.models.kernels.population import batched, population_step
from rsa.tasks import make_generator, synthetic_batch
from rsa.train import make_optimizer, train_step

__all__ = ["run_population_bench", "markdown_table", "main"]


def _runs(model: str, T: int, P: int, batch: int, hidden_size: int):
    models, opts, xs, ys = [], [], [], []
    for seed in range(P):
        torch.manual_seed(seed)
        m = build_task_model(model, "copy", hidden_size)
        models.append(m)
        opts.append(make_optimizer("rmsprop", m.parameters(), 1e-4))
        x, y = synthetic_batch("copy", T, batch, make_generator(seed))
        xs.append(x)
        ys.append(y)
    return models, opts, xs, ys


def run_population_bench(models=MODELS, Ts=(100, 500), Ps=(1, 2, 4, 8), threads=(1, 2), *,
                         batch: int = 10, hidden_size: int = 128, rounds: int = 5,
                         warmup: int = 1, log=None) -> list[dict]:
    """One row per (threads, model, T, P): median seconds per population update and per
    P sequential updates, run-updates/s and the ratio (see the module docstring)."""
    old_threads = torch.get_num_threads()
    rows = []
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            configs = {(m, T, P): _runs(m, T, P, batch, hidden_size)
                       for m in models for T in Ts for P in Ps}
            times = {k: ([], []) for k in configs}
            for r in range(warmup + rounds):
                for key, (ms, os_, xs, ys) in configs.items():
                    t0 = time.perf_counter()
                    population_step(ms, os_, xs, ys, 1.0)
                    t1 = time.perf_counter()
                    for m, o, x, y in zip(ms, os_, xs, ys, strict=True):
                        train_step(m, o, x, y, 1.0)
                    t2 = time.perf_counter()
                    if r >= warmup:
                        times[key][0].append(t1 - t0)
                        times[key][1].append(t2 - t1)
                if log is not None:
                    log(f"threads {n_threads}: round {r + 1}/{warmup + rounds} done")
            for (m, T, P), (pop, seq) in times.items():
                ratios = [s / p for p, s in zip(pop, seq, strict=True)]
                rows.append({
                    "threads": n_threads, "model": m, "T": T, "P": P,
                    "batched": batched(configs[(m, T, P)][0][0]),
                    "population_s": statistics.median(pop),
                    "sequential_s": statistics.median(seq),
                    "run_updates_per_s": P / statistics.median(pop),
                    "sequential_run_updates_per_s": P / statistics.median(seq),
                    "ratio": statistics.median(ratios),
                    "rounds": rounds})
    finally:
        torch.set_num_threads(old_threads)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table: one line per (threads, model, T), P across."""
    Ps = sorted({r["P"] for r in rows})
    head = ("| threads | model | T | " + " | ".join(f"P={P}: upd/s (x seq)" for P in Ps)
            + " |")
    lines = [head, "|" + "---|" * (3 + len(Ps))]
    keys = []
    for r in rows:
        k = (r["threads"], r["model"], r["T"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        cells = []
        for P in Ps:
            r = next((r for r in rows if (r["threads"], r["model"], r["T"]) == k
                      and r["P"] == P), None)
            cells.append("" if r is None else
                         f"{r['run_updates_per_s']:.1f} ({r['ratio']:.2f}x)")
        name = k[1] + ("" if next(r for r in rows if (r["threads"], r["model"], r["T"]) == k
                                  )["batched"] else " (per run)")
        lines.append(f"| {k[0]} | {name} | {k[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m rsa bench population`` (see ``--help``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(
        prog="python -m rsa bench population",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                   help="models (default: all)")
    p.add_argument("--T", nargs="+", type=_positive, default=[100, 500],
                   help="delays T (default: 100 500)")
    p.add_argument("--P", nargs="+", type=_positive, default=[1, 2, 4, 8],
                   help="population sizes (default: 1 2 4 8)")
    p.add_argument("--threads", nargs="+", type=_positive, default=[1, 2],
                   help="torch thread counts (default: 1 2)")
    p.add_argument("--batch", type=_positive, default=10, help="batch size (default: 10)")
    p.add_argument("--hidden-size", type=_positive, default=128,
                   help="hidden size (default: 128)")
    p.add_argument("--rounds", type=_positive, default=5,
                   help="timed rounds (default: 5; the median is reported)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="also write population_bench.json and manifest.json to DIR")
    a = p.parse_args(argv)
    rows = run_population_bench(a.models, a.T, a.P, a.threads, batch=a.batch,
                                hidden_size=a.hidden_size, rounds=a.rounds,
                                log=lambda s: print(s, file=sys.stderr, flush=True))
    header = (f"Population update vs P sequential single-run updates: copy task, "
              f"B = {a.batch}, n = {a.hidden_size}, median of {a.rounds} interleaved "
              f"rounds; cell: run-updates/s of the population (ratio to sequential). "
              f"CPU: {io._cpu_model()}; torch {torch.__version__}.")
    table = markdown_table(rows)
    print(header + "\n\n" + table)
    if a.out is not None:
        out = Path(a.out)
        io.write_json(out / "population_bench.json", {"rows": rows, "header": header})
        cmd = shlex.join(["python", "-m", "rsa", "bench", "population", *argv])
        io.write_json(out / "manifest.json", io.build_manifest(
            vars(a), seed=None, command=cmd, files=["population_bench.json",
                                                    "manifest.json"]))
    return 0
