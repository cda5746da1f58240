"""Beyond frozen attention: the exact Jacobian of a self-attentive RNN, split into the
frozen part of the path expansion and the rank-one terms from differentiating the
attention weights, with a bound on the latter (our derivation, not the paper's; chapter
*Bounds on gradient propagation*, section ``bounds-nonfrozen``).

The models (:mod:`rsa.models`, 0-based positions: step k computes h_k) update, for k >= 1,

    a_{kj}  = W_q q_k + W_k h_j,   e_{kj} = v^T tanh(a_{kj}),   alpha_k = softmax(e_k)
    c_k     = sum_j alpha_{kj} h_j                 (j over the memory of step k)
    sigma_k = (h_{k-1} + c_k) / 2,                 h_k = phi(U x_k + b + V sigma_k)

with the query q_k = sigma_{k-1} (q_1 = 0). Differentiating the softmax,
sum_l h_l d alpha_{kl} / d e_{kj} = alpha_{kj} (h_j - c_k), so

    d c_k / d h_j (q_k held) = alpha_{kj} I + alpha_{kj} (h_j - c_k) g_{kj}^T,
    d c_k / d q_k            = sum_j alpha_{kj} (h_j - c_k) r_{kj}^T,

with g_{kj} = W_k^T (v * tanh'(a_{kj})) and r_{kj} = W_q^T (v * tanh'(a_{kj})). The first
term is the frozen edge (weight w_{jk} = (1[j = k-1] + alpha_{kj}) / 2 of
:func:`rsa.theory.edge_weights` in sigma_k); the second, a rank-one matrix per attended
state, and the query term are what freezing drops. Since tanh' <= 1 and
||a b^T||_2 = ||a|| ||b||,

    ||alpha_{kj} (h_j - c_k) g_{kj}^T||_2 <= alpha_{kj} ||h_j - c_k|| ||v|| ||W_k||_2,
    ||d c_k / d q_k||_2 <= spread_k ||v|| ||W_q||_2,

spread_k = max_j ||h_j - c_k|| over the attended states: relative to the frozen
attention edge alpha_{kj} I, the dropped key term is at most
rho_k = spread_k ||v|| ||W_k||_2.
"""

from __future__ import annotations

import numpy as np
import torch

from rsa.theory.arguments import check_int
from rsa.theory.networks import step_jacobians


def attention_terms(model, x: torch.Tensor, b: int = 0) -> dict:
    """The pieces of the exact one-step Jacobians of example ``b`` of a MemRNN or RelRNN
    (module docstring; chapter section ``bounds-nonfrozen``), in float64, from a recorded
    forward pass. K is the number of memory slots of the trace (empty slots: index -1,
    alpha 0, zero vectors).

    Returns a dict with ``H`` (T, n) the states, ``J`` (T, n, n) = diag(phi'(z_k)) V and
    ``W`` (T, T) the frozen edge weights (:func:`rsa.theory.step_jacobians`), ``index``
    (T, K), ``alpha`` (T, K), ``c`` (T, n) the context c_k (0 at k = 0), ``key_grad``
    (T, K, n) the g_{kj}, ``query_grad`` (T, K, n) the r_{kj}, and the scalars ``v_norm``
    = ||v||, ``Wk_norm`` = ||W_k||_2, ``Wq_norm`` = ||W_q||_2. The weights are recomputed
    from the states and checked against the trace."""
    if getattr(model, "attention", None) is None or getattr(model, "gates", 1) != 1:
        raise ValueError("attention_terms needs a MemRNN or RelRNN (attention, one "
                         "Jacobian per step)")
    J, W = step_jacobians(model, x, b)
    with torch.no_grad():
        H, trace = model(x, record=True)
    H = H[:, b].detach().cpu().double().numpy()
    index = trace.index[:, b].cpu().numpy()
    alpha_trace = trace.alpha[:, b].detach().cpu().double().numpy()
    Wq = model.W_q.weight.detach().cpu().double().numpy()
    Wk = model.W_k.weight.detach().cpu().double().numpy()
    v = model.v.detach().cpu().double().numpy()
    T, n = H.shape
    K = index.shape[1]
    sigma = W @ H  # row k: sigma_k = s_{k-1} in the paper's indexing; row 0 is 0
    alpha = np.zeros((T, K))
    c = np.zeros((T, n))
    key_grad, query_grad = np.zeros((T, K, n)), np.zeros((T, K, n))
    for k in range(1, T):
        slots = np.nonzero(index[k] >= 0)[0]
        if len(slots) == 0:
            continue
        q = sigma[k - 1] if k >= 2 else np.zeros(n)
        hj = H[index[k, slots]]  # (m, n)
        a = q @ Wq.T + hj @ Wk.T  # (m, n)
        e = np.tanh(a) @ v
        p = np.exp(e - e.max())
        alpha[k, slots] = p / p.sum()
        c[k] = alpha[k, slots] @ hj
        u = v * (1 - np.tanh(a) ** 2)  # v * tanh'(a_{kj}), (m, n)
        key_grad[k, slots], query_grad[k, slots] = u @ Wk, u @ Wq
    if not np.allclose(alpha, alpha_trace, rtol=1e-6, atol=1e-9):
        raise ValueError("the recomputed attention weights differ from the trace's: is the "
                         "model in float64 (model.double(), x.double())?")
    return {"H": H, "J": J, "W": W, "index": index, "alpha": alpha, "c": c,
            "key_grad": key_grad, "query_grad": query_grad,
            "v_norm": float(np.linalg.norm(v)), "Wk_norm": float(np.linalg.norm(Wk, 2)),
            "Wq_norm": float(np.linalg.norm(Wq, 2))}


