"""The fused MemRNN, RelRNN and RelLSTM on a population: P runs with their own weights
as one autograd node over P B rows (:mod:`rsa.models.kernels.population`).
"""

from __future__ import annotations

import torch

from rsa.models.kernels.fused import activation, activation_derivative, exact_tanh
from rsa.models.kernels.rellstm import lstm_cell_step
from rsa.models.kernels.screened import (
    Attention,
    AttentionGrad,
    check_screening,
)

# -- the fused RelRNN on a population -----------------------------------------------------

class _PopulationAttention(Attention):
    """:class:`rsa.models.kernels.screened._Attention` on P B rows (run-major: row p B + b) with
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


class _PopulationAttentionGrad(AttentionGrad):
    """:class:`rsa.models.kernels.screened._AttentionGrad` with dL/dv per row (``gv_rows``), summed
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
    """:func:`rsa.models.kernels.screened._attention_weight_grads` per run: (P, n, n) each."""
    n = H.shape[-1]
    v4r = v4.repeat_interleave(H.shape[1] // P, 0)  # (P B, n): each row's run's 4 v
    return _per_run(GQ[1:-1] * v4r, S[1:-1], P), _per_run(GHK[..., n:] * v4r, H, P)


class PopulationRelRNNFunction(torch.autograd.Function):
    """:class:`rsa.models.kernels.screened.RelRNNFunction` for P runs at once.

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
        att = _PopulationAttention(HK, v, nu, rho, exact_tanh(ux.dtype), P)
        zq, z_t, q2_t = ZQ.unbind(0), ZQ[..., :n].unbind(0), ZQ[..., n:].unbind(0)
        h_t, k_t, s_t = HK[..., :n].unbind(0), HK[..., n:].unbind(0), S.unbind(0)
        h = activation(z_t[0], phi_rows, out=h_t[0])
        k_t[0].copy_(_bmm_rows(h, W_k2, P))
        for t in range(1, T):
            s = att.attend(t, q2_t[t - 1], h, out=s_t[t])  # s_{t-1}
            zq[t].view(P, B, 2 * n).baddbmm_(s.view(P, B, n), VQ)
            h = activation(z_t[t], phi_rows, out=h_t[t])
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
        dphi, sign = activation_derivative(H, ZQ[..., :n], phi_rows)
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
    """:class:`rsa.models.kernels.rellstm.RelLSTMFunction` for P runs at once, as
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
        att = _PopulationAttention(HK, v, nu, rho, exact_tanh(ux.dtype), P)
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
    """:class:`rsa.models.kernels.fused.MemRNNFunction` for P runs at once: ``ux`` (P, T, B, n),
    ``V``, ``W_q``, ``W_k`` (P, n, n), ``v`` (P, n), ``phi_b`` (P, n) or None; returns H
    (P, T, B, n). The P B sequences are the batch (row p B + b); the attention over all
    past states is per row, so only the products with a run's weights (and its weight
    gradients) are batched over runs."""

    @staticmethod
    def forward(ctx, ux, V, W_q, W_k, v, phi_b):  # noqa: D102
        P, T, B, n = ux.shape
        PB = P * B
        opts = dict(dtype=ux.dtype, device=ux.device)
        exact = exact_tanh(ux.dtype)
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
        h = activation(z, phi_rows)
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
            h = activation(z, phi_rows)
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
        dphi, sign = activation_derivative(H, Z, None if phi_rows is None else phi_rows[:, None])
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
    check_screening(nu, rho)
    return PopulationRelLSTMFunction.apply(ux, V, W_q, W_k, v, nu, rho)


def population_relrnn(ux, V, W_q, W_k, v, phi_b=None, *, nu=10, rho=15) -> torch.Tensor:
    """States H (P, T, B, n) of P RelRNNs (:class:`PopulationRelRNNFunction`)."""
    if ux.dim() != 4 or ux.shape[1] < 1:
        raise ValueError(f"ux must have shape (P, T >= 1, B, n), got {tuple(ux.shape)}")
    check_screening(nu, rho)
    return PopulationRelRNNFunction.apply(ux, V, W_q, W_k, v, phi_b, nu, rho)
