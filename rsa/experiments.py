"""``python -m rsa reproduce``: regenerate every stored result under ``data/``.

The experiment chapters (copy and denoise, transfer, gradient propagation, tradeoffs,
sequential digits) read what this writes. One plan per *scale*:

- ``session``: what this repository's ``data/`` holds, sized for a 2-core CPU in a few
  hours (about 45 minutes of it with ``--shard`` over two processes): T in
  {100, 200, 300, 500}, three seeds, 300 updates (models are far from trained; the
  chapters say so).
- ``full``: the authors' settings where a machine allows (``paper.md`` §5: up to
  200 000 updates; here capped at 20 000 and 3 seeds), for a GPU or a long CPU run.

Stages, each resumable (training runs resume from their checkpoints under
``runs/<scale>/``; a stage whose result file exists is skipped) and each writing its
results atomically with a ``manifest.json``:

1. ``train``: copy and denoise for every model and T; the rho ablation (RelRNN and
   RelLSTM on denoise at rho in {3, 8, 18, 25}); sequential and permuted digits.
2. ``transfer``: copy models trained at T evaluated at 2x, 5x, 10x T and up to 5000.
3. ``gradients``: ||dL/dh_t|| over t (loss on the answer steps) at the start and end of
   training for every model, and for the rho ablation.
4. ``cost``: time per update and peak memory against T for every model.
"""

from __future__ import annotations

import argparse
import fnmatch
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rsa import io
from rsa.heads import MODELS
from rsa.train import MODEL_FILE

__all__ = ["PLANS", "Plan", "reproduce", "main", "run_name", "plan_runs", "load_stored_runs",
           "runs_table"]

DATA = io.REPO_ROOT / "data"
RUNS = io.REPO_ROOT / "runs"
RESULT_FILES = ("results.json", "history.csv", "manifest.json")


@dataclass(frozen=True)
class Plan:
    """What one scale runs."""

    Ts: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: int
    eval_every: int
    rhos: tuple[int, ...] = (3, 8, 18, 25)
    rho_T: int = 100
    digits_steps: int = 300
    transfer_Ts: tuple[int, ...] = (100,)
    transfer_max: int = 5000
    grad_T: int = 100
    cost_Ts: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 800, 1000)
    unfused_max_T: int = 800
    # stopping rules (rsa.train.TrainConfig): off for the fixed-budget scales
    stop_when_solved: bool = False
    stall_updates: int = 0
    digits_patience: int = 0
    converged: bool = False  # the grid of _converged_runs, in order of priority


PLANS = {
    "session": Plan(Ts=(100, 200, 300, 500), seeds=(0, 1, 2), steps=300, eval_every=50,
                    digits_steps=300, transfer_Ts=(100,), transfer_max=5000),
    "full": Plan(Ts=(100, 200, 300, 500, 1000), seeds=(0, 1, 2), steps=20000,
                 eval_every=500, digits_steps=25000, transfer_Ts=(100, 200),
                 transfer_max=5000),
}
PLANS["converged"] = Plan(
    Ts=(100, 200), seeds=(0, 1, 2), steps=20000, eval_every=250, digits_steps=2600,
    transfer_Ts=(100, 200, 500, 1000), transfer_max=5000, stop_when_solved=True,
    stall_updates=5000, digits_patience=650, converged=True)
STAGES = ("train", "transfer", "gradients", "cost")
UNFUSED = ("memrnn", "relrnn", "rellstm")  # fused by default; also costed with fused=False


def run_name(task: str, model: str, T: int | None, seed: int, rho: int | None = None) -> str:
    """Folder name of one training run, e.g. ``copy/relrnn_T100_s0``."""
    t = "" if T is None else f"_T{T}"
    r = "" if rho is None else f"_rho{rho}"
    return f"{task}/{model}{t}{r}_s{seed}"


