"""The train stage with the seeds of one configuration trained as one population
(``reproduce --populations``): the same runs, claims and stored files as
:func:`rsa.experiments.train_stage.stage_train`, and the same rule for a run that is done.
"""

from __future__ import annotations

import contextlib
import time

from rsa import io
from rsa.experiments.plan import Plan, select_runs, spec_name, train_runs
from rsa.experiments.store import RESULT_FILES, Store, is_done
from rsa.train import MODEL_FILE
from rsa.train.lock import claim
from rsa.train.population import train_population

# -- the experiment plan in populations ---------------------------------------------------

def population_groups(runs: list[dict]) -> list[list[dict]]:
    """The plan's runs (dicts of :func:`rsa.experiments.plan.train_runs`) grouped into
    populations: runs equal but for their seed, in the order of each group's first run."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        key = tuple(sorted((k, v) for k, v in r.items() if k != "seed"))
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def stage_train_populations(scale: str, plan: Plan, store: Store, log,
                            shard: tuple[int, int] = (0, 1), select=None,
                            device: str = "cpu") -> None:
    """The train stage of :func:`rsa.experiments.reproduce` with the plan's seeds of one
    configuration trained as one population (``reproduce --populations``).

    The same runs, work folders (``runs/<scale>/<name>``, with their ``.lock`` claims)
    and stored files as the run-by-run stage: a run already stored is skipped, a run
    another process holds is left to it, and only the remaining seeds of a group train
    together (each resuming from its own checkpoint). ``shard=(i, n)`` takes every n-th
    population from population i."""
    runs = select_runs(list(train_runs(plan, scale, store.data)), select)
    groups = population_groups(runs)
    i, n = shard
    files = RESULT_FILES + ((MODEL_FILE,) if plan.converged else ())
    for k, group in enumerate(groups, 1):
        if (k - 1) % n != i:  # another shard's population
            continue
        label = f"[population {k}/{len(groups)}]"
        todo = []
        for r in group:
            name = spec_name(r)
            dest = store.data / scale / name
            if is_done(dest / "results.json", r["steps"]):
                log(f"{label} {name}: done")
                continue
            todo.append((r, name, dest))
        with contextlib.ExitStack() as claims:
            mine = []
            for r, name, dest in todo:
                work = store.runs / scale / name
                owner = claims.enter_context(claim(work))
                if owner is not None:
                    log(f"{label} {name}: being trained by {owner}; skipped")
                    continue
                mine.append((r, name, dest, work))
            if not mine:
                continue
            log(f"{label} {', '.join(m[1] for m in mine)}: training {mine[0][0]['steps']} "
                f"updates as one population of {len(mine)}")
            t0 = time.perf_counter()
            args = {key: v for key, v in mine[0][0].items() if key not in ("variant", "seed")}
            train_population(seeds=[m[0]["seed"] for m in mine],
                             out_dirs=[str(m[3]) for m in mine], progress=False,
                             device=device, **args)
            for _, _, dest, work in mine:  # results (and small weights), not checkpoints
                io.check_provenance(io.load_json(work / "manifest.json"),
                                    str(work / "manifest.json"))
                for f in files:
                    io.atomic_write_bytes(dest / f, (work / f).read_bytes())
            log(f"    {time.perf_counter() - t0:.0f} s")
