"""Stage 4, ``cost``: time per update and peak memory against T for every model.
"""

from __future__ import annotations

import time

import torch

from rsa import io
from rsa.experiments.plan import BASELINES, UNFUSED, Plan
from rsa.experiments.store import Store, write_stage
from rsa.models.heads import MODELS

# The baselines' cost is measured in rounds of its own, with two of the paper's models
# as references measured in the same rounds (the cost table of the paper's models is not
# measured again), at the delays up to the authors' largest (SAB's update costs O(T^2)).
BASELINE_COST_REFS = ("lstm", "rellstm")


BASELINE_COST_TS = (100, 200, 400, 600, 800)


def stage_cost(scale: str, plan: Plan, store: Store, log, device: str = "cpu") -> None:
    """cost.csv: every model (MemRNN and RelRNN fused, the defaults); cost_unfused.csv:
    MemRNN (T <= ``unfused_max_T``) and RelRNN with plain autograd (fused=False), the
    authors' kind of code (MemRNN's memory O(T^2 n B)). Converged plan:
    ``cost_baselines/cost.csv`` too (:func:`_cost_baselines`)."""
    from rsa.experiments.bench import run_bench

    if plan.converged:
        _cost_baselines(scale, plan, store, log, device)
    out = store.data / scale / "cost"
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
    write_stage(out, scale, "cost", params, seed=0, wall_time_s=time.perf_counter() - t0,
                 files=files, device=device)


def _cost_baselines(scale: str, plan: Plan, store: Store, log, device: str = "cpu") -> None:
    """``data/<scale>/cost_baselines/cost.csv``: time per update and peak memory of the
    :data:`BASELINES` and of the references :data:`BASELINE_COST_REFS` (LSTM, RelLSTM),
    timed in the same interleaved rounds (so that the baselines are compared with the
    references under the same machine conditions), at :data:`BASELINE_COST_TS`, n = 128,
    batch 10, copy; 3 timed updates after a warm-up (SAB's update at T = 800 takes
    seconds)."""
    from rsa.experiments.bench import run_bench

    out = store.data / scale / "cost_baselines"
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
    write_stage(out, scale, "cost", params, seed=0, wall_time_s=time.perf_counter() - t0,
                 device=device, tables={"cost.csv": rows})


def _cost_unfused(out, plan: Plan, params: dict, log) -> None:
    from rsa.experiments.measure import peak_memory, saved_tensor_bytes, update_times

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
