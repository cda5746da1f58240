"""A slow, obviously-correct reference for every model, written straight from the
equations of paper.md §2: one example at a time, Python lists for the memory, keys
recomputed from the states every time they are used.

It shares the *parameters* of a fast model (so the two can be compared exactly) but
none of its code.
"""

from __future__ import annotations

import torch


def _phi(model, z):
    if model.gates == 4:
        raise AssertionError("LSTM has no phi")
    if model.nonlinearity == "tanh":
        return torch.tanh(z)
    return torch.sign(z) * torch.relu(z.abs() + model.phi.b)


def _cell(model, x_t, s, cell):
    z = model.U.weight @ x_t + model.U.bias
    if s is not None:
        z = z + model.V.weight @ s
    if model.gates == 1:
        return _phi(model, z), None
    n = model.hidden_size
    i, f, g, o = z[:n], z[n:2 * n], z[2 * n:3 * n], z[3 * n:]
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    cell = i * g if cell is None else f * cell + i * g
    return o * torch.tanh(cell), cell


def reference_forward(model, x, freeze_attention=False):
    """Run ``model``'s equations on one example x (T, input_size).

    Returns (hs, alphas, R_sets, scores): hs the list of h_t; alphas[t] a dict
    {time index: weight} used to compute h_t (empty at t = 0); R_sets[t] the list of
    time indices in R (slot order) while computing h_t; scores[t] the dict of
    relevance scores after step t's attention.
    """
    T = x.shape[0]
    n = model.hidden_size
    attention = model.attention
    nu = model.nu if attention == "screened" else None
    rho = model.rho if attention == "screened" else 0
    hs, alphas, R_sets, scores = [], [], [], []
    S, R, score = [], [], {}
    q = torch.zeros(n, dtype=x.dtype)
    s = cell = None
    for t in range(T):
        alpha_t = {}
        if t > 0:
            if attention is None:
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
        h, cell = _cell(model, x[t], s, cell)
        alphas.append(alpha_t)
        R_sets.append(list(R))
        scores.append(dict(score))
        hs.append(h)
        if attention is not None:
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
    rsa/sab.py's docstring: Python lists for the memory, the top-k threshold found by
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
