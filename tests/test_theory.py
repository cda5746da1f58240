"""Tests of rsa.theory: the path expansion, its dynamic programs and bounds (paper.md §3).

References used: a per-element Python loop and a brute-force enumeration of paths for
the DPs, autograd on a linear scalar recurrence for the first-moment DP, Monte Carlo
with Haar matrices for the random-orthogonal DP, explicit nonnegative matrices for the
no-cancellation bound, and autograd on the real models for the path expansion itself.
"""

from __future__ import annotations

import itertools
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rsa.theory import (
    bound_no_attention,
    bound_sparse_chain,
    bound_uniform,
    chain_edges,
    chain_pattern,
    crossover_estimate,
    crossover_uniform,
    direct_edge_lower_bound,
    edge_weights,
    fixed_orthogonal_mean_square_gradient,
    haar_matrices,
    jacobian_norms,
    loss_gradient_norms,
    loss_gradient_path_sum,
    loss_gradients,
    loss_path_expansion,
    max_path_product,
    mean_square_gradient,
    mean_square_gradient_matrix,
    mean_square_loss_gradient,
    monte_carlo_gradient,
    monte_carlo_loss_gradient,
    path_jacobians,
    path_length_sums,
    path_sum,
    pattern_from_trace,
    random_sparse_pattern,
    sparse_crossover_span,
    state_jacobians,
    step_jacobians,
    uniform_asymptote,
    uniform_mean_square_gradient,
    uniform_pattern,
    window_pattern,
)

FAST = settings(max_examples=40, deadline=None)
lams = st.floats(min_value=1e-3, max_value=1.0)


def _patterns(L=24, seed=0):
    """A few attention patterns of every kind, by name."""
    return {
        "uniform": uniform_pattern(L),
        "window": window_pattern(L, 4),
        "chain": chain_pattern(L, 3, 3)[0],
        "sparse": random_sparse_pattern(L, 3, seed),
    }


def _slow_dp(W, lam, i, power):
    """The recursion of paper.md §3, one scalar at a time."""
    L = len(W)
    f = [0.0] * L
    f[i] = 1.0
    for t in range(i + 1, L):
        f[t] = lam ** power * sum(W[t][j] ** power * f[j] for j in range(i, t))
    return np.array(f)


def _brute_force(W, lam, i, t, power):
    """Sum over every increasing path i -> t of prod (lam w)^power, paths enumerated."""
    if t == i:
        return 1.0
    total = 0.0
    inner = range(i + 1, t)
    for size in range(len(inner) + 1):
        for mid in itertools.combinations(inner, size):
            path = (i, *mid, t)
            total += np.prod([(lam * W[b, a]) ** power for a, b in itertools.pairwise(path)])
    return total


# -- patterns ----------------------------------------------------------------------------
def _assert_pattern(A):
    L = len(A)
    assert A.shape == (L, L)
    assert np.all(A >= 0) and not np.any(np.triu(A))
    assert np.all(A[0] == 0)
    np.testing.assert_allclose(A[1:].sum(axis=1), 1.0, rtol=1e-12)


@FAST
@given(st.integers(1, 40), st.integers(1, 8), st.integers(0, 10**6))
def test_patterns_are_attention_patterns(L, kappa, seed):
    for A in (uniform_pattern(L), window_pattern(L, kappa),
              random_sparse_pattern(L, kappa, seed)):
        _assert_pattern(A)
    assert np.all((window_pattern(L, kappa) > 0).sum(axis=1) <= kappa)
    assert np.all((random_sparse_pattern(L, kappa, seed) > 0).sum(axis=1) <= kappa)
    k = np.arange(1, L)
    np.testing.assert_allclose(uniform_pattern(L)[k, 0], 1.0 / k)


@FAST
@given(st.integers(2, 50), st.integers(1, 6), st.integers(1, 6), st.booleans(),
       st.integers(0, 10**6))
def test_chain_pattern_plants_the_chain(L, d, kappa, random, seed):
    d = min(d, L - 1)
    A, r = chain_pattern(L, d, kappa, seed if random else None)
    _assert_pattern(A)
    assert r[0] == 0 and r[-1] == L - 1 and len(r) == d + 1 and np.all(np.diff(r) > 0)
    assert np.all(A[r[1:], r[:-1]] >= 1.0 / kappa - 1e-15)
    assert np.all((A > 0).sum(axis=1) <= kappa)


