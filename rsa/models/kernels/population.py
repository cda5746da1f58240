"""Population kernels: P runs of one configuration as one batched forward and backward
(population training, :mod:`rsa.train.population`).

A layer a reader can skip: the models the chapters read (:mod:`rsa.models`, the fused
functions) are untouched, and every run of a population is, update for update, the run
:func:`rsa.train.train` makes alone (``tests/test_population.py`` checks it in float64,
losses, hidden states and parameters to 1e-10, with clipping, an early stop and a
resume).

How it maps onto the single-run equations. Run p (seed s_p) has its own parameters
theta_p, optimizer state, data stream, validation set, history, checkpoint and output
folder, exactly as :func:`rsa.train.train` builds them. One population update is, for
every run p still training,

    (x_p, y_p)  = the next batch of run p's own stream
    L_p         = loss of model(theta_p; x_p) against y_p
    g_p         = dL_p / d theta_p
    g_p        <- g_p min(1, clip / ||g_p||)       (run p's own norm, never a global one)
    theta_p    <- optimizer_p(theta_p, g_p)

The only thing shared is the forward and backward pass: the P losses are summed and
differentiated once, which gives each run its own gradient (L_q does not depend on
theta_p for q != p, and d(sum)/dL_p = 1 exactly). For the RNN and the LSTM the forward
runs the single-run recurrence

    h_t = phi(U x_t + b + V h_{t-1})          (LSTM: the gates of rsa.models)

on stacked weights, U: (P, gn, d), V: (P, gn, n), h_t: (P, B, n), one batched matrix
product (``torch.baddbmm``) per step for all runs: the same number of operations per
step as one run, which is the gain where a step costs mostly its fixed overhead (B = 10,
n = 128 on a CPU; on a GPU, the kernel launches). For the MemRNN, RelRNN and RelLSTM
(fused, the default) the fused functions of :mod:`rsa.models.kernels.fused`,
:mod:`rsa.models.kernels.screened`
and :mod:`rsa.models.kernels.rellstm` run on the P B sequences at once with per-run weights
(:class:`PopulationMemRNNFunction`, :class:`PopulationRelRNNFunction`,
:class:`PopulationRelLSTMFunction`): attention and screening work on rows and never
look at the weights, so only the matrix products with a run's weights (and the sums
that give its weight gradients) become batched over runs. Any other model (SAB, the
Transformer, the plain-autograd loops, models added later) runs its own forward per run
inside the population: exact, no gain. So does a model on the compiled CPU kernel
(``kernel="compiled"``): each run's compiled forward and backward in turn, inside the
one backward of the summed losses (batching rows over runs saves the per-step fixed
cost of small torch operations, which the compiled kernel does not pay). Clipping and
the optimizer step are the single-run ``torch.nn.utils.clip_grad_norm_`` and
``torch.optim`` objects of each run, so checkpoints are the single run's, and a run of
a population resumes alone or in another population.

One loop: the record of every run (evaluation, stopping rules, checkpoint, results,
finish) is the single run's own code, :mod:`rsa.train.loop`, called by
:class:`_Member`; the population adds only the batched update.

A run that stops early (solved, stalled, patience) is finished at once (its results,
weights and checkpoint written as a single run writes them) and leaves the population;
the others go on. Runs of a population may start at different updates (some resumed
from checkpoints, some new): each keeps its own step count, evaluation grid and stopping
rules. The time recorded per run is the wall time of the population's updates (each
run's ``segments`` entry says ``population``: how many runs shared them at its start).
Throughput: ``python -m rsa bench population`` (the book's *Using rsa*, Population
training).
"""

from __future__ import annotations

import torch
from torch import nn

from rsa.models import registry
from rsa.models.heads import TaskModel
from rsa.models.kernels.population_fused import (
    population_memrnn,
    population_rellstm,
    population_relrnn,
)

__all__ = ["population_step", "population_forward", "batched", "batched_forward", "BATCHED",
           "compiled_kernel"]


# -- the batched forward -------------------------------------------------------------------

def _stack(tensors) -> torch.Tensor:
    return torch.stack(list(tensors))


def _readout(models: list[TaskModel], H: torch.Tensor) -> list[torch.Tensor]:
    """The read-out of every run from the stacked states H (P, T, B, n): logits
    (T, B, C) per run for copy/denoise, (B, C) from h_T for classification."""
    P, T, B, n = H.shape
    W = _stack(m.readout.weight for m in models)  # (P, C, n)
    b = _stack(m.readout.bias for m in models)    # (P, C)
    if models[0].sequence_output:
        logits = torch.baddbmm(b[:, None, :], H.reshape(P, T * B, n), W.transpose(1, 2))
        return list(logits.view(P, T, B, -1).unbind(0))
    return list(torch.baddbmm(b[:, None, :], H[:, -1], W.transpose(1, 2)).unbind(0))


def _recurrent_states(models: list[TaskModel], X: torch.Tensor) -> torch.Tensor:
    """States (P, T, B, n) of stacked RNNs or LSTMs (the loop of rsa.models.cells._Recurrent
    without attention) for inputs X (P, T, B, d)."""
    cores = [m.core for m in models]
    core = cores[0]
    P, T, B, d = X.shape
    U = _stack(c.U.weight for c in cores).transpose(1, 2)  # (P, d, g n)
    b = _stack(c.U.bias for c in cores)[:, None, :]        # (P, 1, g n)
    V = _stack(c.V.weight for c in cores).transpose(1, 2)  # (P, n, g n)
    Ux = torch.baddbmm(b, X.reshape(P, T * B, d), U).view(P, T, B, -1).unbind(1)
    if core.gates == 1:
        modrelu = core.nonlinearity == "modrelu"
        phi_b = _stack(c.phi.b for c in cores)[:, None, :] if modrelu else None

        def phi(z):
            return torch.sign(z) * torch.relu(z.abs() + phi_b) if modrelu else torch.tanh(z)
    states = []
    h = cell = None
    for t in range(T):
        z = Ux[t] if h is None else torch.baddbmm(Ux[t], h, V)
        if core.gates == 1:
            h = phi(z)
        else:
            i, f, g, o = z.chunk(4, dim=-1)
            cell = torch.sigmoid(i) * torch.tanh(g) if cell is None else \
                torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(cell)
        states.append(h)
    return torch.stack(states, 1)


