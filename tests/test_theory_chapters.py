"""Tests of what the theory chapters (book/vanishing.ipynb, book/bounds.ipynb,
book/kappa_d_tradeoff.ipynb, and the proposition of book/relevancy_screening.ipynb) add to
rsa.theory: the propositions they prove with their own bounds, checked on random
instances, each with a perturbed statement that the same check rejects, and their plot
functions."""

from __future__ import annotations

from fractions import Fraction

import matplotlib.pyplot as plt  # headless: tests/conftest.py sets MPLBACKEND=Agg
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from rsa.plotting import plot_cost_floor, plot_decay_rates, plot_floor_map, plot_gradient_curves
from rsa.theory import (
    chain_edges,
    crossover_estimate,
    crossover_uniform,
    edge_weights,
    mean_square_gradient,
    path_jacobians,
    uniform_mean_square_gradient,
    window_pattern,
)

FAST = settings(max_examples=30, deadline=None)


# -- vanishing: the sandwich for an orthogonal recurrent matrix ---------------------------
@FAST
@given(st.integers(2, 8), st.integers(2, 40), st.floats(0.05, 1.0), st.integers(0, 10**6))
def test_orthogonal_sandwich(n, L, low, seed):
    """sqrt(n) prod geomean(phi') <= ||dh_t/dh_1||_F <= sqrt(n) prod max(phi'), V orthogonal
    (prop-orthogonal-sandwich): the volume bound and the operator-norm bound."""
    rng = np.random.default_rng(seed)
    V = ortho_group.rvs(n, random_state=rng)
    phi_prime = rng.uniform(low, 1.0, (L, n))
    J = phi_prime[:, :, None] * V
    norms = np.linalg.norm(path_jacobians(chain_edges(L), J, 0), axis=(1, 2))
    log_geo = np.concatenate([[0.0], np.cumsum(np.log(phi_prime[1:]).mean(axis=1))])
    log_max = np.concatenate([[0.0], np.cumsum(np.log(phi_prime[1:].max(axis=1)))])
    assert np.all(np.log(norms) >= np.log(np.sqrt(n)) + log_geo - 1e-9)
    assert np.all(np.log(norms) <= np.log(np.sqrt(n)) + log_max + 1e-9)


def test_orthogonal_sandwich_is_attained():
    """Constant phi' = c on every unit: D = c^(t-1) (orthogonal), so both bounds are equal."""
    n, L, c = 4, 12, 0.7
    V = ortho_group.rvs(n, random_state=1)
    D = path_jacobians(chain_edges(L), c * np.broadcast_to(V, (L, n, n)), 0)
    np.testing.assert_allclose(np.linalg.norm(D, axis=(1, 2)),
                               np.sqrt(n) * c ** np.arange(L), rtol=1e-12)


