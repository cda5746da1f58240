"""Full uniform attention when one fixed orthogonal V acts at every step (our result, not
the paper's; chapter *Bounds on gradient propagation*): the path-length sums, the mean
squared gradient and the crossover against no attention in O(L^2), next to the
independent-rotation versions of :mod:`rsa.theory.bounds`.
"""

from __future__ import annotations

import numpy as np

from rsa.theory.arguments import check_int, check_nonnegative


def _lam(lam):
    lam = float(check_nonnegative("lam", lam))
    if lam == 0.0 or lam > 1.0:
        raise ValueError(f"lam must be a number in (0, 1], got {lam!r}")
    return lam


def uniform_path_length_sums(lam, L: int) -> np.ndarray:
    """f_m(0, k) under full uniform attention from position 0, as c[k, m]: the same
    values as ``path_length_sums(edge_weights(uniform_pattern(L)), lam)`` in O(L^2)
    instead of O(L^3). With w_{jk} = 1/(2k) + 1[j = k-1]/2 (0-based k),
    c[k, m] = lam (P_{k-1}[m-1] / (2k) + c[k-1, m-1] / 2), P the prefix sums over j < k."""
    lam, L = _lam(lam), check_int("L", L, 1)
    c = np.zeros((L, L))
    c[0, 0] = 1.0
    prefix = np.zeros(L)  # sum_{j < k} c[j, :]
    for k in range(1, L):
        prefix += c[k - 1]
        c[k, 1:] = lam * (prefix[:-1] / (2 * k) + c[k - 1, :-1] / 2)
    return c


def fixed_uniform_mean_square_gradient(lam, L: int, n: int | None = None) -> np.ndarray:
    """g(1, t) under full uniform attention with J_k = lam V, one Haar V (the model of
    ``fixed_orthogonal_mean_square_gradient``, same exact tau_k): sum_m f_m^2 +
    ((sum_even f_m)^2 + (sum_odd f_m)^2 - sum_m f_m^2) / n. ``n=None``: n -> infinity.
    Returns (L,), 0-based."""
    c = uniform_path_length_sums(lam, L)
    lead = (c**2).sum(axis=1)
    if n is None:
        return lead
    n = check_int("n", n, 1)
    even, odd = c[:, 0::2].sum(axis=1), c[:, 1::2].sum(axis=1)
    return lead + (even**2 + odd**2 - lead) / n


def crossover_fixed_uniform(lam, n: int | None = None, L: int = 4000):
    """t* in the fixed-matrix model: the first paper's step t >= 3 with
    g(1, t) > lam^(2(t-1)) (one fixed orthogonal V: no attention keeps exactly
    lam^(2(t-1))). Returns (t*, stays): stays is whether attention helps at every t from
    t* to L. (None, False) if none up to L (always at lam = 1)."""
    lam, L = _lam(lam), check_int("L", L, 3)
    g = fixed_uniform_mean_square_gradient(lam, L, n)
    k = np.arange(L)
    helps = np.log(g[2:]) > 2 * k[2:] * np.log(lam)
    if not helps.any():
        return None, False
    first = int(np.argmax(helps))
    return first + 3, bool(helps[first:].all())


def loglog_slope(g, t1: int, t2: int) -> float:
    """d ln g / d ln t between the paper's steps t1 < t2 (g 0-based, position t - 1)."""
    t1, t2 = check_int("t1", t1, 1), check_int("t2", t2, t1 + 1)
    return float(np.log(g[t2 - 1] / g[t1 - 1]) / np.log(t2 / t1))


def haar_trace_moments(n: int, k_max: int) -> np.ndarray:
    """``tau[k] = E tr V^k`` for ``V`` Haar-random on ``O(n)``, ``k = 0 .. k_max``,
    computed exactly (to rounding) by Weyl's integration formula, independently of the
    lemma it checks (chapter *Bounds*, lem-haar-traces: 1 for even, 0 for odd ``k >= 1``).

    Haar measure on ``O(n)`` is half that of ``SO(n)`` and half that of ``O^-(n)``; on
    each, ``tr V^k`` depends on the eigen-angles ``theta_1 .. theta_m``, whose density is
    ``prod_{i<j} (cos theta_i - cos theta_j)^2`` times ``prod sin^2(theta_j / 2)``
    (``SO(2m+1)``; ``O^-(2m+1) = -SO(2m+1)``), 1 (``SO(2m)``) or ``prod sin^2 theta_j``
    (``O^-(2m)``, eigenvalues ``+1, -1`` and ``m - 1`` pairs). The integrands are
    trigonometric polynomials, so an equispaced grid of ``N > k_max + 2n`` angles per
    coordinate integrates them exactly. ``n`` up to 7 (a grid of ``N^3`` points)."""
    n = check_int("n", n, 1, 7)
    k_max = check_int("k_max", k_max, 0, 200)
    N = k_max + 2 * n + 3
    grid = 2 * np.pi * (np.arange(N) + 0.5) / N

    def mean_trace(m, weight, fixed):
        """E over m angles with density prod_{i<j}(cos - cos)^2 prod weight(theta), of
        sum(fixed^k) + sum_j 2 cos(k theta_j), for k = 0 .. k_max."""
        ks = np.arange(k_max + 1)
        fixed_part = np.array([sum(f**k for f in fixed) for k in ks], dtype=float)
        if m == 0:
            return fixed_part
        th = np.stack(np.meshgrid(*([grid] * m), indexing="ij"), -1).reshape(-1, m)
        c = np.cos(th)
        dens = np.prod(weight(th), axis=1)
        for i in range(m):
            for j in range(i + 1, m):
                dens = dens * (c[:, i] - c[:, j]) ** 2
        traces = 2 * np.cos(ks[None, None, :] * th[:, :, None]).sum(axis=1)  # (P, k)
        return fixed_part + (dens[:, None] * traces).sum(0) / dens.sum()

    m = n // 2
    if n % 2:  # SO(2m+1) and -SO(2m+1): eigenvalues (+-1), (+-)e^{+-i theta_j}
        half = lambda th: np.sin(th / 2) ** 2  # noqa: E731
        so = mean_trace(m, half, [1.0])
        sign = (-1.0) ** np.arange(k_max + 1)
        minus = sign * so  # tr (-V)^k = (-1)^k tr V^k
    else:  # SO(2m) and O^-(2m)
        so = mean_trace(m, lambda th: np.ones_like(th), [])
        minus = mean_trace(m - 1, lambda th: np.sin(th) ** 2, [1.0, -1.0])
    return (so + minus) / 2
