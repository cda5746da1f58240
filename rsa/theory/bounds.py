"""Closed-form bounds, uniform attention in O(L) and the crossover t* (chapters *Bounds*
and *The kappa-d tradeoff*).
"""

from __future__ import annotations

import numpy as np
from scipy.special import lambertw

from rsa.theory.arguments import check_int, check_nonnegative


# -- closed-form bounds ----------------------------------------------------------------
def bound_no_attention(lam, span):
    """lam^span: without attention (W = :func:`chain_edges`) and ||J_k||_2 <= lam,
    ||dh_t/dh_i||_2 <= lam^(t - i) with span = t - i (*The paper* §3.1). In the
    random-orthogonal model it is the exact RMS gradient: g(i, t) = lam^(2 (t - i))."""
    lam = check_nonnegative("lam", lam)
    span = np.asarray(span)
    if not np.issubdtype(span.dtype, np.integer) or np.any(span < 0):
        raise ValueError(f"span = t - i must be an int >= 0 (or array of them), got {span!r}")
    return lam**span


def bound_uniform(lam, t):
    """lam^2 / (4 (t-1)^2), a lower bound on g(i, t) for every i < t under uniform
    attention (*The paper* §3.3; {eq}`eq-uniform-and-sparse-bounds`); RMS gradient
    >= lam / (2 (t-1)) = Omega(1/t).

    ``t`` is the paper's 1-based step, t >= 2: position k = t - 1 of ``H``, whose row of
    :func:`uniform_pattern` spreads 1/k over k states. So ``g[k] >= bound_uniform(lam,
    k + 1)`` for k >= 1. Proof: the direct edge i -> t alone has w = 1/(2(t-1)) (or
    (1 + 1/(t-1))/2 when i = t-1), and g sums nonnegative path terms.
    """
    lam, t = check_nonnegative("lam", lam), np.asarray(t)
    if not np.issubdtype(t.dtype, np.integer) or np.any(t < 2):
        raise ValueError(f"t (the 1-based step) must be an int >= 2 (or array of them), got {t!r}")
    return lam**2 / (4.0 * (t - 1.0) ** 2)


def bound_sparse_chain(lam, kappa, d):
    """(lam / (2 kappa))^(2 d), a lower bound on g(r_0, r_d) when a chain
    r_0 < r_1 < ... < r_d has attention weight alpha_{r_{l-1}}^{(r_l)} >= 1/kappa on every
    link (*The paper* §3.4; {eq}`eq-uniform-and-sparse-bounds`): each link has
    w >= 1/(2 kappa), and g sums nonnegative path terms. RMS gradient
    >= (lam / (2 kappa))^d, whatever the span r_d - r_0."""
    lam, kappa = check_nonnegative("lam", lam), check_nonnegative("kappa", kappa, lo=1.0)
    d = np.asarray(d)
    if not np.issubdtype(d.dtype, np.integer) or np.any(d < 0):
        raise ValueError(f"d must be an int >= 0 (or array of them), got {d!r}")
    return (lam / (2.0 * kappa)) ** (2 * d)


# -- uniform attention: O(L), the limit of (t-1)^2 g, and the crossover -------------------
def _lam_scalar(lam, lo=0.0, hi=1.0, closed_lo=True):
    lam = float(check_nonnegative("lam", lam))
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
    L = check_int("L", L, 1)
    i = check_int("i", i, 0, L - 1)
    a = lam**2 / 4
    g = np.zeros(L)
    g[i] = 1.0
    S_before = 0.0  # S(t-2): sum of g over positions i..k-2
    for k in range(i + 1, L):  # position k is the paper's t = k + 1
        g[k] = a / k**2 * (S_before + (k + 1) ** 2 * g[k - 1])
        S_before += g[k - 1]
    return g


def uniform_asymptote(lam, i: int = 0, L: int = 200_000) -> float:
    """c = lim (t-1)^2 g(i, t) = lam^2 S_i / (4 - lam^2) under full uniform attention
    ({eq}`eq-uniform-limit-and-loss`),
    with S_i = sum_{t >= i} g(i, t) summed up to L (the tail is O(1/L): at most 3 / (L - 1)
    for i = 0 and lam <= 1). ``i`` is 0-based, (t - 1) is the 0-based position."""
    lam = _lam_scalar(lam)
    L = check_int("L", L, 10)
    S = uniform_mean_square_gradient(lam, L, i).sum()
    return lam**2 * S / (4 - lam**2)


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
        L = int(np.ceil(crossover_estimate(lam, lam**2 / 4))) + 3
    L = check_int("L", L, 3)
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
    beta = check_nonnegative("beta", beta)
    if lam == 1.0:
        return np.full(beta.shape, np.inf)[()]
    eps = -np.log(lam)
    z = -eps * np.sqrt(beta)
    with np.errstate(invalid="ignore"):
        x = np.where(z >= -np.exp(-1), -lambertw(np.maximum(z, -np.exp(-1)), -1).real / eps, np.nan)
    return (1.0 + x)[()]


def sparse_crossover_span(lam, kappa, d):
    """d ln(2 kappa / lam) / ln(1/lam): the span beyond which the sparse-chain bound
    (lam / (2 kappa))^(2d) exceeds the no-attention value lam^(2 span); inf at lam = 1.
    Where a planted chain attains its bound (links longer than the window), it is the
    exact crossover of the chain against no attention."""
    lam = _lam_scalar(lam, closed_lo=False)
    kappa = check_nonnegative("kappa", kappa, lo=1.0)
    d = check_nonnegative("d", d)
    if lam == 1.0:
        return np.full(np.broadcast(kappa, d).shape, np.inf)[()]
    return (d * np.log(2 * kappa / lam) / -np.log(lam))[()]


# -- local attention: the exact per-step rate ---------------------------------------------
def local_attention_rate(lam, kappa):
    """The per-step factor r of g(i, t) ~ C r^(t - i) under local attention of width kappa
    in the random-orthogonal model (our result, chapter *The kappa-d tradeoff*,
    prop-local-rate): with a = (1 + 1/kappa)/2 on the edge from h_{t-1} and
    b = 1/(2 kappa) on each of the kappa - 1 older ones, g obeys the linear recursion
    g_t = lam^2 (a^2 g_{t-1} + b^2 (g_{t-2} + ... + g_{t-kappa})), and r is the unique
    positive root of 1 = lam^2 (a^2 / r + b^2 (r^-2 + ... + r^-kappa)) (the right side
    decreases in r; the Perron root of the companion matrix). The decay rate per step is
    -ln r; kappa = 1 (no attention) gives r = lam^2. Bisection to machine precision."""
    lam = _lam_scalar(lam, closed_lo=False)
    kappa = check_int("kappa", kappa, 1)
    a2, b2 = ((1 + 1 / kappa) / 2) ** 2, (1 / (2 * kappa)) ** 2
    powers = np.arange(2, kappa + 1)

    def excess(r):  # lam^2 (a^2/r + b^2 sum_l r^-l) - 1, decreasing in r
        return lam**2 * (a2 / r + b2 * np.sum(r ** -powers.astype(float))) - 1.0

    lo, hi = lam**2 * a2, 1.0  # excess(lo) >= 0 (its first term alone is 1), excess(1) <= 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 4 * np.finfo(float).eps * hi:
            break
    return 0.5 * (lo + hi)
