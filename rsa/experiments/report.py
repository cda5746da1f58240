"""How far a plan has run and what the rest would cost: ``reproduce --status``
(:func:`plan_status`) and ``reproduce --dry-run`` (:func:`dry_run`, from measured times
per update), by the one rule of :func:`rsa.experiments.store.run_states`.
"""

from __future__ import annotations

import re
from pathlib import Path

from rsa import io
from rsa.experiments.plan import PLANS, plan_runs, select_runs
from rsa.experiments.stages import resolve_device
from rsa.experiments.store import load_stored_runs, run_states, runs_table
from rsa.train import stop_in_words


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
                     "stopped by": ", ".join(sorted({stop_in_words(r, missing="not recorded")
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
                                 f"not solved within {found[r['name']]['summary']['steps_done']} ("
                                 + stop_in_words(
                                     found[r["name"]]["summary"].get("stop_reason")) + ")")
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


GPU_BENCH = Path("gpu") / "gpu_session.log"  # under data/: `rsa bench --device cuda`


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
    data = Path(io.data_root() if data is None else data)
    gpu = device.startswith("cuda")
    seq, seq_source = _gpu_bench(data) if gpu else _cpu_bench(data, scale)
    pixel: dict = {}
    pixel_source = None
    if not gpu:
        for s in (scale, "converged", "session"):
            if s not in PLANS or not (data / s).is_dir():
                continue
            stored, _ = load_stored_runs(s, tasks=("digits", "pdigits"),
                                                     data=data)
            table = runs_table(stored)
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
    data = Path(io.data_root() if data is None else data)
    cost = update_cost(scale, device, data)
    states = run_states(scale, data)  # the one rule (status, stages)
    rows = []
    for r in select_runs(plan_runs(scale, data), select):
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


def dry_run(scale: str, device: str = "cpu", select=None, data=None) -> str:
    """``reproduce --dry-run``: :func:`estimate` as a Markdown table and the totals in
    hours, for the runs not stored yet and for the whole plan."""
    import pandas as pd

    if scale not in PLANS:
        raise ValueError(f"--scale must be one of {sorted(PLANS)}, got {scale!r}")
    device = resolve_device(device)
    if device != "cpu":
        from rsa.train import check_device_name

        try:
            check_device_name(device)
        except ValueError:
            raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}"
                             ) from None
    rows = estimate(scale, device, select, data)
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
