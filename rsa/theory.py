"""Gradient propagation through self-attentive recurrences: the path expansion.

Derived in the chapter *Bounds on gradient propagation* (``book/bounds.ipynb``); the
four steps are those of *The paper* §3. The equations carry the labels of the notation
page (``book/notation.md``), cited below as {eq}`label`.

Indexing. Everything here is 0-based, like ``H``: position k holds the paper's
h_{k+1}. An *attention pattern* over a sequence of length L is an (L, L) array ``A``
with ``A[k, j] = alpha_j^{(k)}``, the weight step k puts on the state at position j
(j < k). Rows k >= 1 sum to one; row 0 is zero (no memory at the first step).

Equations implemented:

- (step 1, path expansion, {eq}`eq-path-expansion`; attention frozen)
  dh_k/dh_i = sum_{i <= j < k} w_{jk} J_k dh_j/dh_i with
  w_{jk} = (1[j = k-1] + alpha_j^{(k)}) / 2 and J_k = diag(phi'(z_k)) V.
  Stored as ``W[k, j] = w_{jk}`` (row = the step that receives the edge, like ``A``).
- (step 2, random-orthogonal model J_k = lam Q_k, {eq}`eq-mean-square-gradient`)
  g(i, i) = 1, g(i, t) = lam^2 sum_{i <= j < t} w_{jt}^2 g(i, j),
  g(i, t) = E||dh_t/dh_i u||^2.
- (step 3, {eq}`eq-uniform-and-sparse-bounds`) uniform attention:
  g(i, t) >= lam^2 / (4 (t-1)^2) (t 1-based); with entrywise nonnegative J_k,
  ||dh_t/dh_i|| >= the largest path product.
- (step 4, {eq}`eq-uniform-and-sparse-bounds`) a chain of d edges of attention weight
  >= 1/kappa: g >= (lam / (2 kappa))^(2d).

Added in the chapters *Bounds* and *The kappa-d tradeoff* (our results, not the paper's):

- uniform attention in O(L): g(t) = lam^2 / (4 (t-1)^2) (S(t-2) + t^2 g(t-1)), S the
  partial sums; (t-1)^2 g(i, t) -> lam^2 S_i / (4 - lam^2), S_i = sum_t g(i, t).
- the crossover t* where uniform attention starts to beat no attention, and its
  Lambert-W bracket 1 - W_{-1}(-eps sqrt(beta)) / eps, eps = ln(1/lam).
- the loss gradient: E||dL/dh_i||^2 = sum_t g(i, t) ||gamma_t||^2 with gamma_t the direct
  dl/dh_t, by the backward recursion G_i = ||gamma_i||^2 + sum_{k > i} lam_k^2 w_{ik}^2 G_k.
- one fixed orthogonal V at every step (J_k = lam_k V, V Haar): paths of equal length
  add coherently, E||dh_t/dh_i u||^2 = sum_m f_m^2 + O(1/n), f_m the sum over paths of
  m edges.
- single realisations: ||dh_t/dh_i||_2 <= f(i, t) (path sum with lam_k >= ||J_k||_2),
  and the direct-edge bound sigma_min(dh_t/dh_i) >= mu_t w_{it} - lam_t sum_{i<j<t} w_{jt}
  f(i, j) (mu_k <= sigma_min(J_k)).
"""

from __future__ import annotations

import copy
import numbers

import numpy as np
import torch
from scipy.linalg import solve_triangular
from scipy.special import lambertw

