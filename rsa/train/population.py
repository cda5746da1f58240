"""Population training: P runs of one configuration trained as one computation, each
with the single run's own record (:mod:`rsa.train.loop`); the batched update is
:func:`rsa.models.kernels.population.population_step`, derived there.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

from rsa.models.kernels.population import batched, compiled_kernel, population_step
from rsa.train import TrainConfig, TrainResult, resolve_config
from rsa.train.checkpoint import _Interrupt
from rsa.train.lock import hold
from rsa.train.loop import (
    _account,
    _Clock,
    _finish,
    _open,
    _progress_bar,
    _record_evaluation,
    _save,
    _start_segment,
    _write_results,
)

__all__ = ["train_population", "seed_dirs"]

# -- the runs --------------------------------------------------------------------------------

def seed_dirs(out_dir: str | Path, seeds) -> list[str]:
    """``out_dir/s<seed>`` for each seed: where ``--seeds ... --out DIR`` writes."""
    return [str(Path(out_dir) / f"s{seed}") for seed in seeds]


class _Member:
    """One run of a population: the single run's own record, from :mod:`rsa.train.loop`
    (model, optimizer and data from ``_prepare``, :class:`rsa.train.RunState`, the
    evaluation and stopping rules, checkpoint, results and finish of
    :func:`rsa.train.train`); the population supplies only the batched update
    (:func:`population_step`) and calls :meth:`record` after it."""

    def __init__(self, c: TrainConfig, argv, population: int):
        self.c = c
        self.run, self.state, self.result = _open(c, argv)  # as a single run starts
        # the torch generator state a single run's checkpoint holds (after the model's
        # initialisation, or the checkpoint's): the population shares one generator
        self.torch_rng = torch.get_rng_state()
        self.segment = _start_segment(self.run, self.state)
        self.segment["population"] = population
        self.clock = None

    model = property(lambda self: self.run.model)
    optimizer = property(lambda self: self.run.optimizer)
    stream = property(lambda self: self.run.stream)

    @property
    def training(self) -> bool:
        return self.result is None and self.state.step < self.c.steps and \
            not self.state.stopped_early

    def start(self, t_start: float) -> None:
        """The population's loop starts at ``t_start`` (``time.perf_counter``)."""
        self.clock = _Clock(self.state.wall_time_s, start=t_start)

    def record(self, loss: float, acc: float, train_s: float, interrupted: bool) -> None:
        """The single run's loop body after its update (:func:`rsa.train.loop._run_updates`)."""
        run, state = self.run, self.state
        _account(state, self.clock, self.segment, loss, acc, train_s)
        if state.step % self.c.eval_every == 0:
            _record_evaluation(run, state, self.clock)
            _write_results(run, state, complete=False)
        if state.step % self.c.checkpoint_every == 0 or interrupted:
            self._save()
        if interrupted:
            _write_results(run, state, complete=False)

    def _save(self) -> None:
        """The checkpoint, with the torch generator state a single run would hold (the
        population shares one generator)."""
        shared = torch.get_rng_state()
        torch.set_rng_state(self.torch_rng)
        try:
            _save(self.run, self.state)
        finally:
            torch.set_rng_state(shared)

    def finish(self) -> TrainResult:
        """What a single run does after its loop: the final checkpoint, then
        :func:`rsa.train.loop._finish` (summary, final and test evaluations, results,
        weights)."""
        if self.result is None:
            self._save()
            self.result = _finish(self.run, self.state)
        return self.result


def train_population(config: TrainConfig | dict | None = None, *, seeds,
                     out_dirs=None, argv: list[str] | None = None, **overrides
                     ) -> list[TrainResult]:
    """Train the runs ``seeds`` of one configuration as one population; returns one
    :class:`rsa.train.TrainResult` per seed, in order, each equal to what
    ``train(config, seed=s, out_dir=...)`` returns.

    On ``kernel="compiled"`` each run's compiled forward and backward run in turn inside
    the population's update (:func:`rsa.models.kernels.population.batched_forward`).

    Output folders: ``out_dirs`` (one per seed), else ``out_dir/s<seed>`` when the
    config has an ``out_dir`` (:func:`seed_dirs`), else nothing is written. Each run
    resumes from its own checkpoint as a single run does; runs already finished are
    loaded and rewritten nothing (their result's ``note`` says so).
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed, got []")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    base = resolve_config(config, **overrides)
    if out_dirs is None:
        out_dirs = [None] * len(seeds) if base.out_dir is None else \
            seed_dirs(base.out_dir, seeds)
    out_dirs = list(out_dirs)
    if len(out_dirs) != len(seeds):
        raise ValueError(f"out_dirs must give one folder per seed ({len(seeds)}), got "
                         f"{len(out_dirs)}")
    configs = [resolve_config(base, seed=s, out_dir=None if o is None else str(o))
               for s, o in zip(seeds, out_dirs, strict=True)]
    with contextlib.ExitStack() as held:  # one writer per run folder (rsa.train.lock)
        for o in out_dirs:
            held.enter_context(hold(o))
        return _train_population_held(base, configs, argv)


def _train_population_held(base, configs, argv) -> list[TrainResult]:
    runs = [_Member(c, argv, len(configs)) for c in configs]
    rng = torch.get_rng_state()
    active = [r for r in runs if r.training]
    for r in active:
        r.segment["population"] = len(active)
        r.model.train()
    for r in runs:
        if not r.training:
            r.finish()
    c = base
    if active and not batched(active[0].model) and \
            not compiled_kernel(active[0].model.core):  # stated, not silent
        print(f"note: {c.model} has no batched population forward (its registry entry "
              f"names none, or it is built unfused): each run's own forward runs inside "
              f"the population, with the same results and no gain", file=sys.stderr)
    total = max((r.c.steps - r.state.step for r in active), default=0)
    bar = _progress_bar(c.progress, total=total,
                        desc=f"{c.model} {c.task} T={c.T} x{len(active)}", unit="upd",
                        leave=False)
    t_start = time.perf_counter()
    for r in active:
        r.start(t_start)
    with _Interrupt() as interrupt, contextlib.closing(bar):
        while active:
            batches = [next(r.stream) for r in active]
            t0 = time.perf_counter()
            losses, accs = population_step(
                [r.model for r in active], [r.optimizer for r in active],
                [x for x, _ in batches], [y for _, y in batches], c.clip)
            dt = time.perf_counter() - t0
            bar.update(1)
            stop = interrupt.signum is not None
            for r, loss, acc in zip(active, losses, accs, strict=True):
                r.record(loss, acc, dt, stop)
            if stop:
                interrupt.raise_()
            for r in [r for r in active if not r.training]:
                r.finish()
            active = [r for r in active if r.training]
    torch.set_rng_state(rng)
    return [r.result for r in runs]
