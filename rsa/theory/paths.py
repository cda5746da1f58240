"""Step 1 and 2 of the path expansion: path sums, the mean-square-gradient DP (independent
rotations and one fixed orthogonal matrix) and the loss gradient (chapter *Bounds on
gradient propagation*).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular

from rsa.theory.arguments import as_rng, check_int, check_nonnegative, check_per_step, check_square


# -- step 1: path expansion ------------------------------------------------------------
def edge_weights(A) -> np.ndarray:
    """Edge weights of the path expansion with attention frozen (*The paper* §3.1):
    W[k, j] = w_{jk} = (1[j = k-1] + A[k, j]) / 2 for j < k ({eq}`eq-path-expansion`).
    Rows k >= 1 sum to one.

    ``A`` must be an attention pattern: strictly lower triangular, nonnegative, row 0
    zero and rows k >= 1 summing to one (within 1e-4). A network without attention is
    :func:`chain_edges`, not ``edge_weights`` of a zero pattern.
    """
    A = check_square("A", A)
    sums = A.sum(axis=1)
    if A.shape[0] > 1 and not np.allclose(sums[1:], 1.0, atol=1e-4):
        k = 1 + np.argmax(np.abs(sums[1:] - 1.0))
        raise ValueError(
            f"rows k >= 1 of an attention pattern must sum to 1, row {k} sums "
            f"to {float(sums[k])!r} (no attention at all: use chain_edges(L))"
        )
    W = A / 2
    k = np.arange(1, A.shape[0])
    W[k, k - 1] += 0.5
    return W


def chain_edges(L: int) -> np.ndarray:
    """The plain RNN (no attention): the only edges are h_{k-1} -> h_k, W[k, k-1] = 1."""
    L = check_int("L", L, 1)
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
    W = check_square("W", W)
    L = W.shape[0]
    return _path_dp(W, check_per_step("lam", lam, L), check_int("i", i, 0, L - 1), 1)


def mean_square_gradient(W, lam, i: int = 0) -> np.ndarray:
    """g(i, t) = E||dh_t/dh_i u||^2 in the random-orthogonal model J_k = lam_k Q_k
    (*The paper* §3.2): g(i, i) = 1, g(i, t) = lam_t^2 sum_{i <= j < t} w_{jt}^2 g(i, j)
    ({eq}`eq-mean-square-gradient`).

    Cross terms between paths vanish because E Q_k = 0, so g is the sum over paths of the
    *squared* path products. O(L^2), one numpy dot per step. Returns g(i, t) for
    t = 0..L-1 (zero for t < i), for any unit vector u.
    """
    W = check_square("W", W)
    L = W.shape[0]
    return _path_dp(W, check_per_step("lam", lam, L) ** 2, check_int("i", i, 0, L - 1), 2)


def mean_square_gradient_matrix(W, lam) -> np.ndarray:
    """All sources at once: G[i, t] = g(i, t) of :func:`mean_square_gradient`.

    The recursion of step 2 says (I - C) g(i, .) = e_i with C[t, j] = lam_t^2 w_{jt}^2,
    so G^T = (I - C)^{-1}: one triangular solve, O(L^3) (seconds for L ~ 2000).
    """
    W = check_square("W", W)
    L = W.shape[0]
    M = -(check_per_step("lam", lam, L) ** 2)[:, None] * W**2
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
    W = check_square("W", W)
    L = W.shape[0]
    J = np.asarray(J, dtype=float)
    if J.ndim < 3 or J.shape[0] != L or J.shape[-1] != J.shape[-2]:
        raise ValueError(f"J must have shape ({L}, ..., n, n), got {J.shape}")
    eye = np.broadcast_to(np.eye(J.shape[-1]), J.shape[1:])
    return _propagate(W, check_int("i", i, 0, L - 1), eye, lambda k, s: J[k] @ s)


def haar_matrices(rng, samples, n):
    """``samples`` independent Haar-random orthogonal n x n matrices (QR of a Gaussian
    matrix with the signs of diag(R) moved into Q, Mezzadri 2007)."""
    Q, R = np.linalg.qr(rng.standard_normal((samples, n, n)))
    return Q * np.sign(np.diagonal(R, axis1=-2, axis2=-1))[:, None, :]


def monte_carlo_gradient(
    W, lam, n: int, samples: int, rng=None, i: int = 0, same_matrix: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo estimate of g(i, t): draw J_k = lam_k Q_k with Q_k Haar-random
    orthogonal n x n, propagate v_t = dh_t/dh_i u (u = e_1) through the path expansion
    (*The paper* §3.1) for ``samples`` independent draws at once, and return the mean
    and the standard error of ||v_t||^2, each of shape (L,).

    ``same_matrix=True``: one Haar V per draw, used at every step (J_k = lam_k V), the
    model of :func:`fixed_orthogonal_mean_square_gradient`."""
    W = check_square("W", W)
    L = W.shape[0]
    lam = check_per_step("lam", lam, L)
    n, samples = check_int("n", n, 1), check_int("samples", samples, 2)
    i, rng = check_int("i", i, 0, L - 1), as_rng(rng)
    u = np.zeros((samples, n))
    u[:, 0] = 1.0

    V = haar_matrices(rng, samples, n) if same_matrix else None

    def apply_J(k, s):  # s: (samples, n)
        Q = V if same_matrix else haar_matrices(rng, samples, n)
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
    W = check_square("W", W)
    L = W.shape[0]
    mu, i = check_per_step("mu", mu, L), check_int("i", i, 0, L - 1)
    m = np.zeros(L)
    m[i] = 1.0
    for t in range(i + 1, L):
        m[t] = mu[t] * np.max(W[t, i:t] * m[i:t])
    return m


