"""The plans: which runs each scale trains (tasks, models, delays, seeds, budgets), their
names, and the authors' alternatives for unsolved runs.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from rsa import io
from rsa.models import registry
from rsa.models.heads import MODELS


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
    converged: bool = False  # the grid of converged_runs, in order of priority
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


def spec_name(r: dict) -> str:
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


def converged_runs(plan: Plan, scale: str | None = None, data: Path | None = None):
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
        root = io.data_root() if data is None else Path(data)
        results = root / scale / spec_name(spec) / "results.json"
        if not results.is_file():
            continue
        stored = io.load_json(results)
        if not stored.get("complete") or stored["summary"].get("solved"):
            continue
        for tag, (applies, overrides) in ALTERNATIVES.items():
            if applies(stored["config"]):
                yield {**spec, **overrides, "variant": tag}


def train_runs(plan: Plan, scale: str | None = None, data: Path | None = None):
    if plan.converged:
        yield from converged_runs(plan, scale, data)
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


def select_runs(runs: list[dict], select) -> list[dict]:
    """The runs whose name (:func:`run_name`) matches one of the glob patterns in
    ``select`` (all runs when ``select`` is None)."""
    if select is None:
        return runs
    return [r for r in runs if any(fnmatch.fnmatchcase(spec_name(r), pattern)
                                   for pattern in select)]


def plan_runs(scale: str, data: Path | None = None) -> list[dict]:
    """The training runs of a scale's plan, in order, each a dict of :func:`rsa.train.train`
    arguments plus its ``name`` (:func:`run_name`)."""
    if scale not in PLANS:
        raise ValueError(f"scale must be one of {sorted(PLANS)}, got {scale!r}")
    return [{**r, "name": spec_name(r)} for r in train_runs(PLANS[scale], scale, data)]
