"""RelLSTM over a whole sequence in one autograd node, with a hand-written backward.

The update is that of :class:`rsa.models.RelLSTM` (*The paper* §2): an LSTM whose
gates read s_{t-1} = (h_{t-1} + c_t) / 2 instead of h_{t-1}, where c_t is the
relevancy-screened attention over the LSTM's *outputs* h_j (the memory stores h_j and
its key W_k h_j, never the cell state). 0-based in time, with ⊙ the elementwise
product, sigma the logistic function and the gates in ``nn.Linear`` row order
(i, f, g, o):

    z_0 = U x_0 + b,   cell_0 = i_0 ⊙ g_0,   h_0 = o_0 ⊙ tanh(cell_0)
    for t >= 1:
        e_tj    = v . tanh(W_q q_t + W_k h_j)   for h_j in M_t,   q_t = s_{t-2} (q_1 = 0)
        alpha_t = softmax_j(e_t),   c_t = sum_j alpha_tj h_j
        s_{t-1} = (h_{t-1} + c_t) / 2
        z_t     = U x_t + b + V s_{t-1}          (V: (4n, n))
        i_t, f_t, g_t, o_t = sigma(z^i_t), sigma(z^f_t), tanh(z^g_t), sigma(z^o_t)
        cell_t  = f_t ⊙ cell_{t-1} + i_t ⊙ g_t
        h_t     = o_t ⊙ tanh(cell_t)

with M_t the screened memory S ∪ R before step t. Step 0 has no forget term, which is
the same as cell_{-1} = 0 (its gradient through f_0 is then 0, as autograd's).

Everything about the attention is that of the fused RelRNN
(:mod:`rsa.models.kernels.screened`) and runs through the same code: the memory table HK of
``[h_t | 2 W_k h_t]`` rows, the screening on time indices after each step
(``Attention.screen``), the attention forward of a step (``Attention.attend``), its
backward with the attention block recomputed (``AttentionGrad.step``) and the weight
gradients of W_q and W_k (:func:`rsa.models.kernels.fused.attention_weight_grads`). What is new
is the cell.

Forward buffers, all O(T B n) (memory O(T B (n + nu + rho)) with the attention weights
and row indices): HK (T, B, 2n); ZQ (T, B, 5n), row ``[z_t | 2 W_q s_{t-1}]``, whose
first 4n are overwritten in place by the gates [i_t | f_t | g_t | o_t] once computed
(the backward needs the gates, not z_t); the cells CELL (T, B, n); s_prev (T, B, n),
s_prev[t] = s_{t-1}. One ``addmm`` per step gives z_t and the next step's doubled query.

Backward, for one step t (G = dL/d·), walking t from T - 1 down to 0:

1. G_{h_t} = dL/dH_t + G_{s_t}/2 + G^val_t + G^key_t (4 v ⊙ W_k), from the accumulator
   GHK[t] = [G^val_t | G^key_t] of the later steps that attended h_t (as in the fused
   RelRNN, step 1).
2. The cell: G_{cell_t} = G_{h_t} ⊙ o_t ⊙ (1 - tanh^2 cell_t)
   + G_{cell_{t+1}} ⊙ f_{t+1} (the second term only for t < T - 1).
3. The gates: G_{z_t} = [G_{cell_t} ⊙ g_t ⊙ i_t (1 - i_t) |
   G_{cell_t} ⊙ cell_{t-1} ⊙ f_t (1 - f_t) | G_{cell_t} ⊙ i_t ⊙ (1 - g_t^2) |
   G_{h_t} ⊙ tanh(cell_t) ⊙ o_t (1 - o_t)]. The factors that multiply G_{cell_t} and
   G_{h_t} depend on the forward only; they are computed for all t at once before the
   loop, so a step is two multiplications.
4. G_{s_{t-1}} = G_{z_t} V + G_{q_{t+1}}; G_{c_t} = G_{s_{t-1}} / 2 (also h_{t-1}'s
   share, step 1 at t - 1). One ``mm`` of the row [G_{z_t} | G_{q_{t+1}} / (4 v)] with
   [V ; 4 v ⊙ W_q] / 2.
5. The attention backward of the fused RelRNN (its steps 4 and 5): softmax backward,
   the block sigma(2 (W_q q_t + W_k h_j)) recomputed, dL/dv, G_{W_q q_t}, and the
   memory's gradient added into GHK with one ``index_add_``.

Then dL/dV = sum_t G_{z_t}^T s_{t-1} (t >= 1), and dL/dW_q, dL/dW_k as in the fused
RelRNN; ``U x + b`` is computed outside, by autograd, so U, b and x get their gradients
from dL/dz.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rsa.models.kernels.fused import attention_weight_grads, exact_tanh, fused_inputs
from rsa.models.kernels.screened import Attention, AttentionGrad, check_screening

__all__ = ["RelLSTMFunction", "rellstm_fused", "fused_forward", "lstm_cell_step"]


def lstm_cell_step(t, if_t, i_t, f_t, g_t, o_t, cell_t, tc, h_t):
    """Step ``t`` of the LSTM cell on the pre-activations z_t = [i f g o] (per-step views
    of one buffer, ``if_t`` covering i and f): the gates replace z_t in place,
    c_t = i g + f c_{t-1} is written to ``cell_t[t]`` and h_t = o tanh(c_t) to ``h_t[t]``
    (``tc`` holds tanh(c_t)); returns h_t. Shared with the population's batched forward
    (:mod:`rsa.train.population`), which runs it on the rows of all its runs at once."""
    if_t[t].sigmoid_()
    g_t[t].tanh_()
    o_t[t].sigmoid_()
    cell = torch.mul(i_t[t], g_t[t], out=cell_t[t])
    if t > 0:
        cell.addcmul_(f_t[t], cell_t[t - 1])
    return torch.mul(o_t[t], torch.tanh(cell, out=tc), out=h_t[t])


class RelLSTMFunction(torch.autograd.Function):
    """H = RelLSTM(ux) for ux = U x + b (T, B, 4n); returns H (T, B, n), H[t] = h_t.

    Inputs: ``ux`` (T, B, 4n), gates in the order (i, f, g, o); ``V`` (4n, n), ``W_q``,
    ``W_k`` (n, n) weight matrices (``nn.Linear`` layout); ``v`` (n,); ``nu`` >= 1,
    ``rho`` >= 0. Scores are evaluated as in :class:`rsa.models.kernels.screened.RelRNNFunction`
    (exact tanh in float64, the sigmoid form below). Saved for backward: HK (2n), ZQ
    (5n), CELL (n), s_prev (n) per step and example, the row indices and the alphas.
    """

    @staticmethod
    def forward(ctx, ux, V, W_q, W_k, v, nu, rho):  # noqa: D102
        T, B, n4 = ux.shape
        n = n4 // 4
        opts = dict(dtype=ux.dtype, device=ux.device)
        HK = torch.empty(T, B, 2 * n, **opts)   # [h_t | 2 W_k h_t]
        ZQ = torch.cat([ux, ux.new_zeros(T, B, n)], dim=2)  # [z_t -> gates | 2 W_q s_{t-1}]
        CELL = torch.empty(T, B, n, **opts)     # cell_t
        s_prev = torch.zeros(T, B, n, **opts)   # s_prev[t] = s_{t-1}, the input to V at step t
        VQ = torch.cat([V, 2 * W_q]).t()        # (n, 5n): s -> [V s | 2 W_q s]
        W_k2 = (2 * W_k).t()
        att = Attention(HK, v, nu, rho, exact_tanh(ux.dtype))
        # per-step views made once (slicing in the loop costs more than the arithmetic)
        zq, q2_t = ZQ.unbind(0), ZQ[..., 4 * n:].unbind(0)
        if_t, o_t = ZQ[..., :2 * n].unbind(0), ZQ[..., 3 * n:4 * n].unbind(0)
        i_t, f_t, g_t = (ZQ[..., k * n:(k + 1) * n].unbind(0) for k in range(3))
        h_t, k_t, s_t = HK[..., :n].unbind(0), HK[..., n:].unbind(0), s_prev.unbind(0)
        cell_t = CELL.unbind(0)
        tc = torch.empty(B, n, **opts)          # tanh(cell_t)
        h = None
        for t in range(T):
            if t > 0:
                s = att.attend(t, q2_t[t - 1], h, out=s_t[t])  # s_{t-1}
                zq[t].addmm_(s, VQ)
            h = lstm_cell_step(t, if_t, i_t, f_t, g_t, o_t, cell_t, tc, h_t)
            torch.mm(h, W_k2, out=k_t[t])
            if t > 0:
                att.screen(t)
        ctx.sizes = att.sizes
        ctx.save_for_backward(HK, ZQ, CELL, s_prev, att.IDX, att.alpha(), V, W_q, W_k, v)
        return HK[..., :n].contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):  # noqa: D102
        HK, ZQ, CELL, s_prev, IDX, ALPHA, V, W_q, W_k, v = ctx.saved_tensors
        T, B, n2 = HK.shape
        n = n2 // 2
        H = HK[..., :n]
        I, F, G, O = (ZQ[..., k * n:(k + 1) * n] for k in range(4))
        # steps 2 and 3's factors, for every t at once (a few whole-tensor operations):
        # G_{cell_t} = G_{h_t} ⊙ DH_t + ...,
        # G_{z_t} = [G_{cell_t} ⊙ KZ_t[:3n] | G_{h_t} ⊙ KZ_t[3n:]]
        A = ZQ[..., :4 * n]
        KZ = torch.addcmul(A, A, A, value=-1)  # x (1 - x) for x = i, f, o (g's: replaced)
        tc = CELL.tanh()
        DH = torch.addcmul(O, O, tc * tc, value=-1)  # o (1 - tanh^2 cell)
        KZ[..., 3 * n:].mul_(tc)                     # o (1 - o) tanh(cell)
        del tc
        KZ[..., :n].mul_(G)                          # i (1 - i) g
        KZ[1:, :, n:2 * n].mul_(CELL[:-1])           # f (1 - f) cell_{t-1}
        KZ[0, :, n:2 * n] = 0                        # cell_{-1} = 0
        torch.addcmul(I, I, G * G, value=-1, out=KZ[..., 2 * n:3 * n])  # i (1 - g^2)
        # per state: [dL/dH_t + value path | key path / (4 v)], complete when t is reached
        GHK = torch.cat([gout, torch.zeros_like(gout)], dim=2)
        # DQ[t] = [dL/dz_t | dL/d(W_q q_{t+1}) / (4 v)]: every entry is written by the
        # loop, except the last step's query part (there is no q_T)
        DQ = torch.empty(T, B, 5 * n, dtype=HK.dtype, device=HK.device)
        DQ[-1, :, 4 * n:] = 0
        att = AttentionGrad(HK, GHK, IDX, ALPHA, ctx.sizes)
        v4 = 4 * v
        Wk4 = v4[:, None] * W_k
        VQ4 = torch.cat([V, v4[:, None] * W_q]).mul_(0.5)  # [dz | gq] -> dL/ds / 2
        gh_t, gk_t = GHK[..., :n].unbind(0), GHK[..., n:].unbind(0)
        dq, gq_t = DQ.unbind(0), DQ[..., 4 * n:].unbind(0)
        dz3_t = DQ[..., :3 * n].unflatten(-1, (3, n)).unbind(0)  # (B, 3, n): i, f, g
        dzo_t = DQ[..., 3 * n:4 * n].unbind(0)
        k3_t = KZ[..., :3 * n].unflatten(-1, (3, n)).unbind(0)
        ko_t, dh_t, f_t = KZ[..., 3 * n:].unbind(0), DH.unbind(0), F.unbind(0)
        q2_t = ZQ[..., 4 * n:].unbind(0)
        gc = gcell = None  # dL/dc_{t+1} = dL/ds_t / 2; dL/dcell_{t+1}
        for t in range(T - 1, -1, -1):
            g_h = gh_t[t] if gc is None else gh_t[t].add_(gc)  # step 1
            gh = torch.addmm(g_h, gk_t[t], Wk4)
            dcell = gh * dh_t[t]                                # step 2
            if gcell is not None:
                dcell.addcmul_(gcell, f_t[t + 1])
            torch.mul(dcell[:, None, :], k3_t[t], out=dz3_t[t])  # step 3
            torch.mul(gh, ko_t[t], out=dzo_t[t])
            if t == 0:
                break
            gcell = dcell
            gc = torch.mm(dq[t], VQ4)  # step 4: dL/ds_{t-1} / 2 = dL/dc_t
            att.step(t, gc, q2_t[t - 1], gq_t[t - 1])  # step 5; q_t = s_{t-2}
        DZ = DQ[..., :4 * n]
        gV = DZ[1:].reshape(-1, 4 * n).t() @ s_prev[1:].reshape(-1, n)
        gW_q, gW_k = attention_weight_grads(GHK, H, DQ[..., 4 * n:], s_prev, v4)
        return DZ, gV, gW_q, gW_k, att.gv, None, None


def rellstm_fused(ux: torch.Tensor, V: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor,
                  v: torch.Tensor, *, nu: int = 10, rho: int = 15) -> torch.Tensor:
    """RelLSTM outputs H (T, B, n) from the input drive ``ux = U x + b`` (T, B, 4n)
    through :class:`RelLSTMFunction` (memory O(T B (n + nu + rho)), one autograd node)."""
    if ux.dim() != 3 or ux.shape[0] < 1 or ux.shape[2] != 4 * W_k.shape[0]:
        raise ValueError(f"ux must have shape (T >= 1, B, 4n) with n = {W_k.shape[0]}, got "
                         f"{tuple(ux.shape)}")
    check_screening(nu, rho)
    return RelLSTMFunction.apply(ux, V, W_q, W_k, v, nu, rho)


def fused_forward(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` for an :class:`rsa.models.RelLSTM` through the fused function."""
    ux, V, W_q, W_k, v, _ = fused_inputs(model, x)
    return rellstm_fused(ux, V, W_q, W_k, v, nu=model.nu, rho=model.rho)
