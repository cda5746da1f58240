"""The compiled CPU kernel of the RelRNN (issue 30): the whole sequence's forward, the
relevancy screening included, and a hand-written backward in numba-compiled code,
wrapped as an autograd function (as :mod:`rsa.models.kernels.compiled` for the RNN).
The MemRNN runs through it too (:func:`memrnn_compiled`: full attention is the
screening with a ring that never evicts).

The function is that of the fused torch path, :class:`rsa.models.kernels.screened.
RelRNNFunction` (*The paper* §2; the update and its backward are derived in the
chapter *Relevancy screening* and in that module's docstring), 0-based in time:
h_0 = phi(ux_0), and for t >= 1, over the screened memory M_t = S ∪ R,

    a_t = W_q q_t (q_t = s_{t-2}, q_1 = 0),   b_j = W_k h_j,
    r_tj = tanh(a_t + b_j),   e_tj = v . r_tj,   alpha_t = softmax_j(e_t),
    c_t = sum_j alpha_tj h_j,   s_{t-1} = (h_{t-1} + c_t) / 2,
    h_t = phi(ux_t + V s_{t-1}),

then the screening, per example, with the same decisions (and tie rules) as the torch
path: alpha_t is credited to S's states; once S is full its oldest state h_{t - nu}
leaves ring slot t mod nu for R while R has room, else replaces R's *first* slot of
lowest score if its own score is *strictly* greater; h_t enters the ring slot with
score 0.

The attention block, m_t B n values of tanh per step, would dominate the time with
numba's scalar tanh (about 25 ns each here). It is evaluated exactly, through
tanh(a + b) = (p - 1) / (p + 1), p = exp(2a) exp(2b): exp(2 a_t) and exp(2 b_j) are
computed once per query and per state (B n scalar exponentials per step), and the block
is then a product and a division per value, which the compiler vectorises. p has a
relative error of a few ulp, and so r an absolute error of a few ulp (no cancellation:
p + 1 >= 1); a row whose query or key has an entry beyond :data:`_LIMIT` (where the
exponentials could leave the normal range) takes ``np.tanh(a + b)`` itself. The state's
own phi is ``np.tanh`` (or modReLU) in float64. In float32 the exponentials are the
kernel's own vectorised one (:func:`_vexp`, within 2 ulp of float32's exp; numba's
float32 exp and tanh are scalar calls, the tanh about 55 ns here), and so is the state's
tanh, (E - 1) / (E + 1) with E = exp(2z): float32 results within float32 rounding of
the function, as the fused torch path's own float32 sigmoid form.

Backward (G = dL/d·), t from T - 1 down to 0, as in the fused torch path:
G_h_t = dL/dH_t + (value path) alpha_t'j G_c_t' + G_c_{t+1} + G_b_t W_k;
G_z_t = G_h_t phi'(z_t); G_s_{t-1} = G_z_t V + G_a_{t+1} W_q, G_c_t = G_s_{t-1} / 2;
ge_t = alpha_t (g_t - <alpha_t, g_t>), g_tj = G_c_t . h_j;
w_tj = ge_tj v (1 - r_tj^2): G_a_t += w_tj, G_b_j += w_tj, G_v += ge_tj r_tj.
The weight gradients are single matrix products done by torch at the end:
G_V = sum G_z_t^T s_{t-1}, G_W_q = sum G_a_t^T q_t, G_W_k = sum G_b_t^T h_t.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from rsa.models.kernels.compiled import available, numba, tensor_array
from rsa.models.kernels.fused import fused_inputs
from rsa.models.kernels.screened import check_screening

__all__ = ["CompiledRelRNNFunction", "relrnn_compiled", "relrnn_compiled_forward",
           "memrnn_compiled", "memrnn_compiled_forward", "available"]

_LIMIT = {np.dtype(np.float64): 170.0, np.dtype(np.float32): 20.0}
"""|a|, |b| beyond which a row of the attention block takes np.tanh: exp(2a) exp(2b)
stays within the normal range of the dtype (4 * 170 < 708, 4 * 20 < 87)."""


def _vexp(x, scale, out, ib):  # pragma: no cover - compiled
    """out = exp(scale x) in float32, vectorised (numba's own exp is a scalar call):
    Cody-Waite reduction x = k ln 2 + r and Cephes' expf polynomial on |r| <= ln 2 / 2
    (within 2 ulp of float32's exp, tested), 2^k built in the exponent bits (``ib``:
    an int32 buffer as long as x); arguments clamped to [-87, 88] (normal results)."""
    fb = ib.view(np.float32)
    for k in range(x.shape[0]):
        y = min(max(scale * x[k], _LO), _HI)
        kf = np.floor(y * _LOG2E + _HALF)
        r = y - kf * _C1 - kf * _C2
        p = ((((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * r * r
             + r + _ONE)
        out[k] = p
        ib[k] = (np.int32(kf) + 127) << 23
    for k in range(x.shape[0]):
        out[k] *= fb[k]


_f32 = np.float32
_LO, _HI, _LOG2E, _HALF, _ONE = _f32(-87), _f32(88), _f32(1.44269504088896341), _f32(0.5), \
    _f32(1)
_C1, _C2 = _f32(0.693359375), _f32(-2.12194440e-4)
_P0, _P1, _P2, _P3, _P4, _P5 = (_f32(c) for c in (1.9875691500e-4, 1.3981999507e-3,
                                                   8.3334519073e-3, 4.1665795894e-2,
                                                   1.6666665459e-1, 5.0000001201e-1))


def _exp2(X, E, F, row, lim, two, ib):  # pragma: no cover - compiled
    """E[row] = exp(2 X[row]) (B, n) and F[row, b]: whether a value of X[row, b] is beyond
    ``lim`` (that row then takes np.tanh). float32: :func:`_vexp`; float64: np.exp."""
    B, n = X.shape[1], X.shape[2]
    for b in range(B):
        x, e = X[row, b], E[row, b]
        flag = False
        for k in range(n):
            flag = flag or abs(x[k]) > lim
        F[row, b] = flag
        if X.itemsize == 4:  # float32
            _vexp(x, two, e, ib)
        else:
            for k in range(n):
                e[k] = np.exp(two * x[k])


def _phi(Z, H, phi_b, t, modrelu, ib):  # pragma: no cover - compiled
    """H[t] = phi(Z[t]): tanh or modReLU(z) = sign(z) relu(|z| + b). float32's tanh is
    (E - 1) / (E + 1), E = exp(2z) by :func:`_vexp` (numba's float32 tanh is a scalar
    call of about 55 ns); float64's is np.tanh."""
    B, n = Z.shape[1], Z.shape[2]
    for b in range(B):
        z, h = Z[t, b], H[t, b]
        if modrelu:
            for k in range(n):
                r = abs(z[k]) + phi_b[k]
                h[k] = np.sign(z[k]) * r if r > 0 else 0.0 * z[k]
        elif Z.itemsize == 4:  # float32
            _vexp(z, _f32(2), h, ib)
            for k in range(n):
                h[k] = (h[k] - _ONE) / (h[k] + _ONE)
        else:
            for k in range(n):
                h[k] = np.tanh(z[k])


def _score(EQ, EK, QA, KA, FQ, FK, v, t, tj, b, one):  # pragma: no cover - compiled
    """e_tj = v . tanh(a_t + b_j) for example b, h_j = state tj."""
    n = v.shape[0]
    e = one - one
    if FQ[t, b] or FK[tj, b]:
        for k in range(n):
            e += v[k] * np.tanh(QA[t, b, k] + KA[tj, b, k])
        return e
    eq, ek = EQ[t, b], EK[tj, b]
    for k in range(n):
        p = eq[k] * ek[k]
        e += v[k] * ((p - one) / (p + one))
    return e


def _attend(t, m, slot, SL, EQ, EK, QA, KA, FQ, FK, v, H, S, ALPHA, e,
            one):  # pragma: no cover - compiled
    """Step t's attention, per example, over the m states of the screened memory (their
    time indices in ``slot``, recorded in SL[t]): alpha_t (into ALPHA[t]), c_t and
    S[t] = s_{t-1} = (h_{t-1} + c_t) / 2. ``e``: a buffer of at least m scores. Shared
    by the RelRNN and the RelLSTM (:mod:`rsa.models.kernels.compiled_rellstm`)."""
    B, n = H.shape[1], H.shape[2]
    zero = one - one
    half = one / (one + one)
    for b in range(B):
        mx = -np.inf
        for j in range(m):
            tj = slot[j, b]
            SL[t, j, b] = tj
            e[j] = _score(EQ, EK, QA, KA, FQ, FK, v, t, tj, b, one)
            mx = max(mx, e[j])
        tot = zero
        for j in range(m):
            e[j] = np.exp(e[j] - mx)
            tot += e[j]
        s = S[t, b]
        s[:] = 0
        for j in range(m):
            a = e[j] / tot
            ALPHA[t, j, b] = a
            hj = H[slot[j, b], b]
            for k in range(n):
                s[k] += a * hj[k]
        h = H[t - 1, b]
        for k in range(n):  # torch.lerp(h, c, 0.5) = c - (c - h) / 2
            s[k] = s[k] - (s[k] - h[k]) * half


def _attend_grad(t, m, SL, ALPHA, H, gc, GH, GB, GA, QA, KA, EQ, EK, FQ, FK, v, gv, g,
                 one):  # pragma: no cover - compiled
    """Step t's attention backward, per example, from gc = G_c_t (B, n): the value path
    alpha_tj G_c_t into GH[tj], the softmax backward ge_tj = alpha_tj (g_tj - <alpha_t,
    g_t>), g_tj = G_c_t . h_j, and w_tj = ge_tj v (1 - r_tj^2) into the query's GA[t]
    and the keys' GB[tj], ge_tj r_tj into gv. ``g``: a buffer of at least m values.
    Shared by the RelRNN and the RelLSTM."""
    B, n = H.shape[1], H.shape[2]
    zero = one - one
    for b in range(B):
        gcb = gc[b]
        dot = zero
        for j in range(m):
            hj = H[SL[t, j, b], b]
            gj = zero
            for k in range(n):
                gj += gcb[k] * hj[k]
            g[j] = gj
            dot += ALPHA[t, j, b] * gj
        ga = GA[t, b]
        for j in range(m):
            tj = SL[t, j, b]
            a = ALPHA[t, j, b]
            ge = a * (g[j] - dot)
            ghj, gbj = GH[tj, b], GB[tj, b]
            for k in range(n):
                ghj[k] += a * gcb[k]
            if FQ[t, b] or FK[tj, b]:
                for k in range(n):
                    r = np.tanh(QA[t, b, k] + KA[tj, b, k])
                    w = ge * v[k] * (one - r * r)
                    gbj[k] += w
                    ga[k] += w
                    gv[k] += ge * r
            else:
                eq, ek = EQ[t, b], EK[tj, b]
                for k in range(n):
                    p = eq[k] * ek[k]
                    r = (p - one) / (p + one)
                    w = ge * v[k] * (one - r * r)
                    gbj[k] += w
                    ga[k] += w
                    gv[k] += ge * r


def _screen(slot, score, alpha, t, nS, nR, nu, rho):  # pragma: no cover - compiled
    """The screening after step t, per example (in place): ``alpha`` (K, B), alpha_t by
    slot, is credited to S's ``score`` (R's are frozen); h_t enters S; once S is full, its
    oldest state leaves ring slot t mod nu for R while R has room, else replaces R's
    first slot of lowest score if its own score is strictly greater. ``slot`` (K, B): the
    state (time index) in each slot, [S ring | R]. Returns the new (|S|, |R|)."""
    K, B = slot.shape
    for j in range(nS):
        for b in range(B):
            score[j, b] += alpha[j, b]
    if nS < nu:
        for b in range(B):
            slot[nS, b] = t
        return nS + 1, nR
    p = t % nu
    if rho > 0:
        if nR < rho:
            for b in range(B):
                slot[nu + nR, b] = slot[p, b]
                score[nu + nR, b] = score[p, b]
            nR += 1
        else:
            for b in range(B):
                jl = nu  # the first slot of lowest score
                for j in range(nu + 1, K):
                    if score[j, b] < score[jl, b]:
                        jl = j
                if score[p, b] > score[jl, b]:  # strictly greater
                    slot[jl, b] = slot[p, b]
                    score[jl, b] = score[p, b]
    for b in range(B):
        slot[p, b] = t
        score[p, b] = 0
    return nS, nR


def _forward(ux, VQT, WkT, v, phi_b, modrelu, nu, rho, lim):  # pragma: no cover - compiled
    """The whole forward. Returns H, Z (pre-activations), S (S[t] = s_{t-1}), QA (a_t),
    KA (b_t), EQ, EK (their exp(2 .)), FQ, FK (rows beyond the limit), SL (T, K, B): the
    state each slot held when step t attended, ALPHA (T, K, B)."""
    T, B, n = ux.shape
    K = nu + rho
    dt = ux.dtype
    one = np.ones(1, dt)[0]
    two = one + one
    H = np.empty((T, B, n), dt)
    Z = np.empty((T, B, n), dt)
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
    zq = np.empty((B, 2 * n), dt)
    e = np.empty(K, dt)
    ib = np.empty(n, np.int32)  # _vexp's exponent bits
    Z[0] = ux[0]
    _phi(Z, H, phi_b, 0, modrelu, ib)
    np.dot(H[0], WkT, KA[0])
    _exp2(KA, EK, FK, 0, lim, two, ib)
    nS, nR = 1, 0
    for t in range(1, T):
        _attend(t, nS + nR, slot, SL, EQ, EK, QA, KA, FQ, FK, v, H, S, ALPHA, e, one)
        np.dot(S[t], VQT, zq)  # [V s_{t-1} | W_q s_{t-1}]
        for b in range(B):
            for k in range(n):
                Z[t, b, k] = ux[t, b, k] + zq[b, k]
                if t + 1 < T:
                    QA[t + 1, b, k] = zq[b, n + k]
        if t + 1 < T:
            _exp2(QA, EQ, FQ, t + 1, lim, two, ib)
        _phi(Z, H, phi_b, t, modrelu, ib)
        np.dot(H[t], WkT, KA[t])
        _exp2(KA, EK, FK, t, lim, two, ib)
        nS, nR = _screen(slot, score, ALPHA[t], t, nS, nR, nu, rho)
    return H, Z, S, QA, KA, EQ, EK, FQ, FK, SL, ALPHA


def _backward(gH, H, Z, QA, KA, EQ, EK, FQ, FK, SL, ALPHA, VQ, Wk, v, phi_b, modrelu, nu,
              rho):  # pragma: no cover - compiled
    """The whole backward. Returns G_z (T, B, n) (= G_ux), G_a (T, B, n), G_b (T, B, n),
    G_v (n,) and modReLU's G_phi_b (n,) (zeros for tanh)."""
    T, B, n = H.shape
    dt = H.dtype
    one = np.ones(1, dt)[0]
    half = one / (one + one)
    GH = gH.copy()                 # dL/dH_t + the value path, complete when t is reached
    GB = np.zeros((T, B, n), dt)   # G_b_t (key path)
    GA = np.zeros((T, B, n), dt)   # G_a_t (query path)
    DZ = np.empty((T, B, n), dt)
    gv = np.zeros(n, dt)
    gphi = np.zeros(n, dt)
    gh = np.empty((B, n), dt)
    zg = np.zeros((B, 2 * n), dt)  # [G_z_t | G_a_{t+1}]
    gc = np.empty((B, n), dt)      # G_c_t = G_s_{t-1} / 2
    g = np.empty(nu + rho, dt)
    for t in range(T - 1, -1, -1):
        np.dot(GB[t], Wk, gh)
        for b in range(B):
            for k in range(n):
                gk = GH[t, b, k] + gh[b, k]
                z = Z[t, b, k]
                if modrelu:
                    sg = np.sign(z)
                    d = sg * sg if abs(z) + phi_b[k] > 0 else 0.0 * z
                    gk = gk * d
                    gphi[k] += gk * sg
                else:
                    hk = H[t, b, k]
                    gk = gk * (one - hk * hk)
                DZ[t, b, k] = gk
                zg[b, k] = gk
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
                zg[b, n + k] = GA[t, b, k]
    return DZ, GA, GB, gv, gphi


if numba is not None:
    _FAST = {"reassoc", "contract"}  # reordered sums (rounding only), vectorised loops
    _jit = numba.njit(cache=True, nogil=True, inline="always", fastmath=_FAST,
                      error_model="numpy")
    _exp2, _phi, _score = _jit(_exp2), _jit(_phi), _jit(_score)
    _attend, _attend_grad = _jit(_attend), _jit(_attend_grad)
    _screen = numba.njit(cache=True, nogil=True)(_screen)
    # no reassociation in the exponential: it would undo the Cody-Waite reduction
    _vexp = numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")(
        _vexp)
    _forward = numba.njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy")(_forward)
    _backward = numba.njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy")(_backward)


