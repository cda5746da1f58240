"""``python -m rsa bench``: wall time and peak memory of one training update per model.

The cost claim of the paper (MemRNN O(T^2), RelRNN linear in T; the book's page *The
paper*, section 2) and the reviewers' request for wall-clock numbers (section 7),
measured with :mod:`rsa.experiments.measure` on the copy task: for each model and T in
{100, 200, 500, 1000} at B = 10, n = 128, and at B = 100 for T = 200, the median and the
fastest of ``repeats`` updates after ``warmup`` updates, the peak extra memory of one
update, and the bytes autograd saves for backward.
The models with a fused default (MemRNN, RelRNN, RelLSTM) can also be timed with plain
autograd, their specification, next to it: ``--models rellstm rellstm_unfused`` times
``RelLSTM(fused=False)`` in the same rounds as the fused RelLSTM.

The updates are timed in interleaved rounds (:func:`rsa.experiments.measure.update_times`). On a
shared virtual machine the same update can take twice as long for seconds to minutes
at a time (the book's *Using rsa*, Speed, shows it): interleaving spreads such periods
over every configuration, the fastest update says what the code does when the machine
is quiet, and the median what a run met. Configurations whose estimated memory
(:func:`rsa.experiments.measure.estimate_memory`) exceeds the budget are skipped and say so (MemRNN
at large T). The torch thread count is printed with the table, since CPU timings
depend on it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from rsa import io
from rsa.experiments.measure import estimate_memory, peak_memory, saved_tensor_bytes, update_times
from rsa.models import registry
from rsa.models.heads import MODELS

__all__ = ["run_bench", "markdown_table", "main", "DEFAULT_TS", "UNFUSED_VARIANTS"]

DEFAULT_TS = (100, 200, 500, 1000)
# the plain-autograd loop of each model with a fused default, as a bench "model"
UNFUSED_VARIANTS = tuple(f"{m}_unfused" for m in registry.FUSED)


def _model_and_options(name: str) -> tuple[str, dict]:
    """``"rellstm_unfused"`` -> ``("rellstm", {"fused": False})``; a model -> (it, {})."""
    if name in UNFUSED_VARIANTS:
        return name.removesuffix("_unfused"), {"fused": False}
    return name, {}


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def run_bench(models=MODELS, Ts=DEFAULT_TS, *, batch: int = 10, hidden_size: int = 128,
              large_batch: int = 100, large_T: int = 200, repeats: int = 5, warmup: int = 1,
              device: str = "cpu", memory: bool = True, max_memory_gb: float | None = None,
              log=None) -> list[dict]:
    """Measure every (model, T, batch): the ``Ts`` at ``batch``, plus ``large_T`` at
    ``large_batch`` (0 skips it). Returns one dict per row: model, T, batch, time_ms
    (median), time_min_ms (fastest), times_ms, peak_mib and saved_mib (peak extra memory
    and bytes saved for backward, None without ``memory``), skipped (reason or None),
    threads, method. ``models`` are names of the registry (:data:`rsa.models.heads.MODELS` and
    the baselines outside it, SAB and the Transformer) or of
    :data:`UNFUSED_VARIANTS` (``"memrnn_unfused"``...: the model with ``fused=False``).
    ``max_memory_gb`` defaults to half the available RAM (CPU) or 80 % of the free GPU
    memory. ``log`` (e.g. ``print``) receives one line per row.
    """
    accepted = registry.registered() + UNFUSED_VARIANTS  # the baselines too (SAB...)
    unknown = [m for m in models if m not in accepted]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; accepted: {', '.join(accepted)}")
    from rsa.train import torch_device

    torch_device(device)  # fails early if CUDA was asked for and is missing
    if max_memory_gb is None:
        frac = 0.8 if device.startswith("cuda") else 0.5
        limit = frac * _available_bytes(device)
    else:
        limit = max_memory_gb * 2**30
    configs = [(T, batch) for T in Ts]
    if large_batch:
        configs.append((large_T, large_batch))
    rows = []
    for T, B in configs:
        for m in models:
            row = {"model": m, "T": T, "batch": B, "time_ms": None, "time_min_ms": None,
                   "times_ms": None, "peak_mib": None, "saved_mib": None, "skipped": None,
                   "threads": torch.get_num_threads(), "method": None}
            name, opts = _model_and_options(m)
            est = estimate_memory(name, T, batch=B, hidden_size=hidden_size, **opts)
            if est > limit:
                row["skipped"] = (f"estimated {est / 2**30:.1f} GiB > budget "
                                  f"{limit / 2**30:.1f} GiB")
            rows.append(row)
    timed = [r for r in rows if not r["skipped"]]
    if log is not None:
        log(f"timing {len(timed)} configurations in {repeats} interleaved rounds "
            f"after {warmup} warm-up update(s) each")
    variants = [_model_and_options(r["model"]) for r in timed]
    results = update_times([(name, r["T"], r["batch"], opts)
                            for r, (name, opts) in zip(timed, variants, strict=True)],
                           hidden_size=hidden_size, repeats=repeats, warmup=warmup,
                           device=device)
    for row, t in zip(timed, results, strict=True):
        row["times_ms"] = [1e3 * s for s in t["times_s"]]
        row["time_ms"] = 1e3 * t["median_s"]
        row["time_min_ms"] = min(row["times_ms"])
    for row in rows:
        if memory and not row["skipped"]:
            (m, opts), T, B = _model_and_options(row["model"]), row["T"], row["batch"]
            p = peak_memory(m, T, batch=B, hidden_size=hidden_size, device=device, **opts)
            row["peak_mib"] = p["peak_bytes"] / 2**20
            row["method"] = p["method"]
            row["saved_mib"] = saved_tensor_bytes(
                m, T, batch=B, hidden_size=hidden_size, device=device, **opts) / 2**20
        if log is not None:
            log(_row_line(row))
    return rows


def _row_line(row):
    if row["skipped"]:
        return f"{row['model']:>8} T={row['T']:<5} B={row['batch']:<4} skipped: {row['skipped']}"
    mem = "" if row["peak_mib"] is None else f"  {row['peak_mib']:.1f} MiB"
    return (f"{row['model']:>8} T={row['T']:<5} B={row['batch']:<4} {row['time_ms']:.1f} ms "
            f"(fastest {row['time_min_ms']:.1f}){mem}")


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (time per update in ms, median and fastest; peak
    extra memory and bytes saved for backward in MiB)."""
    lines = ["| model | T | B | time / update (ms, median) | fastest (ms) "
             "| peak memory (MiB) | saved for backward (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["skipped"]:
            t = fast = mem = saved = f"skipped ({r['skipped']})"
        else:
            t, fast = f"{r['time_ms']:.1f}", f"{r['time_min_ms']:.1f}"
            mem = "—" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
            saved = "—" if r.get("saved_mib") is None else f"{r['saved_mib']:.1f}"
        lines.append(f"| {r['model']} | {r['T']} | {r['batch']} | {t} | {fast} | {mem} "
                     f"| {saved} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m rsa bench`` (see ``--help``); ``bench population ...``:
    :func:`rsa.experiments.bench_population.main`."""
    if argv and argv[0] == "population":
        from rsa.experiments.bench_population import main as population_main

        return population_main(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m rsa bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Wall time and peak memory of one training update per model, on the "
                    "copy task:\nthe median and the fastest of --repeats updates, timed in "
                    "interleaved rounds, for\nevery model and T, plus one row at a larger "
                    "batch. Prints a markdown table;\n--out also writes it with a manifest. "
                    "`bench population --help`: the throughput of population\ntraining "
                    "(rsa.experiments.bench_population).")
    p.add_argument("--models", nargs="+", default=list(MODELS),
                   choices=MODELS + UNFUSED_VARIANTS, metavar="MODEL",
                   help="models to time: " + ", ".join(MODELS + UNFUSED_VARIANTS)
                        + "; NAME_unfused is the model with plain autograd, not fused "
                        "(default: the five models)")
    p.add_argument("--T", nargs="+", type=int, default=list(DEFAULT_TS),
                   help="delays T (default: " + " ".join(map(str, DEFAULT_TS)) + ")")
    p.add_argument("--batch", type=int, default=10,
                   help="sequences per update (default: 10)")
    p.add_argument("--large-batch", type=int, default=100,
                   help="batch of one extra row per model, 0 for none (default: 100)")
    p.add_argument("--large-T", type=int, default=200,
                   help="T of that extra row (default: 200)")
    p.add_argument("--hidden-size", type=int, default=128,
                   help="hidden units n (default: 128)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed updates per configuration (default: 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed updates before them (default: 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, usually the number of "
                        "cores)")
    p.add_argument("--no-memory", action="store_true",
                   help="time only, do not measure memory (default: measure it)")
    p.add_argument("--max-memory-gb", type=float, default=None, metavar="GB",
                   help="skip configurations estimated above this (default: half the free "
                        "RAM, or 80%% of the free GPU memory)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="also write bench.json, bench.csv, bench.md and manifest.json to "
                        "DIR (default: print only)")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = p.parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    rows = run_bench(a.models, a.T, batch=a.batch, hidden_size=a.hidden_size,
                     large_batch=a.large_batch, large_T=a.large_T, repeats=a.repeats,
                     warmup=a.warmup, device=a.device, memory=not a.no_memory,
                     max_memory_gb=a.max_memory_gb,
                     log=lambda s: print(s, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    methods = sorted({r["method"] for r in rows if r["method"]})
    header = (f"copy task, n = {a.hidden_size}, device {a.device}, torch threads "
              f"{torch.get_num_threads()}, median and fastest of {a.repeats} updates "
              f"after {a.warmup} warm-up\n"
              f"peak memory: extra memory of one update "
              f"({'; '.join(methods) or 'not measured'}); saved for backward: bytes autograd "
              f"keeps for the backward pass")
    table = markdown_table(rows)
    print(header + "\n\n" + table)
    if a.out:
        out = Path(a.out)
        io.write_json(out / "bench.json", {"rows": rows, "header": header})
        io.write_csv(out / "bench.csv", [{k: v for k, v in r.items() if k != "times_ms"}
                                         for r in rows])
        io.atomic_write_text(out / "bench.md", header + "\n\n" + table + "\n")
        cmd = shlex.join(["python", "-m", "rsa", "bench", *argv])
        io.write_json(out / "manifest.json", io.build_manifest(
            vars(a), seed=0, device=a.device, wall_time_s=wall, command=cmd,
            files=["bench.json", "bench.csv", "bench.md", "manifest.json"]))
    return 0