def test_pattern_from_trace_hand_made():
    # T = 4, B = 2, K = 3; example 1 has slots out of order and one empty slot
    alpha = torch.zeros(4, 2, 3)
    index = torch.full((4, 2, 3), -1)
    alpha[1, 1, 2], index[1, 1, 2] = 1.0, 0
    alpha[2, 1, :2], index[2, 1, :2] = torch.tensor([0.25, 0.75]), torch.tensor([1, 0])
    alpha[3, 1], index[3, 1] = torch.tensor([0.5, 0.2, 0.3]), torch.tensor([2, 0, 1])
    alpha[3, 0, 0], index[3, 0, 0] = 1.0, 2
    trace = types.SimpleNamespace(alpha=alpha, index=index)
    expected = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [0.75, 0.25, 0, 0], [0.2, 0.3, 0.5, 0]])
    np.testing.assert_allclose(pattern_from_trace(trace, b=1), expected)
    assert pattern_from_trace(trace, b=0)[3, 2] == 1.0
    with pytest.raises(ValueError, match=r"b must be an int in \[0, 1\], got 2"):
        pattern_from_trace(trace, b=2)
    index[2, 0, 0] = 2  # a step attending to itself
    with pytest.raises(ValueError, match="step 2 attends to position 2"):
        pattern_from_trace(trace, b=0)


# -- step 1: edges -------------------------------------------------------------------------
def test_edge_weights():
    A = random_sparse_pattern(15, 4, 1)
    W = edge_weights(A)
    k = np.arange(1, 15)
    np.testing.assert_allclose(W[1:].sum(axis=1), 1.0)
    np.testing.assert_allclose(W[k, k - 1], (1 + A[k, k - 1]) / 2)
    off = np.tril(np.ones((15, 15)), -2).astype(bool)
    np.testing.assert_allclose(W[off], A[off] / 2)
    np.testing.assert_array_equal(chain_edges(4), np.eye(4, k=-1))


@pytest.mark.parametrize("A, match", [
    (np.zeros((3, 3)), "row 1 sums to 0.0"),
    (np.ones((2, 2)), r"strictly lower triangular .* A\[0, 0\] = 1.0"),
    (np.array([[0, 0], [-1.0, 0]]), "finite entries >= 0"),
    (np.zeros((2, 3)), r"square \(L, L\) array"),
])
def test_edge_weights_rejects_non_patterns(A, match):
    with pytest.raises(ValueError, match=match):
        edge_weights(A)


