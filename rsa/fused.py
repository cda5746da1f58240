"""MemRNN over a whole sequence in one autograd node, with a hand-written backward.

The update is that of :class:`rsa.models.MemRNN` (*The paper* §2, chapter *Relevancy
screening*), 0-based in time as in the code: h_0 = phi(U x_0 + b), and for t >= 1

    q_t     = s_{t-2}                      (s_{-1} = 0: the first query is 0)
    e_tj    = v . tanh(W_q q_t + W_k h_j)  for j < t
    alpha_t = softmax_j(e_t)
    c_t     = sum_j alpha_tj h_j
    s_{t-1} = (h_{t-1} + c_t) / 2
    h_t     = phi(U x_t + V s_{t-1} + b)

with phi = tanh or modReLU(z) = sign(z) relu(|z| + b_m).

Why: plain autograd saves, at every step t, the memory (B, t, 2n) and the attention's
tanh (B, t, n): O(T^2 n B) floats per sequence (7.4 GiB for one update at T = 1000,
B = 10, n = 128). Here the forward runs without a graph and keeps only O(T n B) buffers
(the states H, doubled keys 2 W_k H, the s_t, doubled queries 2 W_q q_t, the
pre-activations for modReLU) plus the attention weights alpha, O(T^2 B). The backward
walks t from T-1 down to 0 and recomputes the step's attention block (B, t, n) in one
reused buffer, so no (B, t, n) tensor outlives its step: memory O(T n B + T^2 B)
(107 MiB for that update), time about twice the forward (the recomputation plus the
tanh derivative). Measured by ``python tests/test_fused.py``.

Backward, for one step t (every (B, t, n) operation batched; G_x is dL/dx):

- G_{h_t} = dL/dH_t (direct) + G_{s_t}/2 (from s_t = (h_t + c_{t+1})/2)
  + G_{k_t} W_k + sum_{t' > t} alpha_{t't} G_{c_{t'}}; all terms come from steps > t,
  so the sum is complete when step t is reached (the last one is one bmm over the
  stored G_c and alpha's column t).
- G_{z_t} = G_{h_t} phi'(z_t); G_{s_{t-1}} = G_{z_t} V + G_{q_{t+1}} (s_{t-1} is also
  the next query), G_{c_t} = G_{s_{t-1}} / 2.
- G_{alpha_tj} = G_{c_t} . h_j, G_{e_t} = alpha_t (G_{alpha_t} - <alpha_t, G_{alpha_t}>).
- with A_tj = tanh(W_q q_t + k_j): G_v += sum_j G_{e_tj} A_tj,
  G_{k_j} += G_{e_tj} v (1 - A_tj^2), G_{W_q q_t} = v sum_j G_{e_tj} (1 - A_tj^2).

Scores use the sigmoid form (see :class:`MemRNNFunction`), so ``G_{k_j}`` is kept as
4 v sum_t G_{e_tj} sigma_tj (1 - sigma_tj): one (B, T, n) accumulator. The weight
gradients (V, W_q, W_k, v, modReLU's b_m) are single matmuls or sums over all steps at
the end. ``U x + b`` is computed outside, by autograd, so U, b and x get their
gradients from it.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = ["MemRNNFunction", "memrnn_fused", "fused_forward", "fused_inputs", "check_sequence"]


def _phi(z: torch.Tensor, phi_b: torch.Tensor | None,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """tanh (``phi_b is None``) or modReLU(z) = sign(z) relu(|z| + b), as in rsa.models;
    written into ``out`` if given."""
    if phi_b is None:
        return torch.tanh(z, out=out)
    return torch.mul(torch.sign(z), torch.relu(z.abs() + phi_b), out=out)


def _phi_derivative(H: torch.Tensor, Z: torch.Tensor | None, phi_b: torch.Tensor | None):
    """phi'(z) for every step, from the states H = phi(Z): tanh' = 1 - h^2, or modReLU'
    = sign(z)^2 [|z| + b > 0] (0 at z = 0, as autograd). Returns (phi', sign(Z) or None);
    sign(Z) also gives modReLU's dL/db = sum dL/dz sign(z)^3 = sum dL/dz sign(z)."""
    if phi_b is None:
        return 1 - H * H, None
    sign = torch.sign(Z)
    return sign * sign * ((Z.abs() + phi_b) > 0), sign


def _exact_tanh(dtype: torch.dtype) -> bool:
    """Whether the forward scores use torch.tanh itself (float64: bitwise equal to the
    generic loop of rsa.models) or the sigmoid form (float32 and below: torch.tanh is
    about 4x slower than torch.sigmoid on this CPU; the sigmoid form is float32-accurate)."""
    return dtype == torch.float64


class MemRNNFunction(torch.autograd.Function):
    """H = MemRNN(ux) for ux = U x + b (T, B, n); returns H (T, B, n), H[t] = h_t.

    Inputs: ``ux`` (T, B, n), ``V``, ``W_q``, ``W_k`` (n, n) weight matrices (``nn.Linear``
    layout: y = x W^T), ``v`` (n,), ``phi_b`` (n,) modReLU bias or None for tanh.

    The attention block is evaluated from the *doubled* pre-activation
    P = 2 (W_q q_t + W_k h_j) (scaling by 2 is exact in floating point):
    tanh(P/2) = 2 sigma(P) - 1, so e = 2 v . sigma(P) - sum(v), and the constant drops out
    of the softmax; tanh' = 1 - tanh^2 = 4 sigma(P) (1 - sigma(P)).
    """

    @staticmethod
    def forward(ctx, ux, V, W_q, W_k, v, phi_b):  # noqa: D102
        T, B, n = ux.shape
        opts = dict(dtype=ux.dtype, device=ux.device)
        exact = _exact_tanh(ux.dtype)
        H = torch.empty(B, T, n, **opts)       # h_t
        K2 = torch.empty(B, T, n, **opts)      # 2 k_t = 2 W_k h_t
        S = torch.zeros(B, T, n, **opts)       # S[:, t] = s_{t-1}, the input to V at step t
        Q2 = torch.zeros(B, T, n, **opts)      # Q2[:, t] = 2 W_q q_t
        Z = torch.empty(B, T, n, **opts) if phi_b is not None else None  # pre-activations
        alpha = torch.zeros(B, T, T, **opts)   # alpha[:, t, j], j < t
        work = torch.empty(B * max(T - 1, 1) * n, **opts)  # the (B, t, n) attention block
        W_q2, W_k2 = 2 * W_q, 2 * W_k  # exact: 2 (W x) = (2 W) x bit for bit
        z = ux[0]
        h = _phi(z, phi_b)
        H[:, 0], K2[:, 0] = h, F.linear(h, W_k2)
        if Z is not None:
            Z[:, 0] = z
        q = ux.new_zeros(B, n)  # the query of step 1
        for t in range(1, T):
            q2 = F.linear(q, W_q2)  # (B, n)
            P = torch.add(q2[:, None, :], K2[:, :t], out=work[:B * t * n].view(B, t, n))
            if exact:  # tanh(W_q q + k_j) exactly as rsa.models computes it
                e = P.mul_(0.5).tanh_() @ v  # (B, t)
            else:      # 2 v . sigma(P), the same softmax up to rounding
                e = (P.sigmoid_() @ v).mul_(2)
            a = torch.softmax(e, dim=1)  # (B, t)
            c = torch.bmm(a[:, None, :], H[:, :t])[:, 0]  # (B, n)
            s = (h + c) / 2  # s_{t-1}
            z = ux[t] + F.linear(s, V)
            h = _phi(z, phi_b)
            H[:, t], K2[:, t], S[:, t], Q2[:, t] = h, F.linear(h, W_k2), s, q2
            alpha[:, t, :t] = a
            if Z is not None:
                Z[:, t] = z
            q = s
        ctx.save_for_backward(H, K2, S, Q2, Z, alpha, V, W_q, W_k, v, phi_b)
        return H.transpose(0, 1).contiguous()  # (T, B, n)

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):  # noqa: D102
        H, K2, S, Q2, Z, alpha, V, W_q, W_k, v, phi_b = ctx.saved_tensors
        B, T, n = H.shape
        opts = dict(dtype=H.dtype, device=H.device)
        dphi, sign = _phi_derivative(H, Z, phi_b)
        DZ = torch.empty(B, T, n, **opts)       # dL/dz_t = dL/d(U x_t + b)
        GC = torch.zeros(B, T, n, **opts)       # dL/dc_t
        GQ = torch.zeros(B, T, n, **opts)       # dL/d(W_q q_t) / (4 v)
        GKs = torch.zeros(B, T, n, **opts)      # dL/dk_j / (4 v): sum_t ge_tj sig_tj (1 - sig_tj)
        GV = torch.zeros(B, T, n, **opts)       # sum_j ge_tj sig_tj, for dL/dv
        GE = torch.zeros(B, T, **opts)          # sum_j ge_tj (0 up to rounding)
        work = torch.empty(B * max(T - 1, 1) * n, **opts)
        v4 = 4 * v
        Wk4, Wq4 = v4[:, None] * W_k, v4[:, None] * W_q  # diag(4 v) W
        gc = torch.zeros(B, n, **opts)          # dL/dc_{t+1} = dL/ds_t / 2, also h_t's share
        g_q = torch.zeros(B, n, **opts)         # dL/dq_{t+1}, q_{t+1} = s_{t-1}
        for t in range(T - 1, -1, -1):
            # dL/dh_t: direct, through s_t, through k_t (all steps > t are done) ...
            gh = torch.addmm(gout[t] + gc, GKs[:, t], Wk4)
            if t < T - 1:  # ... and through c_{t'} = sum_j alpha_{t'j} h_j, t' > t
                gh = gh + torch.bmm(alpha[:, t + 1:, t, None].transpose(1, 2),
                                    GC[:, t + 1:])[:, 0]
            dz = gh * dphi[:, t]
            DZ[:, t] = dz
            if t == 0:
                break
            gc = torch.addmm(g_q, dz, V) / 2  # dL/ds_{t-1} (via V and query t+1), halved
            GC[:, t] = gc
            a = alpha[:, t, :t]  # (B, t)
            g_alpha = torch.bmm(gc[:, None, :], H[:, :t].transpose(1, 2))[:, 0]  # (B, t)
            ge = a * (g_alpha - (a * g_alpha).sum(1, keepdim=True))  # softmax backward
            ge3 = ge[:, None, :]  # (B, 1, t)
            sig = torch.add(Q2[:, t, None, :], K2[:, :t],
                            out=work[:B * t * n].view(B, t, n)).sigmoid_()  # recomputed
            GV[:, t] = torch.bmm(ge3, sig)[:, 0]
            GE[:, t] = ge.sum(1)
            sig.addcmul_(sig, sig, value=-1)  # sig (1 - sig) = tanh' / 4
            GKs[:, :t].addcmul_(sig, ge[..., None])
            gq = torch.bmm(ge3, sig)[:, 0]  # (B, n)
            GQ[:, t] = gq
            g_q = gq @ Wq4  # q_t = s_{t-2}; at t = 1 the query is the constant 0
        gv = 2 * GV.sum((0, 1)) - GE.sum()  # sum ge tanh = sum ge (2 sig - 1)
        gV = torch.einsum("bti,btj->ij", DZ[:, 1:], S[:, 1:])
        gW_k = torch.einsum("bti,btj->ij", v4 * GKs, H)
        gW_q = torch.einsum("bti,btj->ij", v4 * GQ[:, 2:], S[:, 1:-1])
        gb = (DZ * sign).sum((0, 1)) if phi_b is not None else None  # sign^3 = sign
        return DZ.transpose(0, 1).contiguous(), gV, gW_q, gW_k, gv, gb