def _converged_runs(plan: Plan):
    """The converged grid, in the order of priority of what a 2-core machine reaches:

    1. copy and denoise, every model, T in {100, 200}: seed 0 first, then seeds 1, 2;
    2. T = 500: every model with seed 0, then seeds 1, 2 of the RNN and RelRNN;
    3. T = 1000: the RNN and RelRNN (linear cost), seed 0;
    4. the rho ablation (RelRNN and RelLSTM on denoise, T = 100, seed 0);
    5. sequential and permuted 8x8 digits, every model, three seeds.

    Every copy/denoise run trains until solved, stalled or ``plan.steps`` updates; the
    digits until their validation accuracy stops improving (``plan.digits_patience``
    updates) or ``plan.digits_steps`` updates (200 epochs of 13 updates).
    """
    rules = dict(steps=plan.steps, eval_every=plan.eval_every,
                 stop_when_solved=plan.stop_when_solved, stall_updates=plan.stall_updates)
    seq = [dict(task=task, model=model, T=T, seed=seed, **rules)
           for seed in plan.seeds for task in ("copy", "denoise") for T in plan.Ts
           for model in MODELS]
    yield from seq
    for seeds, models in (((0,), MODELS), ((1, 2), ("rnn", "relrnn"))):
        for seed in seeds:
            for task in ("copy", "denoise"):
                for model in models:
                    yield dict(task=task, model=model, T=500, seed=seed, **rules)
    for task in ("copy", "denoise"):
        for model in ("rnn", "relrnn"):
            yield dict(task=task, model=model, T=1000, seed=0, **rules)
    for model in ("relrnn", "rellstm"):
        for rho in plan.rhos:
            yield dict(task="denoise", model=model, T=plan.rho_T, seed=plan.seeds[0],
                       rho=rho, **rules)
    for seed in plan.seeds:
        for task in ("digits", "pdigits"):
            for model in MODELS:
                yield dict(task=task, model=model, seed=seed, steps=plan.digits_steps,
                           patience_updates=plan.digits_patience)


