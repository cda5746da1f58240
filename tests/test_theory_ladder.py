"""Tests of rsa.theory.ladder: the ladder of assumptions on one network (our construction,
not the paper's). Each rung is checked against an independent computation: rung 4 (the
path expansion with per-step diag(phi')) against autograd with attention frozen, rung 5
against the double-backward autograd of ``state_jacobians``, rungs 1 and 2 against the
model recursions, and rungs 3 to 5 against each other where they must coincide."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rsa.models import MemRNN, RelRNN
from rsa.tasks import denoise_batch, make_generator
from rsa.theory import (
    RUNGS,
    assumption_ladder,
    edge_weights,
    fixed_orthogonal_mean_square_gradient,
    jacobians_into,
    ladder_decades,
    max_path_product,
    mean_square_gradient,
    random_sparse_pattern,
    state_jacobians,
    step_jacobians,
    strongest_chain,
    uniform_pattern,
)

N, T_DELAY = 8, 10  # sequences of T_DELAY + 20 = 30 steps


@pytest.fixture(scope="module")
def x():
    torch.set_num_threads(1)
    x, _ = denoise_batch(T_DELAY, 2, generator=make_generator(3))
    return x.double()


def relrnn(v_scale=1.0, seed=0):
    torch.manual_seed(seed)
    net = RelRNN(11, N, nu=4, rho=5, init="orthogonal_random").double()
    with torch.no_grad():
        net.v.mul_(v_scale)
    return net


@pytest.mark.parametrize("freeze", [True, False])
def test_jacobians_into_equals_state_jacobians(x, freeze):
    """The batch-replication Jacobians equal the double-backward ones of every source."""
    net = relrnn(v_scale=10.0)
    targets = [5, 17, 29]
    into = jacobians_into(net, x, targets, b=1, freeze_attention=freeze)
    for i in (0, 4, 17):
        D = state_jacobians(net, x[:, 1:2], i, freeze_attention=freeze)[:, 0]
        for t in targets:
            if t >= i:
                np.testing.assert_allclose(into[t][i], D[t], rtol=1e-10, atol=1e-13)
            else:
                assert not into[t][i].any()


def test_rungs_equal_their_definitions(x):
    """Rung 4 = frozen autograd to 1e-9, rung 5 = full autograd, rungs 1 and 2 = the model
    recursions with lam_k = ||J_k||_F / sqrt(n) on the network's own pattern."""
    net = relrnn(v_scale=30.0)
    pairs = [(0, 29), (0, 12), (3, 20), (20, 29), (7, 7)]
    lad = assumption_ladder(net, x, pairs, b=0)
    np.testing.assert_allclose(lad["frozen"], lad["frozen_autograd"], rtol=1e-9)
    J, W = step_jacobians(net, x, 0)
    lam = np.linalg.norm(J, axis=(1, 2)) / np.sqrt(N)
    np.testing.assert_allclose(lad["lam"], lam, rtol=1e-12)
    for p, (i, t) in enumerate(pairs):
        full = state_jacobians(net, x[:, :1], i)[t, 0]
        assert lad["full"][p] == pytest.approx(np.linalg.norm(full) ** 2 / N, rel=1e-9)
        assert lad["independent"][p] == pytest.approx(mean_square_gradient(W, lam, i)[t],
                                                      rel=1e-12)
        assert lad["fixed"][p] == pytest.approx(
            fixed_orthogonal_mean_square_gradient(W, lam, N, i)[t], rel=1e-12)
    p_self = pairs.index((7, 7))  # dh_i/dh_i = I in every rung
    assert all(lad[name][p_self] == pytest.approx(1.0, rel=1e-12) for name in RUNGS)
    # the checks have power: sharp attention separates rung 5 from rung 4, and the
    # independent model from the fixed one
    assert np.max(np.abs(np.log10(lad["full"] / lad["frozen"]))) > 0.05
    assert np.max(np.abs(np.log10(lad["independent"] / lad["fixed"]))) > 0.1