# -- one fixed orthogonal matrix: paths of equal length add coherently -------------------
def path_length_sums(W, lam, i: int = 0) -> np.ndarray:
    """f_m(i, t) = sum over the paths i -> t with m edges of the product of lam_k w_{jk},
    as c[t, m]: c[i, 0] = 1, c[t, m] = lam_t sum_{i <= j < t} w_{jt} c[j, m - 1]. Summing over m
    gives :func:`path_sum`. Returns (L, L) (row t, column m), O(L^3)."""
    W = check_square("W", W)
    L = W.shape[0]
    lam, i = check_per_step("lam", lam, L), check_int("i", i, 0, L - 1)
    c = np.zeros((L, L))
    c[i, 0] = 1.0
    for t in range(i + 1, L):
        c[t, 1:] = lam[t] * (W[t, i:t] @ c[i:t, :-1])
    return c


def fixed_orthogonal_mean_square_gradient(W, lam, n: int | None = None, i: int = 0) -> np.ndarray:
    """E||dh_t/dh_i u||^2 when every J_k = lam_k V with ONE Haar-random orthogonal V
    (the same matrix at every step, as in a real network; chapter *Bounds*):

    sum_{m, m'} f_m f_{m'} E[u^T V^(m' - m) u] = sum_m f_m^2
        + (1/n) sum_{m != m', m - m' even} f_m f_{m'},

    with f_m = :func:`path_length_sums`, using E V^k = (tau_k / n) I (V's law is
    invariant under conjugation) and tau_k = E tr V^k = 1 for even k >= 2, 0 for odd k
    for every k and n (chapter *Bounds*, lem-haar-traces; :func:`haar_trace_moments`
    checks it by Weyl's integration formula). Paths of the
    same length add coherently, paths of different lengths (almost) do not.
    ``n=None``: the limit n -> infinity, sum_m f_m^2. Returns (L,)."""
    c = path_length_sums(W, lam, i)
    lead = (c**2).sum(axis=1)
    if n is None:
        return lead
    n = check_int("n", n, 1)
    m = np.arange(c.shape[1])
    diff = np.abs(m[:, None] - m[None, :])
    even = ((diff % 2 == 0) & (diff > 0)).astype(float)
    return lead + np.einsum("tm,mk,tk->t", c, even, c) / n


# -- the loss gradient dL/dh_i --------------------------------------------------------------
def _backward_dp(W, c, e, power):
    """u_i = e_i + sum_{k > i} c_k W[k, i]^power u_k, from the last position down."""
    u = np.array(e, dtype=float)
    for i in range(W.shape[0] - 2, -1, -1):
        u[i] = e[i] + np.tensordot(c[i + 1 :] * W[i + 1 :, i] ** power, u[i + 1 :], axes=1)
    return u


def _per_position(name, value, L):
    arr = check_nonnegative(name, value)
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
    W = check_square("W", W)
    L = W.shape[0]
    return _backward_dp(
        W, check_per_step("lam", lam, L) ** 2, _per_position("gamma_sq", gamma_sq, L), 2
    )


