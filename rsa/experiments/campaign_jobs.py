"""The campaign's jobs (:mod:`rsa.experiments.campaign`): what each trains, with which
budget, beside the authors'; the command that trains it.

Each job is one call of :func:`rsa.train.train` (or of
:func:`rsa.train.population.train_population` for seeds trained as one population), whose
``python -m rsa train`` command :func:`job_command` gives; the work folder under
``runs/paper/`` is that command's ``--out-dir``. The cells are the issue's letters: a to
c and g at the authors' 200 000 updates, d (SAB with its release's training), e (the
modReLU cells at lr 2e-4) and f (MNIST) with the smaller budgets each job states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Job", "JOBS", "AUTHORS_STEPS", "SCALE", "job_command", "job_runs"]

SCALE = "paper"
AUTHORS_STEPS = 200_000  # the authors' scripts: 200 000 updates on copy and denoise

# What every copy/denoise job shares: the converged plan's evaluation (100 validation
# sequences every 250 updates), the solved and NaN rules, no stall rule.
_SEQ = dict(hidden_size=128, optimizer="rmsprop", lr=1e-3, clip=1.0, batch=10,
            eval_every=250, eval_batch=100, checkpoint_every=250, stop_when_solved=True,
            stop_when_nan=True)
# MNIST, 784 steps, on the 10 000 stored digits (80 updates an epoch at batch 100)
_MNIST_AUTHORS = "200 epochs"  # the authors' setting: 200 epochs of the full MNIST
_MNIST = dict(task="mnist10k", eval_every=80, checkpoint_every=80,
              patience_updates=800, steps=8000)


@dataclass(frozen=True)
class Job:
    """One training call of the campaign: cell ``cell`` (the issue's letters a to g),
    ``title`` for the table, the :func:`rsa.train.train` arguments ``args`` (without
    seed and output folder), the ``seeds`` (trained as one population when
    ``population``), the ``variant`` tag of the run names (an alternative to the plan's
    setting, e.g. ``lr2e-4``), the ``authors`` budget it is compared with (updates, or
    words such as ``"200 epochs"``), and a ``note`` on how the budget was chosen."""

    cell: str
    title: str
    args: dict
    seeds: tuple[int, ...] = (0,)
    population: bool = False
    variant: str | None = None
    authors: int | str = AUTHORS_STEPS
    note: str = ""

    def name(self, seed: int) -> str:
        """The run's name, e.g. ``copy/rellstm_T100_s0`` (as in the converged plan)."""
        a = self.args
        t = f"_T{a['T']}" if a.get("T") is not None else ""
        v = f"_{self.variant}" if self.variant else ""
        return f"{a['task']}/{a['model']}{t}{v}_s{seed}"

    def work(self, runs: Path, seed: int) -> Path:
        """The run's work folder: ``runs/paper/<name>``; a population's runs live in
        ``runs/paper/<name without seed>/s<seed>`` (``--seeds ... --out DIR``)."""
        if self.population:
            return runs / SCALE / self.name(seed).rsplit("_s", 1)[0] / f"s{seed}"
        return runs / SCALE / self.name(seed)


def _seq(model, task, T, **extra) -> dict:
    return {**_SEQ, "model": model, "task": task, "T": T, "steps": AUTHORS_STEPS, **extra}


_MODRELU_E = ("with modReLU the converged plan's seed-0 run exploded at lr 1e-3; the "
              "authors' own RMSprop modReLU runs are named rms0.0002modr (lr 2e-4, read "
              "from their file names)")

def _denoise_rellstm(seed: int) -> Job:
    return Job("b", "RelLSTM, denoise, T = 100",
               _seq("rellstm", "denoise", 100, nu=15, rho=15), seeds=(seed,))


# The compiled CPU kernel (rsa.models.kernels.compiled*, equal to the torch kernel to
# 1e-10 in float64, two to four times faster here) for the jobs not yet started when it
# landed, and for the RelRNN copy T = 1000, which resumed on it at update 47 045 (each
# part of a run records its kernel); the jobs already stored keep the torch kernel that
# trained them, so that their recorded command names it.
_COMPILED = {"kernel": "compiled"}


def _lr_2e4(model: str, label: str, task: str, T: int, compiled: bool = True) -> Job:
    """A modReLU cell whose converged-plan run exploded at lr 1e-3, at lr 2e-4 (cell e)."""
    return Job("e", f"{label} (modReLU), {task}, T = {T}, lr 2e-4",
               _seq(model, task, T, lr=2e-4, nonlinearity="modrelu", steps=20_000,
                    **({"nu": 15, "rho": 15} if model == "relrnn" else {}),
                    **(_COMPILED if compiled else {})),
               variant="lr2e-4", note=_MODRELU_E)


JOBS: tuple[Job, ...] = (
    Job("a", "RelLSTM, copy, T = 100", _seq("rellstm", "copy", 100, nu=10, rho=15),
        seeds=(0, 1, 2), population=True),
    _denoise_rellstm(0),
    Job("c", "RelRNN, copy, T = 1000 (the authors' README command)",
        _seq("relrnn", "copy", 1000, nu=10, rho=15, lr=2e-4, nonlinearity="tanh",
             **_COMPILED)),
    _denoise_rellstm(1),
    _denoise_rellstm(2),
    Job("d", "SAB, copy, T = 20, the release's training",
        _seq("sab", "copy", 20, optimizer="adam", batch=64, steps=100_000),
        variant="release", note="until solved or 100 000 updates"),
    # the four first, then the other seed-0 cells at T = 200 and 500 that exploded
    _lr_2e4("rnn", "RNN", "copy", 200, compiled=False),
    _lr_2e4("memrnn", "MemRNN", "copy", 500),
    _lr_2e4("rnn", "RNN", "denoise", 200, compiled=False),
    _lr_2e4("memrnn", "MemRNN", "denoise", 200, compiled=False),
    *(_lr_2e4(*cell) for cell in (
        ("memrnn", "MemRNN", "copy", 200), ("relrnn", "RelRNN", "denoise", 200),
        ("rnn", "RNN", "copy", 500), ("rnn", "RNN", "denoise", 500),
        ("relrnn", "RelRNN", "denoise", 500))),
    # g and MNIST's RNN and LSTM before the last cell of e (MemRNN denoise T = 500, six
    # to thirteen hours) and the rest of d and f, so that every cell has a run: g trains
    # for days on one core while the other takes the jobs after it
    Job("g", "RelLSTM, denoise, T = 1000 (the authors' README showcase)",
        _seq("rellstm", "denoise", 1000, nu=15, rho=15, **_COMPILED)),
    Job("f", "RNN, MNIST (784 steps)", {**_MNIST, "model": "rnn", **_COMPILED},
        authors=_MNIST_AUTHORS, note="patience 10 epochs, up to 100 epochs"),
    Job("f", "LSTM, MNIST (784 steps)", {**_MNIST, "model": "lstm", **_COMPILED},
        authors=_MNIST_AUTHORS, note="patience 10 epochs, up to 100 epochs"),
    _lr_2e4("memrnn", "MemRNN", "denoise", 500),
    # the separable score form: the release's scores in O(m + n) a step, 2.4 times
    # faster to train here at T = 100 (tools/bench_sab.py), so that the CPU-hours go
    # 2.4 times as far; about 10 CPU-hours at the pace SAB trained at T = 20
    Job("d", "SAB, copy, T = 100, the release's training",
        _seq("sab", "copy", 100, optimizer="adam", batch=64, steps=40_000,
             score_form="separable"),
        variant="release", note="40 000 updates: about 10 CPU-hours here (separable scores)"),
    Job("f", "RelRNN, MNIST (784 steps)", {**_MNIST, "model": "relrnn", **_COMPILED},
        authors=_MNIST_AUTHORS,
        note="patience 10 epochs, up to 100 epochs, as far as the CPU allows"),
    Job("f", "RelLSTM, MNIST (784 steps)", {**_MNIST, "model": "rellstm", **_COMPILED},
        authors=_MNIST_AUTHORS,
        note="patience 10 epochs, up to 100 epochs, as far as the CPU allows"),
)


def job_runs(job: Job, runs: Path) -> list[tuple[int, str, Path]]:
    """``(seed, name, work folder)`` of each run of ``job``."""
    return [(s, job.name(s), job.work(runs, s)) for s in job.seeds]


def _flag(key: str, value) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    return [flag, str(value)]


def job_command(job: Job, runs: str = "runs") -> str:
    """The ``python -m rsa train`` command that trains ``job`` (the one its runs'
    manifests record), with its work folder under ``runs``."""
    args = dict(job.args)
    words = ["python", "-m", "rsa", "train"]
    for k, v in args.items():
        if v is not None and v is not False:
            words += _flag(k, v)
    if job.population:
        words += ["--seeds", *map(str, job.seeds)]
        out = Path(runs) / SCALE / job.name(job.seeds[0]).rsplit("_s", 1)[0]
    else:
        words += ["--seed", str(job.seeds[0])]
        out = Path(runs) / SCALE / job.name(job.seeds[0])
    return " ".join(words + ["--out-dir", str(out), "--no-progress", "--threads", "1"])