@pytest.mark.parametrize("call, match", [
    (lambda: mean_square_gradient(chain_edges(3), -0.5), "lam must be finite and >= 0"),
    (lambda: mean_square_gradient(chain_edges(3), 0.5, i=3), r"i must be an int in \[0, 2\]"),
    (lambda: path_sum(chain_edges(3), [1.0, 1.0]), r"shape \(3,\), got shape \(2,\)"),
    (lambda: monte_carlo_gradient(chain_edges(3), 0.5, 0, 10), "n must be an int >= 1, got 0"),
    (lambda: chain_pattern(5, 5, 2), r"d must be an int in \[1, L - 1\] = \[1, 4\], got 5"),
    (lambda: window_pattern(5, 0), "nu must be an int >= 1, got 0"),
    (lambda: bound_uniform(0.5, 1), "t .* must be an int >= 2"),
    (lambda: bound_sparse_chain(0.5, 0.5, 2), "kappa must be finite and >= 1.0"),
    (lambda: bound_no_attention(0.5, -1), "span = t - i must be an int >= 0"),
    (lambda: uniform_mean_square_gradient(0.5, 5, i=5), r"i must be an int in \[0, 4\]"),
    (lambda: uniform_asymptote(1.5), r"lam must be a number in \[0.0, 1.0\], got 1.5"),
    (lambda: crossover_uniform(0.0), r"lam must be a number in \(0.0, 1.0\], got 0.0"),
    (lambda: mean_square_loss_gradient(chain_edges(3), 0.5, [1.0, 1.0]),
     r"gamma_sq must have shape \(3,\), got shape \(2,\)"),
    (lambda: loss_path_expansion(chain_edges(3), np.zeros((3, 2, 2)), np.zeros((3, 3))),
     r"J must be \(3, n, n\) and gamma \(3, n\)"),
    (lambda: fixed_orthogonal_mean_square_gradient(chain_edges(3), 0.5, n=0),
     "n must be an int >= 1, got 0"),
])
def test_errors_name_value_and_range(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- the dynamic programs against slow references --------------------------------------------
@pytest.mark.parametrize("name", ["uniform", "window", "chain", "sparse"])
def test_dp_matches_the_per_element_loop(name):
    W = edge_weights(_patterns(20)[name])
    for i in (0, 5):
        np.testing.assert_allclose(mean_square_gradient(W, 0.9, i), _slow_dp(W, 0.9, i, 2),
                                   rtol=1e-12, atol=0)
        np.testing.assert_allclose(path_sum(W, 0.9, i), _slow_dp(W, 0.9, i, 1),
                                   rtol=1e-12, atol=0)
    G = mean_square_gradient_matrix(W, 0.9)
    for i in range(20):
        np.testing.assert_allclose(G[i], mean_square_gradient(W, 0.9, i), rtol=1e-10,
                                   atol=1e-300)


def test_dps_are_sums_over_enumerated_paths():
    rng = np.random.default_rng(2)
    W = edge_weights(random_sparse_pattern(9, 3, rng))
    for i in (0, 2):
        g, f = mean_square_gradient(W, 0.7, i), path_sum(W, 0.7, i)
        for t in range(i, 9):
            assert g[t] == pytest.approx(_brute_force(W, 0.7, i, t, 2), rel=1e-12)
            assert f[t] == pytest.approx(_brute_force(W, 0.7, i, t, 1), rel=1e-12)
        assert np.all(g[:i] == 0) and np.all(f[:i] == 0)


def test_path_sum_is_the_gradient_of_a_scalar_linear_recurrence():
    """n = 1, J_k = lam_k exactly: dh_t/dh_i is the sum over paths, cross terms included."""
    L, i = 14, 3
    rng = np.random.default_rng(3)
    W = edge_weights(random_sparse_pattern(L, 4, rng))
    lam = rng.uniform(0.5, 1.5, L)
    Wt, lt = torch.tensor(W), torch.tensor(lam)
    x = torch.randn(L, dtype=torch.float64)
    h = [x[k] for k in range(i)] + [torch.tensor(0.3, dtype=torch.float64, requires_grad=True)]
    for k in range(i + 1, L):
        h.append(lt[k] * sum(Wt[k, j] * h[j] for j in range(k)) + x[k])
    grads = [torch.autograd.grad(h[t], h[i], retain_graph=True)[0] for t in range(i, L)]
    np.testing.assert_allclose(path_sum(W, lam, i)[i:], [float(g) for g in grads], rtol=1e-12)
    # and path_jacobians with 1 x 1 Jacobians is the same recursion
    np.testing.assert_allclose(path_jacobians(W, lam[:, None, None], i)[:, 0, 0],
                               path_sum(W, lam, i), rtol=1e-12)


# -- step 2: random-orthogonal model against Monte Carlo ------------------------------------
@pytest.mark.parametrize("name", ["uniform", "window", "chain", "sparse"])
def test_dp_agrees_with_monte_carlo(name):
    W = edge_weights(_patterns(24, seed=4)[name])
    lam, i = 0.95, 2
    g = mean_square_gradient(W, lam, i)
    mean, sem = monte_carlo_gradient(W, lam, n=32, samples=300, rng=5, i=i)
    t = np.arange(i + 1, 24)
    # + 1e-12 g: at t = i + 1 the norm is deterministic (one orthogonal factor), sem ~ 0
    assert np.all(np.abs(mean[t] - g[t]) <= 4 * sem[t] + 1e-12 * g[t])
    assert mean[i] == pytest.approx(1.0) and np.all(mean[:i] == 0)
    # the comparison has power: coherent paths (sum of products, squared) are rejected
    if name == "uniform":
        assert np.max(np.abs(mean[t] - path_sum(W, lam, i)[t] ** 2) / sem[t]) > 10


def test_monte_carlo_without_attention_is_exact():
    """Orthogonal J_k preserve norms: on the chain every sample gives lam^(2(t-i))."""
    mean, sem = monte_carlo_gradient(chain_edges(10), 0.8, n=5, samples=4, rng=0, i=1)
    span = np.arange(9)
    np.testing.assert_allclose(mean[1:], 0.8 ** (2 * span), rtol=1e-12)
    np.testing.assert_allclose(sem, 0, atol=1e-14)


# -- bounds hold for the DP ------------------------------------------------------------------
@FAST
@given(st.integers(2, 60), lams, st.data())
def test_uniform_bound_holds(L, lam, data):
    i = data.draw(st.integers(0, L - 2))
    g = mean_square_gradient(edge_weights(uniform_pattern(L)), lam, i)
    k = np.arange(i + 1, L)  # 0-based positions; the paper's step is t = k + 1
    assert np.all(g[k] >= bound_uniform(lam, k + 1) * (1 - 1e-12))


@FAST
@given(st.integers(2, 60), st.integers(1, 8), st.integers(1, 6), lams, st.booleans(),
       st.integers(0, 10**6))
def test_sparse_chain_bound_holds_on_planted_chains(L, d, kappa, lam, random, seed):
    d = min(d, L - 1)
    A, r = chain_pattern(L, d, kappa, seed if random else None)
    g = mean_square_gradient(edge_weights(A), lam)
    assert np.all(g[r] >= bound_sparse_chain(lam, kappa, np.arange(d + 1)) * (1 - 1e-12))


@FAST
@given(st.integers(2, 60), st.integers(1, 6), lams, st.integers(0, 10**6))
def test_sparse_chain_bound_holds_along_the_heaviest_chain(L, kappa, lam, seed):
    """In a kappa-sparse pattern some weight of every row is >= 1/kappa: follow it back."""
    A = random_sparse_pattern(L, kappa, seed)
    r = [L - 1]
    while r[-1] > 0:
        r.append(int(np.argmax(A[r[-1]])))
    r = r[::-1]
    assert np.all(A[r[1:], r[:-1]] >= (1 - 1e-12) / kappa)  # Dirichlet(1) of one: 1 - eps
    g = mean_square_gradient(edge_weights(A), lam)
    assert g[-1] >= bound_sparse_chain(lam, kappa, len(r) - 1) * (1 - 1e-12)


@FAST
@given(st.integers(2, 40), st.sampled_from(["uniform", "window", "chain", "sparse"]), lams,
       st.integers(0, 10**6))
def test_largest_path_le_rms_le_sum_of_paths(L, name, lam, seed):
    """max path product^2 <= g = sum of squared products <= (sum of products)^2."""
    L = max(L, 4)
    W = edge_weights(_patterns(L, seed)[name])
    m, g, f = max_path_product(W, lam), mean_square_gradient(W, lam), path_sum(W, lam)
    assert np.all(m ** 2 <= g * (1 + 1e-12)) and np.all(g <= f ** 2 * (1 + 1e-12))


# -- bounds are tight where they should be ------------------------------------------------
@pytest.mark.parametrize("lam", [0.3, 0.9, 1.0])
def test_no_attention_is_exactly_lam_to_the_span(lam):
    g = mean_square_gradient(chain_edges(30), lam, i=4)
    span = np.arange(26)
    np.testing.assert_allclose(g[4:], bound_no_attention(lam, span) ** 2, rtol=1e-12)
    assert np.all(g[:4] == 0)


def test_uniform_bound_is_attained_as_lam_goes_to_zero():
    """The direct edge i -> t is the only one-edge path; longer ones are O(lam^4)."""
    lam, L = 1e-4, 16
    W = edge_weights(uniform_pattern(L))
    for i in (0, 5):
        k = np.arange(i + 2, L)  # i < t - 1: the edge carries attention only
        ratio = mean_square_gradient(W, lam, i)[k] / bound_uniform(lam, k + 1)
        assert np.all(ratio >= 1) and np.all(ratio < 1 + 1e-6)


@pytest.mark.parametrize("d, kappa", [(1, 1), (3, 2), (4, 3), (2, 5)])
def test_sparse_bound_is_attained_as_lam_goes_to_zero(d, kappa):
    """Gaps r_l - r_{l-1} = kappa + 2 > kappa: the chain is the only path with d edges,
    each of weight exactly 1/(2 kappa) (no recurrent edge on it), so g / bound -> 1."""
    L = d * (kappa + 2) + 1
    A, r = chain_pattern(L, d, kappa)
    assert np.all(np.diff(r) == kappa + 2)
    ratio = mean_square_gradient(edge_weights(A), 1e-3)[-1] / bound_sparse_chain(1e-3, kappa, d)
    assert 1 <= ratio < 1 + 1e-5


def test_long_sequence_dp():
    """L = 5000, full uniform attention: O(L^2), a couple of seconds."""
    L = 5000
    g = mean_square_gradient(edge_weights(uniform_pattern(L)), 0.9)
    k = np.arange(1, L)
    assert np.all(np.isfinite(g)) and np.all(g[k] >= bound_uniform(0.9, k + 1))


# -- deterministic bounds with explicit matrices ------------------------------------------
def test_no_cancellation_bound_with_nonnegative_jacobians():
    rng = np.random.default_rng(6)
    L, n, i = 16, 6, 2
    W = edge_weights(random_sparse_pattern(L, 3, rng))
    J = rng.random((L, n, n)) * 0.4
    mu = np.linalg.norm(J, axis=1).min(axis=-1)  # smallest column norm: ||J u|| >= mu ||u||
    D = path_jacobians(W, J, i)
    m = max_path_product(W, mu, i)
    assert np.all(m[i:] > 0) and np.all(m[:i] == 0)
    u = np.abs(rng.standard_normal((n, 50)))
    u /= np.linalg.norm(u, axis=0)
    assert np.all(np.linalg.norm(D @ u, axis=1)[i:] >= m[i:, None] * (1 - 1e-12))
    assert np.all(np.linalg.norm(D, ord=2, axis=(1, 2))[i:] >= m[i:] * (1 - 1e-12))


def test_no_cancellation_bound_is_tight_for_scaled_permutations():
    rng = np.random.default_rng(7)
    L, n, mu = 12, 5, 0.7
    J = mu * np.stack([np.eye(n)[rng.permutation(n)] for _ in range(L)])
    D = path_jacobians(chain_edges(L), J, 1)
    np.testing.assert_allclose(np.linalg.norm(D, ord=2, axis=(1, 2))[1:],
                               max_path_product(chain_edges(L), mu, 1)[1:], rtol=1e-12)
    np.testing.assert_allclose(max_path_product(chain_edges(L), mu, 1)[1:],
                               mu ** np.arange(L - 1), rtol=1e-12)


def test_no_attention_norm_bound_with_contractive_jacobians():
    rng = np.random.default_rng(8)
    L, n, lam = 20, 6, 0.9
    J = rng.standard_normal((L, n, n))
    J *= lam / np.linalg.norm(J, ord=2, axis=(1, 2))[:, None, None]
    D = path_jacobians(chain_edges(L), J, 0)
    norms = np.linalg.norm(D, ord=2, axis=(1, 2))
    assert np.all(norms <= bound_no_attention(lam, np.arange(L)) * (1 + 1e-12))


# -- the path expansion is the frozen-attention Jacobian of the real models ---------------
def _tanh_jacobians(model, x):
    """J_k = diag(1 - h_k^2) V per step and example: (T, B, n, n)."""
    H = model(x).detach()
    return ((1 - H ** 2)[..., None] * model.V.weight.detach()).numpy()


@pytest.mark.parametrize("kind", ["RelRNN", "MemRNN"])
def test_path_expansion_is_the_frozen_attention_gradient(kind):
    models = pytest.importorskip("rsa.models")
    torch.manual_seed(0)
    model = (models.RelRNN(3, 5, nu=3, rho=2) if kind == "RelRNN"
             else models.MemRNN(3, 5)).double()
    T, B, i = 14, 2, 2
    x = torch.randn(T, B, 3, dtype=torch.float64)
    _, trace = model(x, record=True)
    J = _tanh_jacobians(model, x)
    frozen = state_jacobians(model, x, i, freeze_attention=True)
    full = state_jacobians(model, x, i)
    for b in range(B):
        A = pattern_from_trace(trace, b)
        if kind == "RelRNN":
            assert np.all((A > 0).sum(axis=1) <= model.nu + model.rho)
        D = path_jacobians(edge_weights(A), J[:, b], i)
        np.testing.assert_allclose(frozen[:, b], D, rtol=1e-9, atol=1e-12)
        # differentiating alpha adds terms the path expansion leaves out
        assert np.max(np.abs(full[i + 2:, b] - D[i + 2:])) > 1e-6


def test_rnn_gradient_is_the_chain():
    models = pytest.importorskip("rsa.models")
    torch.manual_seed(1)
    model = models.RNN(3, 4).double()
    x = torch.randn(10, 2, 3, dtype=torch.float64)
    J = _tanh_jacobians(model, x)
    D = state_jacobians(model, x, 3)
    for b in range(2):
        np.testing.assert_allclose(D[:, b], path_jacobians(chain_edges(10), J[:, b], 3),
                                   rtol=1e-9, atol=1e-12)


def test_jacobian_and_loss_gradient_norms():
    models = pytest.importorskip("rsa.models")
    torch.manual_seed(2)
    model = models.RelRNN(3, 4, nu=2, rho=2).double()
    T, B, n = 12, 3, 4
    x = torch.randn(T, B, 3, dtype=torch.float64)
    norms = jacobian_norms(model, x, 4, freeze_attention=True)
    D = state_jacobians(model, x, 4, freeze_attention=True)
    np.testing.assert_allclose(norms, np.linalg.norm(D, axis=(2, 3)))
    np.testing.assert_allclose(norms[4], np.sqrt(n))
    assert np.all(norms[:4] == 0)

    c = torch.randn(n, dtype=torch.float64)
    for freeze in (False, True):
        grad = loss_gradient_norms(model, x, lambda H: (H[-1] * c).sum(), freeze)
        assert grad.shape == (T,)
        assert grad[-1] == pytest.approx(np.sqrt(B) * float(c.norm()))
        for t in (0, 5):  # dL/dh_t = (dh_T/dh_t)^T c for each example
            D_t = state_jacobians(model, x, t, freeze_attention=freeze)[-1]
            assert grad[t] == pytest.approx(np.linalg.norm(D_t.transpose(0, 2, 1) @ c.numpy()))


# -- uniform attention in O(L), its limit, and the crossover with no attention ------------
@FAST
@given(st.integers(2, 80), st.floats(0.01, 1.0), st.data())
def test_uniform_recursion_is_the_dp(L, lam, data):
    i = data.draw(st.integers(0, L - 1))
    np.testing.assert_allclose(uniform_mean_square_gradient(lam, L, i),
                               mean_square_gradient(edge_weights(uniform_pattern(L)), lam, i),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("lam, i", [(0.5, 0), (0.9, 0), (1.0, 0), (0.9, 7)])
def test_uniform_limit_constant(lam, i):
    """(t-1)^2 g(i, t) -> lam^2 S_i / (4 - lam^2); the constant without the factor
    4 / (4 - lam^2) (the direct edges alone, summed) is rejected."""
    c = uniform_asymptote(lam, i)
    k = 50_000  # the paper's t - 1 is the 0-based position k
    b = k ** 2 * uniform_mean_square_gradient(lam, k + 1, i)[k]
    assert b == pytest.approx(c, rel=1e-3)
    assert abs(b / (lam ** 2 * c * (4 - lam ** 2) / lam ** 2 / 4) - 1) > 0.05


@pytest.mark.parametrize("lam", [0.3, 0.6, 0.9, 0.97, 0.99])
def test_crossover_against_brute_force(lam):
    t_star, stays = crossover_uniform(lam)
    L = t_star + 200
    g = mean_square_gradient(edge_weights(uniform_pattern(L)), lam)
    t = np.arange(1, L + 1)  # the paper's step
    helps = g > lam ** (2.0 * (t - 1))
    assert not helps[2:t_star - 1].any() and helps[t_star - 1:].all() and stays
    # within the proven bracket: beyond 1 + x_+(lam^2/4) attention helps at every step
    assert t_star <= np.ceil(crossover_estimate(lam, lam ** 2 / 4))
    if lam > np.sqrt(3) / 2:  # then (t-1) lam^(t-1) > sqrt(3) lam from t = 3 on
        assert t_star >= crossover_estimate(lam, 3 * lam ** 2)
    # the estimate with the limit constant is within one step (observed)
    assert abs(t_star - crossover_estimate(lam, uniform_asymptote(lam))) < 1


def test_crossover_estimate_solves_its_equation():
    for lam, beta in [(0.9, 0.2), (0.99, 1.1), (0.999, 3.0)]:
        t = crossover_estimate(lam, beta)
        assert (t - 1) ** 2 * lam ** (2 * (t - 1)) == pytest.approx(beta, rel=1e-9)
        assert t - 1 > 1 / -np.log(lam)  # the larger root
    assert np.isnan(crossover_estimate(0.5, 3.0))  # eps sqrt(beta) > 1/e: no root
    assert crossover_estimate(1.0, 0.5) == np.inf
    assert crossover_uniform(1.0) == (None, False)


def test_sparse_crossover_span_on_planted_chains():
    """Links longer than the window: g equals (lam/2kappa)^(2d), so the chain beats no
    attention exactly beyond d ln(2 kappa / lam) / ln(1/lam)."""
    lam, kappa = 0.99, 4
    for d in (1, 2):
        span_star = sparse_crossover_span(lam, kappa, d)
        for span, helps in ((int(span_star) - 3, False), (int(span_star) + 4, True)):
            A, _ = chain_pattern(span + 1, d, kappa)
            g = mean_square_gradient(edge_weights(A), lam)[-1]
            assert g == pytest.approx(bound_sparse_chain(lam, kappa, d), rel=1e-6)
            assert (g > lam ** (2 * span)) == helps
    assert sparse_crossover_span(1.0, 4, 1) == np.inf


@FAST
@given(st.integers(2, 30), st.sampled_from(["uniform", "window", "chain", "sparse"]),
       st.integers(0, 10**6))
def test_at_lam_one_no_pattern_beats_no_attention(L, name, seed):
    """lam = 1: g <= 1 (no attention: g = 1), < 1 from the first step that spreads."""
    L = max(L, 4)
    A = _patterns(L, seed)[name]
    g = mean_square_gradient(edge_weights(A), 1.0)
    assert np.all(g <= 1 + 1e-12)
    spreads = np.nonzero(A[1:].max(axis=1) < 1 - 1e-9)[0] + 1  # rows not all on one state
    if len(spreads):
        assert np.all(g[spreads[0]:] < 1)


# -- the loss gradient --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["uniform", "window", "chain", "sparse"])
def test_loss_gradient_dp(name):
    rng = np.random.default_rng(11)
    L = 30
    W = edge_weights(_patterns(L, 3)[name])
    lam = rng.uniform(0.5, 1.0, L)
    e_sq = np.zeros(L)
    e_sq[-8:] = rng.uniform(0.5, 2.0, 8)
    e_sq[10] = 1.0  # a loss step in the middle too
    G = mean_square_loss_gradient(W, lam, e_sq)
    np.testing.assert_allclose(G, mean_square_gradient_matrix(W, lam) @ e_sq, rtol=1e-12)
    # the path sum version is sum_t f(i, t) ||e_t||
    F = np.array([path_sum(W, lam, i) for i in range(L)])
    np.testing.assert_allclose(loss_gradient_path_sum(W, lam, np.sqrt(e_sq)),
                               F @ np.sqrt(e_sq), rtol=1e-12)


@pytest.mark.parametrize("name", ["uniform", "window", "sparse"])
def test_loss_gradient_against_monte_carlo(name):
    """E||dL/dh_i||^2 = sum_t g(i, t) ||e_t||^2: cross terms between loss steps vanish.
    Adding the loss steps' RMS gradients coherently is rejected."""
    rng = np.random.default_rng(12)
    L, n = 30, 12
    W = edge_weights(_patterns(L, 4)[name])
    e = np.zeros((L, n))
    e[-6:] = rng.standard_normal((6, n))
    G = mean_square_loss_gradient(W, 0.95, (e ** 2).sum(axis=1))
    mean, sem = monte_carlo_loss_gradient(W, 0.95, e, samples=400, rng=13)
    i = np.arange(L - 7)  # sources before the loss steps
    assert np.all(np.abs(mean[i] - G[i]) <= 4 * sem[i])
    coherent = (np.sqrt(mean_square_gradient_matrix(W, 0.95)) @ np.linalg.norm(e, axis=1)) ** 2
    assert np.max(np.abs(mean[i] - coherent[i]) / sem[i]) > 10


def test_loss_path_expansion_and_its_upper_bound_with_random_jacobians():
    rng = np.random.default_rng(14)
    L, n = 18, 5
    W = edge_weights(random_sparse_pattern(L, 3, rng))
    J = rng.standard_normal((L, n, n)) / np.sqrt(n)
    e = np.zeros((L, n))
    e[-4:] = rng.standard_normal((4, n))
    delta = loss_path_expansion(W, J, e)
    # against the forward Jacobians: dL/dh_i = sum_t (dh_t/dh_i)^T e_t
    for i in (0, 6):
        D = path_jacobians(W, J, i)
        np.testing.assert_allclose(delta[i], np.einsum("tab,ta->b", D[i:], e[i:]),
                                   rtol=1e-10, atol=1e-14)
    u = loss_gradient_path_sum(W, np.linalg.norm(J, ord=2, axis=(1, 2)),
                               np.linalg.norm(e, axis=1))
    assert np.all(np.linalg.norm(delta, axis=1) <= u * (1 + 1e-12))
    # equality for scalar Jacobians with aligned e_t: every path adds coherently
    lam = rng.uniform(0.3, 1.0, L)
    J_scalar = lam[:, None, None] * np.eye(n)
    e_aligned = np.zeros((L, n))
    e_aligned[-4:, 0] = rng.uniform(0.5, 1.0, 4)
    np.testing.assert_allclose(np.linalg.norm(loss_path_expansion(W, J_scalar, e_aligned),
                                              axis=1),
                               loss_gradient_path_sum(W, lam, e_aligned[:, 0]), rtol=1e-12)


# -- single realisations: the path-sum upper bound and the direct-edge lower bound ---------
@FAST
@given(st.integers(2, 25), st.sampled_from(["uniform", "window", "chain", "sparse"]),
       st.floats(0.3, 1.0), st.integers(0, 10**6))
def test_sandwich_for_every_orthogonal_realisation(L, name, lam, seed):
    """direct-edge bound <= sigma_min(D) <= ||D||_2 <= path sum, J_k = lam Q_k."""
    L = max(L, 4)
    rng = np.random.default_rng(seed)
    W = edge_weights(_patterns(L, seed)[name])
    J = lam * haar_matrices(rng, L, 4)
    sv = np.linalg.svd(path_jacobians(W, J, 0), compute_uv=False)
    assert np.all(sv[:, 0] <= path_sum(W, lam, 0) * (1 + 1e-12))
    assert np.all(sv[:, -1] >= direct_edge_lower_bound(W, lam, lam, 0) - 1e-12)


def test_direct_edge_bound_is_tight_at_long_spans_and_needs_its_correction():
    """A planted one-hop chain: at long spans every realisation has all singular values
    of dh_t/dh_i within 1e-3 of lam w_it. At short spans the other paths can cancel the
    direct edge: the bound without its correction term is violated."""
    rng = np.random.default_rng(15)
    lam, kappa = 0.9, 4
    A, _ = chain_pattern(201, 1, kappa)
    W = edge_weights(A)
    low, direct = direct_edge_lower_bound(W, lam, lam)[-1], lam * W[-1, 0]
    assert 0 < low <= direct and low > direct * (1 - 1e-3)
    for _ in range(5):
        sv = np.linalg.svd(path_jacobians(W, lam * haar_matrices(rng, 201, 6), 0)[-1],
                           compute_uv=False)
        assert low - 1e-12 <= sv[-1] and sv[0] <= path_sum(W, lam)[-1] * (1 + 1e-12)
    A, _ = chain_pattern(6, 1, kappa)
    W = edge_weights(A)
    smallest = min(np.linalg.svd(path_jacobians(W, lam * haar_matrices(rng, 6, 6), 0)[-1],
                                 compute_uv=False)[-1] for _ in range(50))
    assert smallest < lam * W[-1, 0] * 0.5


# -- one fixed orthogonal matrix -----------------------------------------------------------
def test_path_length_sums_add_up_to_the_path_sum():
    W = edge_weights(random_sparse_pattern(20, 3, 16))
    c = path_length_sums(W, 0.8, 2)
    np.testing.assert_allclose(c.sum(axis=1), path_sum(W, 0.8, 2), rtol=1e-12)
    np.testing.assert_allclose(path_length_sums(chain_edges(6), 0.5)[np.arange(6), np.arange(6)],
                               0.5 ** np.arange(6))


@pytest.mark.parametrize("name, n", [("uniform", 4), ("window", 16), ("sparse", 8)])
def test_fixed_orthogonal_model_against_monte_carlo(name, n):
    """One Haar V at every step: the formula with tau_k = 1 (k even), 0 (k odd) agrees
    with Monte Carlo (lengths up to 29 > n/2); the independent-Q_k recursion and the
    n -> infinity term alone are rejected."""
    L = 30
    W = edge_weights(_patterns(L, 5)[name])
    mean, sem = monte_carlo_gradient(W, 0.95, n=n, samples=3000, rng=17, same_matrix=True)
    t = np.arange(2, L)  # t = 1: one path, deterministic
    exact = fixed_orthogonal_mean_square_gradient(W, 0.95, n)
    assert np.all(np.abs(mean[t] - exact[t]) <= 4.5 * sem[t])
    for wrong in (mean_square_gradient(W, 0.95), fixed_orthogonal_mean_square_gradient(W, 0.95)):
        assert np.max(np.abs(mean[t] - wrong[t]) / sem[t]) > 8


# -- step Jacobians and loss gradients of real models -------------------------------------
@pytest.mark.parametrize("kind", ["RNN", "MemRNN", "RelRNN"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
def test_step_jacobians_rebuild_the_frozen_gradients(kind, nonlinearity):
    models = pytest.importorskip("rsa.models")
    torch.manual_seed(3)
    options = {"nu": 3, "rho": 2} if kind == "RelRNN" else {}
    model = getattr(models, kind)(3, 5, nonlinearity=nonlinearity, **options).double()
    x = torch.randn(13, 2, 3, dtype=torch.float64)
    frozen = state_jacobians(model, x, 2, freeze_attention=True)
    c = torch.randn(5, dtype=torch.float64)
    e, delta = loss_gradients(model, x, lambda H: (H[-3:] * c).sum() + (H[4] ** 2).sum(),
                              freeze_attention=True)
    assert np.allclose(e[:4], 0) and np.allclose(e[5:-3], 0)  # only where the loss reads
    for b in range(2):
        J, W = step_jacobians(model, x, b)
        np.testing.assert_allclose(path_jacobians(W, J, 2), frozen[:, b], rtol=1e-9,
                                   atol=1e-13)
        np.testing.assert_allclose(loss_path_expansion(W, J, e[:, b]), delta[:, b],
                                   rtol=1e-9, atol=1e-13)
    single = getattr(models, kind)(3, 5, nonlinearity=nonlinearity, **options)
    J, _ = step_jacobians(single, x.float())
    assert J.dtype == np.float64  # computed in float64 ...
    assert all(p.dtype == torch.float32 for p in single.parameters())  # ... model untouched


def test_step_jacobians_rejects_the_lstm():
    models = pytest.importorskip("rsa.models")
    with pytest.raises(ValueError, match="RNN family"):
        step_jacobians(models.LSTM(3, 4), torch.randn(5, 1, 3))