def test_rungs_three_to_five_coincide_at_the_origin(x):
    """U = 0, b = 0: every state is 0, phi'(0) = 1 so J_k = V exactly (rungs 3 and 4
    coincide, gain 1 for an orthogonal V), and every score is equal so attention is
    uniform and its derivative is zero (rungs 4 and 5 coincide). A scalar gain or a V
    taken wrongly breaks the first, differentiating attention wrongly the second."""
    torch.manual_seed(1)
    net = MemRNN(11, N, init="orthogonal_random", fused=False).double()
    with torch.no_grad():
        net.U.weight.zero_()
        net.U.bias.zero_()
        net.v.mul_(50.0)  # large v: only the equal scores keep attention uniform
    pairs = [(0, t) for t in (1, 5, 15, 29)] + [(10, 29)]
    lad = assumption_ladder(net, x, pairs)
    np.testing.assert_allclose(lad["gain"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(lad["own_V"], lad["frozen"], rtol=1e-10)
    np.testing.assert_allclose(lad["full"], lad["frozen"], rtol=1e-10)
    # and the fixed-matrix average is not this one V (finite n): rung 2 != rung 3
    assert np.max(np.abs(lad["fixed"] / lad["own_V"] - 1)) > 1e-3


def test_own_v_differs_from_frozen_when_phi_prime_varies(x):
    """With real inputs phi' varies across units, so a scalar gain is an approximation:
    rung 3 differs from rung 4 (the test above is not vacuous)."""
    lad = assumption_ladder(relrnn(), x, [(0, 29), (2, 25)])
    assert np.max(np.abs(lad["own_V"] / lad["frozen"] - 1)) > 1e-3


def test_ladder_decades_add_up(x):
    lad = assumption_ladder(relrnn(v_scale=10.0), x, [(0, 29), (5, 28)])
    steps = ladder_decades(lad)
    total = sum(v for k, v in steps.items() if k != "independent -> full")
    np.testing.assert_allclose(total, steps["independent -> full"], rtol=1e-12)
    np.testing.assert_allclose(steps["frozen -> full"],
                               np.log10(lad["frozen"] / lad["full"]), rtol=1e-12)
    assert len(steps) == len(RUNGS)


@pytest.mark.parametrize("pairs", [[(5, 3)], [], [(0, 30)], [(-1, 4)]])
def test_bad_pairs_are_rejected(x, pairs):
    with pytest.raises(ValueError):
        assumption_ladder(relrnn(), x, pairs)


def _all_paths(i, t):
    if i == t:
        yield [t]
        return
    for j in range(i + 1, t + 1):
        for rest in _all_paths(j, t):
            yield [i] + rest


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 9), st.integers(0, 10_000))
def test_strongest_chain_is_the_best_path_by_brute_force(L, seed):
    rng = np.random.default_rng(seed)
    A = random_sparse_pattern(L, 3, rng)
    W = edge_weights(A)
    i, t = 0, L - 1
    r, product = strongest_chain(W, i, t)
    best = max(np.prod([W[b, a] for a, b in zip(p[:-1], p[1:], strict=True)])
               for p in _all_paths(i, t))
    assert product == pytest.approx(best, rel=1e-12)
    assert r[0] == i and r[-1] == t and np.all(np.diff(r) > 0)
    assert product == pytest.approx(np.prod(W[r[1:], r[:-1]]), rel=1e-12)
    assert product == pytest.approx(max_path_product(W, 1.0, i)[t], rel=1e-12)


def test_strongest_chain_takes_a_heavy_skip():
    """A planted chain with links of weight 0.9 beats the recurrent path (1/2 per step)."""
    A = uniform_pattern(12)
    A[11] = 0.0
    A[11, 2] = 0.9
    A[11, 10] = 0.1
    r, product = strongest_chain(edge_weights(A), 0, 11)
    assert list(r) == [0, 1, 2, 11]
    with pytest.raises(ValueError):
        strongest_chain(edge_weights(A), 5, 3)
