"""Stage 1, ``train``: every run of the plan not stored yet, trained under ``runs/`` and
copied to ``data/`` when finished.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rsa import io
from rsa.experiments.plan import Plan, select_runs, spec_name, train_runs
from rsa.experiments.store import RESULT_FILES, Store, is_done
from rsa.train import MODEL_FILE
from rsa.train.lock import claim


def stage_train(scale: str, plan: Plan, store: Store, log, shard: tuple[int, int] = (0, 1),
                 select=None, device: str = "cpu", tensorboard: bool = False,
                 budget: int | None = None) -> None:
    from rsa.train import train

    runs = select_runs(list(train_runs(plan, scale, store.data)), select)
    if budget is not None:  # a reduced budget, stated in each run's config (steps)
        runs = [{**r, "steps": min(r["steps"], budget)} for r in runs]
    i, n = shard
    for k, r in enumerate(runs, 1):
        if (k - 1) % n != i:  # another shard's run
            continue
        name = spec_name(r)
        dest = store.data / scale / name
        if is_done(dest / "results.json", r["steps"]):
            log(f"[train {k}/{len(runs)}] {name}: done")
            continue
        work = store.runs / scale / name
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
    from rsa.train.checkpoint import load_checkpoint, nan_fired_without_rule

    path = work / CHECKPOINT
    if not args.get("stop_when_nan") or not path.is_file():
        return None
    return nan_fired_without_rule(load_checkpoint(path, torch.device("cpu")))
