"""Gradient propagation through self-attentive recurrences: the path expansion.

Derived in the chapter *Bounds on gradient propagation* (``book/bounds.ipynb``); the
four steps are those of ``paper.md`` §3.

Indexing. Everything here is 0-based, like ``H``: position k holds the paper's
h_{k+1}. An *attention pattern* over a sequence of length L is an (L, L) array ``A``
with ``A[k, j] = alpha_j^{(k)}``, the weight step k puts on the state at position j
(j < k). Rows k >= 1 sum to one; row 0 is zero (no memory at the first step).

Equations implemented:

- (step 1, path expansion; attention frozen) dh_k/dh_i = sum_{i <= j < k} w_{jk} J_k
  dh_j/dh_i with w_{jk} = (1[j = k-1] + alpha_j^{(k)}) / 2 and J_k = diag(phi'(z_k)) V.
  Stored as ``W[k, j] = w_{jk}`` (row = the step that receives the edge, like ``A``).
- (step 2, random-orthogonal model J_k = lam Q_k) g(i, i) = 1,
  g(i, t) = lam^2 sum_{i <= j < t} w_{jt}^2 g(i, j),  g(i, t) = E||dh_t/dh_i u||^2.
- (step 3) uniform attention: g(i, t) >= lam^2 / (4 (t-1)^2) (t 1-based); with
  entrywise nonnegative J_k, ||dh_t/dh_i|| >= the largest path product.
- (step 4) a chain of d edges of attention weight >= 1/kappa: g >= (lam / (2 kappa))^(2d).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from scipy.linalg import solve_triangular

__all__ = [
    "uniform_pattern", "window_pattern", "random_sparse_pattern", "chain_pattern",
    "pattern_from_trace", "edge_weights", "chain_edges",
    "path_sum", "mean_square_gradient", "mean_square_gradient_matrix",
    "path_jacobians", "monte_carlo_gradient", "max_path_product",
    "bound_no_attention", "bound_uniform", "bound_sparse_chain",
    "state_jacobians", "jacobian_norms", "loss_gradient_norms",
]


# -- argument checks -------------------------------------------------------------------
def _int(name, value, lo, hi=None):
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        accepted = f"an int in [{lo}, {hi}]" if hi is not None else f"an int >= {lo}"
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return int(value)


def _nonnegative(name, value, lo=0.0):
    """A number or array of numbers, all finite and >= lo, as a float array."""
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr < lo):
        raise ValueError(f"{name} must be finite and >= {lo}, got {value!r}")
    return arr


def _per_step(name, value, L):
    """A rate (lam or mu) given once or per step: an (L,) array."""
    arr = _nonnegative(name, value)
    if arr.ndim == 0:
        return np.full(L, float(arr))
    if arr.shape != (L,):
        raise ValueError(f"{name} must be a number or an array of shape ({L},), "
                         f"got shape {arr.shape}")
    return arr


def _square(name, M):
    M = np.asarray(M, dtype=float)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] < 1:
        raise ValueError(f"{name} must be a square (L, L) array with L >= 1, "
                         f"got shape {M.shape}")
    if not np.all(np.isfinite(M)) or np.any(M < 0):
        raise ValueError(f"{name} must have finite entries >= 0, got min {float(M.min())!r}")
    if np.any(np.triu(M)):
        k, j = np.argwhere(np.triu(M))[0]
        raise ValueError(f"{name} must be strictly lower triangular (step k only sees "
                         f"j < k), got {name}[{k}, {j}] = {float(M[k, j])!r}")
    return M


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# -- attention patterns ----------------------------------------------------------------
def window_pattern(L: int, nu: int) -> np.ndarray:
    """Attention uniform over the last ``nu`` states: A[k, j] = 1/min(k, nu) for
    k - nu <= j < k. ``nu >= L - 1`` is full uniform attention."""
    L, nu = _int("L", L, 1), _int("nu", nu, 1)
    k, j = np.arange(L)[:, None], np.arange(L)[None, :]
    mask = (j < k) & (j >= k - nu)
    return mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)


def uniform_pattern(L: int) -> np.ndarray:
    """Full uniform attention (paper.md §3 step 3): step k puts 1/k on each j < k."""
    return window_pattern(L, max(L - 1, 1))


def random_sparse_pattern(L: int, kappa: int, rng=None) -> np.ndarray:
    """Each step k attends to min(kappa, k) distinct past states drawn uniformly, with
    weights uniform on the simplex (Dirichlet(1)). At least one weight of every row is
    >= 1/kappa (pigeonhole), so following the largest weight back from any step gives a
    chain of the kind bounded by :func:`bound_sparse_chain`. ``rng``: a numpy Generator
    or a seed."""
    L, kappa, rng = _int("L", L, 1), _int("kappa", kappa, 1), _rng(rng)
    A = np.zeros((L, L))
    for k in range(1, L):
        j = rng.choice(k, size=min(kappa, k), replace=False)
        A[k, j] = rng.dirichlet(np.ones(len(j)))
    return A


def chain_pattern(L: int, d: int, kappa: int, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """A planted dependency chain 0 = r_0 < r_1 < ... < r_d = L-1 (paper.md §3 step 4).

    Step r_l puts weight exactly 1/kappa on r_{l-1} and spreads the rest uniformly over
    the (at most kappa - 1) most recent other states; every other step attends uniformly
    to its last kappa states. The intermediate r_l are evenly spaced, or drawn at random
    when ``rng`` (a numpy Generator or a seed) is given. Returns (A, r).
    """
    L, d, kappa = _int("L", L, 2), _int("d", d, 1), _int("kappa", kappa, 1)
    if d > L - 1:
        raise ValueError(f"d must be an int in [1, L - 1] = [1, {L - 1}], got {d}")
    if rng is None:
        r = np.arange(d + 1) * (L - 1) // d
    else:
        middle = np.sort(_rng(rng).choice(np.arange(1, L - 1), size=d - 1, replace=False))
        r = np.concatenate([[0], middle, [L - 1]]).astype(int)
    A = window_pattern(L, kappa)
    for prev, k in zip(r[:-1], r[1:], strict=True):
        others = [j for j in range(k - 1, -1, -1) if j != prev][:kappa - 1]
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
        raise ValueError(f"trace.alpha and trace.index must both be (T, B, K), got "
                         f"{alpha.shape} and {index.shape}")
    T, B, _ = alpha.shape
    b = _int("b", b, 0, B - 1)
    alpha, index = alpha[:, b], index[:, b]
    rows, slots = np.nonzero(index >= 0)
    cols = index[rows, slots]
    if np.any(cols >= rows):
        bad = np.argmax(cols >= rows)
        raise ValueError(f"step {rows[bad]} attends to position {cols[bad]}: memory must "
                         f"hold only earlier positions 0..{rows[bad] - 1}")
    A = np.zeros((T, T))
    np.add.at(A, (rows, cols), alpha[rows, slots])
    return A


# -- step 1: path expansion ------------------------------------------------------------
def edge_weights(A) -> np.ndarray:
    """Edge weights of the path expansion with attention frozen (paper.md §3 step 1):
    W[k, j] = w_{jk} = (1[j = k-1] + A[k, j]) / 2 for j < k. Rows k >= 1 sum to one.

    ``A`` must be an attention pattern: strictly lower triangular, nonnegative, row 0
    zero and rows k >= 1 summing to one (within 1e-4). A network without attention is
    :func:`chain_edges`, not ``edge_weights`` of a zero pattern.
    """
    A = _square("A", A)
    sums = A.sum(axis=1)
    if A.shape[0] > 1 and not np.allclose(sums[1:], 1.0, atol=1e-4):
        k = 1 + np.argmax(np.abs(sums[1:] - 1.0))
        raise ValueError(f"rows k >= 1 of an attention pattern must sum to 1, row {k} sums "
                         f"to {float(sums[k])!r} (no attention at all: use chain_edges(L))")
    W = A / 2
    k = np.arange(1, A.shape[0])
    W[k, k - 1] += 0.5
    return W


def chain_edges(L: int) -> np.ndarray:
    """The plain RNN (no attention): the only edges are h_{k-1} -> h_k, W[k, k-1] = 1."""
    L = _int("L", L, 1)
    k = np.arange(1, L)
    W = np.zeros((L, L))
    W[k, k - 1] = 1.0
    return W


def _path_dp(W, c, i, power):
    """f(i) = 1, f(t) = c_t sum_{i <= j < t} W[t, j]^power f(j): the sum over increasing
    paths i -> t of the product of c_k W[k, j]^power along the path."""
    f = np.zeros(W.shape[0])
    f[i] = 1.0
    for t in range(i + 1, W.shape[0]):
        f[t] = c[t] * (W[t, i:t] ** power) @ f[i:t]
    return f


def path_sum(W, lam, i: int = 0) -> np.ndarray:
    """Sum over paths i -> t of the products of lam_k w_{jk}: f(i, i) = 1,
    f(i, t) = lam_t sum_{i <= j < t} w_{jt} f(i, j) (paper.md §3 step 1).

    It is dh_t/dh_i exactly when every J_k is the scalar lam_k (n = 1, linear). Returns
    f(i, t) for t = 0..L-1 (zero for t < i). ``lam``: a number or an (L,) array.
    """
    W = _square("W", W)
    L = W.shape[0]
    return _path_dp(W, _per_step("lam", lam, L), _int("i", i, 0, L - 1), 1)


def mean_square_gradient(W, lam, i: int = 0) -> np.ndarray:
    """g(i, t) = E||dh_t/dh_i u||^2 in the random-orthogonal model J_k = lam_k Q_k
    (paper.md §3 step 2): g(i, i) = 1, g(i, t) = lam_t^2 sum_{i <= j < t} w_{jt}^2 g(i, j).

    Cross terms between paths vanish because E Q_k = 0, so g is the sum over paths of the
    *squared* path products. O(L^2), one numpy dot per step. Returns g(i, t) for
    t = 0..L-1 (zero for t < i), for any unit vector u.
    """
    W = _square("W", W)
    L = W.shape[0]
    return _path_dp(W, _per_step("lam", lam, L) ** 2, _int("i", i, 0, L - 1), 2)


def mean_square_gradient_matrix(W, lam) -> np.ndarray:
    """All sources at once: G[i, t] = g(i, t) of :func:`mean_square_gradient`.

    The recursion of step 2 says (I - C) g(i, .) = e_i with C[t, j] = lam_t^2 w_{jt}^2,
    so G^T = (I - C)^{-1}: one triangular solve, O(L^3) (seconds for L ~ 2000).
    """
    W = _square("W", W)
    L = W.shape[0]
    M = -(_per_step("lam", lam, L) ** 2)[:, None] * W ** 2
    M[np.diag_indices(L)] = 1.0
    return solve_triangular(M, np.eye(L), lower=True, unit_diagonal=True).T


def _propagate(W, i, v_i, apply_J):
    """v_i given, v_k = J_k sum_{i <= j < k} w_{jk} v_j: step 1 applied to v_i."""
    v = np.zeros((W.shape[0],) + v_i.shape)
    v[i] = v_i
    for k in range(i + 1, W.shape[0]):
        v[k] = apply_J(k, np.tensordot(W[k, i:k], v[i:k], axes=1))
    return v


def path_jacobians(W, J, i: int = 0) -> np.ndarray:
    """dh_t/dh_i for t = 0..L-1 from per-step Jacobians by the path expansion
    (paper.md §3 step 1): D_i = I, D_k = J_k sum_{i <= j < k} w_{jk} D_j.

    ``J``: (L, ..., n, n), J[k] the Jacobian of step k (any batch dimensions in between).
    Returns D of the same shape (zero for t < i).
    """
    W = _square("W", W)
    L = W.shape[0]
    J = np.asarray(J, dtype=float)
    if J.ndim < 3 or J.shape[0] != L or J.shape[-1] != J.shape[-2]:
        raise ValueError(f"J must have shape ({L}, ..., n, n), got {J.shape}")
    eye = np.broadcast_to(np.eye(J.shape[-1]), J.shape[1:])
    return _propagate(W, _int("i", i, 0, L - 1), eye, lambda k, s: J[k] @ s)


def _haar(rng, samples, n):
    """``samples`` independent Haar-random orthogonal n x n matrices (QR of a Gaussian
    matrix with the signs of diag(R) moved into Q, Mezzadri 2007)."""
    Q, R = np.linalg.qr(rng.standard_normal((samples, n, n)))
    return Q * np.sign(np.diagonal(R, axis1=-2, axis2=-1))[:, None, :]


def monte_carlo_gradient(W, lam, n: int, samples: int, rng=None,
                         i: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo estimate of g(i, t): draw J_k = lam_k Q_k with Q_k Haar-random
    orthogonal n x n, propagate v_t = dh_t/dh_i u (u = e_1) through the path expansion
    (paper.md §3 step 1) for ``samples`` independent draws at once, and return the mean
    and the standard error of ||v_t||^2, each of shape (L,)."""
    W = _square("W", W)
    L = W.shape[0]
    lam = _per_step("lam", lam, L)
    n, samples = _int("n", n, 1), _int("samples", samples, 2)
    i, rng = _int("i", i, 0, L - 1), _rng(rng)
    u = np.zeros((samples, n))
    u[:, 0] = 1.0

    def apply_J(k, s):  # s: (samples, n)
        return lam[k] * np.einsum("sab,sb->sa", _haar(rng, samples, n), s)

    sq = (_propagate(W, i, u, apply_J) ** 2).sum(axis=-1)  # (L, samples)
    return sq.mean(axis=1), sq.std(axis=1, ddof=1) / np.sqrt(samples)


