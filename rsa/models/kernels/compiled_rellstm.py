"""The compiled CPU kernel of the RelLSTM (issue 30): the whole sequence's forward, the
relevancy screening included, and a hand-written backward in numba-compiled code,
wrapped as an autograd function (as :mod:`rsa.models.kernels.compiled_screened` for the
RelRNN, whose attention, screening and exponentials it runs through the same compiled
helpers).

The function is that of the fused torch path, :class:`rsa.models.kernels.rellstm.
RelLSTMFunction` (*The paper* §2; the attention and the screening are derived in the
chapter *Relevancy screening*, the cell's backward in that module's docstring),
0-based in time, gates in ``nn.Linear`` row order (i, f, g, o):

    z_0 = ux_0,   cell_0 = sigma(i_0) tanh(g_0),   h_0 = sigma(o_0) tanh(cell_0)
    for t >= 1, over the screened memory M_t = S ∪ R of the outputs h_j:
        a_t = W_q q_t (q_t = s_{t-2}, q_1 = 0),   b_j = W_k h_j,
        alpha_t = softmax_j(v . tanh(a_t + b_j)),   c_t = sum_j alpha_tj h_j,
        s_{t-1} = (h_{t-1} + c_t) / 2,   z_t = ux_t + V s_{t-1}   (V: (4n, n)),
        cell_t = sigma(f_t) cell_{t-1} + sigma(i_t) tanh(g_t),
        h_t = sigma(o_t) tanh(cell_t),

then the screening of the RelRNN (the same decisions and tie rules as the torch path).
The attention block is evaluated as in the compiled RelRNN, tanh(a + b) =
(p - 1) / (p + 1) with p = exp(2a) exp(2b) (``np.tanh`` where an argument is beyond
the exponentials' range). The gates: in float64 ``np.exp`` and ``np.tanh``; in
float32 the kernel's vectorised exponential (:func:`rsa.models.kernels.compiled_screened.
_vexp`, within 2 ulp of float32's exp): sigma(x) = 1 / (1 + exp(-x)),
tanh(x) = (E - 1) / (E + 1) with E = exp(2x), within float32 rounding of the functions.

Backward (G = dL/d·), t from T - 1 down to 0, as in the fused torch path:
G_h_t = dL/dH_t + (value path) alpha_t'j G_c_t' + G_c_{t+1} + G_b_t W_k;
G_cell_t = G_h_t o_t (1 - tanh^2 cell_t) + G_cell_{t+1} f_{t+1};
G_z_t = [G_cell_t g_t i_t (1 - i_t) | G_cell_t cell_{t-1} f_t (1 - f_t) |
G_cell_t i_t (1 - g_t^2) | G_h_t tanh(cell_t) o_t (1 - o_t)] (cell_{-1} = 0), with i, f,
g, o the activated gates; G_s_{t-1} = G_z_t V + G_a_{t+1} W_q, G_c_t = G_s_{t-1} / 2;
then the RelRNN's attention backward. The weight gradients are single matrix products
done by torch at the end: G_V = sum G_z_t^T s_{t-1}, G_W_q = sum G_a_t^T q_t,
G_W_k = sum G_b_t^T h_t; ``ux = U x + b`` is computed by torch, so U, b and x get
their gradients from G_z.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from rsa.models.kernels.compiled import numba, tensor_array
from rsa.models.kernels.compiled_screened import (
    _LIMIT,
    _ONE,
    _attend,
    _attend_grad,
    _exp2,
    _f32,
    _screen,
    _vexp,
)
from rsa.models.kernels.fused import fused_inputs
from rsa.models.kernels.screened import check_screening

__all__ = ["CompiledRelLSTMFunction", "rellstm_compiled", "rellstm_compiled_forward",
           "CompiledLSTMFunction", "lstm_compiled_forward"]


def _cell(Z, A, C, TC, H, t, ib, one):  # pragma: no cover - compiled
    """Step t of the LSTM cell, per example, from the pre-activations Z[t] (B, 4n): the
    activated gates into A[t] = [sigma(i) | sigma(f) | tanh(g) | sigma(o)], the cell into
    C[t] (cell_{-1} = 0), tanh(cell_t) into TC[t] and h_t into H[t]. float32: the
    vectorised exponential (``ib``: its int32 buffer, at least n long); ``one``: 1 in
    the arrays' dtype."""
    B, n = H.shape[1], H.shape[2]
    for b in range(B):
        z, a = Z[t, b], A[t, b]
        if Z.itemsize == 4:  # float32
            for q in range(4):
                x, y = z[q * n:(q + 1) * n], a[q * n:(q + 1) * n]
                if q == 2:  # g: tanh = (E - 1) / (E + 1), E = exp(2x)
                    _vexp(x, _f32(2), y, ib)
                    for k in range(n):
                        y[k] = (y[k] - _ONE) / (y[k] + _ONE)
                else:       # sigma = 1 / (1 + exp(-x))
                    _vexp(x, _f32(-1), y, ib)
                    for k in range(n):
                        y[k] = _ONE / (_ONE + y[k])
        else:
            for k in range(n):
                a[k] = one / (one + np.exp(-z[k]))
                a[n + k] = one / (one + np.exp(-z[n + k]))
                a[2 * n + k] = np.tanh(z[2 * n + k])
                a[3 * n + k] = one / (one + np.exp(-z[3 * n + k]))
        c = C[t, b]
        for k in range(n):
            c[k] = a[k] * a[2 * n + k]
            if t > 0:
                c[k] += a[n + k] * C[t - 1, b, k]
        tc = TC[t, b]
        if Z.itemsize == 4:
            _vexp(c, _f32(2), tc, ib)
            for k in range(n):
                tc[k] = (tc[k] - _ONE) / (tc[k] + _ONE)
        else:
            for k in range(n):
                tc[k] = np.tanh(c[k])
        h = H[t, b]
        for k in range(n):
            h[k] = a[3 * n + k] * tc[k]


