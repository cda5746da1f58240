"""Time one training update of a model on the torch and the compiled kernel (issue 30),
interleaved (torch, compiled, torch, compiled, ...), one thread; prints medians in ms
and the ratio as a markdown table.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_kernels.py --models rnn relrnn --T 100 500

``--population P``: instead, one population update of P runs
(:func:`rsa.models.kernels.population.population_step`, each run its own seed, weights
and batch), the torch population (rows of all runs batched) against the population on
the compiled kernel (each run's compiled kernel in turn), interleaved as above.

``--compile``: instead, the time of the compiled kernel's first calls in this process
(numba compiles them, or loads them from its on-disk cache) and of the second calls;
run it twice with an empty ``NUMBA_CACHE_DIR`` to see both.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_kernels.py --models rellstm memrnn

The update is the training loop's (:func:`rsa.train.loop.train_step`): copy task, B = 10,
n = 128, RMSprop, gradient clipping at 1.0, the model's copy defaults (RNN and MemRNN:
modReLU; RelRNN: tanh, nu = 10, rho = 15; RelLSTM: nu = 10, rho = 15), float32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rsa.models.heads import build_task_model
from rsa.tasks import copy_batch, get_task
from rsa.train.config import resolve_config
from rsa.train.loop import make_optimizer, train_step


def _setup(model: str, T: int, kernel: str, batch: int, hidden: int, seed: int = 0,
           **options):
    """A model on the copy task, its optimizer, one batch and the clipping norm, for
    :func:`rsa.train.loop.train_step` (``options``: other train settings, e.g. ``lr``)."""
    c = resolve_config(model=model, task="copy", T=T, batch=batch, hidden_size=hidden,
                       kernel=kernel, **options)
    torch.manual_seed(seed)
    m = build_task_model(c.model, get_task(c.task), c.hidden_size, nu=c.nu, rho=c.rho,
                         nonlinearity=c.nonlinearity, init=c.init, kernel=c.kernel)
    opt = make_optimizer(c.optimizer, m.parameters(), c.lr)
    x, y = copy_batch(T, batch, torch.Generator().manual_seed(1 + seed))
    return m, opt, x, y, c.clip


def bench(model: str, T: int, rounds: int, batch: int = 10, hidden: int = 128) -> dict:
    """Median seconds of one update per kernel, the kernels' updates interleaved."""
    setups = {k: _setup(model, T, k, batch, hidden) for k in ("torch", "compiled")}
    times = {k: [] for k in setups}
    for m, opt, x, y, clip in setups.values():  # warm-up (and compile)
        train_step(m, opt, x, y, clip)
    for _ in range(rounds):
        for k, (m, opt, x, y, clip) in setups.items():
            t0 = time.perf_counter()
            train_step(m, opt, x, y, clip)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_population(model: str, T: int, P: int, rounds: int, batch: int = 10,
                     hidden: int = 128) -> dict:
    """Median seconds of one population update of P runs per kernel, interleaved."""
    from rsa.models.kernels.population import population_step
    setups = {}
    for kernel in ("torch", "compiled"):
        runs = [_setup(model, T, kernel, batch, hidden, seed=p) for p in range(P)]
        setups[kernel] = [list(z) for z in zip(*runs, strict=True)]  # models, opts, xs, ys, clips
    times = {k: [] for k in setups}
    for ms, opts, xs, ys, clips in setups.values():  # warm-up (and compile)
        population_step(ms, opts, xs, ys, clips[0])
    for _ in range(rounds):
        for k, (ms, opts, xs, ys, clips) in setups.items():
            t0 = time.perf_counter()
            population_step(ms, opts, xs, ys, clips[0])
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def compile_time() -> None:
    """Print the first and second call times of the compiled kernels, per dtype: the RNN
    (both nonlinearities, forward and backward), the RelRNN (tanh, forward and backward;
    the MemRNN runs through it) and the RelLSTM (forward and backward)."""
    import numpy as np

    from rsa.models.kernels import compiled
    from rsa.models.kernels.compiled_rellstm import rellstm_compiled
    from rsa.models.kernels.compiled_screened import relrnn_compiled
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        ux = rng.standard_normal((5, 2, 4)).astype(dtype)
        VT = rng.standard_normal((4, 4)).astype(dtype)
        b = np.zeros(4, dtype)
        args = [torch.from_numpy(rng.standard_normal(s).astype(dtype)).requires_grad_()
                for s in ((5, 2, 4), (4, 4), (4, 4), (4, 4), (4,))]
        args4 = [torch.from_numpy(rng.standard_normal(s).astype(dtype)).requires_grad_()
                 for s in ((5, 2, 16), (16, 4), (4, 4), (4, 4), (4,))]
        for call in ("first", "second"):
            t0 = time.perf_counter()
            for modrelu in (False, True):
                H, Z = compiled._rnn_forward(ux, VT, b, modrelu)
                compiled._rnn_backward(H, Z, H, VT, b, modrelu)
            t1 = time.perf_counter()
            relrnn_compiled(*args, nu=2, rho=2).sum().backward()
            t2 = time.perf_counter()
            rellstm_compiled(*args4, nu=2, rho=2).sum().backward()
            t3 = time.perf_counter()
            print(f"{np.dtype(dtype).name} {call} call: rnn {t1 - t0:.3f} s, "
                  f"relrnn {t2 - t1:.3f} s, rellstm {t3 - t2:.3f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["rnn", "relrnn"])
    p.add_argument("--T", nargs="+", type=int, default=[100, 500])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--compile", action="store_true",
                   help="time the compiled kernel's first calls instead")
    p.add_argument("--population", type=int, default=0, metavar="P",
                   help="time one population update of P runs instead")
    a = p.parse_args(argv)
    if a.compile:
        compile_time()
        return 0
    if a.population < 0:
        raise SystemExit(f"--population must be >= 1 (or 0: single runs), got {a.population}")
    torch.set_num_threads(1)
    if a.population:
        print("| model | T | P | torch population (ms) | compiled population (ms) | "
              "speed-up |")
        print("|---|---|---|---|---|---|")
        for model in a.models:
            for T in a.T:
                r = bench_population(model, T, a.population, a.rounds)
                print(f"| {model} | {T} | {a.population} | {1e3 * r['torch']:.2f} | "
                      f"{1e3 * r['compiled']:.2f} | {r['torch'] / r['compiled']:.2f} |",
                      flush=True)
        return 0
    print("| model | T | torch (ms) | compiled (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for model in a.models:
        for T in a.T:
            r = bench(model, T, a.rounds)
            print(f"| {model} | {T} | {1e3 * r['torch']:.2f} | {1e3 * r['compiled']:.2f} | "
                  f"{r['torch'] / r['compiled']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