def _centred(terms: dict, k: int) -> np.ndarray:
    """alpha_{kj} (h_j - c_k) for each slot of step k: (K, n), zero on empty slots."""
    idx = terms["index"][k]
    hj = np.where((idx >= 0)[:, None], terms["H"][np.maximum(idx, 0)], 0.0)
    return terms["alpha"][k][:, None] * (hj - terms["c"][k])


def one_step_jacobian(terms: dict, k: int, j: int):
    """d h_k / d h_j with the query q_k held fixed, split as (frozen, rank_one), two
    (n, n) arrays: frozen = w_{jk} J_k (the path expansion's edge) and rank_one =
    J_k alpha_{kj} (h_j - c_k) g_{kj}^T / 2 (zero if h_j is not in the memory of step k).
    For j = k - 1 the query does not depend on h_j, and frozen + rank_one is the whole
    dh_k/dh_{k-1}. ``terms`` from :func:`attention_terms`; chapter section
    ``bounds-nonfrozen``."""
    T = terms["H"].shape[0]
    k, j = check_int("k", k, 1, T - 1), check_int("j", j, 0, T - 1)
    if j >= k:
        raise ValueError(f"j must be < k = {k}, got {j}")
    Jk = terms["J"][k]
    frozen = terms["W"][k, j] * Jk
    slots = np.nonzero(terms["index"][k] == j)[0]
    u = _centred(terms, k)[slots].sum(axis=0) / 2
    g = terms["key_grad"][k][slots].sum(axis=0)
    return frozen, np.outer(Jk @ u, g)


def query_jacobian(terms: dict, k: int) -> np.ndarray:
    """d h_k / d q_k = J_k sum_j alpha_{kj} (h_j - c_k) r_{kj}^T / 2, (n, n): the query
    term that freezing drops (a sum of rank-one matrices, one per attended state).
    Chapter section ``bounds-nonfrozen``."""
    T = terms["H"].shape[0]
    k = check_int("k", k, 1, T - 1)
    return terms["J"][k] @ (_centred(terms, k).T @ terms["query_grad"][k]) / 2


def full_path_jacobians(terms: dict, i: int, attention: bool = True) -> np.ndarray:
    """D[t] = dh_t/dh_i for t = 0..T-1 (zero for t < i, the identity at t = i), (T, n, n),
    composed from the one-step pieces: with X_t = dh_t/dh_i and Y_t = d sigma_t/dh_i,

        Y_t = sum_j [w_{jt} I + alpha_{tj} (h_j - c_t) g_{tj}^T / 2] X_j
              + [sum_j alpha_{tj} (h_j - c_t) r_{tj}^T / 2] Y_{t-1},   X_t = J_t Y_t,

    since the query of step t is sigma_{t-1}. ``attention=False`` drops the two
    attention terms: the frozen path expansion (:func:`rsa.theory.path_jacobians`).
    Equals autograd with attention differentiated (tests/test_theory_nonfrozen.py).
    Chapter section ``bounds-nonfrozen``."""
    H, J, W = terms["H"], terms["J"], terms["W"]
    T, n = H.shape
    i = check_int("i", i, 0, T - 1)
    X, Y = np.zeros((T, n, n)), np.zeros((T, n, n))
    X[i] = np.eye(n)
    for t in range(i + 1, T):
        Y[t] = np.tensordot(W[t, i:t], X[i:t], axes=1)
        if attention:
            U = _centred(terms, t) / 2  # (K, n)
            for s, j in enumerate(terms["index"][t]):
                if j >= i:
                    Y[t] += np.outer(U[s], terms["key_grad"][t, s] @ X[j])
            Y[t] += U.T @ (terms["query_grad"][t] @ Y[t - 1])
        X[t] = J[t] @ Y[t]
    return X


def nonfrozen_norms(terms: dict) -> dict:
    """Per step k and slot, the dropped key term of d c_k / d h_j, its bound, and the
    query term with its bound (chapter section ``bounds-nonfrozen``):

    - ``key`` (T, K): ||alpha_{kj} (h_j - c_k) g_{kj}^T||_2 = alpha ||h_j - c_k|| ||g||;
    - ``key_bound`` (T, K): alpha_{kj} ||h_j - c_k|| ||v|| ||W_k||_2;
    - ``query`` (T,): ||sum_j alpha_{kj} (h_j - c_k) r_{kj}^T||_2 (exact, SVD);
    - ``query_bound`` (T,): spread_k ||v|| ||W_q||_2;
    - ``spread`` (T,): max_j ||h_j - c_k|| over the attended states (0 where none);
    - ``rho`` (T,): spread_k ||v|| ||W_k||_2, the bound on key / alpha (the dropped term
      relative to the frozen attention edge alpha_{kj} I).

    All at the level of c_k; in h_k both the frozen and the dropped terms are multiplied
    by J_k / 2."""
    H, index = terms["H"], terms["index"]
    T, K = index.shape
    key, dist = np.zeros((T, K)), np.zeros((T, K))
    query = np.zeros(T)
    for k in range(1, T):
        live = index[k] >= 0
        if not live.any():
            continue
        dist[k, live] = np.linalg.norm(H[index[k, live]] - terms["c"][k], axis=1)
        key[k] = (terms["alpha"][k] * dist[k]
                  * np.linalg.norm(terms["key_grad"][k], axis=1))
        Q = _centred(terms, k).T @ terms["query_grad"][k]
        query[k] = np.linalg.norm(Q, 2)
    spread = dist.max(axis=1)
    return {"key": key, "key_bound": terms["alpha"] * dist * terms["v_norm"] * terms["Wk_norm"],
            "query": query, "query_bound": spread * terms["v_norm"] * terms["Wq_norm"],
            "spread": spread, "rho": spread * terms["v_norm"] * terms["Wk_norm"]}