def _cell_grad(G, gh, A, C, TC, DZ, gcell, t, one):  # pragma: no cover - compiled
    """The cell's backward at step t: from G_h_t = G[t] + gh (B, n), the gates' gradients
    into DZ[t] (G_z_t, B, 4n); ``gcell`` holds G_cell_{t+1} on entry and G_cell_t on
    return (G_cell_t = G_h_t sigma(o) (1 - tanh^2 cell_t) + G_cell_{t+1} sigma(f_{t+1}))."""
    T, B, n = C.shape
    for b in range(B):
        a, dz = A[t, b], DZ[t, b]
        for k in range(n):
            ghk = G[t, b, k] + gh[b, k]
            i_, f_, g_, o_ = a[k], a[n + k], a[2 * n + k], a[3 * n + k]
            tc = TC[t, b, k]
            gck = ghk * o_ * (one - tc * tc)
            if t < T - 1:
                gck += gcell[b, k] * A[t + 1, b, n + k]
            gcell[b, k] = gck
            dz[k] = gck * g_ * (i_ * (one - i_))
            dz[n + k] = gck * C[t - 1, b, k] * (f_ * (one - f_)) if t > 0 else 0 * gck
            dz[2 * n + k] = gck * i_ * (one - g_ * g_)
            dz[3 * n + k] = ghk * tc * (o_ * (one - o_))


