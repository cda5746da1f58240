"""The specification: a slow, obviously-correct reference for every model, written
straight from the equations of *The paper* §2 (chapter *Relevancy screening*, where it
is shown first): one example at a time, Python lists for the memories S and R, keys
recomputed from the states every time they are used, 0-based time (``hs[t]`` is h_{t+1}
of the book's notation).

It shares the *parameters* of a fast model (so that the two can be compared exactly, in
float64) but none of its code: the batched loop of :mod:`rsa.models`, the screened
memory of :mod:`rsa.models.memory` and the fused functions (:mod:`rsa.models.kernels.fused`,
:mod:`rsa.models.kernels.screened`, :mod:`rsa.models.kernels.rellstm`) are all tested against it
(``tests/test_models.py``, ``tests/test_fused*.py``).

Each model class has a *branch*: a function ``(model, x, freeze_attention)`` for one
example x (T, input_size) returning ``(hs, alphas, R_sets, scores)`` as
:func:`reference_forward` documents. A new model adds its own with :func:`branch`
(``tests/test_registry.py`` does so for a toy model).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rsa.models import LSTM, RNN, MemRNN, RelLSTM, RelRNN

__all__ = ["branch", "reference_forward", "reference_batch", "reference_sab"]

_BRANCHES: dict[type, Callable] = {}


def branch(*classes: type) -> Callable:
    """Decorator: ``fn`` is the reference of the model classes ``classes`` (exactly: a
    subclass, which may change the equations, needs a branch of its own)."""
    def register(fn: Callable) -> Callable:
        for cls in classes:
            _BRANCHES[cls] = fn
        return fn
    return register


def reference_forward(model, x, freeze_attention=False):
    """Run ``model``'s equations on one example x (T, input_size).

    Returns (hs, alphas, R_sets, scores): hs the list of h_t; alphas[t] a dict
    {time index: weight} used to compute h_t (empty at t = 0); R_sets[t] the list of
    time indices in R (slot order) while computing h_t; scores[t] the dict of
    relevance scores after step t's attention. A model without attention returns empty
    dicts and lists for the last three.
    """
    if type(model) in _BRANCHES:  # the exact class: a subclass needs a branch of its own
        return _BRANCHES[type(model)](model, x, freeze_attention)
    raise TypeError(f"no reference for {type(model).__name__}; models with one: "
                    f"{', '.join(sorted(c.__name__ for c in _BRANCHES))} (add one with "
                    f"rsa.models.reference.branch)")


def _phi(model, z):
    if model.nonlinearity == "tanh":
        return torch.tanh(z)
    return torch.sign(z) * torch.relu(z.abs() + model.phi.b)  # modReLU


def _cell(model, lstm, x_t, s, cell):
    """h_t (and the LSTM cell) from x_t and s_{t-1} (None: s_0 = 0, the first step)."""
    z = model.U.weight @ x_t + model.U.bias
    if s is not None:
        z = z + model.V.weight @ s
    if not lstm:
        return _phi(model, z), None
    n = model.hidden_size
    i, f, g, o = z[:n], z[n:2 * n], z[2 * n:3 * n], z[3 * n:]
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    cell = i * g if cell is None else f * cell + i * g
    return o * torch.tanh(cell), cell


@branch(RNN, LSTM, MemRNN, RelRNN, RelLSTM)
def _paper_models(model, x, freeze_attention=False):
    """The five models of the paper: an RNN or LSTM cell reading s_{t-1}, which is
    h_{t-1} without attention, (h_{t-1} + c_t) / 2 with attention over every past state
    (MemRNN) or over the screened memory R ∪ S (RelRNN, RelLSTM)."""
    T = x.shape[0]
    n = model.hidden_size
    lstm = isinstance(model, (LSTM, RelLSTM))
    attention = isinstance(model, (MemRNN, RelRNN, RelLSTM))
    nu = model.nu if isinstance(model, (RelRNN, RelLSTM)) else None  # None: S unbounded
    rho = model.rho if isinstance(model, (RelRNN, RelLSTM)) else 0
    hs, alphas, R_sets, scores = [], [], [], []
    S, R, score = [], [], {}
    q = torch.zeros(n, dtype=x.dtype)
    s = cell = None
    for t in range(T):
        alpha_t = {}
        if t > 0:
            if not attention:
                s = hs[t - 1]
            else:
                M = R + S
                e = torch.stack([
                    model.v @ torch.tanh(model.W_q.weight @ q + model.W_k.weight @ hs[j])
                    for j in M])
                a = torch.softmax(e, dim=0)
                a_used = a.detach() if freeze_attention else a
                c = sum(a_used[m] * hs[j] for m, j in enumerate(M))
                s = (hs[t - 1] + c) / 2
                q = s
                a_val = a.detach()
                for m, j in enumerate(M):
                    alpha_t[j] = float(a_val[m])
                    if j in S:  # only states in the buffer earn relevance
                        score[j] = score[j] + float(a_val[m])
        h, cell = _cell(model, lstm, x[t], s, cell)
        alphas.append(alpha_t)
        R_sets.append(list(R))
        scores.append(dict(score))
        hs.append(h)
        if attention:
            score[t] = 0.0
            if nu is not None and len(S) == nu:
                old = S.pop(0)
                if len(R) < rho:
                    R.append(old)
                elif rho > 0:
                    jmin = min(range(len(R)), key=lambda m: score[R[m]])  # first minimum
                    if score[old] > score[R[jmin]]:  # strictly greater
                        R[jmin] = old
            S.append(t)
    return hs, alphas, R_sets, scores


def reference_batch(model, x, freeze_attention=False):
    """H (T, B, n) from a loop over batch elements."""
    outs = [reference_forward(model, x[:, b], freeze_attention)[0] for b in range(x.shape[1])]
    return torch.stack([torch.stack(hs) for hs in outs], dim=1)


def reference_sab(model, x, freeze_attention=False):
    """SAB (``rsa.SAB``) on one example x (T, input_size), straight from the equations of
    rsa/models/sab.py's docstring: Python lists for the memory, the top-k threshold found by
    sorting Python floats (the first of tied slots holds the threshold), eps = 1e-7
    written out.

    Returns (outs, hs, weights, scores, times): outs[t] = [h_t; s_t], hs[t] = h_t,
    weights[t] and scores[t] the lists a_j and e_j over the memory at step t, times the
    0-based time index of each slot (-1 for the zero state)."""
    eps = 1e-7
    n, k = model.n, model.top_k
    h = torch.zeros(n, dtype=x.dtype)
    c = torch.zeros(n, dtype=x.dtype)
    M, times = [torch.zeros(n, dtype=x.dtype)], [-1]
    outs, hs, weights, scores = [], [], [], []
    for t in range(1, x.shape[0] + 1):  # 1-based step
        if t % model.truncate_length == 0:  # the recurrent path is cut here
            h, c = h.detach(), c.detach()
        z = model.U.weight @ x[t - 1] + model.U.bias + model.V.weight @ h + model.V.bias
        i, f, g, o = z[:n], z[n:2 * n], z[2 * n:3 * n], z[3 * n:]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        hhat = torch.sigmoid(o) * torch.tanh(c)
        e = []
        for m in M:
            pair = torch.cat([hhat, m])
            if model.block_attn_grad_past:
                pair = pair.detach()
            e.append(model.w @ torch.tanh(pair))
        if len(M) <= k:
            a = list(e)  # the raw scores
        else:
            order = sorted(range(len(e)), key=lambda j: -float(e[j].detach()))
            delta = e[order[k - 1]] + eps
            kept = [(e_j - delta) if float((e_j - delta).detach()) > 0 else 0 * e_j for e_j in e]
            total = sum(kept) + eps
            a = [r / total for r in kept]
        a_used = [a_j.detach() for a_j in a] if freeze_attention else a
        s = sum(a_j * m for a_j, m in zip(a_used, M, strict=True))
        h = hhat + s
        if t % model.attn_every_k == 0:
            M.append(h)
            times.append(t - 1)
        outs.append(torch.cat([h, s]))
        hs.append(h)
        weights.append([float(a_j.detach()) for a_j in a])
        scores.append([float(e_j.detach()) for e_j in e])
    return outs, hs, weights, scores, list(times)
