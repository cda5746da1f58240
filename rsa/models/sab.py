"""Sparse Attentive Backtracking (SAB; Ke et al. 2018), as its authors released it.

The release is the class ``self_LSTM_sparse_attn`` of ``layers_torch.py`` in the public
repository ``nke001/sparse_attentive_backtracking_release`` (PyTorch 0.1.12), with the
sparsifier ``Sparse_attention`` of the same file; the copy setting is its
``train_copying_torch.py`` run as its README says (``-T 100 --model sparseattn --trunc 5
--topk 5``, the other flags at their defaults). This module computes the same function
with the project's conventions (time-major input, parameter names of the equations,
``record=True``); the chapter *Sparse attentive backtracking* (``book/sab.ipynb``) builds
it step by step next to relevancy screening.

At step t = 1, ..., T (0-based step i = t - 1), with memory M = (m_0, m_1, ...), m_0 = 0:

    if t is a multiple of truncate_length:  h_{t-1}, c_{t-1} detached   (truncation)
    z       = U x_t + b_U + V h_{t-1} + b_V                 (gates i, f, g, o)
    c_t     = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)
    hhat_t  = sigmoid(o) tanh(c_t)                          (nn.LSTMCell)
    e_j     = w^T tanh([hhat_t; m_j])           for every slot j of M
    a       = sparsify(e)                        (below; top_k)
    s_t     = sum_j a_j m_j                      (the attention summary)
    h_t     = hhat_t + s_t                       (carried to step t + 1)
    if t is a multiple of attn_every_k:  M <- M + (h_t,)
    output  = [h_t; s_t]                         (what the read-out reads)

    sparsify(e) = e                                          if |M| <= top_k
                = (e - delta)_+ / (sum_j (e_j - delta)_+ + eps)  otherwise,
    delta = (top_k-th largest e_j) + eps,   eps = 10e-8 (= 1e-7).

Gradients: the recurrent path is cut every ``truncate_length`` steps, but the slots of M
keep their autograd graph, so the loss reaches a remembered h_j through every later step
that attends to it, then from h_j back through at most ``truncate_length`` recurrent
steps: the "backtracking".

Quirks of the release kept here (each changes the function or its gradient):

1. **Raw scores while the memory is small.** While the memory holds at most ``top_k``
   slots the sparsifier returns the scores themselves: no clamping, no normalisation;
   the weights may be negative and do not sum to 1 (the issue's "all slots kept" is
   this). With w ~ N(0, 0.01^2) they are of order 0.01 at initialisation.
2. **The top_k-th slot gets weight 0.** delta is the top_k-th largest score *plus* eps,
   so that slot and every slot tied with it is clamped to zero: at most top_k - 1 slots
   have non-zero weight, and fewer with ties (all top_k tied: every weight 0, the
   summary 0). The weights sum to S / (S + eps), slightly below 1.
3. **eps = 10e-8**, i.e. 1e-7 (in delta and in the normaliser), as written.
4. **Gradient through the threshold.** delta is ``topk(e).values[:, -1]``, not detached:
   the top_k-th score receives gradient (-1 per kept slot, times the normalised
   weights' derivative).
5. **A separable score.** e_j = w^T tanh([hhat_t; m_j]) = w_h^T tanh(hhat_t) +
   w_m^T tanh(m_j) (w = [w_h; w_m], no hidden layer and no weight matrix before the
   tanh): the first term is the same for every slot and cancels in (e_j - delta), so
   once the memory holds more than top_k slots *which* slots are kept and their
   weights do not depend on the current state at all; it enters only through quirk 1.
   The release computes the score as written, the tanh of the (B, m, 2n)
   concatenation at every step (O(m n) per step, and the autograd graph keeps that
   tensor); ``score_form="released"``, the default, does the same.
   ``score_form="separable"`` computes the same function in the separable form:
   w_m^T tanh(m_j) once per slot, when it joins the memory, and w_h^T tanh(hhat_t) once
   per step, O(m + n) per step for the score. The two agree to rounding (outputs and
   gradients within 1e-10 in float64, ``tests/test_sab.py``); the separable form trains
   2.4 times faster at T = 100 here (``tools/bench_sab.py``). ``python -m rsa train
   --model sab --score-form separable`` trains with it (the campaign's SAB copy at
   T = 100 does); the cost stage measures the released form, as the authors ran it.
6. **The zero state stays in memory.** m_0 = 0 (the initial state) is never removed; it
   competes in the top-k and, when kept, absorbs weight while adding nothing to s_t.
7. **The summary is added to the state**, not mixed: h_t = hhat_t + s_t is carried by
   the recurrence and is what is remembered; the score reads hhat_t (before the sum);
   the read-out reads [h_t; s_t], so s_t enters it twice.
8. **Truncation offsets.** At 0-based step i the incoming state is detached when
   (i + 1) % truncate_length == 0: the first segment has truncate_length - 1 steps
   (1-based steps 1..k-1), the others truncate_length. Both h and the LSTM cell c are
   detached; the memory's slots are not.
9. **Remember after attending.** h_t joins the memory after its own attention step, at
   1-based steps that are multiples of attn_every_k; step t never attends to h_t.
10. **nn.LSTMCell as the cell**: two bias vectors (b_U, b_V: its bias_ih and bias_hh,
    redundant but kept, with their initial distribution) and every weight and bias
    ~ U(-1/sqrt(n), 1/sqrt(n)), PyTorch's default; w ~ N(0, 0.01^2). The release's
    ``num_layers`` (default 2 in the copy script) is unused: one LSTM layer.

Left out of the release (no effect on the function): the attention visualisation
(``attn_w_viz``, ``print_attention_step``), ``.cuda()`` calls, the read-out layer ``fc``
(here :class:`rsa.models.heads.TaskModel`'s read-out on the output [h_t; s_t]). The release's
copy data feed the symbol as one float (input size 1) and read out 10 classes; the
book's copy task feeds it one-hot (10 inputs) and reads out 9 classes (the blank and the
8 symbols), as for every model of the book.

**The threshold of another example, as the release ran.** The release computes
``delta = torch.topk(attn_s, top_k, dim=1)[0][:, -1] + eps``, a (B,) vector, then
``attn_s - delta.repeat(1, time_step)``: under PyTorch 0.1.12, which it was written for
(no broadcasting), ``repeat`` makes a (1, B m) tensor and the subtraction pairs the
elements in storage order, so the score of example b at slot j is compared with the
threshold of example (b m + j) mod B, not its own (the same for the normaliser). With
B = 1 the two agree. :func:`sparsify` uses each example's own threshold, the evident
intent; the chapter says so.

Defaults, the release's copy setting: ``top_k = 5`` and ``truncate_length = 5`` (the
README's command), ``attn_every_k = 2`` (the copy script's default), n = 128 units (its
``--rnn-dim``); it trains with Adam, lr 1e-3, gradient norm clipped at 1, batch 64. The
class ``self_LSTM_sparse_attn`` itself defaults to truncate_length = 100,
attn_every_k = 1, top_k = 5.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rsa.models import Trace
from rsa.models.kernels.fused import check_sequence

__all__ = ["SAB", "sparsify", "EPS"]

EPS = 10e-8  # the release's eps: 1e-7


def sparsify(e: torch.Tensor, top_k: int) -> torch.Tensor:
    """The release's ``Sparse_attention`` on scores e (B, m): e itself while m <= top_k;
    otherwise (e - delta)_+ normalised, delta = top_k-th largest + EPS (quirks 1-4 of
    the module docstring)."""
    if e.shape[1] <= top_k:
        return e
    delta = torch.topk(e, top_k, dim=1).values[:, -1:] + EPS
    w = torch.clamp(e - delta, min=0)
    return w / (w.sum(dim=1, keepdim=True) + EPS)


def _check_int(name, value, low):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


class SAB(nn.Module):
    """Sparse Attentive Backtracking, an LSTM with sparse attention over remembered
    states and truncated backpropagation (the module docstring: equations and quirks).

    ``hidden_size`` is n, the LSTM's units (the release's ``hidden_size``). The output
    of :meth:`forward` is [h_t; s_t], of width 2n, and ``self.hidden_size`` is that
    width, 2n: the features :class:`rsa.models.heads.TaskModel`'s read-out reads (the
    release's ``fc`` is ``Linear(2 n, classes)``); ``self.n`` is n.

    Parameters: ``U`` (4n x input_size, bias ``U.bias`` = b_U), ``V`` (4n x n, bias
    ``V.bias`` = b_V), gates in the order i, f, g, o; ``w`` (2n,), the score vector.

    ``score_form``: ``"released"`` (default) or ``"separable"``, two computations of
    the same scores (quirk 5 of the module docstring).
    """

    SCORE_FORMS = ("released", "separable")

    def __init__(self, input_size: int, hidden_size: int, *, top_k: int = 5,
                 attn_every_k: int = 2, truncate_length: int = 5,
                 block_attn_grad_past: bool = False, score_form: str = "released"):
        super().__init__()
        _check_int("input_size", input_size, 1)
        _check_int("hidden_size", hidden_size, 1)
        _check_int("top_k", top_k, 1)
        _check_int("attn_every_k", attn_every_k, 1)
        _check_int("truncate_length", truncate_length, 1)
        if score_form not in self.SCORE_FORMS:
            raise ValueError(f"score_form must be one of {self.SCORE_FORMS}, got "
                             f"{score_form!r}")
        self.score_form = score_form
        n = hidden_size
        self.input_size, self.n, self.hidden_size = input_size, n, 2 * n
        self.top_k, self.attn_every_k = top_k, attn_every_k
        self.truncate_length = truncate_length
        self.block_attn_grad_past = bool(block_attn_grad_past)
        self.U = nn.Linear(input_size, 4 * n)
        self.V = nn.Linear(n, 4 * n)
        bound = 1 / math.sqrt(n)  # nn.LSTMCell's reset_parameters
        for p in (self.U.weight, self.U.bias, self.V.weight, self.V.bias):
            nn.init.uniform_(p, -bound, bound)
        self.w = nn.Parameter(torch.randn(2 * n) * 0.01)

    def slots(self, T: int) -> int:
        """The most memory slots over T steps: m_0 and one per attn_every_k steps."""
        return 1 + (T - 1) // self.attn_every_k

    def forward(self, x: torch.Tensor, record: bool = False, freeze_attention: bool = False):
        """Run over x (T, B, input_size). Returns the outputs [h_t; s_t] (T, B, 2n), and
        with ``record`` a :class:`rsa.models.Trace` with K = :meth:`slots` columns:

        - ``states``: the carried states h_t = hhat_t + s_t (B, n), autograd nodes;
        - ``alpha``: the weights a_j used at step t (raw scores while |M| <= top_k);
        - ``index``: the 0-based time index of each slot's state; -1 for m_0 (the zero
          state, no state of the sequence) and for slots not yet filled (weight 0);
        - ``score``: the scores e_j before sparsifying (0 in unfilled slots);
        - ``relevant``: all False (SAB has no relevant set).

        ``freeze_attention`` detaches the weights in s_t (the attention weights held
        fixed, as for the other models)."""
        T, B = check_sequence(x, self.input_size)
        n = self.n
        separable = self.score_form == "separable"
        w_h, w_m = self.w[:n], self.w[n:]
        Ux = self.U(x).unbind(0)
        h = c = x.new_zeros(B, n)
        memory = h[:, None, :]  # (B, m, n), m_0 = 0
        if separable:  # the slots' terms w_m^T tanh(m_j), (B, m)
            slot_terms = (torch.tanh(memory) @ w_m)
        times = [-1]
        outputs, states, rec = [], [], []
        for i in range(T):
            if (i + 1) % self.truncate_length == 0:
                h, c = h.detach(), c.detach()
            gi, gf, gg, go = (Ux[i] + self.V(h)).chunk(4, dim=-1)
            c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
            hhat = torch.sigmoid(go) * torch.tanh(c)
            m = memory.shape[1]
            if separable:
                query = hhat.detach() if self.block_attn_grad_past else hhat
                e = (torch.tanh(query) @ w_h)[:, None] + slot_terms  # (B, m)
            else:
                pair = torch.cat((hhat[:, None, :].expand(B, m, n), memory), dim=2)
                if self.block_attn_grad_past:
                    pair = pair.detach()
                e = torch.tanh(pair) @ self.w  # (B, m)
            a = sparsify(e, self.top_k)
            a_used = a.detach() if freeze_attention else a
            s = torch.bmm(a_used[:, None, :], memory)[:, 0]
            h = hhat + s
            if (i + 1) % self.attn_every_k == 0:
                memory = torch.cat((memory, h[:, None, :]), dim=1)
                if separable:
                    kept = h.detach() if self.block_attn_grad_past else h
                    slot_terms = torch.cat((slot_terms, (torch.tanh(kept) @ w_m)[:, None]),
                                           dim=1)
                times.append(i)
            outputs.append(torch.cat((h, s), dim=-1))
            states.append(h)
            if record:
                rec.append((a.detach(), e.detach(), m))
        out = torch.stack(outputs)
        if not record:
            return out
        K = self.slots(T)
        alpha, score = x.new_zeros(T, B, K), x.new_zeros(T, B, K)
        index = torch.full((T, B, K), -1, dtype=torch.long, device=x.device)
        slot_times = torch.tensor(times, dtype=torch.long, device=x.device)
        for i, (a, e, m) in enumerate(rec):
            alpha[i, :, :m], score[i, :, :m] = a, e
            index[i, :, :m] = slot_times[:m]
        relevant = torch.zeros(T, B, K, dtype=torch.bool, device=x.device)
        return out, Trace(states, alpha, index, score, relevant)
