"""A ladder of assumptions on one real network (our construction, not the paper's;
chapter *Bounds on gradient propagation*): the mean squared gradient
g(i, t) = ||dh_t/dh_i||_F^2 / n of a network of the RNN family, predicted with fewer and
fewer assumptions, down to autograd, so that the gap between two rungs is what one
assumption costs.

Rungs, each computed on the network's own attention pattern (edge weights W from a
recorded forward pass, :func:`rsa.theory.step_jacobians`):

1. ``independent``: J_k = lam_k Q_k, Q_k independent Haar rotations
   (:func:`mean_square_gradient`), lam_k = ||J_k||_F / sqrt(n);
2. ``fixed``: J_k = lam_k V, one Haar V for all steps, averaged over V
   (:func:`fixed_orthogonal_mean_square_gradient` at the network's n);
3. ``own_V``: J_k = c_k V with the network's own V, c_k = ||J_k||_F / ||V||_F (a scalar
   gain per step instead of diag(phi'(z_k))), by the path expansion;
4. ``frozen``: J_k = diag(phi'(z_k)) V, attention frozen, by the path expansion
   (:func:`path_jacobians`), which must equal autograd with attention frozen
   (``frozen_autograd``);
5. ``full``: autograd with the attention weights differentiated.

Rungs 1 to 3 and 4 differ in the Jacobians only; 4 and 5 in the attention only.
"""

from __future__ import annotations

import numpy as np
import torch

from rsa.theory.arguments import check_int, check_square
from rsa.theory.networks import step_jacobians
from rsa.theory.paths import (
    fixed_orthogonal_mean_square_gradient,
    mean_square_gradient,
    path_jacobians,
)

RUNGS = ("independent", "fixed", "own_V", "frozen", "full")
RUNG_NAMES = {
    "independent": "1 independent rotations",
    "fixed": "2 one fixed rotation (Haar average)",
    "own_V": "3 the network's V, a scalar gain per step",
    "frozen": "4 per-step diag(phi'), attention frozen",
    "full": "5 attention differentiated (autograd)",
}


def jacobians_into(model, x: torch.Tensor, targets, b: int = 0,
                   freeze_attention: bool = False) -> dict:
    """{t: D} with D[i] = dh_t/dh_i (n x n) of example ``b`` for every i = 0..T-1 (zero
    for i > t, the identity at i = t), for each t of ``targets``, by autograd on a
    :mod:`rsa.models` model of the RNN family.

    One forward pass, and one backward pass per target: example b is repeated n times
    along the batch, and copy m back-propagates the unit vector e_m from h_t, which gives
    row m of every dh_t/dh_i at once (the copies do not interact). ``freeze_attention``
    as in :func:`rsa.theory.state_jacobians`. Each D is (T, n, n) in float64."""
    T = x.shape[0]
    targets = sorted({check_int("t", int(t), 0, T - 1) for t in targets})
    b = check_int("b", b, 0, x.shape[1] - 1)
    n = model.hidden_size
    xb = x[:, b : b + 1].expand(T, n, x.shape[2]).contiguous()
    _, trace = model(xb, record=True, freeze_attention=freeze_attention)
    h = trace.states
    eye = torch.eye(n, dtype=h[0].dtype, device=h[0].device)
    out = {}
    for t in targets:
        grads = torch.autograd.grad(h[t], h[: t + 1], grad_outputs=eye, allow_unused=True,
                                    retain_graph=True)
        D = np.zeros((T, n, n))
        for i, g in enumerate(grads):
            if g is not None:
                D[i] = g.detach().cpu().double().numpy()
        D[t] = np.eye(n)  # h_t as a node: its own derivative
        out[t] = D
    return out


def _mean_square(D):
    return np.linalg.norm(D, axis=(-2, -1)) ** 2 / D.shape[-1]


def _check_pairs(pairs, T):
    pairs = [(check_int("i", int(i), 0, T - 1), check_int("t", int(t), 0, T - 1))
             for i, t in pairs]
    if not pairs:
        raise ValueError("pairs must hold at least one (i, t)")
    for i, t in pairs:
        if i > t:
            raise ValueError(f"each pair (i, t) needs i <= t (a source before its target), "
                             f"got ({i}, {t})")
    return pairs