def _recurrent_forward(models, xs):
    return _readout(models, _recurrent_states(models, _stack(xs)))


def _input_projection(cores, X: torch.Tensor):
    """U x_t + b of every run at every step, (P, T, B, n), in one batched product, and
    the runs' modReLU biases (None for tanh)."""
    P, T, B, d = X.shape
    U = _stack(c.U.weight for c in cores).transpose(1, 2)
    b = _stack(c.U.bias for c in cores)[:, None, :]
    ux = torch.baddbmm(b, X.reshape(P, T * B, d), U).view(P, T, B, -1)
    phi_b = _stack(c.phi.b for c in cores) if cores[0].nonlinearity == "modrelu" else None
    return ux, phi_b


def _relrnn_states(models: list[TaskModel], X: torch.Tensor) -> torch.Tensor:
    cores = [m.core for m in models]
    ux, phi_b = _input_projection(cores, X)
    H = population_relrnn(ux, _stack(c.V.weight for c in cores),
                          _stack(c.W_q.weight for c in cores),
                          _stack(c.W_k.weight for c in cores), _stack(c.v for c in cores),
                          phi_b, nu=cores[0].nu, rho=cores[0].rho)
    return H


def _relrnn_forward(models, xs):
    return _readout(models, _relrnn_states(models, _stack(xs)))


def _memrnn_forward(models, xs):
    cores = [m.core for m in models]
    X = _stack(xs)
    ux, phi_b = _input_projection(cores, X)
    H = population_memrnn(ux, _stack(c.V.weight for c in cores),
                          _stack(c.W_q.weight for c in cores),
                          _stack(c.W_k.weight for c in cores), _stack(c.v for c in cores),
                          phi_b)
    return _readout(models, H)


def _rellstm_forward(models, xs):
    cores = [m.core for m in models]
    X = _stack(xs)
    P, T, B, d = X.shape
    U = _stack(c.U.weight for c in cores).transpose(1, 2)
    b = _stack(c.U.bias for c in cores)[:, None, :]
    ux = torch.baddbmm(b, X.reshape(P, T * B, d), U).view(P, T, B, -1)
    H = population_rellstm(ux, _stack(c.V.weight for c in cores),
                           _stack(c.W_q.weight for c in cores),
                           _stack(c.W_k.weight for c in cores), _stack(c.v for c in cores),
                           nu=cores[0].nu, rho=cores[0].rho)
    return _readout(models, H)


# the registry's ``population`` key -> the batched forward (models, xs) -> logits per run
BATCHED = {"recurrent": _recurrent_forward, "memrnn": _memrnn_forward,
           "relrnn": _relrnn_forward, "rellstm": _rellstm_forward}


def batched_forward(core):
    """The batched forward of ``core``'s registry entry (its ``population`` key; a
    fused model's only when built fused), or None: each run's own forward then runs
    inside the population. A model on the compiled kernel (``kernel="compiled"``,
    :mod:`rsa.models.kernels.compiled`) gets None: each run's own compiled forward,
    never the torch batched one in its place."""
    entry = registry.entry_of(core)
    if entry is None or entry.population is None or compiled_kernel(core):
        return None
    if entry.fused and not core.fused:
        return None
    return BATCHED[entry.population]


def compiled_kernel(core) -> bool:
    """Whether ``core`` runs on the compiled CPU kernel (``kernel="compiled"``)."""
    return getattr(core, "kernel", "torch") == "compiled"


def batched(model: TaskModel) -> bool:
    """Whether a population of ``model``'s configuration runs one batched forward (True)
    or each run's own forward inside the population (False)."""
    return batched_forward(model.core) is not None


def population_forward(models: list[TaskModel], xs: list[torch.Tensor]
                       ) -> list[torch.Tensor]:
    """``[models[p](xs[p]) for p]``: the logits of every run, computed as one batched
    forward where the model has one (:data:`BATCHED`), else run by run."""
    forward = batched_forward(models[0].core)
    if forward is not None and len({tuple(x.shape) for x in xs}) == 1:  # (an epoch's
        return forward(models, xs)  # last pixel batch may differ in size)
    return [m(x) for m, x in zip(models, xs, strict=True)]


def population_step(models: list[TaskModel], optimizers: list[torch.optim.Optimizer],
                    xs: list[torch.Tensor], ys: list[torch.Tensor], clip: float
                    ) -> tuple[list[float], list[float]]:
    """One training update of every run (:func:`rsa.train.train_step` for each, the
    forward and backward shared): returns each run's (loss, accuracy) lists."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    logits = population_forward(models, xs)
    losses = [m.loss(z, y) for m, z, y in zip(models, logits, ys, strict=True)]
    torch.stack(losses).sum().backward()
    for m, opt in zip(models, optimizers, strict=True):
        if clip > 0:
            nn.utils.clip_grad_norm_(m.parameters(), clip)  # this run's own norm
        opt.step()
    acc = [m.accuracy(z.detach(), y).item() for m, z, y in zip(models, logits, ys,
                                                               strict=True)]
    return [loss.item() for loss in losses], acc
