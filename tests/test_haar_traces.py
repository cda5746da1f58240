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


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_weyl_integration_gives_one_for_even_and_zero_for_odd_k_for_every_k(n):
    """rsa.theory.haar_trace_moments integrates tr V^k exactly with Weyl's density, a
    computation independent of the lemma: tau_k in {0, 1} far beyond n / 2."""
    from rsa.theory import haar_trace_moments

    k_max = 60 if n <= 5 else 24
    tau = haar_trace_moments(n, k_max)
    assert tau[0] == pytest.approx(n, abs=1e-9)
    for k in range(1, k_max + 1):
        assert tau[k] == pytest.approx(1.0 if k % 2 == 0 else 0.0, abs=1e-9), (n, k)


@pytest.mark.parametrize("n", [3, 4])
def test_weyl_integration_agrees_with_monte_carlo(n):
    """The exact computation and Haar sampling agree (a wrong density, e.g. the
    unitary group's or a missing sin^2 factor, would not): within 5 standard errors."""
    from rsa.theory import haar_trace_moments

    tau = haar_trace_moments(n, 9)
    for k, (mean, se) in _traces(n, range(1, 10), samples=40_000, seed=1).items():
        assert abs(mean - tau[k]) < 5 * se + 1e-12, (n, k, mean, tau[k], se)


def test_weyl_integration_rejects_bad_sizes():
    from rsa.theory import haar_trace_moments

    with pytest.raises(ValueError, match="n must be an int in \\[1, 7\\], got 8"):
        haar_trace_moments(8, 4)