__all__ = [
    "uniform_pattern", "window_pattern", "random_sparse_pattern", "chain_pattern",
    "pattern_from_trace", "edge_weights", "chain_edges",
    "path_sum", "mean_square_gradient", "mean_square_gradient_matrix",
    "path_jacobians", "monte_carlo_gradient", "max_path_product",
    "bound_no_attention", "bound_uniform", "bound_sparse_chain",
    "state_jacobians", "jacobian_norms", "loss_gradient_norms",
    "uniform_mean_square_gradient", "uniform_asymptote", "crossover_uniform",
    "crossover_estimate", "sparse_crossover_span",
    "mean_square_loss_gradient", "loss_gradient_path_sum", "loss_path_expansion",
    "monte_carlo_loss_gradient", "direct_edge_lower_bound",
    "step_jacobians", "loss_gradients",
    "path_length_sums", "fixed_orthogonal_mean_square_gradient",
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
    """Full uniform attention (*The paper* §3.3): step k puts 1/k on each j < k."""
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
    """A planted dependency chain 0 = r_0 < r_1 < ... < r_d = L-1 (*The paper* §3.4).

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
    """Edge weights of the path expansion with attention frozen (*The paper* §3.1):
    W[k, j] = w_{jk} = (1[j = k-1] + A[k, j]) / 2 for j < k ({eq}`eq-path-expansion`).
    Rows k >= 1 sum to one.

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
    f(i, t) = lam_t sum_{i <= j < t} w_{jt} f(i, j) (*The paper* §3.1; {eq}`eq-path-sum`).

    It is dh_t/dh_i exactly when every J_k is the scalar lam_k (n = 1, linear), and an
    upper bound in every other case: if ||J_k||_2 <= lam_k then ||dh_t/dh_i||_2 <=
    f(i, t) for every realisation of the J_k (the triangle inequality on the path sum),
    with equality when every J_k = lam_k I. Returns f(i, t) for t = 0..L-1 (zero for
    t < i). ``lam``: a number or an (L,) array.
    """
    W = _square("W", W)
    L = W.shape[0]
    return _path_dp(W, _per_step("lam", lam, L), _int("i", i, 0, L - 1), 1)


def mean_square_gradient(W, lam, i: int = 0) -> np.ndarray:
    """g(i, t) = E||dh_t/dh_i u||^2 in the random-orthogonal model J_k = lam_k Q_k
    (*The paper* §3.2): g(i, i) = 1, g(i, t) = lam_t^2 sum_{i <= j < t} w_{jt}^2 g(i, j)
    ({eq}`eq-mean-square-gradient`).

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
    (*The paper* §3.1): D_i = I, D_k = J_k sum_{i <= j < k} w_{jk} D_j.

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
                         i: int = 0, same_matrix: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo estimate of g(i, t): draw J_k = lam_k Q_k with Q_k Haar-random
    orthogonal n x n, propagate v_t = dh_t/dh_i u (u = e_1) through the path expansion
    (*The paper* §3.1) for ``samples`` independent draws at once, and return the mean
    and the standard error of ||v_t||^2, each of shape (L,).

    ``same_matrix=True``: one Haar V per draw, used at every step (J_k = lam_k V), the
    model of :func:`fixed_orthogonal_mean_square_gradient`."""
    W = _square("W", W)
    L = W.shape[0]
    lam = _per_step("lam", lam, L)
    n, samples = _int("n", n, 1), _int("samples", samples, 2)
    i, rng = _int("i", i, 0, L - 1), _rng(rng)
    u = np.zeros((samples, n))
    u[:, 0] = 1.0

    V = _haar(rng, samples, n) if same_matrix else None

    def apply_J(k, s):  # s: (samples, n)
        Q = V if same_matrix else _haar(rng, samples, n)
        return lam[k] * np.einsum("sab,sb->sa", Q, s)

    sq = (_propagate(W, i, u, apply_J) ** 2).sum(axis=-1)  # (L, samples)
    return sq.mean(axis=1), sq.std(axis=1, ddof=1) / np.sqrt(samples)


def max_path_product(W, mu, i: int = 0) -> np.ndarray:
    """m(i, t) = max over paths i -> t of the product of mu_k w_{jk} along the path:
    m(i, i) = 1, m(i, t) = mu_t max_{i <= j < t} w_{jt} m(i, j) (*The paper* §3.3).

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
    ||dh_t/dh_i||_2 <= lam^(t - i) with span = t - i (*The paper* §3.1). In the
    random-orthogonal model it is the exact RMS gradient: g(i, t) = lam^(2 (t - i))."""
    lam = _nonnegative("lam", lam)
    span = np.asarray(span)
    if not np.issubdtype(span.dtype, np.integer) or np.any(span < 0):
        raise ValueError(f"span = t - i must be an int >= 0 (or array of them), got {span!r}")
    return lam ** span


def bound_uniform(lam, t):
    """lam^2 / (4 (t-1)^2), a lower bound on g(i, t) for every i < t under uniform
    attention (*The paper* §3.3; {eq}`eq-uniform-and-sparse-bounds`); RMS gradient
    >= lam / (2 (t-1)) = Omega(1/t).

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
    link (*The paper* §3.4; {eq}`eq-uniform-and-sparse-bounds`): each link has
    w >= 1/(2 kappa), and g sums nonnegative path terms. RMS gradient
    >= (lam / (2 kappa))^d, whatever the span r_d - r_0."""
    lam, kappa = _nonnegative("lam", lam), _nonnegative("kappa", kappa, lo=1.0)
    d = np.asarray(d)
    if not np.issubdtype(d.dtype, np.integer) or np.any(d < 0):
        raise ValueError(f"d must be an int >= 0 (or array of them), got {d!r}")
    return (lam / (2.0 * kappa)) ** (2 * d)


# -- one fixed orthogonal matrix: paths of equal length add coherently -------------------
def path_length_sums(W, lam, i: int = 0) -> np.ndarray:
    """f_m(i, t) = sum over the paths i -> t with m edges of the product of lam_k w_{jk},
    as c[t, m]: c[i, 0] = 1, c[t, m] = lam_t sum_{i <= j < t} w_{jt} c[j, m - 1]. Summing over m
    gives :func:`path_sum`. Returns (L, L) (row t, column m), O(L^3)."""
    W = _square("W", W)
    L = W.shape[0]
    lam, i = _per_step("lam", lam, L), _int("i", i, 0, L - 1)
    c = np.zeros((L, L))
    c[i, 0] = 1.0
    for t in range(i + 1, L):
        c[t, 1:] = lam[t] * (W[t, i:t] @ c[i:t, :-1])
    return c


def fixed_orthogonal_mean_square_gradient(W, lam, n: int | None = None,
                                          i: int = 0) -> np.ndarray:
    """E||dh_t/dh_i u||^2 when every J_k = lam_k V with ONE Haar-random orthogonal V
    (the same matrix at every step, as in a real network; chapter *Bounds*):

    sum_{m, m'} f_m f_{m'} E[u^T V^(m' - m) u] = sum_m f_m^2
        + (1/n) sum_{m != m', m - m' even} f_m f_{m'},

    with f_m = :func:`path_length_sums`, using E V^k = (tau_k / n) I (V's law is
    invariant under conjugation) and tau_k = E tr V^k = 1 for even k >= 2, 0 for odd k
    (Diaconis and Shahshahani for k <= n/2; checked by Monte Carlo beyond). Paths of the
    same length add coherently, paths of different lengths (almost) do not.
    ``n=None``: the limit n -> infinity, sum_m f_m^2. Returns (L,)."""
    c = path_length_sums(W, lam, i)
    lead = (c ** 2).sum(axis=1)
    if n is None:
        return lead
    n = _int("n", n, 1)
    m = np.arange(c.shape[1])
    diff = np.abs(m[:, None] - m[None, :])
    even = ((diff % 2 == 0) & (diff > 0)).astype(float)
    return lead + np.einsum("tm,mk,tk->t", c, even, c) / n


# -- uniform attention: O(L), the limit of (t-1)^2 g, and the crossover -------------------
def _lam_scalar(lam, lo=0.0, hi=1.0, closed_lo=True):
    lam = float(_nonnegative("lam", lam))
    if lam > hi or lam < lo or (not closed_lo and lam == lo):
        bracket = "[" if closed_lo else "("
        raise ValueError(f"lam must be a number in {bracket}{lo}, {hi}], got {lam!r}")
    return lam


def uniform_mean_square_gradient(lam, L: int, i: int = 0) -> np.ndarray:
    """g(i, t) under full uniform attention in O(L), for a constant lam: the same values
    as ``mean_square_gradient(edge_weights(uniform_pattern(L)), lam, i)``.

    In the paper's 1-based t, w_{jt} = 1/(2(t-1)) for j < t-1 and w_{t-1,t} =
    t/(2(t-1)), so g(t) = lam^2 / (4 (t-1)^2) (S(t-2) + t^2 g(t-1)) with S(m) =
    sum_{i <= j <= m} g(j) (chapter *Bounds*). Returns (L,), 0-based like ``H``.
    """
    lam = _lam_scalar(lam, hi=np.inf)
    L = _int("L", L, 1)
    i = _int("i", i, 0, L - 1)
    a = lam ** 2 / 4
    g = np.zeros(L)
    g[i] = 1.0
    S_before = 0.0  # S(t-2): sum of g over positions i..k-2
    for k in range(i + 1, L):  # position k is the paper's t = k + 1
        g[k] = a / k ** 2 * (S_before + (k + 1) ** 2 * g[k - 1])
        S_before += g[k - 1]
    return g


def uniform_asymptote(lam, i: int = 0, L: int = 200_000) -> float:
    """c = lim (t-1)^2 g(i, t) = lam^2 S_i / (4 - lam^2) under full uniform attention
    ({eq}`eq-uniform-limit-and-loss`),
    with S_i = sum_{t >= i} g(i, t) summed up to L (the tail is O(1/L): at most 3 / (L - 1)
    for i = 0 and lam <= 1). ``i`` is 0-based, (t - 1) is the 0-based position."""
    lam = _lam_scalar(lam)
    L = _int("L", L, 10)
    S = uniform_mean_square_gradient(lam, L, i).sum()
    return lam ** 2 * S / (4 - lam ** 2)


def crossover_uniform(lam, L: int | None = None):
    """t*: the first paper's step t >= 3 at which full uniform attention keeps more
    mean squared gradient from h_1 than no attention, g(1, t) > lam^(2(t-1)); None if
    there is none up to L (always None for lam = 1, where no attention keeps g = 1).

    At t = 2 both are lam^2. ``L`` defaults to just past the proven upper end of the
    bracket, ``crossover_estimate(lam, lam**2 / 4) + 2``, beyond which attention helps
    at every step (chapter *Bounds*). Also returns whether attention helps at every t
    from t* to L: (t*, stays).
    """
    lam = _lam_scalar(lam, closed_lo=False)
    if L is None:
        if lam == 1.0:
            return None, False
        L = int(np.ceil(crossover_estimate(lam, lam ** 2 / 4))) + 3
    L = _int("L", L, 3)
    g = uniform_mean_square_gradient(lam, L)
    k = np.arange(L)  # 0-based; t - 1 = k
    helps = np.log(g[2:]) > 2 * k[2:] * np.log(lam)
    if not helps.any():
        return None, False
    first = int(np.argmax(helps))
    return first + 3, bool(helps[first:].all())


def crossover_estimate(lam, beta):
    """1 + x_+: the larger root t of (t - 1)^2 lam^(2(t-1)) = beta, i.e.
    t = 1 - W_{-1}(-eps sqrt(beta)) / eps with eps = ln(1/lam) (Lambert W, lower branch).

    If beta <= (t-1)^2 g(1, t) for all t, uniform attention beats no attention at every
    t beyond it; with beta = lim (t-1)^2 g (:func:`uniform_asymptote`) it estimates t*.
    inf for lam = 1; nan where eps sqrt(beta) > 1/e (no root: attention helps at every
    t >= 3 for that beta). ``beta``: a number or an array."""
    lam = _lam_scalar(lam, closed_lo=False)
    beta = _nonnegative("beta", beta)
    if lam == 1.0:
        return np.full(beta.shape, np.inf)[()]
    eps = -np.log(lam)
    z = -eps * np.sqrt(beta)
    with np.errstate(invalid="ignore"):
        x = np.where(z >= -np.exp(-1), -lambertw(np.maximum(z, -np.exp(-1)), -1).real / eps,
                     np.nan)
    return (1.0 + x)[()]


def sparse_crossover_span(lam, kappa, d):
    """d ln(2 kappa / lam) / ln(1/lam): the span beyond which the sparse-chain bound
    (lam / (2 kappa))^(2d) exceeds the no-attention value lam^(2 span); inf at lam = 1.
    Where a planted chain attains its bound (links longer than the window), it is the
    exact crossover of the chain against no attention."""
    lam = _lam_scalar(lam, closed_lo=False)
    kappa = _nonnegative("kappa", kappa, lo=1.0)
    d = _nonnegative("d", d)
    if lam == 1.0:
        return np.full(np.broadcast(kappa, d).shape, np.inf)[()]
    return (d * np.log(2 * kappa / lam) / -np.log(lam))[()]


# -- the loss gradient dL/dh_i --------------------------------------------------------------
def _backward_dp(W, c, e, power):
    """u_i = e_i + sum_{k > i} c_k W[k, i]^power u_k, from the last position down."""
    u = np.array(e, dtype=float)
    for i in range(W.shape[0] - 2, -1, -1):
        u[i] = e[i] + np.tensordot(c[i + 1:] * W[i + 1:, i] ** power, u[i + 1:], axes=1)
    return u


def _per_position(name, value, L):
    arr = _nonnegative(name, value)
    if arr.shape != (L,):
        raise ValueError(f"{name} must have shape ({L},), got shape {arr.shape}")
    return arr


def mean_square_loss_gradient(W, lam, gamma_sq) -> np.ndarray:
    """G_i = E||dL/dh_i||^2 in the random-orthogonal model, for fixed direct loss
    gradients gamma_t = dl/dh_t with ||gamma_t||^2 = ``gamma_sq[t]`` (chapter *Bounds*;
    {eq}`eq-uniform-limit-and-loss`):

    G_i = ||gamma_i||^2 + sum_{k > i} lam_k^2 w_{ik}^2 G_k  =  sum_{t >= i} g(i, t) ||gamma_t||^2.

    Cross terms vanish as in :func:`mean_square_gradient`, also between loss steps. O(L^2).
    Returns (L,)."""
    W = _square("W", W)
    L = W.shape[0]
    return _backward_dp(W, _per_step("lam", lam, L) ** 2, _per_position("gamma_sq", gamma_sq, L), 2)


def loss_gradient_path_sum(W, lam, gamma_norm) -> np.ndarray:
    """u_i = ||gamma_i|| + sum_{k > i} lam_k w_{ik} u_k = sum_t f(i, t) ||gamma_t||: an upper bound
    on ||dL/dh_i|| for every realisation with ||J_k||_2 <= lam_k, attention frozen (the
    triangle inequality on the backward recursion). Returns (L,)."""
    W = _square("W", W)
    L = W.shape[0]
    return _backward_dp(W, _per_step("lam", lam, L), _per_position("gamma_norm", gamma_norm, L), 1)


def loss_path_expansion(W, J, gamma) -> np.ndarray:
    """dL/dh_i for every i by the path expansion run backwards, attention frozen:
    delta_i = gamma_i + sum_{k > i} w_{ik} J_k^T delta_k, with gamma (L, n) the direct loss
    gradients and J (L, n, n) the step Jacobians of one sequence. Returns (L, n)."""
    W = _square("W", W)
    L = W.shape[0]
    J, gamma = np.asarray(J, dtype=float), np.asarray(gamma, dtype=float)
    if (J.ndim != 3 or J.shape[0] != L or J.shape[1] != J.shape[2]
            or gamma.shape != J.shape[:2]):
        raise ValueError(f"J must be ({L}, n, n) and gamma ({L}, n), got {J.shape} and "
                         f"{gamma.shape}")
    delta = gamma.copy()
    back = np.zeros_like(gamma)  # back[k] = J_k^T delta_k once delta_k is known
    for k in range(L - 1, -1, -1):
        delta[k] = gamma[k] + W[k + 1:, k] @ back[k + 1:]
        back[k] = J[k].T @ delta[k]
    return delta


def monte_carlo_loss_gradient(W, lam, gamma, samples: int, rng=None):
    """Monte Carlo estimate of E||dL/dh_i||^2: J_k = lam_k Q_k with Q_k Haar-random
    orthogonal, the backward recursion delta_i = gamma_i + sum_{k > i} w_{ik} J_k^T delta_k
    for ``samples`` independent draws at once, gamma (L, n) fixed. Returns the mean and the
    standard error of ||delta_i||^2, each (L,)."""
    W = _square("W", W)
    L = W.shape[0]
    lam = _per_step("lam", lam, L)
    gamma = np.asarray(gamma, dtype=float)
    if gamma.ndim != 2 or gamma.shape[0] != L:
        raise ValueError(f"gamma must have shape ({L}, n), got {gamma.shape}")
    samples, rng = _int("samples", samples, 2), _rng(rng)
    n = gamma.shape[1]
    delta = np.broadcast_to(gamma[:, None, :], (L, samples, n)).copy()
    back = np.zeros_like(delta)
    for k in range(L - 1, -1, -1):
        delta[k] = gamma[k] + np.tensordot(W[k + 1:, k], back[k + 1:], axes=1)
        back[k] = lam[k] * np.einsum("sba,sb->sa", _haar(rng, samples, n), delta[k])
    sq = (delta ** 2).sum(axis=-1)  # (L, samples)
    return sq.mean(axis=1), sq.std(axis=1, ddof=1) / np.sqrt(samples)


def direct_edge_lower_bound(W, mu, lam, i: int = 0) -> np.ndarray:
    """l(i, t) = mu_t w_{it} - lam_t sum_{i < j < t} w_{jt} f(i, j), f = path_sum(W, lam, i):
    a lower bound on sigma_min(dh_t/dh_i) (so on ||dh_t/dh_i u|| for every unit u) for
    every realisation with sigma_min(J_k) >= mu_k and ||J_k||_2 <= lam_k, attention
    frozen. Informative (> 0) where the direct edge i -> t outweighs every other way
    into t. l(i, i) = 1; zero for t < i. Returns (L,)."""
    W = _square("W", W)
    L = W.shape[0]
    mu, lam = _per_step("mu", mu, L), _per_step("lam", lam, L)
    i = _int("i", i, 0, L - 1)
    f = path_sum(W, lam, i)
    out = np.zeros(L)
    out[i] = 1.0
    for t in range(i + 1, L):
        out[t] = mu[t] * W[t, i] - lam[t] * W[t, i + 1:t] @ f[i + 1:t]
    return out


# -- autograd on real models ------------------------------------------------------------
def state_jacobians(model, x: torch.Tensor, i: int, freeze_attention: bool = False):
    """D[t, b] = dh_t/dh_i (n x n) of example b, by autograd on a :mod:`rsa.models`
    model, for t = 0..T-1 (zero for t < i, the identity at t = i). Returns (T, B, n, n).

    h_i is perturbed as a node of the graph (for an LSTM the cell state is held fixed).
    ``freeze_attention=True`` drops the terms from differentiating alpha: the Jacobian of
    the path expansion (*The paper* §3.1). Exact columns by the double-backward trick:
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


def step_jacobians(model, x: torch.Tensor, b: int = 0):
    """The per-step Jacobians J_k = diag(phi'(z_k)) V and the edge weights W of example
    ``b``, from a recorded forward pass of an RNN, MemRNN or RelRNN (any ``phi``: tanh,
    modReLU): z_k = U x_k + b + V s_{k-1}, s_{k-1} = sum_j w_{jk} h_j. Returns (J, W),
    J of shape (T, n, n) in float64 (J_0 is diag(phi'(z_0)) V, unused by the expansion),
    W of shape (T, T): ``path_jacobians(W, J, i)`` is then the frozen-attention
    dh_t/dh_i (chapter *Bounds*)."""
    if getattr(model, "gates", 1) != 1:
        raise ValueError("step_jacobians needs a model of the RNN family (one Jacobian per "
                         "step); an LSTM's state has a second recurrent path")
    with torch.no_grad():
        H, trace = model(x, record=True)
    T = H.shape[0]
    b = _int("b", b, 0, H.shape[1] - 1)
    W = chain_edges(T) if model.attention is None else edge_weights(pattern_from_trace(trace, b))
    with torch.no_grad():
        h = H[:, b].double()
        s = torch.as_tensor(W) @ h  # row k: s_{k-1}; row 0 is 0 (no recurrence at t = 1)
        z = model.U(x[:, b]).double() + s @ model.V.weight.double().T
    z.requires_grad_(True)
    phi = copy.deepcopy(model.phi).double()  # a float64 copy; the model is left as it is
    (phi_prime,) = torch.autograd.grad(phi(z).sum(), z)  # phi acts elementwise
    V = model.V.weight.detach().double()
    J = phi_prime.detach()[:, :, None] * V
    return J.numpy(), W


def loss_gradients(model, x: torch.Tensor, loss_fn, freeze_attention: bool = False):
    """The direct and the total gradient of a loss with respect to every state:
    (gamma, delta), each (T, B, n) in float64, gamma_t = dl/dh_t through ``loss_fn`` alone
    (the read-out at step t) and delta_t = dL/dh_t through every later step as well.

    ``loss_fn`` maps H (T, B, n) to a scalar tensor. ``freeze_attention`` as in
    :func:`state_jacobians`."""
    H, trace = model(x, record=True, freeze_attention=freeze_attention)
    loss = loss_fn(H)
    (gamma,) = torch.autograd.grad(loss, H, retain_graph=True)
    total = torch.autograd.grad(loss, trace.states, allow_unused=True)
    delta = torch.stack([torch.zeros_like(h) if g is None else g
                         for g, h in zip(total, trace.states, strict=True)])
    return gamma.detach().cpu().double().numpy(), delta.detach().cpu().double().numpy()
