"""MemRNN over a whole sequence in one autograd node, with a hand-written backward; and
the pieces that every fused function (:mod:`rsa.models.kernels.screened`,
:mod:`rsa.models.kernels.rellstm`)
shares with it.

The update is that of :class:`rsa.models.MemRNN` (*The paper* §2, chapter *Relevancy
screening*), 0-based in time (row t of a buffer holds h_{t+1} of the book's notation):
h_0 = phi(U x_0 + b), and for t >= 1

    q_t     = s_{t-2}                      (s_{-1} = 0: the first query is 0)
    e_tj    = v . tanh(W_q q_t + W_k h_j)  for j < t
    alpha_t = softmax_j(e_t)
    c_t     = sum_j alpha_tj h_j
    s_{t-1} = (h_{t-1} + c_t) / 2
    h_t     = phi(U x_t + V s_{t-1} + b)

with phi = tanh or modReLU(z) = sign(z) relu(|z| + b_m).

One layout in every fused function, time-major like the models: buffers are (T, B, .),
row t for step t; the states and their doubled keys share one table HK (T, B, 2n), row
``[h_t | 2 W_k h_t]``; a step's memory block is (m, B, 2n) over the m states it attends
(here the slice HK[:t], m = t), its weights alpha_t (m, B). The pieces shared by all
fused functions, in this module: the attention of one step (:func:`attend`, with
:func:`attention_scores`), its backward (:func:`softmax_backward`,
:func:`attention_block_backward`) and the weight gradients of the attention
(:func:`attention_weight_grads`).

Scores are evaluated from the *doubled* pre-activation P = 2 (W_q q_t + W_k h_j)
(scaling by 2 is exact in floating point): in float64 e = v . tanh(P / 2), bitwise the
plain loop's; below, the sigmoid form tanh(P/2) = 2 sigma(P) - 1, e = 2 v . sigma(P) up
to the constant -sum(v), which drops out of the softmax (torch.tanh is about 4x slower
than torch.sigmoid on this CPU; the sigmoid form is float32-accurate). The backward
uses tanh' = 1 - tanh^2 = 4 sigma(P) (1 - sigma(P)), so key and query gradients are
kept over 4 v.

Why: plain autograd saves, at every step t, the memory (B, t, 2n) and the attention's
tanh (B, t, n): O(T^2 n B) floats per sequence (7.4 GiB for one update at T = 1000,
B = 10, n = 128). Here the forward runs without a graph and keeps only O(T n B) buffers
(HK, the s_{t-1}, the doubled queries 2 W_q q_t, the pre-activations for modReLU) plus
the attention weights alpha, O(T^2 B). The backward walks t from T-1 down to 0 and
recomputes the step's attention block (t, B, n) in one reused buffer, so no (t, B, n)
tensor outlives its step: memory O(T n B + T^2 B) (107 MiB for that update), time
about twice the forward (the recomputation plus the tanh derivative). Measured by
``python tests/test_fused.py``.

Why not the screened function of :mod:`rsa.models.kernels.screened` with a buffer that never
evicts: it gathers each step's memory rows by index and scatters their gradient back
(``index_select``, ``index_add_``), which full attention does not need (its memory is
the slice HK[:t]); measured, forward and backward take about 1.5x as long at T = 100
and at T = 300 (B = 10, n = 128, float32, one thread; medians of 11 interleaved rounds).

Backward, for one step t (G = dL/d·), walking t from T - 1 down to 0 (the step numbers
tag the lines; the same steps in :mod:`rsa.models.kernels.screened`):

1. G_{h_t} = dL/dH_t + G_{s_t}/2 + G^val_t + G^key_t (4 v ⊙ W_k): the accumulator
   GHK[t] = [G^val_t | G^key_t] holds, for every later step t' (all of which attended
   h_t), alpha_{t't} G_{c_{t'}} (value path) and ge_{t't} sigma (1 - sigma) (key path,
   over 4 v); all later steps are done when t is reached.
2. G_{z_t} = G_{h_t} ⊙ phi'(z_t).
3. G_{s_{t-1}} = G_{z_t} V + G_{q_{t+1}} (s_{t-1} is also the next query);
   G_{c_t} = G_{s_{t-1}} / 2, which is also h_{t-1}'s share (step 1 at t - 1).
4. ge_t = alpha_t ⊙ (g_t - <alpha_t, g_t>) with g_tj = G_{c_t} . h_j (softmax
   backward, :func:`softmax_backward`).
5. With sigma = sigmoid(P) recomputed: dL/dv += 2 sum_j ge_tj sigma (sum_j ge_tj = 0:
   alpha_t sums to 1); GHK[j] += [alpha_tj G_{c_t} | ge_tj sigma (1 - sigma)];
   G_{W_q q_t} = 4 v ⊙ sum_j ge_tj sigma (1 - sigma) (:func:`attention_block_backward`).

The weight gradients (V, W_q, W_k, v, modReLU's b_m) are single matmuls or sums over all
steps at the end. ``U x + b`` is computed outside, by autograd, so U, b and x get their
gradients from it.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["MemRNNFunction", "memrnn_fused", "fused_forward", "fused_inputs", "check_sequence",
           "attend", "attention_scores", "softmax_backward", "attention_block_backward",
           "attention_weight_grads"]


def activation(z: torch.Tensor, phi_b: torch.Tensor | None,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """tanh (``phi_b is None``) or modReLU(z) = sign(z) relu(|z| + b), as in rsa.models;
    written into ``out`` if given."""
    if phi_b is None:
        return torch.tanh(z, out=out)
    return torch.mul(torch.sign(z), torch.relu(z.abs() + phi_b), out=out)


def activation_derivative(H: torch.Tensor, Z: torch.Tensor | None, phi_b: torch.Tensor | None):
    """phi'(z) for every step, from the states H = phi(Z): tanh' = 1 - h^2, or modReLU'
    = sign(z)^2 [|z| + b > 0] (0 at z = 0, as autograd). Returns (phi', sign(Z) or None);
    sign(Z) also gives modReLU's dL/db = sum dL/dz sign(z)^3 = sum dL/dz sign(z)."""
    if phi_b is None:
        return 1 - H * H, None
    sign = torch.sign(Z)
    return sign * sign * ((Z.abs() + phi_b) > 0), sign


def exact_tanh(dtype: torch.dtype) -> bool:
    """Whether the forward scores use torch.tanh itself (float64: bitwise equal to the
    generic loop of rsa.models) or the sigmoid form (float32 and below: torch.tanh is
    about 4x slower than torch.sigmoid on this CPU; the sigmoid form is float32-accurate)."""
    return dtype == torch.float64


# -- the attention of one step, shared by every fused function ---------------------------

def attention_scores(P: torch.Tensor, v_e: torch.Tensor, exact: bool) -> torch.Tensor:
    """The scores e_tj (m, B), up to a constant, from the block P = 2 (W_q q_t + W_k h_j)
    (m, B, n), which is overwritten: v . tanh(P / 2) if ``exact`` (``v_e`` = v), else
    2 v . sigma(P) (``v_e`` = 2 v)."""
    return (P.mul_(0.5).tanh_() if exact else P.sigmoid_()) @ v_e


def attend(M: torch.Tensor, q2: torch.Tensor, h: torch.Tensor, v_e: torch.Tensor,
           exact: bool, P: torch.Tensor, out: torch.Tensor):
    """One step's attention: (s_{t-1}, alpha_t), s_{t-1} = (h_{t-1} + c_t) / 2 written into
    ``out`` (B, n), alpha_t (m, B). ``M`` (m, B, 2n): the memory's rows [h_j | 2 W_k h_j];
    ``q2`` = 2 W_q q_t (B, n); ``h`` = h_{t-1}; ``P`` (m, B, n): work space."""
    n = h.shape[-1]
    e = attention_scores(torch.add(q2, M[..., n:], out=P), v_e, exact)  # (m, B)
    a = torch.softmax(e, dim=0)  # alpha_t
    c = torch.mul(a[..., None], M[..., :n], out=P).sum(0)  # c_t = sum_j alpha_tj h_j
    return torch.lerp(h, c, 0.5, out=out), a


def softmax_backward(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """dL/de = alpha ⊙ (g - <alpha, g>) for alpha = softmax(e) over dim 0 (m, B), from
    g = dL/dalpha (step 4 of the backward)."""
    ge = a * g
    return ge.addcmul_(a, ge.sum(0), value=-1)


def attention_block_backward(M: torch.Tensor, q2: torch.Tensor, a: torch.Tensor,
                             gc: torch.Tensor, P: torch.Tensor, G: torch.Tensor,
                             gv: torch.Tensor, accumulate: bool = False) -> torch.Tensor:
    """Steps 4 and 5 of the backward for one step, from G_{c_t} = ``gc`` (B, n), the
    memory ``M`` (m, B, 2n) and ``q2`` = 2 W_q q_t as in :func:`attend`, and alpha_t
    ``a`` (m, B): the gradient of the memory's rows, ``[alpha_tj G_{c_t} |
    ge_tj sigma (1 - sigma)]`` (key path over 4 v), written into ``G`` (m, B, 2n), or
    added to it with ``accumulate`` (full attention, whose memory is a slice of the
    accumulator); 2 sum_j ge_tj sigma is added to dL/dv ``gv`` (n,). Returns the step's
    key-path block (m, B, n), whose sum over j is G_{W_q q_t} / (4 v). ``P`` (m, B, n):
    work space."""
    n = gc.shape[-1]
    m, B = a.shape
    ge = softmax_backward(a, torch.linalg.vecdot(M[..., :n], gc))  # step 4
    sig = torch.add(q2, M[..., n:], out=P).sigmoid_()  # step 5: sigma(P), recomputed
    gv.addmv_(sig.view(m * B, n).t(), ge.view(-1), alpha=2)
    sig.addcmul_(sig, sig, value=-1)  # sigma (1 - sigma) = tanh' / 4
    if accumulate:
        G[..., :n].addcmul_(a[..., None], gc)
        G[..., n:].add_(sig.mul_(ge[..., None]))
        return sig
    torch.mul(a[..., None], gc, out=G[..., :n])
    return torch.mul(sig, ge[..., None], out=G[..., n:])


def attention_weight_grads(GHK: torch.Tensor, H: torch.Tensor, GQ: torch.Tensor,
                           s_prev: torch.Tensor, v4: torch.Tensor):
    """(dL/dW_q, dL/dW_k) from the key-path accumulator ``GHK[..., n:]`` (over 4 v) and
    the states ``H`` (T, B, n), and from ``GQ[t]`` = G_{W_q q_{t+1}} / (4 v) with the
    queries' states ``s_prev[t]`` = s_{t-1} = q_{t+1} (T, B, n), t = 1 .. T - 2."""
    T, B, n = H.shape
    gW_k = (GHK[..., n:] * v4).reshape(-1, n).t() @ H.reshape(T * B, n)
    gW_q = (GQ[1:-1] * v4).reshape(-1, n).t() @ s_prev[1:-1].reshape(-1, n)
    return gW_q, gW_k


# -- MemRNN ------------------------------------------------------------------------------

class MemRNNFunction(torch.autograd.Function):
    """H = MemRNN(ux) for ux = U x + b (T, B, n); returns H (T, B, n), H[t] = h_t.

    Inputs: ``ux`` (T, B, n), ``V``, ``W_q``, ``W_k`` (n, n) weight matrices (``nn.Linear``
    layout: y = x W^T), ``v`` (n,), ``phi_b`` (n,) modReLU bias or None for tanh.
    Saved for backward: HK (2n), s_prev, Q2 (n each) and, for modReLU, Z (n) per step
    and example, and alpha (T, T, B).
    """

    @staticmethod
    def forward(ctx, ux, V, W_q, W_k, v, phi_b):  # noqa: D102
        T, B, n = ux.shape
        opts = dict(dtype=ux.dtype, device=ux.device)
        exact = exact_tanh(ux.dtype)
        HK = torch.empty(T, B, 2 * n, **opts)   # [h_t | 2 W_k h_t]
        s_prev = torch.zeros(T, B, n, **opts)   # s_prev[t] = s_{t-1}, the input to V at step t
        Q2 = torch.zeros(T, B, n, **opts)       # Q2[t] = 2 W_q q_t (q_1 = 0)
        Z = torch.empty(T, B, n, **opts) if phi_b is not None else None  # z_t, for modReLU'
        alpha = torch.zeros(T, T, B, **opts)    # alpha[t, j] = alpha_tj, j < t
        work = torch.empty(max(T - 1, 1) * B * n, **opts)  # step t's (t, B, n) block
        W_k2, W_q2 = (2 * W_k).t(), (2 * W_q).t()  # exact: 2 (W x) = (2 W) x bit for bit
        v_e = v if exact else 2 * v
        # per-step views made once (slicing in the loop costs more than the arithmetic)
        h_t, k_t, s_t, q2_t = HK[..., :n].unbind(0), HK[..., n:].unbind(0), \
            s_prev.unbind(0), Q2.unbind(0)
        z = ux[0]
        h = activation(z, phi_b, out=h_t[0])
        torch.mm(h, W_k2, out=k_t[0])
        if Z is not None:
            Z[0] = z
        for t in range(1, T):
            s, a = attend(HK[:t], q2_t[t], h, v_e, exact, work[:t * B * n].view(t, B, n),
                          out=s_t[t])  # s_{t-1}
            alpha[t, :t] = a
            z = torch.addmm(ux[t], s, V.t())  # z_t = U x_t + b + V s_{t-1}
            h = activation(z, phi_b, out=h_t[t])
            torch.mm(h, W_k2, out=k_t[t])
            if Z is not None:
                Z[t] = z
            if t + 1 < T:
                torch.mm(s, W_q2, out=q2_t[t + 1])  # q_{t+1} = s_{t-1}
        ctx.save_for_backward(HK, s_prev, Q2, Z, alpha, V, W_q, W_k, v, phi_b)
        return HK[..., :n].contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):  # noqa: D102
        HK, s_prev, Q2, Z, alpha, V, W_q, W_k, v, phi_b = ctx.saved_tensors
        T, B, n2 = HK.shape
        n = n2 // 2
        opts = dict(dtype=HK.dtype, device=HK.device)
        H = HK[..., :n]
        dphi, sign = activation_derivative(H, Z, phi_b)
        # per state: [dL/dH_t + value path | key path / (4 v)], complete when t is reached
        GHK = torch.cat([gout, torch.zeros_like(gout)], dim=2)
        DZ = torch.empty(T, B, n, **opts)      # dL/dz_t
        GQ = torch.zeros(T, B, n, **opts)      # GQ[t] = dL/d(W_q q_{t+1}) / (4 v)
        gv = torch.zeros(n, **opts)
        P = torch.empty(max(T - 1, 1) * B * n, **opts)   # step t's (t, B, n) block
        v4 = 4 * v
        Wk4, Wq4 = v4[:, None] * W_k, v4[:, None] * W_q  # diag(4 v) W
        gh_t, gk_t = GHK[..., :n].unbind(0), GHK[..., n:].unbind(0)
        dz_t, dphi_t, q2_t, gq_t = DZ.unbind(0), dphi.unbind(0), Q2.unbind(0), GQ.unbind(0)
        gc = None                          # dL/dc_{t+1} = dL/ds_t / 2
        g_q = torch.zeros(B, n, **opts)    # dL/dq_{t+1}, q_{t+1} = s_{t-1}
        for t in range(T - 1, -1, -1):
            g_h = gh_t[t] if gc is None else gh_t[t].add_(gc)  # step 1
            gh = torch.addmm(g_h, gk_t[t], Wk4)
            torch.mul(gh, dphi_t[t], out=dz_t[t])              # step 2
            if t == 0:
                break
            gc = torch.addmm(g_q, dz_t[t], V).mul_(0.5)  # step 3: dL/ds_{t-1} / 2 = dL/dc_t
            G_key = attention_block_backward(HK[:t], q2_t[t], alpha[t, :t], gc,  # steps 4,
                                             P[:t * B * n].view(t, B, n), GHK[:t], gv,  # 5
                                             accumulate=True)
            g_q = torch.sum(G_key, 0, out=gq_t[t - 1]) @ Wq4  # q_t = s_{t-2}
        gV = DZ[1:].reshape(-1, n).t() @ s_prev[1:].reshape(-1, n)
        gW_q, gW_k = attention_weight_grads(GHK, H, GQ, s_prev, v4)
        gb = (DZ * sign).sum((0, 1)) if phi_b is not None else None  # sign^3 = sign
        return DZ, gV, gW_q, gW_k, gv, gb


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
