"""Stage 2, ``transfer``: copy models trained at T evaluated at longer delays, on their own
stream.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rsa import io
from rsa.experiments.plan import Plan, run_name
from rsa.experiments.store import Store, load_stored_runs, write_stage
from rsa.models import registry
from rsa.models.heads import MODELS
from rsa.tasks import N_DATA, N_SYMBOLS
from rsa.train import MODEL_FILE, SOLVED_ACCURACY

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


def _transfer_converged(scale: str, plan: Plan, store: Store, log, device: str = "cpu") -> None:
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

    out = store.data / scale / "transfer"
    stored, missing = load_stored_runs(scale, tasks=("copy",), data=store.data, variants=True)
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
        folder = store.data / scale / name
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
    write_stage(
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


def stage_transfer(scale: str, plan: Plan, store: Store, log, device: str = "cpu") -> None:
    from rsa.tasks import evaluate_transfer
    from rsa.train import load_trained

    if plan.converged:
        _transfer_converged(scale, plan, store, log, device)
        return
    out = store.data / scale / "transfer"
    if (out / "transfer.csv").is_file():
        log("[transfer] done")
        return
    rows, t0 = [], time.perf_counter()
    for T_train in plan.transfer_Ts:
        Ts = sorted({T_train, 2 * T_train, 5 * T_train, 10 * T_train, plan.transfer_max})
        for model in MODELS:
            for seed in plan.seeds:
                name = run_name("copy", model, T_train, seed)
                m = load_trained(store.runs / scale / name, device=device)
                for T in Ts:
                    if model == "memrnn" and T > 2000:  # O(T^2) evaluation: skip, say so
                        continue
                    with torch.no_grad():
                        (r,) = evaluate_transfer(m, [T], batch=20, seed=TRANSFER_SEED)
                    rows.append({"model": model, "seed": seed, "T_train": T_train, **r})
                    log(f"[transfer] {model} s{seed} trained T={T_train} -> T={T}: "
                        f"acc {r['accuracy']:.3f}")
    write_stage(
        out, scale, "transfer",
        {"scale": scale, "transfer_Ts": plan.transfer_Ts, "max": plan.transfer_max,
         "batch": 20, "note": "memrnn evaluated up to T = 2000 only (O(T^2))"},
        seed=TRANSFER_SEED, wall_time_s=time.perf_counter() - t0, device=device,
        tables={"transfer.csv": rows})


# -- what a transfer point supports: the bars the chapter *Transfer* judges by --------------

def point_standard_error(p: float, batch: int) -> float:
    """The standard error of one transfer point at accuracy ``p``: ``batch`` sequences
    of N_DATA answer symbols each, sqrt(p (1 - p) / (N_DATA batch))."""
    return (p * (1 - p) / (N_DATA * batch)) ** 0.5


def keeps_bar(batch: int) -> float:
    """A model *keeps* its accuracy at a delay when its point is at least this:
    SOLVED_ACCURACY less two standard errors of one point there."""
    return SOLVED_ACCURACY - 2 * point_standard_error(SOLVED_ACCURACY, batch)


def chance_bar(batch: int) -> float:
    """A point at most this is no better than a network without memory (a uniform guess
    over the N_SYMBOLS data symbols, 1/8) plus two standard errors."""
    chance = 1 / N_SYMBOLS
    return chance + 2 * point_standard_error(chance, batch)