class CompiledRelRNNFunction(torch.autograd.Function):
    """H = RelRNN(ux) for ux = U x + b (T, B, n) in compiled code, backward hand-written;
    inputs as :class:`rsa.models.kernels.screened.RelRNNFunction`'s."""

    @staticmethod
    def forward(ctx, ux, V, W_q, W_k, v, phi_b, nu, rho):  # noqa: D102
        modrelu = phi_b is not None
        dt = ux.dtype
        b = phi_b if modrelu else torch.zeros(V.shape[0], dtype=dt)
        VQT = torch.cat([V, W_q]).t()  # (n, 2n): s -> [V s | W_q s]
        out = _forward(tensor_array(ux), tensor_array(VQT), tensor_array(W_k.t()),
                       tensor_array(v), tensor_array(b), modrelu, nu, rho,
                       _LIMIT[np.dtype(tensor_array(v).dtype)])
        H, Z, S, QA, KA, EQ, EK, FQ, FK, SL, ALPHA = (torch.from_numpy(x) for x in out)
        ctx.modrelu, ctx.nu, ctx.rho = modrelu, nu, rho
        ctx.save_for_backward(H, Z, S, QA, KA, EQ, EK, FQ, FK, SL, ALPHA, V, W_q, W_k, v, b)
        return H

    @staticmethod
    @once_differentiable
    def backward(ctx, gH):  # noqa: D102
        H, Z, S, QA, KA, EQ, EK, FQ, FK, SL, ALPHA, V, W_q, W_k, v, b = ctx.saved_tensors
        T, B, n = H.shape
        DZ, GA, GB, gv, gphi = (torch.from_numpy(x) for x in _backward(
            tensor_array(gH), *(tensor_array(x) for x in (H, Z, QA, KA, EQ, EK, FQ, FK, SL,
                                                           ALPHA, torch.cat([V, W_q]), W_k,
                                                           v, b)),
            ctx.modrelu, ctx.nu, ctx.rho))
        gV = DZ[1:].reshape(-1, n).t() @ S[1:].reshape(-1, n)
        gW_q = GA[2:].reshape(-1, n).t() @ S[1:-1].reshape(-1, n)  # q_t = s_{t-2} = S[t-1]
        gW_k = GB.reshape(-1, n).t() @ H.reshape(-1, n)
        return DZ, gV, gW_q, gW_k, gv, gphi if ctx.modrelu else None, None, None