def memrnn_fused(ux: torch.Tensor, V: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor,
                 v: torch.Tensor, phi_b: torch.Tensor | None = None) -> torch.Tensor:
    """MemRNN states H (T, B, n) from the input drive ``ux = U x + b`` (T, B, n) through
    :class:`MemRNNFunction` (memory O(T n B + T^2 B), attention recomputed in backward)."""
    if ux.dim() != 3 or ux.shape[0] < 1:
        raise ValueError(f"ux must have shape (T >= 1, B, n), got {tuple(ux.shape)}")
    return MemRNNFunction.apply(ux, V, W_q, W_k, v, phi_b)


def check_sequence(x: torch.Tensor, input_size: int) -> tuple[int, int]:
    """(T, B) of a time-major input x (T, B, input_size), T >= 1; ValueError naming the
    shape otherwise. The one input check of every recurrent core, fused or not."""
    if x.dim() != 3 or x.shape[-1] != input_size:
        raise ValueError(f"x must have shape (T, B, {input_size}), got {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"sequence length T must be >= 1, got {x.shape[0]}")
    return x.shape[0], x.shape[1]


def fused_inputs(model, x: torch.Tensor) -> tuple:
    """The arguments of a fused sequence function for ``model(x)`` (MemRNN, RelRNN or
    RelLSTM): ``(U x + b, V, W_q, W_k, v, phi_b)``, phi_b None for tanh and for the
    LSTM. The input drive U x + b is one matmul done by autograd, so U, b and x get
    their gradients from it."""
    check_sequence(x, model.input_size)
    phi_b = model.phi.b if getattr(model, "nonlinearity", None) == "modrelu" else None
    return model.U(x), model.V.weight, model.W_q.weight, model.W_k.weight, model.v, phi_b


def fused_forward(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` for an :class:`rsa.models.MemRNN` through the fused function."""
    return memrnn_fused(*fused_inputs(model, x))