def loss_gradient_path_sum(W, lam, gamma_norm) -> np.ndarray:
    """u_i = ||gamma_i|| + sum_{k > i} lam_k w_{ik} u_k = sum_t f(i, t) ||gamma_t||: an upper bound
    on ||dL/dh_i|| for every realisation with ||J_k||_2 <= lam_k, attention frozen (the
    triangle inequality on the backward recursion). Returns (L,)."""
    W = check_square("W", W)
    L = W.shape[0]
    return _backward_dp(
        W, check_per_step("lam", lam, L), _per_position("gamma_norm", gamma_norm, L), 1
    )


def loss_path_expansion(W, J, gamma) -> np.ndarray:
    """dL/dh_i for every i by the path expansion run backwards, attention frozen:
    delta_i = gamma_i + sum_{k > i} w_{ik} J_k^T delta_k, with gamma (L, n) the direct loss
    gradients and J (L, n, n) the step Jacobians of one sequence. Returns (L, n)."""
    W = check_square("W", W)
    L = W.shape[0]
    J, gamma = np.asarray(J, dtype=float), np.asarray(gamma, dtype=float)
    if J.ndim != 3 or J.shape[0] != L or J.shape[1] != J.shape[2] or gamma.shape != J.shape[:2]:
        raise ValueError(
            f"J must be ({L}, n, n) and gamma ({L}, n), got {J.shape} and {gamma.shape}"
        )
    delta = gamma.copy()
    back = np.zeros_like(gamma)  # back[k] = J_k^T delta_k once delta_k is known
    for k in range(L - 1, -1, -1):
        delta[k] = gamma[k] + W[k + 1 :, k] @ back[k + 1 :]
        back[k] = J[k].T @ delta[k]
    return delta


def monte_carlo_loss_gradient(W, lam, gamma, samples: int, rng=None):
    """Monte Carlo estimate of E||dL/dh_i||^2: J_k = lam_k Q_k with Q_k Haar-random
    orthogonal, the backward recursion delta_i = gamma_i + sum_{k > i} w_{ik} J_k^T delta_k
    for ``samples`` independent draws at once, gamma (L, n) fixed. Returns the mean and the
    standard error of ||delta_i||^2, each (L,)."""
    W = check_square("W", W)
    L = W.shape[0]
    lam = check_per_step("lam", lam, L)
    gamma = np.asarray(gamma, dtype=float)
    if gamma.ndim != 2 or gamma.shape[0] != L:
        raise ValueError(f"gamma must have shape ({L}, n), got {gamma.shape}")
    samples, rng = check_int("samples", samples, 2), as_rng(rng)
    n = gamma.shape[1]
    delta = np.broadcast_to(gamma[:, None, :], (L, samples, n)).copy()
    back = np.zeros_like(delta)
    for k in range(L - 1, -1, -1):
        delta[k] = gamma[k] + np.tensordot(W[k + 1 :, k], back[k + 1 :], axes=1)
        back[k] = lam[k] * np.einsum("sba,sb->sa", haar_matrices(rng, samples, n), delta[k])
    sq = (delta**2).sum(axis=-1)  # (L, samples)
    return sq.mean(axis=1), sq.std(axis=1, ddof=1) / np.sqrt(samples)


def direct_edge_lower_bound(W, mu, lam, i: int = 0) -> np.ndarray:
    """l(i, t) = mu_t w_{it} - lam_t sum_{i < j < t} w_{jt} f(i, j), f = path_sum(W, lam, i):
    a lower bound on sigma_min(dh_t/dh_i) (so on ||dh_t/dh_i u|| for every unit u) for
    every realisation with sigma_min(J_k) >= mu_k and ||J_k||_2 <= lam_k, attention
    frozen. Informative (> 0) where the direct edge i -> t outweighs every other way
    into t. l(i, i) = 1; zero for t < i. Returns (L,)."""
    W = check_square("W", W)
    L = W.shape[0]
    mu, lam = check_per_step("mu", mu, L), check_per_step("lam", lam, L)
    i = check_int("i", i, 0, L - 1)
    f = path_sum(W, lam, i)
    out = np.zeros(L)
    out[i] = 1.0
    for t in range(i + 1, L):
        out[t] = mu[t] * W[t, i] - lam[t] * W[t, i + 1 : t] @ f[i + 1 : t]
    return out
