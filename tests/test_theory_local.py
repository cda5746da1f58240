"""The exact per-step rate of local attention (rsa.theory.local_attention_rate; chapter
*The kappa-d tradeoff*, prop-local-rate) against the exact recursion."""

import numpy as np
import pytest

from rsa.theory import edge_weights, local_attention_rate, mean_square_gradient, window_pattern


def _late_ratio(lam, kappa):
    """g(i, t) / g(i, t - 1) far along, where g is still representable (> 1e-250)."""
    L = kappa + 4000
    g = mean_square_gradient(edge_weights(window_pattern(L, kappa)), lam, kappa)
    last = int(np.nonzero(g > 1e-250)[0][-1])
    return g[last] / g[last - 1], last - kappa


@pytest.mark.parametrize("lam", [0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("kappa", [1, 2, 3, 4, 8, 16, 32])
def test_rate_is_the_recursions_late_ratio(lam, kappa):
    r = local_attention_rate(lam, kappa)
    ratio, span = _late_ratio(lam, kappa)
    assert span > 100  # far enough for the subdominant roots to have died out
    assert ratio == pytest.approx(r, rel=1e-6), (lam, kappa, span)


def test_no_attention_and_the_bracket():
    for lam in (0.3, 0.9, 1.0):
        assert local_attention_rate(lam, 1) == pytest.approx(lam**2, rel=1e-14)
    # the proposition's per-step bracket on -ln r (prop-local-attention, long spans)
    for lam in (0.9, 0.99, 1.0):
        eps = -np.log(lam)
        for kappa in (2, 4, 8, 16, 64, 128):
            rate = -np.log(local_attention_rate(lam, kappa))
            assert (2 * eps + np.log(2 * kappa / (kappa + 1))) / kappa <= rate
            assert rate <= (2 * eps + 2 * np.log(2 * kappa)) / kappa
            assert rate > 1.5 * 2 * eps / kappa  # 'the rate divided by kappa' is rejected


def test_a_wrong_weight_is_caught():
    """The equation with the recurrent edge's weight 1/2 instead of (1 + 1/kappa)/2 has
    another root, far outside the test's tolerance: the test above can fail."""
    lam, kappa = 0.9, 8
    b2 = (1 / (2 * kappa)) ** 2
    powers = np.arange(2, kappa + 1)
    lo, hi = 1e-6, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if lam**2 * (0.25 / mid + b2 * np.sum(mid ** -powers.astype(float))) > 1:
            lo = mid
        else:
            hi = mid
    ratio, _ = _late_ratio(lam, kappa)
    assert abs(lo / ratio - 1) > 1e-2


@pytest.mark.parametrize("bad", [dict(lam=0.0, kappa=2), dict(lam=1.1, kappa=2),
                                 dict(lam=0.9, kappa=0), dict(lam=0.9, kappa=2.5)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match="lam|kappa"):
        local_attention_rate(**bad)