def _forward(ux, VQT, WkT, v, nu, rho, lim):  # pragma: no cover - compiled
    """The whole forward. Returns H, A (activated gates, T, B, 4n), C (cells), TC
    (their tanh), S (S[t] = s_{t-1}), QA (a_t), KA (b_t), EQ, EK (their exp(2 .)), FQ,
    FK (rows beyond the limit), SL (T, K, B): the state each slot held when step t
    attended, ALPHA (T, K, B)."""
    T, B, n4 = ux.shape
    n = n4 // 4
    K = nu + rho
    dt = ux.dtype
    one = np.ones(1, dt)[0]
    two = one + one
    H = np.empty((T, B, n), dt)
    Z = np.empty((T, B, 4 * n), dt)  # pre-activations (not kept)
    A = np.empty((T, B, 4 * n), dt)
    C = np.empty((T, B, n), dt)
    TC = np.empty((T, B, n), dt)
    S = np.zeros((T, B, n), dt)
    QA = np.zeros((T, B, n), dt)
    KA = np.empty((T, B, n), dt)
    EQ = np.ones((T, B, n), dt)
    EK = np.empty((T, B, n), dt)
    FQ = np.zeros((T, B), np.bool_)
    FK = np.zeros((T, B), np.bool_)
    SL = np.zeros((T, K, B), np.int64)
    ALPHA = np.zeros((T, K, B), dt)
    slot = np.zeros((K, B), np.int64)
    score = np.zeros((K, B), dt)
    zq = np.empty((B, 5 * n), dt)
    e = np.empty(K, dt)
    ib = np.empty(n, np.int32)  # _vexp's exponent bits
    Z[0] = ux[0]
    _cell(Z, A, C, TC, H, 0, ib, one)
    np.dot(H[0], WkT, KA[0])
    _exp2(KA, EK, FK, 0, lim, two, ib)
    nS, nR = 1, 0
    for t in range(1, T):
        _attend(t, nS + nR, slot, SL, EQ, EK, QA, KA, FQ, FK, v, H, S, ALPHA, e, one)
        np.dot(S[t], VQT, zq)  # [V s_{t-1} | W_q s_{t-1}]
        for b in range(B):
            for k in range(4 * n):
                Z[t, b, k] = ux[t, b, k] + zq[b, k]
            if t + 1 < T:
                for k in range(n):
                    QA[t + 1, b, k] = zq[b, 4 * n + k]
        if t + 1 < T:
            _exp2(QA, EQ, FQ, t + 1, lim, two, ib)
        _cell(Z, A, C, TC, H, t, ib, one)
        np.dot(H[t], WkT, KA[t])
        _exp2(KA, EK, FK, t, lim, two, ib)
        nS, nR = _screen(slot, score, ALPHA[t], t, nS, nR, nu, rho)
    return H, A, C, TC, S, QA, KA, EQ, EK, FQ, FK, SL, ALPHA


def _backward(gH, H, A, C, TC, QA, KA, EQ, EK, FQ, FK, SL, ALPHA, VQ, Wk, v, nu,
              rho):  # pragma: no cover - compiled
    """The whole backward. Returns G_z (T, B, 4n) (= G_ux), G_a (T, B, n), G_b
    (T, B, n) and G_v (n,)."""
    T, B, n = H.shape
    dt = H.dtype
    one = np.ones(1, dt)[0]
    half = one / (one + one)
    GH = gH.copy()                 # dL/dH_t + the value path, complete when t is reached
    GB = np.zeros((T, B, n), dt)   # G_b_t (key path)
    GA = np.zeros((T, B, n), dt)   # G_a_t (query path)
    DZ = np.empty((T, B, 4 * n), dt)
    gv = np.zeros(n, dt)
    gh = np.empty((B, n), dt)
    gcell = np.zeros((B, n), dt)   # G_cell_{t+1}, then G_cell_t
    zg = np.zeros((B, 5 * n), dt)  # [G_z_t | G_a_{t+1}]
    gc = np.empty((B, n), dt)      # G_c_t = G_s_{t-1} / 2
    g = np.empty(nu + rho, dt)
    for t in range(T - 1, -1, -1):
        np.dot(GB[t], Wk, gh)
        _cell_grad(GH, gh, A, C, TC, DZ, gcell, t, one)
        for b in range(B):
            for k in range(4 * n):
                zg[b, k] = DZ[t, b, k]
        if t == 0:
            break
        np.dot(zg, VQ, gc)
        for b in range(B):
            for k in range(n):
                gc[b, k] *= half
                GH[t - 1, b, k] += gc[b, k]  # h_{t-1}'s share of s_{t-1}
        _attend_grad(t, min(t, nu) + min(rho, max(0, t - nu)), SL, ALPHA, H, gc, GH, GB,
                     GA, QA, KA, EQ, EK, FQ, FK, v, gv, g, one)
        for b in range(B):
            for k in range(n):
                zg[b, 4 * n + k] = GA[t, b, k]
    return DZ, GA, GB, gv


