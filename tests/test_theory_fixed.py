"""Tests of rsa.theory.fixed: full uniform attention with one fixed orthogonal V at every
step (our result, not the paper's), against the O(L^3) general formula, brute force, the
independent-rotation model it is contrasted with, and a real network with exactly uniform
attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rsa.models import MemRNN
from rsa.tasks import denoise_batch, make_generator
from rsa.theory import (
    crossover_fixed_uniform,
    crossover_uniform,
    edge_weights,
    fixed_orthogonal_mean_square_gradient,
    fixed_uniform_mean_square_gradient,
    loglog_slope,
    mean_square_gradient,
    path_length_sums,
    state_jacobians,
    step_jacobians,
    uniform_mean_square_gradient,
    uniform_path_length_sums,
    uniform_pattern,
)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.floats(0.05, 1.0), st.sampled_from([None, 1, 5, 32]))
def test_fast_uniform_equals_general_formula(L, lam, n):
    W = edge_weights(uniform_pattern(L))
    np.testing.assert_allclose(
        uniform_path_length_sums(lam, L), path_length_sums(W, lam), rtol=1e-12, atol=1e-300
    )
    np.testing.assert_allclose(
        fixed_uniform_mean_square_gradient(lam, L, n),
        fixed_orthogonal_mean_square_gradient(W, lam, n),
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    "lam, t_fixed, t_fixed32, t_independent",
    [(0.9, 16, 16, 37), (0.99, 144, 134, 639), (0.999, 1500, 1376, 9034)],
)
def test_crossover_fixed_matrix(lam, t_fixed, t_fixed32, t_independent):
    """t* with one fixed V is 2.3 to 6 times earlier than with independent rotations, and
    t*(1 - lam) stays between 1.4 and 1.7 (no ln(1/(1 - lam)) factor)."""
    assert crossover_fixed_uniform(lam) == (t_fixed, True)
    assert crossover_fixed_uniform(lam, n=32) == (t_fixed32, True)
    assert crossover_uniform(lam) == (t_independent, True)
    assert 1.4 < t_fixed * (1 - lam) < 1.7
    g = fixed_uniform_mean_square_gradient(lam, t_fixed)  # brute force at t* - 1 and t*
    assert g[t_fixed - 1] > lam ** (2 * (t_fixed - 1))
    assert g[t_fixed - 2] <= lam ** (2 * (t_fixed - 2))


def test_lambda_one_both_models():
    """At lam = 1 uniform attention keeps g(1, 400) = 0.059 with one fixed V (slope about
    -0.14) against 7.3e-6 (slope -2) with independent rotations; no attention keeps 1."""
    fixed = fixed_uniform_mean_square_gradient(1.0, 400)
    independent = uniform_mean_square_gradient(1.0, 400)
    assert f"{fixed[-1]:.2g}" == "0.059"
    assert f"{independent[-1]:.2g}" == "7.3e-06"
    assert -0.2 < loglog_slope(fixed, 200, 400) < -0.1
    assert -2.05 < loglog_slope(independent, 200, 400) < -1.95
    assert crossover_fixed_uniform(1.0) == (None, False)


def test_argument_checks():
    with pytest.raises(ValueError):
        uniform_path_length_sums(0.0, 5)
    with pytest.raises(ValueError):
        fixed_uniform_mean_square_gradient(1.5, 5)
    with pytest.raises(ValueError):
        fixed_uniform_mean_square_gradient(0.5, 5, n=0)
    with pytest.raises(ValueError):
        loglog_slope(np.ones(5), 3, 3)


def test_real_network_follows_fixed_model():
    """Autograd on a real tanh MemRNN with exactly uniform attention (v = 0, so frozen
    attention is exact) and a dense orthogonal V (n = 32, a denoise input of 200 steps):
    g(1, L) within 10 % of the fixed-V model, over 100 times above the independent one."""
    L, n = 200, 32
    x, _ = denoise_batch(L - 20, 1, generator=make_generator(0))
    x = x.double()
    torch.manual_seed(0)
    model = MemRNN(11, n, init="orthogonal_random", fused=False).double()
    with torch.no_grad():
        model.v.zero_()
    J, W = step_jacobians(model, x)
    np.testing.assert_allclose(W, edge_weights(uniform_pattern(L)), atol=1e-12)
    full = state_jacobians(model, x, 0)[:, 0]
    measured = np.linalg.norm(full, axis=(1, 2)) ** 2 / n
    lam_k = np.linalg.norm(J, axis=(1, 2)) / np.sqrt(n)
    fixed = fixed_orthogonal_mean_square_gradient(W, lam_k, n)
    independent = mean_square_gradient(W, lam_k)
    assert abs(measured[-1] / fixed[-1] - 1) < 0.1
    assert measured[-1] / independent[-1] > 100