def relrnn_compiled(ux: torch.Tensor, V: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor,
                    v: torch.Tensor, phi_b: torch.Tensor | None = None, *, nu: int = 10,
                    rho: int = 15) -> torch.Tensor:
    """RelRNN states H (T, B, n) from ``ux = U x + b`` through
    :class:`CompiledRelRNNFunction` (as :func:`rsa.models.kernels.screened.relrnn_fused`)."""
    if ux.dim() != 3 or ux.shape[0] < 1:
        raise ValueError(f"ux must have shape (T >= 1, B, n), got {tuple(ux.shape)}")
    check_screening(nu, rho)
    if ux.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the compiled RelRNN/MemRNN kernel runs in float32 or float64, got "
                         f"{ux.dtype}; use kernel='torch'")
    return CompiledRelRNNFunction.apply(ux, V, W_q, W_k, v, phi_b, nu, rho)


def relrnn_compiled_forward(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` for an :class:`rsa.models.RelRNN` through the compiled kernel."""
    return relrnn_compiled(*fused_inputs(model, x), nu=model.nu, rho=model.rho)


def memrnn_compiled(ux: torch.Tensor, V: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor,
                    v: torch.Tensor, phi_b: torch.Tensor | None = None) -> torch.Tensor:
    """MemRNN states H (T, B, n) from ``ux = U x + b``: the function of
    :class:`rsa.models.kernels.fused.MemRNNFunction` (full attention over every past
    state, the update derived in that module's docstring and the chapter *Relevancy
    screening*), which is this kernel's with a recent ring of nu = T slots that never
    evicts and no relevant set (rho = 0): step t attends h_0 .. h_{t-1}, with the same
    scores, weights and s_{t-1}. (The torch path keeps a function of its own because
    gathering and scattering by index costs it about 1.5x; here an index is a load.)
    Memory O(T B n + T^2 B): the weights and slot indices of every step."""
    if ux.dim() != 3 or ux.shape[0] < 1:
        raise ValueError(f"ux must have shape (T >= 1, B, n), got {tuple(ux.shape)}")
    return relrnn_compiled(ux, V, W_q, W_k, v, phi_b, nu=ux.shape[0], rho=0)


def memrnn_compiled_forward(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` for an :class:`rsa.models.MemRNN` through the compiled kernel."""
    return memrnn_compiled(*fused_inputs(model, x))
