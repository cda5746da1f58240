"""``python -m rsa reproduce``: regenerate every stored result under ``data/``.

The experiment chapters (copy and denoise, transfer, gradient propagation, tradeoffs,
sequential digits) read what this writes. One plan per *scale*:

- ``session``: what this repository's ``data/`` holds, sized for a 2-core CPU in a few
  hours (about 45 minutes of it with ``--shard`` over two processes): T in
  {100, 200, 300, 500}, three seeds, 300 updates (models are far from trained; the
  chapters say so).
- ``full``: the authors' settings where a machine allows (the book's page *The paper*,
  section 5: up to 200 000 updates; here capped at 20 000 and 3 seeds), for a GPU or a
  long CPU run.

Stages, each resumable (training runs resume from their checkpoints under
``runs/<scale>/``; a stage whose result file exists is skipped) and each writing its
results atomically with a ``manifest.json``:

1. ``train``: copy and denoise for every model and T; the rho ablation (RelRNN and
   RelLSTM on denoise at rho in {3, 8, 18, 25}); sequential and permuted digits. The
   converged plan adds the :data:`BASELINES` (SAB, a causal Transformer) on copy and
   denoise, seed 0; ``--budget`` caps the updates where a machine cannot give the
   plan's (a run stopped by it says so and is trained further by a later call).
2. ``transfer``: copy models trained at T evaluated at 2x, 5x, 10x T and up to 5000.
3. ``gradients``: ||dL/dh_t|| over t (loss on the answer steps) at the start and end of
   training for every model, and for the rho ablation.
4. ``cost``: time per update and peak memory against T for every model (and, in
   their own rounds with two references, the baselines: converged plan).

Every stage runs on ``--device``; ``--data-dir`` and ``--runs-dir`` (or ``RSA_DATA_DIR``,
``RSA_RUNS_DIR``) move ``data/`` and ``runs/``; ``--executor slurm`` submits the plan to
a SLURM cluster and ``--dry-run`` estimates its cost (:mod:`rsa.cluster`; the book's *Using rsa*,
Running the full plan on a cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rsa import io, registry
from rsa.heads import MODELS
from rsa.tasks import get_task
from rsa.train import MODEL_FILE
from rsa.train.lock import claim

__all__ = ["PLANS", "Plan", "reproduce", "main", "run_name", "plan_runs", "load_stored_runs",
           "runs_table", "plan_status", "ALTERNATIVES", "BASELINES", "models_in",
           "transfer_batch", "transfer_delays"]

DATA = io.data_root()  # data/ of the checkout, or $RSA_DATA_DIR (reproduce --data-dir)
RUNS = io.runs_root()  # runs/ of the checkout, or $RSA_RUNS_DIR (reproduce --runs-dir)
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
    stop_when_nan: bool = False  # copy/denoise: stop at the first non-finite training loss
    stall_updates: int = 0
    digits_patience: int = 0
    # 784-step MNIST (mnist10k, pmnist10k; 80 updates an epoch): 0 updates = not planned
    mnist10k_steps: int = 0
    mnist10k_eval_every: int = 40
    mnist10k_patience: int = 0
    mnist10k_models: tuple[str, ...] = ("rnn", "lstm", "relrnn", "rellstm")
    converged: bool = False  # the grid of _converged_runs, in order of priority
    # SAB on copy at short delays, seed 0, right after the baselines (converged plan)
    sab_short_Ts: tuple[int, ...] = ()


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
    stop_when_nan=True, stall_updates=5000, digits_patience=650, mnist10k_steps=400,
    mnist10k_patience=80, converged=True, sab_short_Ts=(20, 50))
STAGES = ("train", "transfer", "gradients", "cost")
UNFUSED = registry.FUSED  # fused by default; also costed with fused=False


def run_name(task: str, model: str, T: int | None, seed: int, rho: int | None = None,
             variant: str | None = None) -> str:
    """Folder name of one training run, e.g. ``copy/relrnn_T100_s0``; an alternative
    setting (:data:`ALTERNATIVES`) adds its tag, e.g. ``copy/memrnn_T200_tanh_s0``."""
    t = "" if T is None else f"_T{T}"
    r = "" if rho is None else f"_rho{rho}"
    v = "" if variant is None else f"_{variant}"
    return f"{task}/{model}{t}{r}{v}_s{seed}"


def _name(r: dict) -> str:
    return run_name(r["task"], r["model"], r.get("T"), r["seed"], r.get("rho"),
                    r.get("variant"))


# Baselines outside the paper's five models (registry in_plan=False, so not in MODELS
# and not in the chapters' loops over MODELS): SAB (the authors' comparison) and a causal
# Transformer (the book's own), trained on copy and denoise at the converged plan's
# delays with seed 0, then through the transfer, gradient (SAB) and cost stages.
BASELINES = ("sab", "transformer")


def models_in(names) -> list[str]:
    """The distinct model names in ``names`` (a column of stored results), in the
    registry's order (the paper's five, then the baselines): what a chapter shows is
    what the stored data holds, so adding a model to the plan never breaks it."""
    order = {m: i for i, m in enumerate(registry.registered())}
    unknown = sorted(set(names) - set(order))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown} in the data; registered: "
                         f"{', '.join(order)}")
    return sorted(set(names), key=order.__getitem__)


# The authors' alternatives (their code's options), tried on a copy/denoise cell whose
# seed-0 run of the converged plan was not solved: tag -> (applies to, overrides).
ALTERNATIVES = {
    "tanh": (lambda c: c["nonlinearity"] == "modrelu", {"nonlinearity": "tanh"}),
    "lr2e-4": (lambda c: c["model"] == "relrnn" and c["task"] == "copy" and c["lr"] > 2e-4,
               {"lr": 2e-4}),
}


def _converged_runs(plan: Plan, scale: str | None = None):
    """The converged grid, in the order of priority of what a 2-core machine reaches:

    1. copy and denoise, every model, T in {100, 200}: seed 0 first, then the
       :data:`BASELINES` (SAB, the Transformer) with seed 0, then seeds 1, 2 of the
       paper's models;
    1b. SAB on copy at short delays (``plan.sab_short_Ts``, 20 and 50), seed 0: right
       after the baselines, before seeds 1, 2 (SAB at T = 100, 200 is not solved: these
       show whether it learns copy at all with the plan's settings);
    2. T = 500: every model with seed 0, then seeds 1, 2 of the RNN and RelRNN;
    3. T = 1000: the RNN and RelRNN (linear cost), seed 0;
    4. the rho ablation (RelRNN and RelLSTM on denoise, T = 100, seed 0);
    5. sequential and permuted 8x8 digits, every model, three seeds;
    5b. sequential and permuted MNIST, 784 steps (``mnist10k``, ``pmnist10k``), seed 0,
        RNN, LSTM, RelRNN, RelLSTM (``plan.mnist10k_models``; MemRNN's update at 784
        steps costs about 15 s of one CPU core, 20 times the LSTM's: not planned).

    Every copy/denoise run trains until solved, stalled or ``plan.steps`` updates; the
    digits until their validation accuracy stops improving (``plan.digits_patience``
    updates) or ``plan.digits_steps`` updates (200 epochs of 13 updates); the MNIST runs
    likewise (``plan.mnist10k_patience`` updates, one epoch) or ``plan.mnist10k_steps``
    updates (5 epochs of 80 updates, evaluated every half epoch: sized to the CPU time a
    2-core machine had; the runs first stopped at 2 epochs and were trained further from
    their checkpoints; the chapter *Sequential digits and MNIST* says so).

    6. *Alternatives*, last: for every copy/denoise run of seed 0 above that is stored
       and was not solved, the same run with each of the authors' alternatives that
       applies to it (:data:`ALTERNATIVES`: tanh instead of modReLU; learning rate 2e-4
       for RelRNN on copy), named with the alternative's tag. They depend on results,
       so they are appended as those results arrive (the list before them never
       changes, which keeps ``--shard`` consistent).
    """
    rules = dict(steps=plan.steps, eval_every=plan.eval_every,
                 stop_when_solved=plan.stop_when_solved, stall_updates=plan.stall_updates)
    if plan.stop_when_nan:  # (a spec without it is the spec of the runs before the rule)
        rules["stop_when_nan"] = True
    seq = [dict(task=task, model=model, T=T, seed=seed, **rules)
           for seed in plan.seeds for task in ("copy", "denoise") for T in plan.Ts
           for model in MODELS]
    first = len(plan.Ts) * 2 * len(MODELS)  # the seed-0 runs of the paper's models
    yield from seq[:first]
    yield from (dict(task=task, model=model, T=T, seed=plan.seeds[0], **rules)
                for task in ("copy", "denoise") for T in plan.Ts for model in BASELINES)
    yield from (dict(task="copy", model="sab", T=T, seed=plan.seeds[0], **rules)
                for T in plan.sab_short_Ts)
    yield from seq[first:]
    long_delays = [m for m in MODELS if registry.get(m).long_delays]  # RNN, RelRNN
    for seeds, models in (((0,), MODELS), ((1, 2), long_delays)):
        for seed in seeds:
            for task in ("copy", "denoise"):
                for model in models:
                    yield dict(task=task, model=model, T=500, seed=seed, **rules)
    for task in ("copy", "denoise"):
        for model in long_delays:
            yield dict(task=task, model=model, T=1000, seed=0, **rules)
    for model in registry.with_option("rho"):
        for rho in plan.rhos:
            yield dict(task="denoise", model=model, T=plan.rho_T, seed=plan.seeds[0],
                       rho=rho, **rules)
    main = []
    for spec in seq + [dict(task=t, model=m, T=T, seed=0, **rules)
                       for T in (500, 1000) for t in ("copy", "denoise") for m in MODELS]:
        if spec["seed"] == 0 and spec not in main:
            main.append(spec)
    for seed in plan.seeds:
        for task in ("digits", "pdigits"):
            for model in MODELS:
                yield dict(task=task, model=model, seed=seed, steps=plan.digits_steps,
                           patience_updates=plan.digits_patience)
    if plan.mnist10k_steps:
        for task in ("mnist10k", "pmnist10k"):
            for model in plan.mnist10k_models:
                yield dict(task=task, model=model, seed=plan.seeds[0],
                           steps=plan.mnist10k_steps, eval_every=plan.mnist10k_eval_every,
                           patience_updates=plan.mnist10k_patience)
    if scale is None:
        return
    for spec in main:  # 6. alternatives for the unsolved seed-0 runs stored
        results = DATA / scale / _name(spec) / "results.json"
        if not results.is_file():
            continue
        stored = io.load_json(results)
        if not stored.get("complete") or stored["summary"].get("solved"):
            continue
        for tag, (applies, overrides) in ALTERNATIVES.items():
            if applies(stored["config"]):
                yield {**spec, **overrides, "variant": tag}


def _train_runs(plan: Plan, scale: str | None = None):
    if plan.converged:
        yield from _converged_runs(plan, scale)
        return
    for task in ("copy", "denoise"):
        for T in plan.Ts:
            for model in MODELS:
                for seed in plan.seeds:
                    yield dict(task=task, model=model, T=T, seed=seed, steps=plan.steps,
                               eval_every=plan.eval_every)
    for model in registry.with_option("rho"):
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
    return [r for r in runs if any(fnmatch.fnmatchcase(_name(r), pattern)
                                   for pattern in select)]


def plan_runs(scale: str) -> list[dict]:
    """The training runs of a scale's plan, in order, each a dict of :func:`rsa.train.train`
    arguments plus its ``name`` (:func:`run_name`)."""
    if scale not in PLANS:
        raise ValueError(f"scale must be one of {sorted(PLANS)}, got {scale!r}")
    return [{**r, "name": _name(r)} for r in _train_runs(PLANS[scale], scale)]


def load_stored_runs(scale: str, tasks=None, data=None,
                     variants: bool = False) -> tuple[dict, list[dict]]:
    """The plan's runs that ``data/<scale>/`` holds, complete: ``(stored, missing)``, with
    ``stored`` {name: :func:`rsa.io.load_run` dict + ``"spec"``} and ``missing`` the
    specs (:func:`plan_runs`) of the runs not stored yet (or stored unfinished). Only
    ``tasks`` (default all) are read. A plan that is still being run is read as far as
    it goes; the chapters say what is missing. The alternatives (runs with a
    ``variant``, :data:`ALTERNATIVES`) are read only with ``variants=True``."""
    data = DATA if data is None else Path(data)
    stored, missing = {}, []
    for spec in plan_runs(scale):
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


def _stored_enough(results: Path, steps: int) -> bool:
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
    ``--status`` and ``--dry-run`` all use (:func:`_stored_enough`): ``"done"`` (stored
    complete for its budget), ``"reduced"`` (stored complete, but stopped by a smaller
    ``--budget``: the train stage trains it further) or ``"missing"`` (not stored, or
    stored unfinished). The authors' alternatives (runs with a ``variant``) included."""
    data = DATA if data is None else Path(data)
    states = {}
    for r in plan_runs(scale):
        results = data / scale / r["name"] / "results.json"
        if _stored_enough(results, r["steps"]):
            states[r["name"]] = "done"
        elif results.is_file() and io.load_json(results).get("complete", False):
            states[r["name"]] = "reduced"
        else:
            states[r["name"]] = "missing"
    return states


def _stage_train(scale: str, plan: Plan, log, shard: tuple[int, int] = (0, 1),
                 select=None, device: str = "cpu", tensorboard: bool = False,
                 budget: int | None = None) -> None:
    from rsa.train import train

    runs = _selected(list(_train_runs(plan, scale)), select)
    if budget is not None:  # a reduced budget, stated in each run's config (steps)
        runs = [{**r, "steps": min(r["steps"], budget)} for r in runs]
    i, n = shard
    for k, r in enumerate(runs, 1):
        if (k - 1) % n != i:  # another shard's run
            continue
        name = _name(r)
        dest = DATA / scale / name
        if _stored_enough(dest / "results.json", r["steps"]):
            log(f"[train {k}/{len(runs)}] {name}: done")
            continue
        work = RUNS / scale / name
        with claim(work) as owner:
            if owner is not None:
                log(f"[train {k}/{len(runs)}] {name}: being trained by {owner}; skipped")
                continue
            log(f"[train {k}/{len(runs)}] {name}: training {r['steps']} updates")
            t0 = time.perf_counter()
            args = {k: v for k, v in r.items() if k != "variant"}
            fired = _nan_before_the_rule(work, args)
            if fired is not None:  # resumed as it was made: the record stays true
                args["stop_when_nan"] = False
                log(f"    its checkpoint, made without the NaN rule, went NaN at update "
                    f"{fired}: resumed without the rule")
            train(out_dir=str(work), progress=False, device=device,
                  tensorboard=tensorboard, **args)
            files = RESULT_FILES + ((MODEL_FILE,) if plan.converged else ())
            io.check_provenance(io.load_json(work / "manifest.json"),
                                str(work / "manifest.json"))
            for f in files:  # results (and small weights), not checkpoints, go to data/
                io.atomic_write_bytes(dest / f, (work / f).read_bytes())
            log(f"    {time.perf_counter() - t0:.0f} s")


def _nan_before_the_rule(work: Path, args: dict) -> int | None:
    """For a run resumed from ``work``'s checkpoint with ``stop_when_nan``: the update at
    which the rule would already have stopped it, if the checkpoint was made without
    the rule (:func:`rsa.train.checkpoint.nan_fired_without_rule`), else None."""
    from rsa.train import CHECKPOINT
    from rsa.train.checkpoint import _load_checkpoint, nan_fired_without_rule

    path = work / CHECKPOINT
    if not args.get("stop_when_nan") or not path.is_file():
        return None
    return nan_fired_without_rule(_load_checkpoint(path, torch.device("cpu")))


TRANSFER_FACTORS = (1, 2, 5, 10)  # test delays as multiples of the training delay
MEMRNN_TRANSFER_MAX = registry.get("memrnn").transfer_max  # O(T^2): not beyond this delay
# The longest test delay per model where evaluation costs O(T^2) in time (MemRNN, and
# SAB, which scores a memory of T / attn_every_k states at every step: 170 s and 3.3 GB
# for 20 sequences at T = 2000 on this CPU). The Transformer's attention is O(T^2) too,
# but torch's fused kernel makes T = 5000 take 14 s and 0.8 GB: it runs to transfer_max.
TRANSFER_MAX = {m: registry.get(m).transfer_max for m in registry.registered()
                if registry.get(m).transfer_max is not None}  # from the registry
# one row of transfer.csv; variant: the tag of an alternative setting (ALTERNATIVES), or
# empty for the plan's own runs
TRANSFER_KEY = ["model", "variant", "seed", "T_train", "T"]
# Sequences per test delay: 100 (1 000 answer symbols; a point of a network at 99 % has a
# standard error of 0.003), SAB 20 (its O(T^2) evaluation at 100 sequences and T = 2000
# would take about 15 minutes and 16 GB here). Rows stored before the batch was recorded
# were all evaluated on 20 sequences (TRANSFER_BATCH_BEFORE); the stage recomputes a row
# whose batch is not its model's.
TRANSFER_BATCH = 100
TRANSFER_BATCH_BY_MODEL = {m: registry.get(m).transfer_batch for m in registry.registered()
                           if registry.get(m).transfer_batch != TRANSFER_BATCH}
TRANSFER_BATCH_BEFORE = 20
# The transfer stage's sequences come from their own stream: seed TRANSFER_SEED, which
# no training stream (the run's seed), validation stream (seed + VALIDATION_SEED_OFFSET)
# or gradient batch (GRAD_SEED_OFFSET + seed) of any run draws from
# (:func:`check_transfer_stream`). Rows evaluated before (TRANSFER_STREAM_BEFORE: seed
# 1, whose first 100 sequences were the first 100 training sequences of every seed-1
# run) are recomputed.
TRANSFER_SEED = 2_000_000
TRANSFER_STREAM_BEFORE = 1
GRAD_SEED_OFFSET = 10_000


def check_transfer_stream(seeds) -> None:
    """Raise ValueError if :data:`TRANSFER_SEED` is a stream some run of ``seeds`` draws
    from: its training data (seed), validation data (seed + VALIDATION_SEED_OFFSET) or
    gradient batch (GRAD_SEED_OFFSET + seed)."""
    from rsa.train import VALIDATION_SEED_OFFSET

    for s in seeds:
        if TRANSFER_SEED in (s, s + VALIDATION_SEED_OFFSET, GRAD_SEED_OFFSET + s):
            raise ValueError(f"the transfer stream (seed {TRANSFER_SEED}) is a stream of "
                             f"the run with seed {s}: choose another TRANSFER_SEED")


def transfer_batch(model: str) -> int:
    """The number of sequences per test delay of the converged transfer stage for
    ``model`` (:data:`TRANSFER_BATCH`, or :data:`TRANSFER_BATCH_BY_MODEL`)."""
    return TRANSFER_BATCH_BY_MODEL.get(model, TRANSFER_BATCH)


# Models evaluated at their TRANSFER_MAX itself in place of the delays beyond it (the
# authors' 5000, a multiple past the cap), so that each is tested as far as it can be:
# MemRNN trained at 100 or 500 at 2000. Not SAB: it solves no copy delay here.
TRANSFER_AT_MAX = tuple(m for m in registry.registered() if registry.get(m).transfer_at_max)


def transfer_delays(plan: Plan, model: str, T_train: int) -> list[int]:
    """The test delays of a copy model trained at ``T_train``: 1, 2, 5 and 10 times
    ``T_train`` and ``plan.transfer_max``; MemRNN's and SAB's only up to
    :data:`TRANSFER_MAX`, and MemRNN's at that cap too where a delay passes it
    (:data:`TRANSFER_AT_MAX`)."""
    Ts = sorted({f * T_train for f in TRANSFER_FACTORS} | {plan.transfer_max})
    cap = TRANSFER_MAX.get(model)
    if cap is None:
        return Ts
    kept = [T for T in Ts if T <= cap]
    if model in TRANSFER_AT_MAX and len(kept) < len(Ts) and cap not in kept:
        kept.append(cap)
    return kept


def _transfer_rows(folder: Path, run: dict, Ts: list[int],
                   device: str = "cpu") -> list[dict]:
    """Evaluate the stored model of one converged copy run (``folder/model.pt``) at the
    delays ``Ts``, without training: one batch of :func:`transfer_batch` sequences from
    seed :data:`TRANSFER_SEED` per delay (recorded in the row's ``batch`` and
    ``stream``). Each row carries the run's
    ``solved`` flag and ``solved_step`` and its ``steps_done`` (which tells a re-trained
    run's stale rows)."""
    from rsa.tasks import evaluate_transfer
    from rsa.train import load_trained

    c, s = run["config"], run["summary"]
    model = load_trained(folder, device=device)
    batch = transfer_batch(c["model"])
    with torch.no_grad():
        rows = evaluate_transfer(model, Ts, batch=batch, seed=TRANSFER_SEED)
    return [{"model": c["model"], "variant": run["spec"].get("variant"), "seed": c["seed"],
             "T_train": c["T"], "batch": batch, "stream": TRANSFER_SEED, **r,
             "solved": bool(s.get("solved")), "solved_step": s.get("solved_step"),
             "steps_done": s["steps_done"]} for r in rows]


def _write_stage(out: Path, scale: str, stage: str, parameters: dict, *, seed: int,
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


def _read_transfer_rows(path: Path) -> list[dict]:
    """The rows of a converged ``transfer.csv`` (none if it does not exist), with
    ``solved_step`` an int or None (pandas reads a column with blanks as floats) and
    ``batch`` :data:`TRANSFER_BATCH_BEFORE` and ``variant`` None (the plan's own run)
    where the file predates the column."""
    if not path.is_file():
        return []
    rows = io.load_csv(path).to_dict("records")
    for r in rows:
        r.setdefault("batch", TRANSFER_BATCH_BEFORE)
        r.setdefault("stream", TRANSFER_STREAM_BEFORE)
        r.setdefault("variant", None)  # (io.load_csv reads an empty variant as None)
        for k in ("seed", "T_train", "T", "batch", "stream", "steps_done"):
            r[k] = int(r[k])
        r["solved"] = bool(r["solved"])
        step = r["solved_step"]
        r["solved_step"] = None if step is None or step != step else int(step)
    return rows


def _stage_transfer_converged(scale: str, plan: Plan, log, device: str = "cpu") -> None:
    """The transfer stage of a converged plan, incremental: every complete copy run
    stored in ``data/<scale>/copy/`` (:func:`load_stored_runs`, the alternatives of
    :data:`ALTERNATIVES` included: a model solved only with one is evaluated too) is
    evaluated from its
    stored weights (``model.pt``) at the delays of :func:`transfer_delays`. Rows
    already in ``transfer.csv`` are kept, not recomputed (unless the run's
    ``steps_done``, ``solved`` or ``solved_step`` changed: it was trained again; or
    its ``batch`` is not :func:`transfer_batch` of its model); new
    rows are appended; the CSV and the manifest (which lists the runs evaluated) are
    rewritten atomically. A run whose results are stored but whose ``model.pt`` is not
    (yet) is skipped and left for the next call."""
    from datetime import UTC, datetime

    out = DATA / scale / "transfer"
    stored, missing = load_stored_runs(scale, tasks=("copy",), data=DATA, variants=True)
    check_transfer_stream(plan.seeds)
    old_runs = io.load_manifest(out).get("runs", {}) if (out / "manifest.json").is_file() \
        else {}
    by_run: dict[str, list[dict]] = {}
    for r in _read_transfer_rows(out / "transfer.csv"):
        by_run.setdefault(run_name("copy", r["model"], r["T_train"], r["seed"],
                                   variant=r["variant"]), []).append(r)
    t0 = time.perf_counter()
    rows, runs, added = [], {}, []
    for name, run in stored.items():
        c, s = run["config"], run["summary"]
        state = {"steps_done": s["steps_done"], "solved": bool(s.get("solved")),
                 "solved_step": s.get("solved_step")}
        have = by_run.pop(name, [])
        if any({k: r[k] for k in state} != state for r in have):
            log(f"[transfer] {name}: trained again since it was evaluated; recomputed")
            have = []
        elif any(r["stream"] != TRANSFER_SEED for r in have):
            log(f"[transfer] {name}: evaluated on the stream of seed "
                f"{sorted({r['stream'] for r in have})}, now its own ({TRANSFER_SEED}); "
                f"recomputed")
            have = []
        elif any(r["batch"] != transfer_batch(c["model"]) for r in have):
            log(f"[transfer] {name}: evaluated on {sorted({r['batch'] for r in have})} "
                f"sequences, now {transfer_batch(c['model'])}; recomputed")
            have = []
        todo = sorted(set(transfer_delays(plan, c["model"], c["T"]))
                      - {r["T"] for r in have})
        rows += have
        if not todo:
            runs[name] = old_runs.get(name, state)
            log(f"[transfer] {name}: done")
            continue
        folder = DATA / scale / name
        if not (folder / MODEL_FILE).is_file():
            log(f"[transfer] {name}: results stored but not {MODEL_FILE} (yet); skipped")
            if have:
                runs[name] = old_runs.get(name, state)
            continue
        t1 = time.perf_counter()
        new = _transfer_rows(folder, run, todo, device)
        rows += new
        added.append(name)
        runs[name] = {**state, "evaluated_utc":
                      datetime.now(UTC).isoformat(timespec="seconds")}
        log(f"[transfer] {name} ({'solved' if state['solved'] else 'not solved'}): "
            + ", ".join(f"T={r['T']} acc {r['accuracy']:.3f}" for r in new)
            + f" ({time.perf_counter() - t1:.0f} s)")
    for name, kept in by_run.items():  # runs no longer stored complete: rows kept
        rows += kept
        runs[name] = old_runs.get(name, {})
    if not added and (out / "transfer.csv").is_file():
        log(f"[transfer] nothing new: {len(runs)} copy runs evaluated, "
            f"{len(missing)} of the plan's copy runs not stored yet")
        return
    order = {m: i for i, m in enumerate(registry.registered())}
    rows.sort(key=lambda r: (r["T_train"], order.get(r["model"], len(order)),
                             r["variant"] or "", r["seed"], r["T"]))
    _write_stage(
        out, scale, "transfer",
        {"scale": scale, "factors": TRANSFER_FACTORS, "max": plan.transfer_max,
         "memrnn_max": MEMRNN_TRANSFER_MAX, "model_max": TRANSFER_MAX,
         "at_max": list(TRANSFER_AT_MAX),
         "batch": TRANSFER_BATCH, "batch_by_model": TRANSFER_BATCH_BY_MODEL,
         "note": f"every complete copy run stored (the alternatives too), from its "
                 f"model.pt, at 1, 2, 5 and 10 x T_train and T = {plan.transfer_max}; "
                 + ", ".join(f"{m} evaluated up to T = {T}" for m, T in TRANSFER_MAX.items())
                 + " only (O(T^2) evaluation)"
                 + "".join(f", {m} at T = {TRANSFER_MAX[m]} in place of the delays beyond it"
                           for m in TRANSFER_AT_MAX)
                 + f"; {TRANSFER_BATCH} sequences per delay"
                 + f" from their own stream (seed {TRANSFER_SEED}, drawn by no run)"
                 + "".join(f", {m} {b}" for m, b in TRANSFER_BATCH_BY_MODEL.items())},
        seed=TRANSFER_SEED, wall_time_s=time.perf_counter() - t0, device=device,
        tables={"transfer.csv": (rows, TRANSFER_KEY + [
            "batch", "stream", "loss", "accuracy", "solved", "solved_step", "steps_done"])},
        extra={"runs": dict(sorted(runs.items())), "runs_added": added,
               "copy_runs_not_stored": [m["name"] for m in missing]})
    log(f"[transfer] {len(added)} run(s) evaluated, {len(runs)} in all; "
        f"{len(missing)} of the plan's copy runs not stored yet")


def _stage_transfer(scale: str, plan: Plan, log, device: str = "cpu") -> None:
    from rsa.tasks import evaluate_transfer
    from rsa.train import load_trained

    if plan.converged:
        _stage_transfer_converged(scale, plan, log, device)
        return
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
                m = load_trained(RUNS / scale / name, device=device)
                for T in Ts:
                    if model == "memrnn" and T > 2000:  # O(T^2) evaluation: skip, say so
                        continue
                    with torch.no_grad():
                        (r,) = evaluate_transfer(m, [T], batch=20, seed=TRANSFER_SEED)
                    rows.append({"model": model, "seed": seed, "T_train": T_train, **r})
                    log(f"[transfer] {model} s{seed} trained T={T_train} -> T={T}: "
                        f"acc {r['accuracy']:.3f}")
    _write_stage(
        out, scale, "transfer",
        {"scale": scale, "transfer_Ts": plan.transfer_Ts, "max": plan.transfer_max,
         "batch": 20, "note": "memrnn evaluated up to T = 2000 only (O(T^2))"},
        seed=TRANSFER_SEED, wall_time_s=time.perf_counter() - t0, device=device,
        tables={"transfer.csv": rows})


def _grad_rows(model, task, T, seed):
    """||dL/dh_t|| (loss on the answer steps) on a fixed batch of 20 sequences: a list of
    (t, norm), t = 1 .. T + 20. The batch depends on the task, T and seed only, so the
    start and end of a run, and every run of the same task and T, share it."""
    from rsa.measure import grad_norms
    from rsa.tasks import make_generator, synthetic_batch

    x, y = synthetic_batch(task, T, 20, make_generator(GRAD_SEED_OFFSET + seed))  # on CPU
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    return [(t + 1, float(v)) for t, v in enumerate(grad_norms(model, x, y))]


# The converged plan's gradient table: one row per (run, start/end, step t).
_GRAD_COLUMNS = ("model", "task", "T", "seed", "rho", "when", "t", "grad_norm", "solved",
                 "steps_done", "stop_reason")
_GRAD_RUN = ("model", "task", "T", "seed", "rho")  # what identifies a run's rows
_GRAD_NOTE = (
    "start: the initialisation train() starts from (torch.manual_seed(seed), then the "
    "model built from the run's config); end: the stored trained model (model.pt). "
    "There are no intermediate checkpoints, so a run that did not solve its task is "
    "measured where its training stopped, by the stall rule (no validation loss below "
    "0.9 x the memoryless loss for stall_updates updates) or at the budget (steps): see "
    "stop_reason and steps_done. Rows of earlier calls are kept; a run is measured again "
    "only if its stored steps_done changed.")


def _grad_run_key(row) -> tuple[str, ...]:
    """A run's identity in the gradient table, as the CSV writes it (None -> "")."""
    return tuple("" if row.get(k) is None else str(row[k]) for k in _GRAD_RUN)


# Models without recurrent states h_t, so without a gradient profile ||dL/dh_t||: the
# Transformer (its layers do not return a trace of states; rsa.transformer).
NO_STATES = tuple(m for m in registry.registered() if not registry.get(m).has_states)


def _grad_plan_runs(scale: str, plan: Plan) -> tuple[dict, list[dict]]:
    """The runs the converged gradient stage measures, as :func:`load_stored_runs` gives
    them, ``(stored, missing)``: the seed-0 copy and denoise runs at T = ``grad_T`` (SAB's
    among them; not the Transformer's, :data:`NO_STATES`) and the rho ablation. A run
    whose results are stored but whose ``model.pt`` is not (yet:
    the train stage copies it last) counts as missing."""
    def wanted(spec):
        if spec["seed"] != plan.seeds[0] or spec["model"] in NO_STATES:
            return False
        return spec["T"] == (plan.grad_T if spec.get("rho") is None else plan.rho_T)

    found, _ = load_stored_runs(scale, tasks=("copy", "denoise"))
    stored, missing = {}, []
    for spec in plan_runs(scale):
        if spec["task"] not in ("copy", "denoise") or spec.get("variant") or not wanted(spec):
            continue
        name = spec["name"]
        if name in found and (DATA / scale / name / MODEL_FILE).is_file():
            stored[name] = found[name]
        else:
            missing.append(spec)
    return stored, missing


def _grad_run(scale: str, name: str, run: dict, device: str = "cpu") -> list[dict]:
    """The rows of one stored run: its profile at initialisation and at the end."""
    from rsa.heads import build_task_model
    from rsa.train import load_trained

    c, s = run["config"], run["summary"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c["seed"])  # the same initialisation train() starts from
        initial = build_task_model(c["model"], c["task"], c["hidden_size"], nu=c["nu"],
                                   rho=c["rho"], nonlinearity=c["nonlinearity"],
                                   init=c["init"]).to(device)
    trained = load_trained(DATA / scale / name, device=device)
    run_id = {"model": c["model"], "task": c["task"], "T": c["T"], "seed": c["seed"],
              "rho": run["spec"].get("rho")}
    outcome = {"solved": bool(s.get("solved")), "steps_done": s["steps_done"],
               "stop_reason": s.get("stop_reason")}
    rows = []
    for when, m in (("start", initial), ("end", trained)):
        rows += [{**run_id, "when": when, "t": t, "grad_norm": g, **outcome}
                 for t, g in _grad_rows(m, c["task"], c["T"], c["seed"])]
    return rows


def _stage_gradients_converged(scale: str, plan: Plan, log, device: str = "cpu") -> None:
    """Incremental: measure every stored run of the gradient set not measured yet (or
    trained further since), keep the rows already in ``grad_norms.csv``, append the new
    ones, and rewrite the table and its manifest (atomically) only when something was
    added."""
    import csv

    out = DATA / scale / "gradients"
    path = out / "grad_norms.csv"
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))  # kept as written (strings)
    held = {_grad_run_key(r): r["steps_done"] for r in rows}
    stored, missing = _grad_plan_runs(scale, plan)
    todo = [(name, run) for name, run in stored.items()
            if held.get(_grad_run_key(run["spec"])) != str(run["summary"]["steps_done"])]
    if not todo:
        log(f"[gradients] done: {len(stored)} stored runs measured; {len(missing)} of the "
            f"plan's runs not stored yet")
        return
    t0 = time.perf_counter()
    for name, run in todo:
        new = _grad_run(scale, name, run, device)
        key = _grad_run_key(new[0])
        rows = [r for r in rows if _grad_run_key(r) != key] + new  # a rerun replaces
        log(f"[gradients] {name} ({run['summary'].get('stop_reason')} after "
            f"{run['summary']['steps_done']} updates)")
    measured = {}
    for r in rows:
        rho = r["rho"] if r["rho"] not in ("", None) else None
        name = run_name(r["task"], r["model"], int(r["T"]), int(r["seed"]),
                        None if rho is None else int(rho))
        measured[name] = {k: r[k] for k in ("solved", "steps_done", "stop_reason")}
    before = 0.0
    if (out / "manifest.json").is_file():
        before = io.load_manifest(out).get("wall_time_s") or 0.0
    _write_stage(
        out, scale, "gradients",
        {"scale": scale, "T": plan.grad_T, "batch": 20, "loss": "answer steps only",
         "rhos": plan.rhos, "rho_T": plan.rho_T, "note": _GRAD_NOTE,
         "runs": measured, "missing": [s["name"] for s in missing]},
        seed=plan.seeds[0], wall_time_s=before + time.perf_counter() - t0, device=device,
        tables={path.name: (rows, _GRAD_COLUMNS)})
    log(f"[gradients] {len(todo)} run(s) added; {len(measured)} in the table; "
        f"{len(missing)} of the plan's runs not stored yet")


def _stage_gradients(scale: str, plan: Plan, log, device: str = "cpu") -> None:
    from rsa.heads import build_task_model
    from rsa.train import load_trained, resolve_config

    if plan.converged:
        _stage_gradients_converged(scale, plan, log, device)
        return
    out = DATA / scale / "gradients"
    if (out / "grad_norms.csv").is_file():
        log("[gradients] done")
        return
    rows, t0 = [], time.perf_counter()
    jobs = [("denoise", m, plan.grad_T, None) for m in MODELS] + \
           [("copy", m, plan.grad_T, None) for m in MODELS] + \
           [("denoise", m, plan.rho_T, rho) for m in registry.with_option("rho")
            for rho in plan.rhos]
    for task, model, T, rho in jobs:
        seed = plan.seeds[0]
        name = run_name(task, model, T, seed, rho)
        trained = load_trained(RUNS / scale / name, device=device)
        c = resolve_config(model=model, task=task, T=T, seed=seed, rho=rho)
        torch.manual_seed(seed)  # the same initialisation train() starts from
        initial = build_task_model(model, task, c.hidden_size, nu=c.nu, rho=c.rho,
                                   nonlinearity=c.nonlinearity, init=c.init).to(device)
        for when, m in (("start", initial), ("end", trained)):
            rows += [{"model": model, "task": task, "T": T, "seed": seed, "rho": rho,
                      "when": when, "t": t, "grad_norm": g}
                     for t, g in _grad_rows(m, task, T, seed)]
        log(f"[gradients] {name}")
    _write_stage(
        out, scale, "gradients",
        {"scale": scale, "T": plan.grad_T, "batch": 20, "loss": "answer steps only",
         "rhos": plan.rhos}, seed=plan.seeds[0], wall_time_s=time.perf_counter() - t0,
        device=device, tables={"grad_norms.csv": rows})


# The baselines' cost is measured in rounds of its own, with two of the paper's models
# as references measured in the same rounds (the cost table of the paper's models is not
# measured again), at the delays up to the authors' largest (SAB's update costs O(T^2)).
BASELINE_COST_REFS = ("lstm", "rellstm")
BASELINE_COST_TS = (100, 200, 400, 600, 800)


def _stage_cost(scale: str, plan: Plan, log, device: str = "cpu") -> None:
    """cost.csv: every model (MemRNN and RelRNN fused, the defaults); cost_unfused.csv:
    MemRNN (T <= ``unfused_max_T``) and RelRNN with plain autograd (fused=False), the
    authors' kind of code (MemRNN's memory O(T^2 n B)). Converged plan:
    ``cost_baselines/cost.csv`` too (:func:`_cost_baselines`)."""
    from rsa.bench import run_bench

    if plan.converged:
        _cost_baselines(scale, plan, log, device)
    out = DATA / scale / "cost"
    files = ["cost.csv", "cost_unfused.csv", "manifest.json"]
    params = {"scale": scale, "Ts": plan.cost_Ts, "unfused_max_T": plan.unfused_max_T,
              "unfused": list(UNFUSED), "batch": 10, "hidden_size": 128, "task": "copy",
              "repeats": 5, "unfused_repeats": 2, "threads": torch.get_num_threads(),
              "device": device}
    t0 = time.perf_counter()
    done = [f for f in ("cost.csv", "cost_unfused.csv") if (out / f).is_file()]
    for f in done:
        log(f"[cost] {f} done")
    if len(done) == 2:
        return
    if "cost.csv" not in done:
        io.write_csv(out / "cost.csv", run_bench(MODELS, plan.cost_Ts, large_batch=0,
                                                 repeats=params["repeats"], log=log,
                                                 device=device))
    if "cost_unfused.csv" not in done:
        _cost_unfused(out, plan, params, log)
    # the tables are written as they are measured (either may be done already)
    _write_stage(out, scale, "cost", params, seed=0, wall_time_s=time.perf_counter() - t0,
                 files=files, device=device)


def _cost_baselines(scale: str, plan: Plan, log, device: str = "cpu") -> None:
    """``data/<scale>/cost_baselines/cost.csv``: time per update and peak memory of the
    :data:`BASELINES` and of the references :data:`BASELINE_COST_REFS` (LSTM, RelLSTM),
    timed in the same interleaved rounds (so that the baselines are compared with the
    references under the same machine conditions), at :data:`BASELINE_COST_TS`, n = 128,
    batch 10, copy; 3 timed updates after a warm-up (SAB's update at T = 800 takes
    seconds)."""
    from rsa.bench import run_bench

    out = DATA / scale / "cost_baselines"
    if (out / "cost.csv").is_file():
        log("[cost] cost_baselines/cost.csv done")
        return
    models = BASELINE_COST_REFS + BASELINES
    params = {"scale": scale, "Ts": BASELINE_COST_TS, "models": list(models),
              "references": list(BASELINE_COST_REFS), "batch": 10, "hidden_size": 128,
              "task": "copy", "repeats": 3, "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    rows = run_bench(models, BASELINE_COST_TS, large_batch=0, repeats=params["repeats"],
                     log=log, device=device)
    _write_stage(out, scale, "cost", params, seed=0, wall_time_s=time.perf_counter() - t0,
                 device=device, tables={"cost.csv": rows})


def _cost_unfused(out, plan: Plan, params: dict, log) -> None:
    from rsa.measure import peak_memory, saved_tensor_bytes, update_times

    configs = [(model, T, 10) for model in UNFUSED
               for T in plan.cost_Ts
               if T <= (plan.unfused_max_T if model == "memrnn" else max(plan.cost_Ts))]
    device = params["device"]
    times = update_times(configs, repeats=params["unfused_repeats"], fused=False,
                         device=device)
    rows = []
    for (model, T, B), t in zip(configs, times, strict=True):
        p = peak_memory(model, T, fused=False, device=device)
        rows.append({"model": f"{model}_unfused", "T": T, "batch": B,
                     "time_ms": 1e3 * t["median_s"],
                     "time_min_ms": 1e3 * min(t["times_s"]),
                     "times_ms": [1e3 * x for x in t["times_s"]],
                     "peak_mib": p["peak_bytes"] / 2**20,
                     "saved_mib": saved_tensor_bytes(model, T, fused=False,
                                                     device=device) / 2**20,
                     "skipped": None, "threads": torch.get_num_threads(),
                     "method": p["method"]})
        log(f"{model}_unfused T={T}: {rows[-1]['time_ms']:.0f} ms, "
            f"{rows[-1]['peak_mib']:.0f} MiB")
    io.write_csv(out / "cost_unfused.csv", rows)


_STAGE_FUNCS = {"train": _stage_train, "transfer": _stage_transfer,
                "gradients": _stage_gradients, "cost": _stage_cost}


def resolve_device(device: str) -> str:
    """``"auto"``: ``"cuda"`` when a GPU is available, else ``"cpu"``; other names are
    returned as given (:func:`check_device` checks them)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_device(device: str) -> None:
    """A ValueError in the words of ``--device`` when ``device`` is not cpu, cuda, cuda:N
    (or auto), or names a CUDA device this machine does not have."""
    from rsa.train import DeviceUnavailableError, _device

    try:
        _device(device)
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
    history as TensorBoard events in its folder under ``runs_dir`` (:mod:`rsa.scalars`).
    ``budget`` caps the updates of every training run below the plan's (a machine that
    cannot give a run its full budget): a run that reaches it is stored with
    ``stop_reason`` "budget" and ``steps`` = ``budget`` in its config (so it reads as
    not solved within ``budget`` updates), and a later call with a larger budget (or
    none) trains it further from its checkpoint under ``runs/<scale>/``.
    ``populations`` trains the seeds of one configuration as one population
    (:func:`rsa.population.stage_train_populations`; the same stored files), and
    ``shard`` then splits populations (not with ``budget`` or ``tensorboard``).
    """
    global DATA, RUNS
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
        from rsa.scalars import require_tensorboard

        require_tensorboard()
    data = io.check_output_root(DATA if data_dir is None else data_dir, "--data-dir",
                                io.DATA_ENV)
    runs = io.check_output_root(RUNS if runs_dir is None else runs_dir, "--runs-dir",
                                io.RUNS_ENV)
    saved, (DATA, RUNS) = (DATA, RUNS), (data, runs)
    try:
        if select is not None and not _selected(list(_train_runs(plan, scale)), select):
            raise ValueError(f"select {list(select)!r} matches no run of the {scale!r} plan; "
                             f"run names look like {run_name('copy', 'relrnn', 100, 0)!r}")
        for s in STAGES:
            if s in stages:
                if s == "train" and populations:
                    from rsa.population import stage_train_populations

                    stage_train_populations(scale, plan, log, shard or (0, 1), select,
                                            device)
                elif s == "train":
                    _stage_train(scale, plan, log, shard or (0, 1), select, device,
                                 tensorboard, budget)
                else:
                    _STAGE_FUNCS[s](scale, plan, log, device)
    finally:
        DATA, RUNS = saved


@contextlib.contextmanager
def _reading(data_dir):
    """``DATA`` is ``data_dir`` (when given) for the duration: ``--status`` and
    ``--dry-run`` read the stored results there, and the converged plan's alternatives
    depend on them."""
    global DATA
    saved = DATA
    DATA = DATA if data_dir is None else Path(data_dir)
    try:
        yield
    finally:
        DATA = saved


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shard must look like i/n (e.g. 0/2), got {text!r}") from None
    return i, n


def plan_status(scale: str, data=None) -> str:
    """How far the plan of ``scale`` has run, as Markdown: per task, delay and model, the
    runs stored out of those planned, how many were solved, how many exploded at
    some evaluation (:func:`exploded_at`), the updates to solve
    (range over seeds) and how the runs stopped; then the training time of the stored runs
    (the sum of their wall times) and the number of runs not run yet."""
    import pandas as pd

    stored, missing = load_stored_runs(scale, data=data)
    specs = plan_runs(scale)
    planned = pd.DataFrame([r for r in specs if r.get("variant") is None])
    table = runs_table(stored)
    if "rho" not in planned:
        planned["rho"] = None
    rows = []
    for (task, T, rho, model), g in planned.groupby(["task", "T", "rho", "model"],
                                                    dropna=False, sort=False):
        done = table[(table["task"] == task) & (table["model"] == model)
                     & ((table["T"] == T) | (T != T))
                     & ((table["rho"] == rho) | (rho != rho) & table["rho"].isna())
                     ] if len(table) else table
        seq = task in ("copy", "denoise")
        ok = done[done["solved"]] if len(done) and seq else done.iloc[:0]
        steps = sorted(int(x) for x in ok["solved_step"]) if len(ok) else []
        best = sorted(done["best_val_accuracy"]) if len(done) else []
        rows.append({"task": task, "T": "—" if T != T else int(T),
                     "rho": "—" if rho != rho or rho is None else int(rho), "model": model,
                     "stored": f"{len(done)} of {len(g)}",
                     "solved": len(ok) if len(done) and seq else "—",
                     "exploded": (int(done["exploded_step"].notna().sum())
                                  if len(done) else "—"),
                     "updates to solve": (f"{steps[0]}–{steps[-1]}" if len(steps) > 1
                                          else (str(steps[0]) if steps else "—")),
                     "best val. accuracy": (f"{best[0]:.3f}–{best[-1]:.3f}" if len(best) > 1
                                            else (f"{best[0]:.3f}" if best else "—")),
                     "stopped by": ", ".join(sorted({str(r) if r == r and r is not None
                                                      else "not recorded"
                                                      for r in done["stop_reason"]})) or "—"
                     if len(done) else "—"})
    hours = (table["wall_time_s"].sum() / 3600) if len(table) else 0.0
    out = pd.DataFrame(rows).to_markdown(index=False)
    alternatives = [r for r in specs if r.get("variant") is not None]
    if alternatives:
        found, _ = load_stored_runs(scale, data=data, variants=True)
        out += "\n\nAlternatives (the authors' options, for unsolved seed-0 runs): " + "; ".join(
            f"{r['name']}: " + (("solved at " + str(found[r['name']]['summary']['solved_step'])
                                 if found[r["name"]]["summary"].get("solved") else
                                 f"not solved ({found[r['name']]['summary']['stop_reason']})")
                                if r["name"] in found else "not run yet")
            for r in alternatives) + "."
    states = run_states(scale, data)
    n = {k: sum(v == k for v in states.values()) for k in ("done", "reduced", "missing")}
    return (f"{out}\n\n{len(stored)} runs stored ({hours:.1f} hours of training, the sum "
            f"of their wall times), {len(missing)} not run yet."
            f"\n\nAll {len(states)} runs of the plan, the authors' alternatives included "
            f"(the rule of --dry-run and of the train stage): {n['done']} done, "
            f"{n['reduced']} stored at a reduced budget (the train stage trains them "
            f"further), {n['missing']} not stored.")


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
                        "paper: the campaign at the authors' budget (rsa.campaign: the "
                        "cells that decide a verdict, resumed from the in-flight state "
                        "committed under data/paper/inflight/)")
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
                        "install 'rsa[cluster]'; default: off)")
    p.add_argument("--populations", action="store_true",
                   help="train the seeds of one configuration as one population "
                        "(rsa.population; the same results; default: run by run)")
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
        "the array has succeeded (afterok), through submitit (pip install 'rsa[cluster]').\n"
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
        from rsa import campaign

        if a.executor != "local" or a.stages != list(STAGES) or a.budget or a.shard:
            p.error("--scale paper (the campaign) runs its jobs here, in order, with "
                    "--threads, --select, --data-dir, --runs-dir, --status, --dry-run "
                    "and --snapshot only; start one process per core (the run locks "
                    "share the jobs out)")

        try:
            return campaign.main(a, log=lambda s: print(s, flush=True))
        except (ValueError, RuntimeError) as e:
            p.error(str(e))
    if a.data_dir and (a.status or a.dry_run) and not Path(a.data_dir).is_dir():
        p.error(f"--data-dir {a.data_dir!r} is not a folder; name the folder that holds "
                f"<scale>/ (default: data/ of the checkout)")
    if a.status:
        with _reading(a.data_dir):
            print(plan_status(a.scale))
        return 0
    log = lambda s: print(s, flush=True)  # noqa: E731
    try:
        if a.dry_run:
            from rsa.cluster import dry_run

            with _reading(a.data_dir):
                print(dry_run(a.scale, a.device, a.select))
            return 0
        if a.executor == "slurm":
            from rsa.cluster import submit

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