def assumption_ladder(model, x: torch.Tensor, pairs, b: int = 0) -> dict:
    """g(i, t) = ||dh_t/dh_i||_F^2 / n of example ``b`` for each pair (i, t), 0-based,
    under every rung of the ladder (see the module's docstring). ``pairs``: an iterable
    of (i, t) with i <= t.

    Returns a dict with one (P,) array per rung name of :data:`RUNGS`, plus
    ``frozen_autograd`` (the check of rung 4), ``lam`` (lam_k, (T,)), ``gain`` (c_k, (T,))
    and ``pairs`` (P, 2). Cost: per attention mode, one forward of a batch of n and one
    backward per distinct t, and the O(T^3) fixed-matrix formula per distinct i."""
    T = x.shape[0]
    pairs = _check_pairs(pairs, T)
    J, W = step_jacobians(model, x, b)
    n = J.shape[-1]
    V = model.V.weight.detach().double().numpy()
    norms = np.linalg.norm(J, axis=(1, 2))
    lam, gain = norms / np.sqrt(n), norms / np.linalg.norm(V)
    out = {name: np.zeros(len(pairs)) for name in RUNGS + ("frozen_autograd",)}
    by_source, by_target = {}, {}
    for i in sorted({i for i, _ in pairs}):
        by_source[i] = {
            "independent": mean_square_gradient(W, lam, i),
            "fixed": fixed_orthogonal_mean_square_gradient(W, lam, n, i),
            "own_V": _mean_square(path_jacobians(W, gain[:, None, None] * V, i)),
            "frozen": _mean_square(path_jacobians(W, J, i)),
        }
    targets = {t for _, t in pairs}
    for name, freeze in (("frozen_autograd", True), ("full", False)):
        for t, D in jacobians_into(model, x, targets, b, freeze).items():
            by_target.setdefault(t, {})[name] = _mean_square(D)
    for p, (i, t) in enumerate(pairs):
        for name in ("independent", "fixed", "own_V", "frozen"):
            out[name][p] = by_source[i][name][t]
        for name in ("frozen_autograd", "full"):
            out[name][p] = by_target[t][name][i]
    out.update(lam=lam, gain=gain, pairs=np.array(pairs))
    return out


def ladder_decades(ladder: dict) -> dict:
    """log10 of each rung over the next one down, per pair: what each assumption costs,
    in decades (positive: the assumption over-predicts). Keys ``"a -> b"`` for consecutive
    rungs a, b of :data:`RUNGS`, and ``"independent -> full"`` for the whole ladder."""
    logs = {name: np.log10(ladder[name]) for name in RUNGS}
    steps = {f"{a} -> {c}": logs[a] - logs[c] for a, c in zip(RUNGS[:-1], RUNGS[1:],
                                                               strict=True)}
    steps["independent -> full"] = logs["independent"] - logs["full"]
    return steps


def strongest_chain(W, i: int, t: int):
    """The path i = r_0 < r_1 < ... < r_d = t with the largest product of edge weights
    w_{r_{l-1} r_l} (recurrent and attention edges alike), and that product: the
    dependency chain of *The paper* §3.4 that a pattern offers most, with sparsity
    kappa = 1 / (2 min_l w) in the sense of w >= 1/(2 kappa) on every link. Its product
    equals ``max_path_product(W, 1.0, i)[t]``. Returns (r, product); r an int array."""
    W = check_square("W", W)
    L = W.shape[0]
    i, t = check_int("i", i, 0, L - 1), check_int("t", t, 0, L - 1)
    if t < i:
        raise ValueError(f"t must be >= i = {i}, got {t}")
    best = np.full(L, -np.inf)  # log of the best product into each step
    best[i], parent = 0.0, np.full(L, -1)
    with np.errstate(divide="ignore"):
        for k in range(i + 1, t + 1):
            scores = np.log(W[k, i:k]) + best[i:k]
            j = int(np.argmax(scores))
            best[k], parent[k] = scores[j], i + j
    if not np.isfinite(best[t]):
        raise ValueError(f"no path from {i} to {t}: every path has a zero edge")
    r = [t]
    while r[-1] != i:
        r.append(int(parent[r[-1]]))
    return np.array(r[::-1]), float(np.exp(best[t]))
