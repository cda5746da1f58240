"""Population training: P runs of one configuration trained as one computation.

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
(fused, the default) the fused functions of :mod:`rsa.fused`, :mod:`rsa.fused_screened`
and :mod:`rsa.fused_rellstm` run on the P B sequences at once with per-run weights
(:class:`PopulationMemRNNFunction`, :class:`PopulationRelRNNFunction`,
:class:`PopulationRelLSTMFunction`): attention and screening work on rows and never
look at the weights, so only the matrix products with a run's weights (and the sums
that give its weight gradients) become batched over runs. Any other model (SAB, the
Transformer, the plain-autograd loops, models added later) runs its own forward per run
inside the population: exact, no gain. Clipping and the optimizer step are the single-run
``torch.nn.utils.clip_grad_norm_`` and ``torch.optim`` objects of each run, so
checkpoints are the single run's, and a run of a population resumes alone or in
another population.

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

import contextlib
import time
from pathlib import Path

import torch
from torch import nn

from rsa import io
from rsa.fused import _exact_tanh, _phi, _phi_derivative
from rsa.fused_rellstm import lstm_cell_step
from rsa.fused_screened import (
    _Attention,
    _AttentionGrad,
    _check_screening,
)
from rsa.heads import TaskModel
from rsa.models import LSTM, RNN, MemRNN, RelLSTM, RelRNN
from rsa.train import (
    MODEL_FILE,
    TrainConfig,
    TrainResult,
    _Interrupt,
    _progress_bar,
    resolve_config,
)
from rsa.train.lock import claim, hold
from rsa.train.loop import (
    _account,
    _Clock,
    _finish,
    _open,
    _record_evaluation,
    _save,
    _start_segment,
    _write_results,
)

__all__ = ["train_population", "population_step", "population_forward", "batched",
           "PopulationMemRNNFunction", "PopulationRelRNNFunction",
           "PopulationRelLSTMFunction", "seed_dirs",
           "stage_train_populations"]


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
    """States (P, T, B, n) of stacked RNNs or LSTMs (the loop of rsa.models._Recurrent
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


def _exactly(cls):
    return lambda core: type(core) is cls


# core test -> batched forward (models, xs) -> logits per run; the first match is used
BATCHED = [
    (_exactly(RNN), _recurrent_forward),
    (_exactly(LSTM), _recurrent_forward),
    (lambda core: type(core) is RelRNN and core.fused, _relrnn_forward),
    (lambda core: type(core) is RelLSTM and core.fused, _rellstm_forward),
    (lambda core: type(core) is MemRNN and core.fused, _memrnn_forward),
]


def batched(model: TaskModel) -> bool:
    """Whether a population of ``model``'s configuration runs one batched forward (True)
    or each run's own forward inside the population (False)."""
    return any(test(model.core) for test, _ in BATCHED)


def population_forward(models: list[TaskModel], xs: list[torch.Tensor]
                       ) -> list[torch.Tensor]:
    """``[models[p](xs[p]) for p]``: the logits of every run, computed as one batched
    forward where the model has one (:data:`BATCHED`), else run by run."""
    if len({tuple(x.shape) for x in xs}) == 1:  # (an epoch's last pixel batch may differ)
        for test, forward in BATCHED:
            if test(models[0].core):
                return forward(models, xs)
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


# -- the fused RelRNN on a population -----------------------------------------------------

class _PopulationAttention(_Attention):
    """:class:`rsa.fused_screened._Attention` on P B rows (run-major: row p B + b) with
    one attention vector v per run (P, n)."""

    def __init__(self, HK, v, nu, rho, exact, P):
        super().__init__(HK, v[0], nu, rho, exact)
        self.P = P
        self.v_e = (v if exact else 2 * v)[None, :, None, :]  # (1, P, 1, n)

    def attend(self, t, q2, h, out):  # noqa: D102
        n, B, P = self.n, self.B, self.P
        m = self.nS + self.nR
        idx = self.idxs[t]
        idx.view(m, B).copy_(self.slot[:m])
        M = torch.index_select(self.rows, 0, idx, out=self.M_m[m]).view(m, B, 2 * n)
        Pm = torch.add(q2, M[..., n:], out=self.P_m[m])
        A = Pm.mul_(0.5).tanh_() if self.exact else Pm.sigmoid_()
        # v . A with the v of each row's run (A is not needed after e: scaled in place)
        e = A.view(m, P, B // P, n).mul_(self.v_e).sum(-1).view(m, B)
        a = self.alphas[t] = torch.softmax(e, dim=0)
        c = torch.mul(a[..., None], M[..., :n], out=Pm).sum(0)
        return torch.lerp(h, c, 0.5, out=out)


class _PopulationAttentionGrad(_AttentionGrad):
    """:class:`rsa.fused_screened._AttentionGrad` with dL/dv per row (``gv_rows``), summed
    per run at the end."""

    def __init__(self, HK, GHK, IDX, ALPHA, sizes, P):
        super().__init__(HK, GHK, IDX, ALPHA, sizes)
        B = HK.shape[1]
        self.P = P
        self.gv_rows = HK.new_zeros(B, self.n)  # B = P b rows; dL/dv_p: 2 sum of run p's

    def step(self, t, gc, q2, gq):  # noqa: D102
        n, B = self.n, self.B
        idx, a = self.idxs[t], self.alphas[t]
        m = a.shape[0]
        Pm, G, M = self.blocks[m]
        M = torch.index_select(self.rows, 0, idx, out=M).view(m, B, 2 * n)
        ge = a * torch.linalg.vecdot(M[..., :n], gc)
        ge.addcmul_(a, ge.sum(0), value=-1)
        sig = torch.add(q2, M[..., n:], out=Pm).sigmoid_()
        G_key = torch.mul(sig, ge[..., None], out=G[..., n:])  # ge sigma
        self.gv_rows.add_(G_key.sum(0))  # sum_j ge_tj sigma, per row (run p's: p B + b)
        G_key.addcmul_(G_key, sig, value=-1)  # ge sigma (1 - sigma)
        torch.mul(a[..., None], gc, out=G[..., :n])
        self.grows.index_add_(0, idx, G.view(m * B, 2 * n))
        torch.sum(G_key, 0, out=gq)


def _bmm_rows(x: torch.Tensor, W: torch.Tensor, P: int) -> torch.Tensor:
    """x (P B, k) times each run's W (P, k, l): (P B, l), row p B + b through W[p]."""
    return torch.bmm(x.view(P, -1, x.shape[-1]), W).view(x.shape[0], W.shape[-1])


def _per_run(A: torch.Tensor, Bm: torch.Tensor, P: int) -> torch.Tensor:
    """sum over (t, b) of A[t, b]^T Bm[t, b] for each run: (P, k, l), from A (T, P B, k)
    and Bm (T, P B, l) with rows p B + b."""
    k, l = A.shape[-1], Bm.shape[-1]
    return torch.bmm(A.reshape(-1, P, A.shape[1] // P, k).transpose(0, 1).reshape(P, -1, k)
                     .transpose(1, 2),
                     Bm.reshape(-1, P, Bm.shape[1] // P, l).transpose(0, 1).reshape(P, -1, l))


def _population_attention_weight_grads(GHK, H, GQ, S, v4, P):
    """:func:`rsa.fused_screened._attention_weight_grads` per run: (P, n, n) each."""
    n = H.shape[-1]
    v4r = v4.repeat_interleave(H.shape[1] // P, 0)  # (P B, n): each row's run's 4 v
    return _per_run(GQ[1:-1] * v4r, S[1:-1], P), _per_run(GHK[..., n:] * v4r, H, P)


class PopulationRelRNNFunction(torch.autograd.Function):
    """:class:`rsa.fused_screened.RelRNNFunction` for P runs at once.

    Inputs: ``ux`` (P, T, B, n) = U_p x_p + b_p, ``V``, ``W_q``, ``W_k`` (P, n, n),
    ``v`` (P, n), ``phi_b`` (P, n) or None, ``nu``, ``rho``; returns H (P, T, B, n).
    Internally the P B sequences are the batch (row p B + b of every table); the
    screening (rows and scores) is that of the single run; the matrix products with a
    run's weights are batched over runs (``torch.bmm``), and so are the weight
    gradients (one per run).
    """

    @staticmethod
    def forward(ctx, ux, V, W_q, W_k, v, phi_b, nu, rho):  # noqa: D102
        P, T, B, n = ux.shape
        PB = P * B
        opts = dict(dtype=ux.dtype, device=ux.device)
        uxt = ux.transpose(0, 1).reshape(T, PB, n)  # time-major, row p B + b
        HK = torch.empty(T, PB, 2 * n, **opts)
        ZQ = torch.cat([uxt, torch.zeros_like(uxt)], dim=2)
        S = torch.zeros(T, PB, n, **opts)
        VQ = torch.cat([V, 2 * W_q], dim=1).transpose(1, 2)  # (P, n, 2n)
        W_k2 = (2 * W_k).transpose(1, 2)                     # (P, n, n)
        phi_rows = None if phi_b is None else phi_b.repeat_interleave(B, 0)  # (P B, n)
        att = _PopulationAttention(HK, v, nu, rho, _exact_tanh(ux.dtype), P)
        zq, z_t, q2_t = ZQ.unbind(0), ZQ[..., :n].unbind(0), ZQ[..., n:].unbind(0)
        h_t, k_t, s_t = HK[..., :n].unbind(0), HK[..., n:].unbind(0), S.unbind(0)
        h = _phi(z_t[0], phi_rows, out=h_t[0])
        k_t[0].copy_(_bmm_rows(h, W_k2, P))
        for t in range(1, T):
            s = att.attend(t, q2_t[t - 1], h, out=s_t[t])  # s_{t-1}
            zq[t].view(P, B, 2 * n).baddbmm_(s.view(P, B, n), VQ)
            h = _phi(z_t[t], phi_rows, out=h_t[t])
            k_t[t].copy_(_bmm_rows(h, W_k2, P))
            att.screen(t)
        ctx.sizes, ctx.P = att.sizes, P
        ctx.save_for_backward(HK, ZQ, S, att.IDX, att.alpha(), V, W_q, W_k, v, phi_b,
                              phi_rows)
        return HK[..., :n].reshape(T, P, B, n).transpose(0, 1).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):  # noqa: D102
        HK, ZQ, S, IDX, ALPHA, V, W_q, W_k, v, phi_b, phi_rows = ctx.saved_tensors
        P = ctx.P
        T, PB, n2 = HK.shape
        n, B = n2 // 2, PB // P
        H = HK[..., :n]
        dphi, sign = _phi_derivative(H, ZQ[..., :n], phi_rows)
        g = gout.transpose(0, 1).reshape(T, PB, n)
        GHK = torch.cat([g, torch.zeros_like(g)], dim=2)
        DQ = torch.zeros(T, PB, n2, dtype=HK.dtype, device=HK.device)
        att = _PopulationAttentionGrad(HK, GHK, IDX, ALPHA, ctx.sizes, P)
        v4 = 4 * v                                          # (P, n)
        Wk4 = v4[:, :, None] * W_k                          # (P, n, n)
        VQ4 = torch.cat([V, v4[:, :, None] * W_q], dim=1).mul_(0.5)  # (P, 2n, n)
        gh_t, gk_t = GHK[..., :n].unbind(0), GHK[..., n:].unbind(0)
        dq, dz_t, gq_t = DQ.unbind(0), DQ[..., :n].unbind(0), DQ[..., n:].unbind(0)
        q2_t, dphi_t = ZQ[..., n:].unbind(0), dphi.unbind(0)
        gc = None
        for t in range(T - 1, -1, -1):
            g_h = gh_t[t] if gc is None else gh_t[t].add_(gc)
            gh = g_h + _bmm_rows(gk_t[t], Wk4, P)
            torch.mul(gh, dphi_t[t], out=dz_t[t])
            if t == 0:
                break
            gc = _bmm_rows(dq[t], VQ4, P)
            att.step(t, gc, q2_t[t - 1], gq_t[t - 1])

        DZ = DQ[..., :n]
        gV = _per_run(DZ[1:], S[1:], P)
        gW_q, gW_k = _population_attention_weight_grads(GHK, H, DQ[..., n:], S, v4, P)
        gb = None
        if phi_b is not None:
            gb = (DZ * sign).reshape(T, P, B, n).sum((0, 2))
        gux = DZ.reshape(T, P, B, n).transpose(0, 1)
        gv = 2 * att.gv_rows.view(P, B, n).sum(1)
        return gux, gV, gW_q, gW_k, gv, gb, None, None


class PopulationRelLSTMFunction(torch.autograd.Function):
    """:class:`rsa.fused_rellstm.RelLSTMFunction` for P runs at once, as
    :class:`PopulationRelRNNFunction` does for the RelRNN: ``ux`` (P, T, B, 4n), ``V``
    (P, 4n, n), ``W_q``, ``W_k`` (P, n, n), ``v`` (P, n); returns H (P, T, B, n)."""

    @staticmethod
    def forward(ctx, ux, V, W_q, W_k, v, nu, rho):  # noqa: D102
        P, T, B, n4 = ux.shape
        n, PB = n4 // 4, P * B
        opts = dict(dtype=ux.dtype, device=ux.device)
        uxt = ux.transpose(0, 1).reshape(T, PB, n4)
        HK = torch.empty(T, PB, 2 * n, **opts)
        ZQ = torch.cat([uxt, uxt.new_zeros(T, PB, n)], dim=2)
        CELL = torch.empty(T, PB, n, **opts)
        S = torch.zeros(T, PB, n, **opts)
        VQ = torch.cat([V, 2 * W_q], dim=1).transpose(1, 2)  # (P, n, 5n)
        W_k2 = (2 * W_k).transpose(1, 2)
        att = _PopulationAttention(HK, v, nu, rho, _exact_tanh(ux.dtype), P)
        zq, q2_t = ZQ.unbind(0), ZQ[..., 4 * n:].unbind(0)
        if_t, o_t = ZQ[..., :2 * n].unbind(0), ZQ[..., 3 * n:4 * n].unbind(0)
        i_t, f_t, g_t = (ZQ[..., k * n:(k + 1) * n].unbind(0) for k in range(3))
        h_t, k_t, s_t = HK[..., :n].unbind(0), HK[..., n:].unbind(0), S.unbind(0)
        cell_t = CELL.unbind(0)
        tc = torch.empty(PB, n, **opts)
        h = None
        for t in range(T):
            if t > 0:
                s = att.attend(t, q2_t[t - 1], h, out=s_t[t])
                zq[t].view(P, B, 5 * n).baddbmm_(s.view(P, B, n), VQ)
            h = lstm_cell_step(t, if_t, i_t, f_t, g_t, o_t, cell_t, tc, h_t)
            k_t[t].copy_(_bmm_rows(h, W_k2, P))
            if t > 0:
                att.screen(t)
        ctx.sizes, ctx.P = att.sizes, P
        ctx.save_for_backward(HK, ZQ, CELL, S, att.IDX, att.alpha(), V, W_q, W_k, v)
        return HK[..., :n].reshape(T, P, B, n).transpose(0, 1).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):  # noqa: D102
        HK, ZQ, CELL, S, IDX, ALPHA, V, W_q, W_k, v = ctx.saved_tensors
        P = ctx.P
        T, PB, n2 = HK.shape
        n, B = n2 // 2, PB // P
        H = HK[..., :n]
        I, F, G, O = (ZQ[..., k * n:(k + 1) * n] for k in range(4))
        A = ZQ[..., :4 * n]
        KZ = torch.addcmul(A, A, A, value=-1)
        tc = CELL.tanh()
        DH = torch.addcmul(O, O, tc * tc, value=-1)
        KZ[..., 3 * n:].mul_(tc)
        del tc
        KZ[..., :n].mul_(G)
        KZ[1:, :, n:2 * n].mul_(CELL[:-1])
        KZ[0, :, n:2 * n] = 0
        torch.addcmul(I, I, G * G, value=-1, out=KZ[..., 2 * n:3 * n])
        g = gout.transpose(0, 1).reshape(T, PB, n)
        GHK = torch.cat([g, torch.zeros_like(g)], dim=2)
        DQ = torch.empty(T, PB, 5 * n, dtype=HK.dtype, device=HK.device)
        DQ[-1, :, 4 * n:] = 0
        att = _PopulationAttentionGrad(HK, GHK, IDX, ALPHA, ctx.sizes, P)
        v4 = 4 * v
        Wk4 = v4[:, :, None] * W_k
        VQ4 = torch.cat([V, v4[:, :, None] * W_q], dim=1).mul_(0.5)  # (P, 5n, n)
        gh_t, gk_t = GHK[..., :n].unbind(0), GHK[..., n:].unbind(0)
        dq, gq_t = DQ.unbind(0), DQ[..., 4 * n:].unbind(0)
        dz3_t = DQ[..., :3 * n].unflatten(-1, (3, n)).unbind(0)
        dzo_t = DQ[..., 3 * n:4 * n].unbind(0)
        k3_t = KZ[..., :3 * n].unflatten(-1, (3, n)).unbind(0)
        ko_t, dh_t, f_t = KZ[..., 3 * n:].unbind(0), DH.unbind(0), F.unbind(0)
        q2_t = ZQ[..., 4 * n:].unbind(0)
        gc = gcell = None
        for t in range(T - 1, -1, -1):
            g_h = gh_t[t] if gc is None else gh_t[t].add_(gc)
            gh = g_h + _bmm_rows(gk_t[t], Wk4, P)
            dcell = gh * dh_t[t]
            if gcell is not None:
                dcell.addcmul_(gcell, f_t[t + 1])
            torch.mul(dcell[:, None, :], k3_t[t], out=dz3_t[t])
            torch.mul(gh, ko_t[t], out=dzo_t[t])
            if t == 0:
                break
            gcell = dcell
            gc = _bmm_rows(dq[t], VQ4, P)
            att.step(t, gc, q2_t[t - 1], gq_t[t - 1])
        DZ = DQ[..., :4 * n]
        gV = _per_run(DZ[1:], S[1:], P)
        gW_q, gW_k = _population_attention_weight_grads(GHK, H, DQ[..., 4 * n:], S, v4, P)
        gv = 2 * att.gv_rows.view(P, B, n).sum(1)
        gux = DZ.reshape(T, P, B, 4 * n).transpose(0, 1)
        return gux, gV, gW_q, gW_k, gv, None, None


class PopulationMemRNNFunction(torch.autograd.Function):
    """:class:`rsa.fused.MemRNNFunction` for P runs at once: ``ux`` (P, T, B, n),
    ``V``, ``W_q``, ``W_k`` (P, n, n), ``v`` (P, n), ``phi_b`` (P, n) or None; returns H
    (P, T, B, n). The P B sequences are the batch (row p B + b); the attention over all
    past states is per row, so only the products with a run's weights (and its weight
    gradients) are batched over runs."""

    @staticmethod
    def forward(ctx, ux, V, W_q, W_k, v, phi_b):  # noqa: D102
        P, T, B, n = ux.shape
        PB = P * B
        opts = dict(dtype=ux.dtype, device=ux.device)
        exact = _exact_tanh(ux.dtype)
        uxt = ux.transpose(0, 1).reshape(T, PB, n)
        phi_rows = None if phi_b is None else phi_b.repeat_interleave(B, 0)
        H = torch.empty(PB, T, n, **opts)
        K2 = torch.empty(PB, T, n, **opts)
        S = torch.zeros(PB, T, n, **opts)
        Q2 = torch.zeros(PB, T, n, **opts)
        Z = torch.empty(PB, T, n, **opts) if phi_b is not None else None
        alpha = torch.zeros(PB, T, T, **opts)
        work = torch.empty(PB * max(T - 1, 1) * n, **opts)
        W_q2, W_k2 = (2 * W_q).transpose(1, 2), (2 * W_k).transpose(1, 2)  # (P, n, n)
        Vt = V.transpose(1, 2)
        v_e = (v if exact else 2 * v)[:, :, None]  # (P, n, 1)
        z = uxt[0]
        h = _phi(z, phi_rows)
        H[:, 0], K2[:, 0] = h, _bmm_rows(h, W_k2, P)
        if Z is not None:
            Z[:, 0] = z
        q = uxt.new_zeros(PB, n)
        for t in range(1, T):
            q2 = _bmm_rows(q, W_q2, P)
            Pm = torch.add(q2[:, None, :], K2[:, :t], out=work[:PB * t * n].view(PB, t, n))
            A = Pm.mul_(0.5).tanh_() if exact else Pm.sigmoid_()
            # (P B, t): run p's rows A[p B:(p + 1) B] are contiguous, one product each
            e = torch.bmm(A.view(P, B * t, n), v_e).view(PB, t)
            a = torch.softmax(e, dim=1)
            c = torch.bmm(a[:, None, :], H[:, :t])[:, 0]
            s = (h + c) / 2
            z = uxt[t] + _bmm_rows(s, Vt, P)
            h = _phi(z, phi_rows)
            H[:, t], K2[:, t], S[:, t], Q2[:, t] = h, _bmm_rows(h, W_k2, P), s, q2
            alpha[:, t, :t] = a
            if Z is not None:
                Z[:, t] = z
            q = s
        ctx.P = P
        ctx.save_for_backward(H, K2, S, Q2, Z, alpha, V, W_q, W_k, v, phi_b, phi_rows)
        return H.view(P, B, T, n).transpose(1, 2).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):  # noqa: D102
        H, K2, S, Q2, Z, alpha, V, W_q, W_k, v, phi_b, phi_rows = ctx.saved_tensors
        P = ctx.P
        PB, T, n = H.shape
        B = PB // P
        opts = dict(dtype=H.dtype, device=H.device)
        gout = gout.transpose(1, 2).reshape(PB, T, n)  # (P B, T, n)
        dphi, sign = _phi_derivative(H, Z, None if phi_rows is None else phi_rows[:, None])
        DZ = torch.empty(PB, T, n, **opts)
        GC = torch.zeros(PB, T, n, **opts)
        GQ = torch.zeros(PB, T, n, **opts)
        GKs = torch.zeros(PB, T, n, **opts)
        GV = torch.zeros(PB, T, n, **opts)
        GE = torch.zeros(PB, T, **opts)
        work = torch.empty(PB * max(T - 1, 1) * n, **opts)
        v4 = 4 * v
        Wk4, Wq4 = v4[:, :, None] * W_k, v4[:, :, None] * W_q  # (P, n, n)
        gc = torch.zeros(PB, n, **opts)
        g_q = torch.zeros(PB, n, **opts)
        for t in range(T - 1, -1, -1):
            gh = gout[:, t] + gc + _bmm_rows(GKs[:, t], Wk4, P)
            if t < T - 1:
                gh = gh + torch.bmm(alpha[:, t + 1:, t, None].transpose(1, 2),
                                    GC[:, t + 1:])[:, 0]
            dz = gh * dphi[:, t]
            DZ[:, t] = dz
            if t == 0:
                break
            gc = (g_q + _bmm_rows(dz, V, P)) / 2
            GC[:, t] = gc
            a = alpha[:, t, :t]
            g_alpha = torch.bmm(gc[:, None, :], H[:, :t].transpose(1, 2))[:, 0]
            ge = a * (g_alpha - (a * g_alpha).sum(1, keepdim=True))
            ge3 = ge[:, None, :]
            sig = torch.add(Q2[:, t, None, :], K2[:, :t],
                            out=work[:PB * t * n].view(PB, t, n)).sigmoid_()
            GV[:, t] = torch.bmm(ge3, sig)[:, 0]
            GE[:, t] = ge.sum(1)
            sig.addcmul_(sig, sig, value=-1)
            GKs[:, :t].addcmul_(sig, ge[..., None])
            gq = torch.bmm(ge3, sig)[:, 0]
            GQ[:, t] = gq
            g_q = _bmm_rows(gq, Wq4, P)

        def runs(X):  # (P B, T, k) -> (P, B T, k)
            return X.reshape(P, -1, X.shape[-1])

        gv = 2 * runs(GV).sum(1) - GE.view(P, -1).sum(1)[:, None]
        gV = torch.bmm(runs(DZ[:, 1:]).transpose(1, 2), runs(S[:, 1:]))
        v4r = v4.repeat_interleave(B, 0)[:, None, :]  # (P B, 1, n)
        gW_k = torch.bmm(runs(v4r * GKs).transpose(1, 2), runs(H))
        gW_q = torch.bmm(runs(v4r * GQ[:, 2:]).transpose(1, 2), runs(S[:, 1:-1]))
        gb = (DZ * sign).view(P, -1, n).sum(1) if phi_b is not None else None
        gux = DZ.view(P, B, T, n).transpose(1, 2)
        return gux, gV, gW_q, gW_k, gv, gb


def population_memrnn(ux, V, W_q, W_k, v, phi_b=None) -> torch.Tensor:
    """States H (P, T, B, n) of P MemRNNs (:class:`PopulationMemRNNFunction`)."""
    if ux.dim() != 4 or ux.shape[1] < 1:
        raise ValueError(f"ux must have shape (P, T >= 1, B, n), got {tuple(ux.shape)}")
    return PopulationMemRNNFunction.apply(ux, V, W_q, W_k, v, phi_b)


def population_rellstm(ux, V, W_q, W_k, v, *, nu=10, rho=15) -> torch.Tensor:
    """Outputs H (P, T, B, n) of P RelLSTMs (:class:`PopulationRelLSTMFunction`)."""
    if ux.dim() != 4 or ux.shape[1] < 1:
        raise ValueError(f"ux must have shape (P, T >= 1, B, 4n), got {tuple(ux.shape)}")
    _check_screening(nu, rho)
    return PopulationRelLSTMFunction.apply(ux, V, W_q, W_k, v, nu, rho)


def population_relrnn(ux, V, W_q, W_k, v, phi_b=None, *, nu=10, rho=15) -> torch.Tensor:
    """States H (P, T, B, n) of P RelRNNs (:class:`PopulationRelRNNFunction`)."""
    if ux.dim() != 4 or ux.shape[1] < 1:
        raise ValueError(f"ux must have shape (P, T >= 1, B, n), got {tuple(ux.shape)}")
    _check_screening(nu, rho)
    return PopulationRelRNNFunction.apply(ux, V, W_q, W_k, v, phi_b, nu, rho)


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


# -- the experiment plan in populations ---------------------------------------------------

def population_groups(runs: list[dict]) -> list[list[dict]]:
    """The plan's runs (dicts of :func:`rsa.experiments._train_runs`) grouped into
    populations: runs equal but for their seed, in the order of each group's first run."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        key = tuple(sorted((k, v) for k, v in r.items() if k != "seed"))
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def stage_train_populations(scale: str, plan, log, shard: tuple[int, int] = (0, 1),
                            select=None, device: str = "cpu") -> None:
    """The train stage of :func:`rsa.experiments.reproduce` with the plan's seeds of one
    configuration trained as one population (``reproduce --populations``).

    The same runs, work folders (``runs/<scale>/<name>``, with their ``.lock`` claims)
    and stored files as the run-by-run stage: a run already stored is skipped, a run
    another process holds is left to it, and only the remaining seeds of a group train
    together (each resuming from its own checkpoint). ``shard=(i, n)`` takes every n-th
    population from population i."""
    from rsa import experiments as ex

    runs = ex._selected(list(ex._train_runs(plan, scale)), select)
    groups = population_groups(runs)
    i, n = shard
    files = ex.RESULT_FILES + ((MODEL_FILE,) if plan.converged else ())
    for k, group in enumerate(groups, 1):
        if (k - 1) % n != i:  # another shard's population
            continue
        label = f"[population {k}/{len(groups)}]"
        todo = []
        for r in group:
            name = ex._name(r)
            dest = ex.DATA / scale / name
            if (dest / "results.json").is_file() and io.load_json(
                    dest / "results.json").get("complete", False):
                log(f"{label} {name}: done")
                continue
            todo.append((r, name, dest))
        with contextlib.ExitStack() as claims:
            mine = []
            for r, name, dest in todo:
                work = ex.RUNS / scale / name
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