def max_path_product(W, mu, i: int = 0) -> np.ndarray:
    """m(i, t) = max over paths i -> t of the product of mu_k w_{jk} along the path:
    m(i, i) = 1, m(i, t) = mu_t max_{i <= j < t} w_{jt} m(i, j) (paper.md §3 step 3).

    No-cancellation bound: if every J_k is entrywise nonnegative and ||J_k u|| >= mu_k ||u||
    for nonnegative u (e.g. mu_k = the smallest column norm of J_k), then
    ||dh_t/dh_i u|| >= m(i, t) for every nonnegative unit u, so also ||dh_t/dh_i||_2 >= m:
    all path terms are nonnegative vectors and the norm of their sum is at least the norm
    of the largest. ``mu``: a number or an (L,) array. Returns (L,), zero for t < i.
    """
    W = _square("W", W)
    L = W.shape[0]
    mu, i = _per_step("mu", mu, L), _int("i", i, 0, L - 1)
    m = np.zeros(L)
    m[i] = 1.0
    for t in range(i + 1, L):
        m[t] = mu[t] * np.max(W[t, i:t] * m[i:t])
    return m


# -- closed-form bounds ----------------------------------------------------------------
def bound_no_attention(lam, span):
    """lam^span: without attention (W = :func:`chain_edges`) and ||J_k||_2 <= lam,
    ||dh_t/dh_i||_2 <= lam^(t - i) with span = t - i (paper.md §3 step 1). In the
    random-orthogonal model it is the exact RMS gradient: g(i, t) = lam^(2 (t - i))."""
    lam = _nonnegative("lam", lam)
    span = np.asarray(span)
    if not np.issubdtype(span.dtype, np.integer) or np.any(span < 0):
        raise ValueError(f"span = t - i must be an int >= 0 (or array of them), got {span!r}")
    return lam ** span


