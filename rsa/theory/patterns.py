"""Attention patterns A (rows = the attending step): window, uniform, sparse, chains, and a
trained model's pattern (chapter *Bounds on gradient propagation*).
"""

from __future__ import annotations

import numpy as np
import torch

from rsa.theory.arguments import as_rng, check_int


# -- attention patterns ----------------------------------------------------------------
def window_pattern(L: int, nu: int) -> np.ndarray:
    """Attention uniform over the last ``nu`` states: A[k, j] = 1/min(k, nu) for
    k - nu <= j < k. ``nu >= L - 1`` is full uniform attention."""
    L, nu = check_int("L", L, 1), check_int("nu", nu, 1)
    k, j = np.arange(L)[:, None], np.arange(L)[None, :]
    mask = (j < k) & (j >= k - nu)
    return mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)


def uniform_pattern(L: int) -> np.ndarray:
    """Full uniform attention (*The paper* §3.3): step k puts 1/k on each j < k."""
    return window_pattern(L, max(L - 1, 1))


def random_sparse_pattern(L: int, kappa: int, rng=None) -> np.ndarray:
    """Each step k attends to min(kappa, k) distinct past states drawn uniformly, with
    weights uniform on the simplex (Dirichlet(1)). At least one weight of every row is
    >= 1/kappa (pigeonhole), so following the largest weight back from any step gives a
    chain of the kind bounded by :func:`bound_sparse_chain`. ``rng``: a numpy Generator
    or a seed."""
    L, kappa, rng = check_int("L", L, 1), check_int("kappa", kappa, 1), as_rng(rng)
    A = np.zeros((L, L))
    for k in range(1, L):
        j = rng.choice(k, size=min(kappa, k), replace=False)
        A[k, j] = rng.dirichlet(np.ones(len(j)))
    return A


def chain_pattern(L: int, d: int, kappa: int, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """A planted dependency chain 0 = r_0 < r_1 < ... < r_d = L-1 (*The paper* §3.4).

    Step r_l puts weight exactly 1/kappa on r_{l-1} and spreads the rest uniformly over
    the (at most kappa - 1) most recent other states; every other step attends uniformly
    to its last kappa states. The intermediate r_l are evenly spaced, or drawn at random
    when ``rng`` (a numpy Generator or a seed) is given. Returns (A, r).
    """
    L, d, kappa = check_int("L", L, 2), check_int("d", d, 1), check_int("kappa", kappa, 1)
    if d > L - 1:
        raise ValueError(f"d must be an int in [1, L - 1] = [1, {L - 1}], got {d}")
    if rng is None:
        r = np.arange(d + 1) * (L - 1) // d
    else:
        middle = np.sort(as_rng(rng).choice(np.arange(1, L - 1), size=d - 1, replace=False))
        r = np.concatenate([[0], middle, [L - 1]]).astype(int)
    A = window_pattern(L, kappa)
    for prev, k in zip(r[:-1], r[1:], strict=True):
        others = [j for j in range(k - 1, -1, -1) if j != prev][: kappa - 1]
        A[k] = 0.0
        A[k, prev] = 1.0 / kappa if others else 1.0
        if others:
            A[k, others] = (1.0 - 1.0 / kappa) / len(others)
    return A, r


def pattern_from_trace(trace, b: int = 0) -> np.ndarray:
    """The (T, T) attention pattern a recorded forward pass used for example ``b``.

    ``trace`` is the :class:`rsa.models.Trace` of ``model(x, record=True)`` (any object
    with ``alpha`` and ``index`` of shape (T, B, K)): row t gets ``alpha[t, b]`` at the
    positions ``index[t, b]``; empty slots (index -1) are ignored.
    """
    alpha = np.asarray(torch.as_tensor(trace.alpha).detach().cpu(), dtype=float)
    index = np.asarray(torch.as_tensor(trace.index).detach().cpu(), dtype=np.int64)
    if alpha.ndim != 3 or alpha.shape != index.shape:
        raise ValueError(
            f"trace.alpha and trace.index must both be (T, B, K), got "
            f"{alpha.shape} and {index.shape}"
        )
    T, B, _ = alpha.shape
    b = check_int("b", b, 0, B - 1)
    alpha, index = alpha[:, b], index[:, b]
    rows, slots = np.nonzero(index >= 0)
    cols = index[rows, slots]
    if np.any(cols >= rows):
        bad = np.argmax(cols >= rows)
        raise ValueError(
            f"step {rows[bad]} attends to position {cols[bad]}: memory must "
            f"hold only earlier positions 0..{rows[bad] - 1}"
        )
    A = np.zeros((T, T))
    np.add.at(A, (rows, cols), alpha[rows, slots])
    return A
