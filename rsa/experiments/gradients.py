"""Stage 3, ``gradients``: ||dL/dh_t|| over t at the start and end of training.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rsa import io
from rsa.experiments.plan import Plan, plan_runs, run_name
from rsa.experiments.store import Store, load_stored_runs, write_stage
from rsa.experiments.transfer import GRAD_SEED_OFFSET
from rsa.models import registry
from rsa.models.heads import MODELS
from rsa.train import MODEL_FILE


def grad_rows(model, task, T, seed):
    """||dL/dh_t|| (loss on the answer steps) on a fixed batch of 20 sequences: a list of
    (t, norm), t = 1 .. T + 20. The batch depends on the task, T and seed only, so the
    start and end of a run, and every run of the same task and T, share it."""
    from rsa.experiments.measure import grad_norms
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
# Transformer (its layers do not return a trace of states; rsa.models.transformer).
NO_STATES = tuple(m for m in registry.registered() if not registry.get(m).has_states)


def _grad_plan_runs(scale: str, plan: Plan, data: Path) -> tuple[dict, list[dict]]:
    """The runs the converged gradient stage measures, as :func:`load_stored_runs` gives
    them, ``(stored, missing)``: the seed-0 copy and denoise runs at T = ``grad_T`` (SAB's
    among them; not the Transformer's, :data:`NO_STATES`) and the rho ablation. A run
    whose results are stored but whose ``model.pt`` is not (yet:
    the train stage copies it last) counts as missing."""
    def wanted(spec):
        if spec["seed"] != plan.seeds[0] or spec["model"] in NO_STATES:
            return False
        return spec["T"] == (plan.grad_T if spec.get("rho") is None else plan.rho_T)

    found, _ = load_stored_runs(scale, tasks=("copy", "denoise"), data=data)
    stored, missing = {}, []
    for spec in plan_runs(scale, data):
        if spec["task"] not in ("copy", "denoise") or spec.get("variant") or not wanted(spec):
            continue
        name = spec["name"]
        if name in found and (data / scale / name / MODEL_FILE).is_file():
            stored[name] = found[name]
        else:
            missing.append(spec)
    return stored, missing


def _grad_run(folder: Path, run: dict, device: str = "cpu") -> list[dict]:
    """The rows of one stored run: its profile at initialisation and at the end."""
    from rsa.models.heads import build_task_model
    from rsa.train import load_trained

    c, s = run["config"], run["summary"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c["seed"])  # the same initialisation train() starts from
        initial = build_task_model(c["model"], c["task"], c["hidden_size"], nu=c["nu"],
                                   rho=c["rho"], nonlinearity=c["nonlinearity"],
                                   init=c["init"]).to(device)
    trained = load_trained(folder, device=device)
    run_id = {"model": c["model"], "task": c["task"], "T": c["T"], "seed": c["seed"],
              "rho": run["spec"].get("rho")}
    outcome = {"solved": bool(s.get("solved")), "steps_done": s["steps_done"],
               "stop_reason": s.get("stop_reason")}
    rows = []
    for when, m in (("start", initial), ("end", trained)):
        rows += [{**run_id, "when": when, "t": t, "grad_norm": g, **outcome}
                 for t, g in grad_rows(m, c["task"], c["T"], c["seed"])]
    return rows


def _gradients_converged(scale: str, plan: Plan, store: Store, log, device: str = "cpu") -> None:
    """Incremental: measure every stored run of the gradient set not measured yet (or
    trained further since), keep the rows already in ``grad_norms.csv``, append the new
    ones, and rewrite the table and its manifest (atomically) only when something was
    added."""
    import csv

    out = store.data / scale / "gradients"
    path = out / "grad_norms.csv"
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))  # kept as written (strings)
    held = {_grad_run_key(r): r["steps_done"] for r in rows}
    stored, missing = _grad_plan_runs(scale, plan, store.data)
    todo = [(name, run) for name, run in stored.items()
            if held.get(_grad_run_key(run["spec"])) != str(run["summary"]["steps_done"])]
    if not todo:
        log(f"[gradients] done: {len(stored)} stored runs measured; {len(missing)} of the "
            f"plan's runs not stored yet")
        return
    t0 = time.perf_counter()
    for name, run in todo:
        new = _grad_run(store.data / scale / name, run, device)
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
    write_stage(
        out, scale, "gradients",
        {"scale": scale, "T": plan.grad_T, "batch": 20, "loss": "answer steps only",
         "rhos": plan.rhos, "rho_T": plan.rho_T, "note": _GRAD_NOTE,
         "runs": measured, "missing": [s["name"] for s in missing]},
        seed=plan.seeds[0], wall_time_s=before + time.perf_counter() - t0, device=device,
        tables={path.name: (rows, _GRAD_COLUMNS)})
    log(f"[gradients] {len(todo)} run(s) added; {len(measured)} in the table; "
        f"{len(missing)} of the plan's runs not stored yet")


def stage_gradients(scale: str, plan: Plan, store: Store, log, device: str = "cpu") -> None:
    from rsa.models.heads import build_task_model
    from rsa.train import load_trained, resolve_config

    if plan.converged:
        _gradients_converged(scale, plan, store, log, device)
        return
    out = store.data / scale / "gradients"
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
        trained = load_trained(store.runs / scale / name, device=device)
        c = resolve_config(model=model, task=task, T=T, seed=seed, rho=rho)
        torch.manual_seed(seed)  # the same initialisation train() starts from
        initial = build_task_model(model, task, c.hidden_size, nu=c.nu, rho=c.rho,
                                   nonlinearity=c.nonlinearity, init=c.init).to(device)
        for when, m in (("start", initial), ("end", trained)):
            rows += [{"model": model, "task": task, "T": T, "seed": seed, "rho": rho,
                      "when": when, "t": t, "grad_norm": g}
                     for t, g in grad_rows(m, task, T, seed)]
        log(f"[gradients] {name}")
    write_stage(
        out, scale, "gradients",
        {"scale": scale, "T": plan.grad_T, "batch": 20, "loss": "answer steps only",
         "rhos": plan.rhos}, seed=plan.seeds[0], wall_time_s=time.perf_counter() - t0,
        device=device, tables={"grad_norms.csv": rows})