def bound_uniform(lam, t):
    """lam^2 / (4 (t-1)^2), a lower bound on g(i, t) for every i < t under uniform
    attention (paper.md §3 step 3); RMS gradient >= lam / (2 (t-1)) = Omega(1/t).

    ``t`` is the paper's 1-based step, t >= 2: position k = t - 1 of ``H``, whose row of
    :func:`uniform_pattern` spreads 1/k over k states. So ``g[k] >= bound_uniform(lam,
    k + 1)`` for k >= 1. Proof: the direct edge i -> t alone has w = 1/(2(t-1)) (or
    (1 + 1/(t-1))/2 when i = t-1), and g sums nonnegative path terms.
    """
    lam, t = _nonnegative("lam", lam), np.asarray(t)
    if not np.issubdtype(t.dtype, np.integer) or np.any(t < 2):
        raise ValueError(f"t (the 1-based step) must be an int >= 2 (or array of them), "
                         f"got {t!r}")
    return lam ** 2 / (4.0 * (t - 1.0) ** 2)


def bound_sparse_chain(lam, kappa, d):
    """(lam / (2 kappa))^(2 d), a lower bound on g(r_0, r_d) when a chain
    r_0 < r_1 < ... < r_d has attention weight alpha_{r_{l-1}}^{(r_l)} >= 1/kappa on every
    link (paper.md §3 step 4): each link has w >= 1/(2 kappa), and g sums nonnegative
    path terms. RMS gradient >= (lam / (2 kappa))^d, whatever the span r_d - r_0."""
    lam, kappa = _nonnegative("lam", lam), _nonnegative("kappa", kappa, lo=1.0)
    d = np.asarray(d)
    if not np.issubdtype(d.dtype, np.integer) or np.any(d < 0):
        raise ValueError(f"d must be an int >= 0 (or array of them), got {d!r}")
    return (lam / (2.0 * kappa)) ** (2 * d)


