"""RelRNN over a whole sequence in one autograd node, with a hand-written backward; and
the screened attention it shares with the fused RelLSTM (:mod:`rsa.models.kernels.rellstm`).

The update is that of :class:`rsa.models.RelRNN` (*The paper* §2, chapter *Relevancy
screening*), 0-based in time as in :mod:`rsa.models.kernels.fused`: h_0 = phi(U x_0 + b), and for
t >= 1, with M_t the screened memory S ∪ R before step t,

    e_tj    = v . tanh(W_q q_t + W_k h_j)   for h_j in M_t,   q_t = s_{t-2} (q_1 = 0)
    alpha_t = softmax_j(e_t),   c_t = sum_j alpha_tj h_j
    s_{t-1} = (h_{t-1} + c_t) / 2,   h_t = phi(U x_t + V s_{t-1} + b)

Why a fused function: the plain-autograd loop of :mod:`rsa.models` runs some forty small
operations per step and saves, per step, the memory (B, nu + rho, 2n) and its tanh block
(B, nu + rho, n); at B = 10 most of an operation's cost is its fixed overhead, and the
update took 0.9 ms per step on the 2-core CPU. Here

- the *screening* (which states sit in S and R, their scores, the replacements) is
  bookkeeping on row indices and detached scores. It never carries gradient
  (*The paper* §2), so the forward records, per step t, only which states it attended
  (``IDX``, m_t B row indices, m_t = |M_t|) and the weights alpha_t (m_t, B);
- the states and their doubled keys live in one table HK (T, B, 2n), row
  ``[h_t | 2 W_k h_t]``. A step reads its memory with one ``index_select`` of m B rows,
  and the backward hands the memory's gradient back with one ``index_add_``; nothing of
  size (m, B, n) outlives its step (the attention block is recomputed in the backward):
  memory O(T B (n + nu + rho)).

Slot layout: S is a ring of nu slots (h_t enters slot t mod nu, where the state leaving
S sat), R the rho slots after it, filled in order and then replaced in place: the valid
slots at every step are a prefix [0, m) shared by the batch (R only fills once S is
full). Attention is a sum over the set M_t, so slot order changes only the rounding; R's
slot order, which decides ties, is that of :class:`rsa.models.memory.ScreenedMemory`: the
leaving state replaces the *first* slot of lowest score, and only if its score is
*strictly* greater.

Backward, for one step t (G = dL/d·), walking t from T - 1 down to 0:

1. G_{h_t} = dL/dH_t + G_{s_t}/2 + G^val_t + G^key_t (4 v ⊙ W_k): the accumulator
   GHK[t] = [G^val_t | G^key_t] holds, for every later step t' whose memory held h_t,
   alpha_{t't} G_{c_{t'}} (value path) and ge_{t't} sigma (1 - sigma) (key path, over
   4 v); all later steps are done when t is reached.
2. G_{z_t} = G_{h_t} ⊙ phi'(z_t) (the cell's backward: the only part that differs in
   the fused RelLSTM).
3. G_{s_{t-1}} = G_{z_t} V + G_{q_{t+1}}; G_{c_t} = G_{s_{t-1}} / 2 (and G_{s_{t-1}}/2
   is also h_{t-1}'s share, step 1 at t - 1).
4. ge_t = alpha_t ⊙ (g_t - <alpha_t, g_t>) with g_tj = G_{c_t} . h_j (softmax
   backward, :func:`rsa.models.kernels.fused.softmax_backward`).
5. With sigma = sigmoid(2 (W_q q_t + W_k h_j)) recomputed (tanh(x) = 2 sigma(2x) - 1):
   G_{W_q q_t} = 4 v ⊙ sum_j ge_tj sigma (1 - sigma); dL/dv collects
   sum_j ge_tj tanh(...) = sum_j ge_tj (2 sigma - 1) = 2 sum_j ge_tj sigma, since
   sum_j ge_tj = 0 (alpha_t sums to 1); and GHK[j] += [alpha_tj G_{c_t} |
   ge_tj sigma (1 - sigma)] for each attended h_j (one ``index_add_``)
   (:func:`rsa.models.kernels.fused.attention_block_backward`).

The weight gradients (V, W_q, W_k, v, modReLU's b) are single matmuls or sums at the
end. ``U x + b`` is computed outside, by autograd, as in :mod:`rsa.models.kernels.fused`.

Shared with the fused RelLSTM: the attention forward of a step and the screening after
it (:class:`Attention`: steps t >= 1 above, up to s_{t-1}), the attention backward of
a step (:class:`AttentionGrad`: steps 4 and 5) and the attention's weight gradients
(:func:`rsa.models.kernels.fused.attention_weight_grads`). Both models store their states in
memory the same way (the RelLSTM stores its outputs h_t, not its cells), so only the
cell, step 2, and the shape of V differ.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rsa.models.kernels.fused import (
    activation,
    activation_derivative,
    attend,
    attention_block_backward,
    attention_weight_grads,
    exact_tanh,
    fused_inputs,
)

__all__ = ["RelRNNFunction", "relrnn_fused", "fused_forward"]


def _memory_size(t: int, nu: int, rho: int) -> int:
    """|M_t| = |S| + |R| when step t (0-based) attends: S holds min(t, nu) of the states
    h_0 .. h_{t-1}, and each of the max(0, t - nu) states that left S joined R until R
    was full."""
    return min(t, nu) + min(rho, max(0, t - nu))


def _screen_step(slot, score, trow, t, nu, rho, nR, R_slots):
    """Push h_t into the memory's index table after step t's attention (in place).

    ``slot`` (nu + rho, B): the HK row held by each slot ([S ring | R]); ``score``
    (nu + rho, B): relevance scores; ``trow[t]`` (B,): the rows of h_t. S is full (the
    caller checks). The oldest state, h_{t - nu}, leaves ring slot t mod nu: it enters
    R while R has room (slot nu + nR), else replaces R's first slot of lowest score
    where its own score is strictly greater. Returns the new |R|.
    """
    p = t % nu
    if rho > 0:
        leaving = score[p]
        if nR < rho:
            slot[nu + nR] = slot[p]
            score[nu + nR] = leaving
            nR += 1
        else:
            R_slot, R_score = slot[nu:], score[nu:]
            j = R_score.argmin(dim=0, keepdim=True)  # documented: the first minimum on ties
            low = R_score.gather(0, j)
            replace = (R_slots == j) & (leaving > low)  # strictly greater
            torch.where(replace, slot[p], R_slot, out=R_slot)
            torch.where(replace, leaving, R_score, out=R_score)
    slot[p] = trow[t]
    score[p] = 0
    return nR


class Attention:
    """The forward half of the screened attention, shared by the fused RelRNN and
    RelLSTM: for each step t >= 1, :meth:`attend` (the memory M_t read from the table
    HK, the scores, alpha_t, c_t and s_{t-1}), then, once h_t is in HK, :meth:`screen`
    (scores credited to S, h_t pushed, the screening on time indices).

    ``HK`` (T, B, 2n): the table of ``[h_t | 2 W_k h_t]`` rows the model fills; row
    h_0 must be written before step 1 attends (h_0 already sits in S's slot 0). What
    the backward needs is :attr:`sizes` (B m_t per step), :attr:`IDX` (the rows each
    step read, slot-major) and :meth:`alpha` (every step's alpha, one tensor).
    """

    def __init__(self, HK: torch.Tensor, v: torch.Tensor, nu: int, rho: int, exact: bool):
        T, B, n2 = HK.shape
        n, K = n2 // 2, nu + rho
        opts = dict(dtype=HK.dtype, device=HK.device)
        self.n, self.B, self.nu, self.rho, self.exact = n, B, nu, rho, exact
        self.rows = HK.view(T * B, n2)          # h_t of example b is row t B + b
        self.trow = torch.arange(T * B, device=HK.device).view(T, B)
        self.v_e = v if exact else 2 * v        # e = 2 v . sigma(P), constant dropped
        self.sizes = [B * _memory_size(t, nu, rho) for t in range(1, T)]  # B m_t, t >= 1
        self.IDX = torch.empty(sum(self.sizes), dtype=torch.long, device=HK.device)
        self.idxs = [None, *self.IDX.split(self.sizes)]  # step t's (m_t B,) rows
        self.alphas = [None] * T                # step t's alpha (m_t, B)
        self.slot = torch.zeros(K, B, dtype=torch.long, device=HK.device)  # row per slot
        self.score = torch.zeros(K, B, **opts)
        self.R_slots = torch.arange(rho, device=HK.device)[:, None]
        # per-size views made once (slicing in the loop costs more than the arithmetic)
        work = torch.empty(K * B * n, **opts)
        self.P_m = [work[:m * B * n].view(m, B, n) for m in range(K + 1)]
        self.M_m = [None] + [torch.empty(m * B, n2, **opts) for m in range(1, K + 1)]
        self.slot[0] = self.trow[0]
        self.nS, self.nR = 1, 0

    def attend(self, t: int, q2: torch.Tensor, h: torch.Tensor,
               out: torch.Tensor) -> torch.Tensor:
        """s_{t-1} = (h_{t-1} + c_t) / 2 into ``out`` (B, n), from the doubled query
        ``q2`` = 2 W_q q_t (B, n) and ``h`` = h_{t-1}; alpha_t is kept."""
        n, B = self.n, self.B
        m = self.nS + self.nR
        idx = self.idxs[t]
        idx.view(m, B).copy_(self.slot[:m])
        M = torch.index_select(self.rows, 0, idx, out=self.M_m[m]).view(m, B, 2 * n)
        s, self.alphas[t] = attend(M, q2, h, self.v_e, self.exact, self.P_m[m], out=out)
        return s

    def screen(self, t: int) -> None:
        """After h_t is in HK: credit alpha_t to S's states (R's scores are frozen) and
        push h_t into the memory."""
        nS = self.nS
        self.score[:nS].add_(self.alphas[t][:nS])
        if nS == self.nu:
            self.nR = _screen_step(self.slot, self.score, self.trow, t, self.nu, self.rho,
                                   self.nR, self.R_slots)
        else:
            self.slot[nS] = self.trow[t]
            self.nS = nS + 1

    def alpha(self) -> torch.Tensor:
        """Every step's alpha in one flat tensor (so that autograd's saved-tensor
        accounting sees it), split again by :class:`AttentionGrad`."""
        if len(self.alphas) < 2:
            return self.rows.new_empty(0)
        return torch.cat([a.reshape(-1) for a in self.alphas[1:]])


class AttentionGrad:
    """The backward half of the screened attention, shared by the fused RelRNN and
    RelLSTM (steps 4 and 5 of the module docstring): :meth:`step` takes G_{c_t} and adds
    the memory's gradient into ``GHK`` (T, B, 2n) and G_{W_q q_t} / (4 v) into its
    output; :attr:`gv` accumulates dL/dv."""

    def __init__(self, HK: torch.Tensor, GHK: torch.Tensor, IDX: torch.Tensor,
                 ALPHA: torch.Tensor, sizes: list[int]):
        T, B, n2 = HK.shape
        n = n2 // 2
        opts = dict(dtype=HK.dtype, device=HK.device)
        self.n, self.B = n, B
        self.rows, self.grows = HK.view(T * B, n2), GHK.view(T * B, n2)
        self.idxs = [None, *IDX.split(sizes)]
        self.alphas = [None, *(a.view(-1, B) for a in ALPHA.split(sizes))]
        self.gv = torch.zeros(n, **opts)        # sum ge tanh = 2 sum ge sigma (sum ge = 0)
        m_max = max((a.shape[0] for a in self.alphas[1:]), default=1)
        work = torch.empty(m_max * B * n, **opts)
        Gm = torch.empty(m_max * B * n2, **opts)  # a step's memory gradient
        self.blocks = [None] + [(work[:m * B * n].view(m, B, n),
                                 Gm[:m * B * n2].view(m, B, n2),
                                 torch.empty(m * B, n2, **opts)) for m in range(1, m_max + 1)]

    def step(self, t: int, gc: torch.Tensor, q2: torch.Tensor, gq: torch.Tensor) -> None:
        """Step t's attention backward from ``gc`` = G_{c_t} (B, n) and the doubled query
        ``q2`` (B, n); G_{W_q q_t} / (4 v) is written into ``gq`` (B, n)."""
        n, B = self.n, self.B
        idx, a = self.idxs[t], self.alphas[t]
        m = a.shape[0]
        P, G, M = self.blocks[m]
        M = torch.index_select(self.rows, 0, idx, out=M).view(m, B, 2 * n)
        G_key = attention_block_backward(M, q2, a, gc, P, G, self.gv)  # steps 4, 5
        self.grows.index_add_(0, idx, G.view(m * B, 2 * n))  # GHK[j] += G_j
        torch.sum(G_key, 0, out=gq)


class RelRNNFunction(torch.autograd.Function):
    """H = RelRNN(ux) for ux = U x + b (T, B, n); returns H (T, B, n), H[t] = h_t.

    Inputs: ``ux`` (T, B, n), ``V``, ``W_q``, ``W_k`` (n, n) weight matrices
    (``nn.Linear`` layout), ``v`` (n,), ``phi_b`` (n,) modReLU bias or None for tanh,
    ``nu`` >= 1, ``rho`` >= 0. Scores are evaluated as in
    :class:`rsa.models.kernels.fused.MemRNNFunction` (exact tanh in float64, the sigmoid form
    below).

    Layout, chosen to keep the number of operations per step small (at B = 10 each
    costs more in overhead than in arithmetic):

    - ``ZQ`` (T, B, 2n), row ``[z_t | 2 W_q s_{t-1}]``: one ``addmm`` per step gives
      the pre-activation z_t = U x_t + b + V s_{t-1} and the next step's doubled query
      (q_{t+1} = s_{t-1}).
    - A step's memory block is time-major, (m, B, 2n), so that the rows of one slot for
      the whole batch (the same time step, in S) are read and written contiguously.
    - In the backward, ``DQ`` (T, B, 2n) holds ``[dL/dz_t | dL/d(W_q q_{t+1})/(4 v)]``,
      so that dL/ds_{t-1} = dL/dz_t V + dL/dq_{t+1} is one ``mm`` too.
    """

    @staticmethod
    def forward(ctx, ux, V, W_q, W_k, v, phi_b, nu, rho):  # noqa: D102
        T, B, n = ux.shape
        opts = dict(dtype=ux.dtype, device=ux.device)
        HK = torch.empty(T, B, 2 * n, **opts)   # [h_t | 2 W_k h_t]
        ZQ = torch.cat([ux, torch.zeros_like(ux)], dim=2)  # [z_t | 2 W_q s_{t-1}]
        s_prev = torch.zeros(T, B, n, **opts)   # s_prev[t] = s_{t-1}, the input to V at step t
        VQ = torch.cat([V, 2 * W_q]).t()        # (n, 2n): s -> [V s | 2 W_q s]
        W_k2 = (2 * W_k).t()
        att = Attention(HK, v, nu, rho, exact_tanh(ux.dtype))
        # per-step views made once (slicing in the loop costs more than the arithmetic)
        zq, z_t, q2_t = ZQ.unbind(0), ZQ[..., :n].unbind(0), ZQ[..., n:].unbind(0)
        h_t, k_t, s_t = HK[..., :n].unbind(0), HK[..., n:].unbind(0), s_prev.unbind(0)
        h = activation(z_t[0], phi_b, out=h_t[0])
        torch.mm(h, W_k2, out=k_t[0])
        for t in range(1, T):
            s = att.attend(t, q2_t[t - 1], h, out=s_t[t])  # s_{t-1}
            zq[t].addmm_(s, VQ)
            h = activation(z_t[t], phi_b, out=h_t[t])
            torch.mm(h, W_k2, out=k_t[t])
            att.screen(t)
        ctx.sizes = att.sizes
        ctx.save_for_backward(HK, ZQ, s_prev, att.IDX, att.alpha(), V, W_q, W_k, v, phi_b)
        return HK[..., :n].contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):  # noqa: D102
        HK, ZQ, s_prev, IDX, ALPHA, V, W_q, W_k, v, phi_b = ctx.saved_tensors
        T, B, n2 = HK.shape
        n = n2 // 2
        H = HK[..., :n]
        dphi, sign = activation_derivative(H, ZQ[..., :n], phi_b)
        # per state: [dL/dH_t + value path | key path / (4 v)], complete when t is reached
        GHK = torch.cat([gout, torch.zeros_like(gout)], dim=2)
        DQ = torch.zeros(T, B, n2, dtype=HK.dtype, device=HK.device)
        # DQ[t] = [dL/dz_t | dL/d(W_q q_{t+1}) / (4 v)]
        att = AttentionGrad(HK, GHK, IDX, ALPHA, ctx.sizes)
        v4 = 4 * v
        Wk4 = v4[:, None] * W_k
        VQ4 = torch.cat([V, v4[:, None] * W_q]).mul_(0.5)  # [dz | gq] -> dL/ds / 2
        gh_t, gk_t = GHK[..., :n].unbind(0), GHK[..., n:].unbind(0)
        dq, dz_t, gq_t = DQ.unbind(0), DQ[..., :n].unbind(0), DQ[..., n:].unbind(0)
        q2_t, dphi_t = ZQ[..., n:].unbind(0), dphi.unbind(0)
        gc = None                              # dL/dc_{t+1} = dL/ds_t / 2
        for t in range(T - 1, -1, -1):
            g_h = gh_t[t] if gc is None else gh_t[t].add_(gc)  # step 1
            gh = torch.addmm(g_h, gk_t[t], Wk4)
            torch.mul(gh, dphi_t[t], out=dz_t[t])              # step 2
            if t == 0:
                break
            gc = torch.mm(dq[t], VQ4)  # step 3: dL/ds_{t-1} / 2 = dL/dc_t
            att.step(t, gc, q2_t[t - 1], gq_t[t - 1])  # steps 4, 5; q_t = s_{t-2}
        DZ = DQ[..., :n]
        gV = DZ[1:].reshape(-1, n).t() @ s_prev[1:].reshape(-1, n)
        gW_q, gW_k = attention_weight_grads(GHK, H, DQ[..., n:], s_prev, v4)
        gb = (DZ * sign).sum((0, 1)) if phi_b is not None else None
        return DZ, gV, gW_q, gW_k, att.gv, gb, None, None


def check_screening(nu, rho) -> None:
    for name, val, lo in (("nu", nu, 1), ("rho", rho, 0)):
        if not isinstance(val, int) or isinstance(val, bool) or val < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")


def relrnn_fused(ux: torch.Tensor, V: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor,
                 v: torch.Tensor, phi_b: torch.Tensor | None = None, *, nu: int = 10,
                 rho: int = 15) -> torch.Tensor:
    """RelRNN states H (T, B, n) from the input drive ``ux = U x + b`` (T, B, n) through
    :class:`RelRNNFunction` (memory O(T B (n + nu + rho)), one autograd node)."""
    if ux.dim() != 3 or ux.shape[0] < 1:
        raise ValueError(f"ux must have shape (T >= 1, B, n), got {tuple(ux.shape)}")
    check_screening(nu, rho)
    return RelRNNFunction.apply(ux, V, W_q, W_k, v, phi_b, nu, rho)


def fused_forward(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` for an :class:`rsa.models.RelRNN` through the fused function."""
    return relrnn_fused(*fused_inputs(model, x), nu=model.nu, rho=model.rho)
