"""tau_k = E tr V^k for a Haar-random orthogonal V is 1 for even k >= 2 and 0 for odd k,
for EVERY k, not only k <= n/2 (chapter *Bounds*, prop-fixed-orthogonal and its proof
through Schur functions): the value rsa.theory.fixed_orthogonal_mean_square_gradient
uses for every path length."""

import numpy as np
import pytest

from rsa.theory import haar_matrices


def _traces(n, ks, samples=100_000, seed=0):
    """Monte Carlo mean and standard error of tr V^k for each k, V Haar on O(n)."""
    V = haar_matrices(np.random.default_rng(seed), samples, n)
    theta = np.linalg.eigvals(V)  # (samples, n), on the unit circle
    out = {}
    for k in ks:
        tr = (theta**k).real.sum(axis=1)
        out[k] = (tr.mean(), tr.std(ddof=1) / np.sqrt(samples))
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_tau_is_one_for_even_and_zero_for_odd_k_beyond_n_over_2(n):
    ks = range(1, 3 * n + 4)
    for k, (mean, se) in _traces(n, ks).items():
        tau = 1.0 if k % 2 == 0 else 0.0
        assert abs(mean - tau) < 5 * se + 1e-12, (n, k, mean, se)
        if k % 2 == 0:
            # the check can fail: tau_k = 0 (what the unitary group would give) is
            # rejected for every even k, including those beyond n/2
            assert abs(mean) > 10 * se, (n, k, mean, se)


def test_n_equals_one_and_two_exactly():
    """O(1) = {+1, -1}: tr V^k = (+-1)^k, mean 1 or 0. O(2): rotations have
    E 2 cos(k theta) = 0, reflections V^2 = I: (0 + 2) / 2 = 1 for even k."""
    for k in range(1, 12):
        assert np.mean([s**k for s in (1.0, -1.0)]) == (1.0 if k % 2 == 0 else 0.0)
        theta = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
        rotations = np.mean(2 * np.cos(k * theta))
        reflections = 2.0 if k % 2 == 0 else 0.0  # eigenvalues +1, -1
        assert (rotations + reflections) / 2 == pytest.approx(1.0 if k % 2 == 0 else 0.0,
                                                              abs=1e-12)