# -- autograd on real models ------------------------------------------------------------
def state_jacobians(model, x: torch.Tensor, i: int, freeze_attention: bool = False):
    """D[t, b] = dh_t/dh_i (n x n) of example b, by autograd on a :mod:`rsa.models`
    model, for t = 0..T-1 (zero for t < i, the identity at t = i). Returns (T, B, n, n).

    h_i is perturbed as a node of the graph (for an LSTM the cell state is held fixed).
    ``freeze_attention=True`` drops the terms from differentiating alpha: the Jacobian of
    the path expansion (paper.md §3 step 1). Exact columns by the double-backward trick:
    one backward gives G(v) = sum_t (dh_t/dh_i)^T v_t, linear in the v_t; differentiating
    <G, e_m> with respect to each v_t gives column m of every dh_t/dh_i at once
    (1 + n backward passes, not T n).
    """
    _, trace = model(x, record=True, freeze_attention=freeze_attention)
    h = trace.states
    T = len(h)
    i = _int("i", i, 0, T - 1)
    B, n = h[i].shape
    v = [torch.zeros_like(h[t], requires_grad=True) for t in range(i, T)]
    y = sum((h[t] * v[t - i]).sum() for t in range(i, T))
    (G,) = torch.autograd.grad(y, h[i], create_graph=True)
    D = np.zeros((T, B, n, n))
    for m in range(n):
        e_m = torch.zeros_like(G)
        e_m[:, m] = 1.0
        cols = torch.autograd.grad(G, v, grad_outputs=e_m, retain_graph=True,
                                   allow_unused=True)
        for t, col in enumerate(cols, start=i):
            if col is not None:
                D[t, :, :, m] = col.detach().cpu().double().numpy()
    return D


def jacobian_norms(model, x: torch.Tensor, i: int, freeze_attention: bool = False):
    """Frobenius norm ||dh_t/dh_i||_F for t = 0..T-1 and each example: (T, B).

    Frobenius because ||D||_F^2 / n is the mean of ||D u||^2 over unit vectors u
    uniform on the sphere: the quantity g(i, t) of :func:`mean_square_gradient` predicts.
    See :func:`state_jacobians` for ``freeze_attention``.
    """
    D = state_jacobians(model, x, i, freeze_attention=freeze_attention)
    return np.linalg.norm(D, axis=(-2, -1))


def loss_gradient_norms(model, x: torch.Tensor, loss_fn, freeze_attention: bool = False):
    """||dL/dh_t|| for t = 0..T-1: (T,), the norm over the whole (B, n) state.

    ``loss_fn`` maps H (T, B, n) to a scalar tensor (it holds any output layer). dL/dh_t
    is the total derivative, through every later step, from ``trace.states``.
    """
    H, trace = model(x, record=True, freeze_attention=freeze_attention)
    grads = torch.autograd.grad(loss_fn(H), trace.states, allow_unused=True)
    return np.array([0.0 if g is None else float(g.norm()) for g in grads])