def _lstm_forward(ux, VT):  # pragma: no cover - compiled
    """The plain LSTM (no attention) with the same cell: z_t = ux_t + V h_{t-1} (ux_0
    alone); returns H, A, C and TC as :func:`_forward` does. The kernel of
    :class:`CompiledLSTMFunction`."""
    T, B, n4 = ux.shape
    n = n4 // 4
    dt = ux.dtype
    one = np.ones(1, dt)[0]
    H = np.empty((T, B, n), dt)
    Z = np.empty((T, B, n4), dt)  # pre-activations (not kept)
    A = np.empty((T, B, n4), dt)
    C = np.empty((T, B, n), dt)
    TC = np.empty((T, B, n), dt)
    zv = np.empty((B, n4), dt)
    ib = np.empty(n, np.int32)  # _vexp's exponent bits
    Z[0] = ux[0]
    _cell(Z, A, C, TC, H, 0, ib, one)
    for t in range(1, T):
        np.dot(H[t - 1], VT, zv)
        for b in range(B):
            for k in range(n4):
                Z[t, b, k] = ux[t, b, k] + zv[b, k]
        _cell(Z, A, C, TC, H, t, ib, one)
    return H, A, C, TC


def _lstm_backward(gH, A, C, TC, V):  # pragma: no cover - compiled
    """G_z (T, B, 4n) (= G_ux) of the plain LSTM: G_h_t = dL/dH_t + G_z_{t+1} V, and the
    cell's backward as in :func:`_backward` (G_V = sum G_z_t^T h_{t-1} is left to torch)."""
    T, B, n = C.shape
    dt = C.dtype
    one = np.ones(1, dt)[0]
    DZ = np.empty((T, B, 4 * n), dt)
    gh = np.zeros((B, n), dt)      # G_z_{t+1} V
    gcell = np.zeros((B, n), dt)   # G_cell_{t+1}, then G_cell_t
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            np.dot(DZ[t + 1], V, gh)
        _cell_grad(gH, gh, A, C, TC, DZ, gcell, t, one)
    return DZ


if numba is not None:
    _FAST = {"reassoc", "contract"}  # reordered sums (rounding only), vectorised loops
    _cell = numba.njit(cache=True, nogil=True, inline="always", fastmath=_FAST,
                       error_model="numpy")(_cell)
    _cell_grad = numba.njit(cache=True, nogil=True, inline="always", fastmath=_FAST,
                            error_model="numpy")(_cell_grad)
    _lstm_forward = numba.njit(cache=True, nogil=True, fastmath=_FAST,
                               error_model="numpy")(_lstm_forward)
    _lstm_backward = numba.njit(cache=True, nogil=True, fastmath=_FAST,
                                error_model="numpy")(_lstm_backward)
    _forward = numba.njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy")(_forward)
    _backward = numba.njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy")(_backward)


