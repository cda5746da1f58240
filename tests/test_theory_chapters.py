"""Tests of what the theory chapters (book/vanishing.ipynb, book/bounds.ipynb,
book/tradeoff.ipynb) add to rsa.theory: the two propositions they prove with their own
bounds, checked on random instances, and their plot functions."""

from __future__ import annotations

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
    edge_weights,
    mean_square_gradient,
    path_jacobians,
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