# -- tradeoff: local attention decays exponentially in span / kappa ------------------------
@FAST
@given(st.integers(1, 12), st.integers(1, 60), st.floats(0.05, 1.0))
def test_local_attention_sandwich(kappa, span, lam):
    """(lam / 2 kappa)^(2m) <= g(i, t) <= (lam^2 (1 + 1/kappa) / 2)^m, m = ceil(span/kappa),
    for a window of kappa states and a source i = kappa (prop-local-attention)."""
    W = edge_weights(window_pattern(kappa + span + 1, kappa))
    g = mean_square_gradient(W, lam, kappa)[-1]
    m = -(-span // kappa)
    log_lower = 2 * m * np.log(lam / (2 * kappa))
    log_upper = m * np.log(lam ** 2 * (1 + 1 / kappa) / 2)
    assert log_lower - 1e-9 <= np.log(g) <= log_upper + 1e-9


def test_local_attention_upper_bound_needs_full_windows():
    """The upper bound is stated for sources i >= kappa, whose later windows are full.
    From the first state it fails: step 2 attends to h_1 alone, an edge of weight 1."""
    kappa, lam = 9, 1.0
    W = edge_weights(window_pattern(2, kappa))
    g = mean_square_gradient(W, lam, 0)[-1]  # source 0, span 1: m = 1
    assert g == pytest.approx(1.0) and g > lam ** 2 * (1 + 1 / kappa) / 2


@pytest.mark.parametrize("kappa", [2, 4, 16, 64])
def test_local_attention_rate_is_not_the_rate_divided_by_kappa(kappa):
    """-ln g / span lies between (2 eps + ln(2 kappa/(kappa+1))) / kappa and
    2 (eps + ln 2 kappa) / kappa (+ O(1/span)): at lam = 1 local attention still decays
    although no attention does not. 'The rate divided by kappa', 2 eps / kappa, is below
    the lower bound."""
    span = 1000
    for lam in (0.9, 0.99, 1.0):
        eps = -np.log(lam)
        W = edge_weights(window_pattern(kappa + span + 1, kappa))
        rate = -np.log(mean_square_gradient(W, lam, kappa)[-1]) / span
        m = -(-span // kappa)
        lower = m / span * np.log(2 / (lam ** 2 * (1 + 1 / kappa)))
        upper = 2 * m / span * np.log(2 * kappa / lam)
        assert lower - 1e-12 <= rate <= upper + 1e-12
        assert (2 * eps + np.log(2 * kappa / (kappa + 1))) / kappa <= lower + 1e-12
        assert rate > 1.5 * 2 * eps / kappa


# -- bounds: uniform attention, the O(1/t^2) upper bound and where attention helps --------
def _uniform_b_exact(t_max):
    """(t-1)^2 g(1, t) at lam = 1 in exact rational arithmetic, t = 2..t_max."""
    a = Fraction(1, 4)
    g, S, out = [Fraction(0), Fraction(1)], [Fraction(0), Fraction(1)], {}
    for t in range(2, t_max + 1):  # g[t], S[t] = g[1] + ... + g[t]
        g.append(a / (t - 1) ** 2 * (S[t - 2] + t ** 2 * g[t - 1]))
        S.append(S[t - 1] + g[t])
        out[t] = (t - 1) ** 2 * g[t]
    return out


def test_uniform_upper_bound_constant_is_three():
    """thm-uniform-upper: (t-1)^2 g(1, t) <= 3 lam^2, attained at lam = 1, t = 4.

    The proof's finite part: exact values for t <= 10; then, with S <= 2 / (1 - (pi^2/6 +
    5/4)/4) and r_t = (t/(t-2))^2 / 4 <= r_11 for t >= 11, b_t <= S/4 + r_11 * 3 <= 3."""
    b = _uniform_b_exact(10)
    assert max(b.values()) == 3 and b[4] == 3
    S_max = 2 / (1 - (np.pi ** 2 / 6 + 5 / 4) / 4)
    r_11 = (11 / 9) ** 2 / 4
    assert S_max / 4 + r_11 * 3 <= 3
    # numerically, at every lam and far out: below 3 lam^2, and 2.9 lam^2 is not a bound
    for lam in (0.3, 0.9, 1.0):
        g = uniform_mean_square_gradient(lam, 20_000)
        k = np.arange(1, 20_000)  # (t - 1) is the 0-based position
        ratio = k ** 2 * g[k] / lam ** 2
        assert ratio.max() <= 3 + 1e-12
    assert ratio.max() > 2.9  # lam = 1
    # and the sum S_1 is below its proven bound
    assert uniform_mean_square_gradient(1.0, 20_000).sum() < S_max


@pytest.mark.parametrize("lam", [0.9, 0.95, 0.99, 0.999])
def test_crossover_bracket_and_its_growth(lam):
    """1 + x_+(3 lam^2) <= t* <= 1 + x_+(lam^2 / 4) (prop-crossover), and t* (1 - lam)
    grows like ln(1/(1 - lam)): a claim t* = O(1/(1 - lam)) would be rejected."""
    t_star, stays = crossover_uniform(lam)
    assert stays
    assert crossover_estimate(lam, 3 * lam ** 2) <= t_star <= crossover_estimate(lam,
                                                                                  lam ** 2 / 4) + 1
    eps = -np.log(lam)
    assert 0.5 < t_star * eps / np.log(1 / eps) < 2


def test_crossover_growth_rejects_one_over_one_minus_lam():
    values = [crossover_uniform(lam)[0] * (1 - lam) for lam in (0.9, 0.99, 0.999)]
    assert values[2] > 2 * values[0]


# -- relevancy screening: prop-uniform-freezes-r and its margin -------------------------------
def _sigma(j, nu, rho):
    """The exit score of h_j (1-based) under exactly uniform attention."""
    return sum(Fraction(1, min(t - 1, nu + rho)) for t in range(j + 1, j + nu + 1))


def _replay(scores, rho):
    """R after every state has left S, by the rule (first minimum, strictly greater),
    from the exit scores in the order the states leave S. Returns sorted 1-based j."""
    R = []
    for j, s in enumerate(scores, start=1):
        if len(R) < rho:
            R.append((j, s))
        elif rho > 0:
            k = min(range(rho), key=lambda m: R[m][1])
            if s > R[k][1]:
                R[k] = (j, s)
    return sorted(j for j, _ in R)


@pytest.mark.parametrize("nu, rho", [(15, 15), (10, 15), (1, 3), (5, 1), (30, 2)])
def test_uniform_scores_threshold_is_nu_plus_rho(nu, rho):
    """sigma_j strictly decreases for j < nu + rho and equals nu/(nu + rho) from
    j = nu + rho on: the threshold j >= rho + 1 of the first version is rejected."""
    sig = [_sigma(j, nu, rho) for j in range(1, 3 * (nu + rho))]
    steady = Fraction(nu, nu + rho)
    for j, s in enumerate(sig, start=1):
        assert (s == steady) == (j >= nu + rho)
        if j < nu + rho:
            assert sig[j] < s
    assert sig[rho] - sig[rho - 1] == Fraction(1, nu + rho) - Fraction(1, rho)
    if nu > 1:
        assert sig[rho] != steady  # j = rho + 1 is not yet steady


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(0, 10**6))
def test_margin_keeps_the_first_states_and_is_sharp(nu, rho, seed):
    """Exit scores within Delta of uniform, 2 Delta <= 1/rho - 1/(nu + rho): R keeps
    h_1..h_rho. A Delta just above half the margin can let h_{rho+1} in."""
    rng = np.random.default_rng(seed)
    n_states = 3 * (nu + rho)
    sig = np.array([float(_sigma(j, nu, rho)) for j in range(1, n_states + 1)])
    margin = 1 / rho - 1 / (nu + rho)
    delta = margin / 2 * (1 - 1e-9)
    noisy = sig + rng.uniform(-delta, delta, n_states)
    assert _replay(noisy, rho) == list(range(1, rho + 1))
    bad = sig.copy()
    bad[rho] += 0.51 * margin  # h_{rho+1}
    bad[rho - 1] -= 0.51 * margin  # h_rho
    assert _replay(bad, rho) != list(range(1, rho + 1))


# -- plot functions -------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_plot_gradient_curves_kinds_and_log_axis():
    t = np.arange(1, 11)
    curves = [{"x": t, "y": 0.5 ** t, "label": "measured", "model": "RNN"},
              {"x": t, "y": 0.5 ** t, "label": "check", "kind": "check", "every": 2},
              {"x": t, "y": 0.4 ** t, "yerr": 0.01 * 0.4 ** t, "label": "mc", "kind": "mc"},
              {"x": t, "y": np.r_[0.0, 0.3 ** t[1:]], "label": "bound", "kind": "bound"}]
    fig = plot_gradient_curves(curves, legend_loc="outside", ylim=(1e-6, 2))
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylim() == pytest.approx((1e-6, 2))
    assert [h.get_text() for h in ax.get_legend().get_texts()] == \
        ["measured", "check", "mc", "bound"]  # the order given
    assert len(ax.lines[1].get_xdata()) == 5  # every second point
    bound = [line for line in ax.lines if line.get_label() == "bound"][0]
    assert len(bound.get_xdata()) == 9  # the zero is left out on a log axis
    with pytest.raises(ValueError, match="kind must be one of"):
        plot_gradient_curves([{"x": t, "y": t, "label": "x", "kind": "dotted"}])


def test_plot_decay_rates_and_floor_map_and_cost_floor():
    table = pd.DataFrame({"predicted": [0.1, 0.3, 0.1, 0.3], "measured": [0.08, 0.31, 0.05, 0.2],
                          "group": ["a", "a", "b", "b"], "setting": [0.1, 1.0, 0.1, 1.0]})
    fig = plot_decay_rates(table)
    assert fig.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="missing column"):
        plot_decay_rates(table.drop(columns="group"))

    values = np.array([[1e-2, 1e-5, 1e-9], [1e-3, 1e-4, 1e-20]])
    fig = plot_floor_map(values, [1, 2, 4], [1, 3], contours=(values, [-6]),
                         contour_label="level", curve=([1, 4], [3, 1], "line"), vmin=-10)
    assert len(fig.axes) == 2  # the map and its colour bar
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"-2", "-20", "-5"} <= texts  # every cell's log10 value is written
    with pytest.raises(ValueError, match=r"shape \(len\(ys\), len\(xs\)\) = \(2, 2\)"):
        plot_floor_map(values, [1, 2], [1, 3])

    picture = pd.DataFrame({"family": ["A", "A", "B", "B", "C"],
                            "group": ["x", "y", None, None, None],
                            "cost": [1, 2, 3, 4, 5], "floor": [1e-3, 1e-2, 1e-5, 1e-4, 1e-1]})
    fig = plot_cost_floor(picture, references={"ref": 1e-6}, colors={"C": "red"})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["A, x", "A, y", "B", "C", "ref"]
    with pytest.raises(ValueError, match="missing column"):
        plot_cost_floor(picture.drop(columns="floor"))