class CompiledRelLSTMFunction(torch.autograd.Function):
    """H = RelLSTM(ux) for ux = U x + b (T, B, 4n) in compiled code, backward
    hand-written; inputs as :class:`rsa.models.kernels.rellstm.RelLSTMFunction`'s."""

    @staticmethod
    def forward(ctx, ux, V, W_q, W_k, v, nu, rho):  # noqa: D102
        VQT = torch.cat([V, W_q]).t()  # (n, 5n): s -> [V s | W_q s]
        out = _forward(tensor_array(ux), tensor_array(VQT), tensor_array(W_k.t()),
                       tensor_array(v), nu, rho, _LIMIT[np.dtype(tensor_array(v).dtype)])
        H, A, C, TC, S, QA, KA, EQ, EK, FQ, FK, SL, ALPHA = (torch.from_numpy(x) for x in out)
        ctx.nu, ctx.rho = nu, rho
        ctx.save_for_backward(H, A, C, TC, S, QA, KA, EQ, EK, FQ, FK, SL, ALPHA, V, W_q, W_k,
                              v)
        return H

    @staticmethod
    @once_differentiable
    def backward(ctx, gH):  # noqa: D102
        H, A, C, TC, S, QA, KA, EQ, EK, FQ, FK, SL, ALPHA, V, W_q, W_k, v = ctx.saved_tensors
        T, B, n = H.shape
        DZ, GA, GB, gv = (torch.from_numpy(x) for x in _backward(
            tensor_array(gH), *(tensor_array(x) for x in (H, A, C, TC, QA, KA, EQ, EK, FQ, FK,
                                                           SL, ALPHA, torch.cat([V, W_q]),
                                                           W_k, v)),
            ctx.nu, ctx.rho))
        gV = DZ[1:].reshape(-1, 4 * n).t() @ S[1:].reshape(-1, n)
        gW_q = GA[2:].reshape(-1, n).t() @ S[1:-1].reshape(-1, n)  # q_t = s_{t-2} = S[t-1]
        gW_k = GB.reshape(-1, n).t() @ H.reshape(-1, n)
        return DZ, gV, gW_q, gW_k, gv, None, None


def rellstm_compiled(ux: torch.Tensor, V: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor,
                     v: torch.Tensor, *, nu: int = 10, rho: int = 15) -> torch.Tensor:
    """RelLSTM outputs H (T, B, n) from ``ux = U x + b`` (T, B, 4n) through
    :class:`CompiledRelLSTMFunction` (as :func:`rsa.models.kernels.rellstm.rellstm_fused`)."""
    if ux.dim() != 3 or ux.shape[0] < 1 or ux.shape[2] != 4 * W_k.shape[0]:
        raise ValueError(f"ux must have shape (T >= 1, B, 4n) with n = {W_k.shape[0]}, got "
                         f"{tuple(ux.shape)}")
    check_screening(nu, rho)
    if ux.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the compiled RelLSTM kernel runs in float32 or float64, got "
                         f"{ux.dtype}; use kernel='torch'")
    return CompiledRelLSTMFunction.apply(ux, V, W_q, W_k, v, nu, rho)


def rellstm_compiled_forward(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` for an :class:`rsa.models.RelLSTM` through the compiled kernel."""
    ux, V, W_q, W_k, v, _ = fused_inputs(model, x)
    return rellstm_compiled(ux, V, W_q, W_k, v, nu=model.nu, rho=model.rho)


class CompiledLSTMFunction(torch.autograd.Function):
    """H = LSTM(ux, V) over a whole sequence in compiled code (ux (T, B, 4n) = U x + b,
    V (4n, n)); backward hand-written. The kernel is the RelLSTM's cell without the
    attention (:func:`_lstm_forward`: the gates' exponentials vectorised in float32,
    tanh(c_t) kept for the backward)."""

    @staticmethod
    def forward(ctx, ux, V):  # noqa: D102
        H, A, C, TC = (torch.from_numpy(x) for x in _lstm_forward(
            tensor_array(ux), np.ascontiguousarray(tensor_array(V).T)))
        ctx.save_for_backward(H, A, C, TC, V)
        return H

    @staticmethod
    def backward(ctx, gH):  # noqa: D102
        H, A, C, TC, V = ctx.saved_tensors
        gZ = torch.from_numpy(_lstm_backward(*(tensor_array(x) for x in (gH, A, C, TC, V))))
        T, B, n = H.shape
        gV = (gZ[1:].reshape((T - 1) * B, 4 * n).t() @ H[:-1].reshape((T - 1) * B, n)
              if T > 1 else torch.zeros_like(V))
        return gZ, gV


def lstm_compiled_forward(model, x: torch.Tensor) -> torch.Tensor:
    """The plain LSTM ``model`` over x (T, B, input_size) through the compiled kernel."""
    return CompiledLSTMFunction.apply(model.U(x), model.V.weight)