def _train_runs(plan: Plan):
    if plan.converged:
        yield from _converged_runs(plan)
        return
    for task in ("copy", "denoise"):
        for T in plan.Ts:
            for model in MODELS:
                for seed in plan.seeds:
                    yield dict(task=task, model=model, T=T, seed=seed, steps=plan.steps,
                               eval_every=plan.eval_every)
    for model in ("relrnn", "rellstm"):
        for rho in plan.rhos:
            yield dict(task="denoise", model=model, T=plan.rho_T, seed=plan.seeds[0],
                       rho=rho, steps=plan.steps, eval_every=plan.eval_every)
    for task in ("digits", "pdigits"):
        for model in MODELS:
            for seed in plan.seeds:
                yield dict(task=task, model=model, seed=seed, steps=plan.digits_steps,
                           eval_every=max(1, plan.digits_steps // 10))


def _selected(runs: list[dict], select) -> list[dict]:
    """The runs whose name (:func:`run_name`) matches one of the glob patterns in
    ``select`` (all runs when ``select`` is None)."""
    if select is None:
        return runs
    return [r for r in runs if any(
        fnmatch.fnmatchcase(run_name(r["task"], r["model"], r.get("T"), r["seed"],
                                     r.get("rho")), pattern) for pattern in select)]


def plan_runs(scale: str) -> list[dict]:
    """The training runs of a scale's plan, in order, each a dict of :func:`rsa.train.train`
    arguments plus its ``name`` (:func:`run_name`)."""
    if scale not in PLANS:
        raise ValueError(f"scale must be one of {sorted(PLANS)}, got {scale!r}")
    return [{**r, "name": run_name(r["task"], r["model"], r.get("T"), r["seed"], r.get("rho"))}
            for r in _train_runs(PLANS[scale])]


def load_stored_runs(scale: str, tasks=None, data=None) -> tuple[dict, list[dict]]:
    """The plan's runs that ``data/<scale>/`` holds, complete: ``(stored, missing)``, with
    ``stored`` {name: :func:`rsa.io.load_run` dict + ``"spec"``} and ``missing`` the
    specs (:func:`plan_runs`) of the runs not stored yet (or stored unfinished). Only
    ``tasks`` (default all) are read. A plan that is still being run is read as far as
    it goes; the chapters say what is missing."""
    data = DATA if data is None else Path(data)
    stored, missing = {}, []
    for spec in plan_runs(scale):
        if tasks is not None and spec["task"] not in tasks:
            continue
        folder = data / scale / spec["name"]
        if (folder / "results.json").is_file():
            run = io.load_run(folder)
            if run["complete"]:
                stored[spec["name"]] = {**run, "spec": spec}
                continue
        missing.append(spec)
    return stored, missing


def runs_table(stored: dict):
    """One row per stored run (a pandas DataFrame): task, model, T, rho, seed, how it
    ended (``stop_reason``: solved, stalled, patience, budget), whether and when it was
    solved (update, wall and training time), the updates done, best and final
    validation accuracy and loss, test accuracy (pixel tasks), the training time per
    update, and where it ran (device and CPU of its first part)."""
    import pandas as pd

    rows = []
    for name, r in stored.items():
        c, s = r["config"], r["summary"]
        seg = (s.get("segments") or [{}])[0]
        rows.append({
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


def _stage_train(scale: str, plan: Plan, log, shard: tuple[int, int] = (0, 1),
                 select=None, device: str = "cpu") -> None:
    from rsa.train import train

    runs = _selected(list(_train_runs(plan)), select)
    i, n = shard
    for k, r in enumerate(runs, 1):
        if (k - 1) % n != i:  # another shard's run
            continue
        name = run_name(r["task"], r["model"], r.get("T"), r["seed"], r.get("rho"))
        dest = DATA / scale / name
        if (dest / "results.json").is_file() and io.load_json(dest / "results.json").get(
                "complete", False):
            log(f"[train {k}/{len(runs)}] {name}: done")
            continue
        log(f"[train {k}/{len(runs)}] {name}: training {r['steps']} updates")
        t0 = time.perf_counter()
        work = RUNS / scale / name
        train(out_dir=str(work), progress=False, device=device, **r)
        files = RESULT_FILES + ((MODEL_FILE,) if plan.converged else ())
        for f in files:  # results (and small weights), not checkpoints, go to data/
            io.atomic_write_bytes(dest / f, (work / f).read_bytes())
        log(f"    {time.perf_counter() - t0:.0f} s")


def _stage_transfer(scale: str, plan: Plan, log) -> None:
    from rsa.tasks import evaluate_transfer
    from rsa.train import load_trained

    out = DATA / scale / "transfer"
    if (out / "transfer.csv").is_file():
        log("[transfer] done")
        return
    rows, t0 = [], time.perf_counter()
    for T_train in plan.transfer_Ts:
        Ts = sorted({T_train, 2 * T_train, 5 * T_train, 10 * T_train, plan.transfer_max})
        for model in MODELS:
            for seed in plan.seeds:
                name = run_name("copy", model, T_train, seed)
                m = load_trained(RUNS / scale / name)
                for T in Ts:
                    if model == "memrnn" and T > 2000:  # O(T^2) evaluation: skip, say so
                        continue
                    with torch.no_grad():
                        (r,) = evaluate_transfer(m, [T], batch=20, seed=1)
                    rows.append({"model": model, "seed": seed, "T_train": T_train, **r})
                    log(f"[transfer] {model} s{seed} trained T={T_train} -> T={T}: "
                        f"acc {r['accuracy']:.3f}")
    io.write_csv(out / "transfer.csv", rows)
    io.write_json(out / "manifest.json", io.build_manifest(
        {"scale": scale, "transfer_Ts": plan.transfer_Ts, "max": plan.transfer_max,
         "batch": 20, "note": "memrnn evaluated up to T = 2000 only (O(T^2))"},
        seed=1, wall_time_s=time.perf_counter() - t0,
        command=f"python -m rsa reproduce --scale {scale} --stages transfer",
        files=["transfer.csv", "manifest.json"]))


def _grad_rows(model, task, T, seed):
    """||dL/dh_t|| (loss on the answer steps) on a fixed batch of 20 sequences."""
    from rsa.measure import grad_norms
    from rsa.tasks import make_generator, synthetic_batch

    x, y = synthetic_batch(task, T, 20, make_generator(10_000 + seed))
    return [(t + 1, float(v)) for t, v in enumerate(grad_norms(model, x, y))]


def _stage_gradients(scale: str, plan: Plan, log) -> None:
    from rsa.heads import build_task_model
    from rsa.train import load_trained, resolve_config

    out = DATA / scale / "gradients"
    if (out / "grad_norms.csv").is_file():
        log("[gradients] done")
        return
    rows, t0 = [], time.perf_counter()
    jobs = [("denoise", m, plan.grad_T, None) for m in MODELS] + \
           [("copy", m, plan.grad_T, None) for m in MODELS] + \
           [("denoise", m, plan.rho_T, rho) for m in ("relrnn", "rellstm") for rho in plan.rhos]
    for task, model, T, rho in jobs:
        seed = plan.seeds[0]
        name = run_name(task, model, T, seed, rho)
        trained = load_trained(RUNS / scale / name)
        c = resolve_config(model=model, task=task, T=T, seed=seed, rho=rho)
        torch.manual_seed(seed)  # the same initialisation train() starts from
        initial = build_task_model(model, task, c.hidden_size, nu=c.nu, rho=c.rho,
                                   nonlinearity=c.nonlinearity, init=c.init)
        for when, m in (("start", initial), ("end", trained)):
            rows += [{"model": model, "task": task, "T": T, "seed": seed, "rho": rho,
                      "when": when, "t": t, "grad_norm": g}
                     for t, g in _grad_rows(m, task, T, seed)]
        log(f"[gradients] {name}")
    io.write_csv(out / "grad_norms.csv", rows)
    io.write_json(out / "manifest.json", io.build_manifest(
        {"scale": scale, "T": plan.grad_T, "batch": 20, "loss": "answer steps only",
         "rhos": plan.rhos}, seed=plan.seeds[0], wall_time_s=time.perf_counter() - t0,
        command=f"python -m rsa reproduce --scale {scale} --stages gradients",
        files=["grad_norms.csv", "manifest.json"]))


def _stage_cost(scale: str, plan: Plan, log) -> None:
    """cost.csv: every model (MemRNN and RelRNN fused, the defaults); cost_unfused.csv:
    MemRNN (T <= ``unfused_max_T``) and RelRNN with plain autograd (fused=False), the
    authors' kind of code (MemRNN's memory O(T^2 n B))."""
    from rsa.bench import run_bench

    out = DATA / scale / "cost"
    command = f"python -m rsa reproduce --scale {scale} --stages cost"
    files = ["cost.csv", "cost_unfused.csv", "manifest.json"]
    params = {"scale": scale, "Ts": plan.cost_Ts, "unfused_max_T": plan.unfused_max_T,
              "unfused": list(UNFUSED), "batch": 10, "hidden_size": 128, "task": "copy",
              "repeats": 5, "unfused_repeats": 2, "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    done = [f for f in ("cost.csv", "cost_unfused.csv") if (out / f).is_file()]
    for f in done:
        log(f"[cost] {f} done")
    if len(done) == 2:
        return
    if "cost.csv" not in done:
        io.write_csv(out / "cost.csv", run_bench(MODELS, plan.cost_Ts, large_batch=0,
                                                 repeats=params["repeats"], log=log))
    if "cost_unfused.csv" not in done:
        _cost_unfused(out, plan, params, log)
    io.write_json(out / "manifest.json", io.build_manifest(
        params, seed=0, wall_time_s=time.perf_counter() - t0, command=command, files=files))


def _cost_unfused(out, plan: Plan, params: dict, log) -> None:
    from rsa.measure import peak_memory, saved_tensor_bytes, update_times

    configs = [(model, T, 10) for model in UNFUSED
               for T in plan.cost_Ts
               if T <= (plan.unfused_max_T if model == "memrnn" else max(plan.cost_Ts))]
    times = update_times(configs, repeats=params["unfused_repeats"], fused=False)
    rows = []
    for (model, T, B), t in zip(configs, times, strict=True):
        p = peak_memory(model, T, fused=False)
        rows.append({"model": f"{model}_unfused", "T": T, "batch": B,
                     "time_ms": 1e3 * t["median_s"],
                     "time_min_ms": 1e3 * min(t["times_s"]),
                     "times_ms": [1e3 * x for x in t["times_s"]],
                     "peak_mib": p["peak_bytes"] / 2**20,
                     "saved_mib": saved_tensor_bytes(model, T, fused=False) / 2**20,
                     "skipped": None, "threads": torch.get_num_threads(),
                     "method": p["method"]})
        log(f"{model}_unfused T={T}: {rows[-1]['time_ms']:.0f} ms, "
            f"{rows[-1]['peak_mib']:.0f} MiB")
    io.write_csv(out / "cost_unfused.csv", rows)


_STAGE_FUNCS = {"train": _stage_train, "transfer": _stage_transfer,
                "gradients": _stage_gradients, "cost": _stage_cost}


def resolve_device(device: str) -> str:
    """``"auto"``: ``"cuda"`` when a GPU is available, else ``"cpu"``; other names are
    returned as given (``rsa.train`` checks them)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def reproduce(scale: str = "session", stages=STAGES, log=print,
              shard: tuple[int, int] | None = None, select=None,
              device: str = "cpu") -> None:
    """Run the plan of ``scale`` stage by stage (skipping what is already stored).

    ``shard=(i, n)`` trains only every n-th run of the train stage, starting at run i
    (0 <= i < n), so that n processes (cores, GPUs) share the stage; it applies to
    ``stages=["train"]`` only, since the later stages read every trained run.
    ``select`` (glob patterns on run names such as ``"copy/*_T100_s0"``) trains only the
    matching runs (shards then split those); it applies to ``stages=["train"]`` only.
    ``device`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``) is where the train stage
    trains; each run's summary records where each part of it ran (``segments``).
    """
    device = resolve_device(device)
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
    if select is not None:
        if list(stages) != ["train"]:
            raise ValueError(f"select applies to stages ['train'] only, got {list(stages)}")
        if not _selected(list(_train_runs(plan)), select):
            raise ValueError(f"select {list(select)!r} matches no run of the {scale!r} plan; "
                             f"run names look like {run_name('copy', 'relrnn', 100, 0)!r}")
    for s in STAGES:
        if s in stages:
            if s == "train":
                _stage_train(scale, plan, log, shard or (0, 1), select, device)
            else:
                _STAGE_FUNCS[s](scale, plan, log)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shard must look like i/n (e.g. 0/2), got {text!r}") from None
    return i, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rsa reproduce", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--scale", default="session", choices=sorted(PLANS))
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--shard", type=_parse_shard, metavar="i/n",
                   help="with --stages train: train every n-th run from run i (0-based), "
                        "to share the stage between n processes")
    p.add_argument("--select", nargs="+", metavar="GLOB",
                   help="with --stages train: train only the runs whose name matches one "
                        "of these patterns, e.g. 'copy/*_T100_s0' 'digits/*'")
    p.add_argument("--device", default="cpu",
                   help="where the train stage trains: cpu, cuda, cuda:N or auto (cuda "
                        "when available)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        reproduce(a.scale, a.stages, log=lambda s: print(s, flush=True), shard=a.shard,
                  select=a.select, device=a.device)
    except ValueError as e:
        p.error(str(e))
    return 0
