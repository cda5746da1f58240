"""Tests of rsa.theory.nonfrozen: the exact Jacobian of a self-attentive RNN as the frozen
path expansion plus the rank-one terms from differentiating the attention weights, and
the bound on those terms (our derivation, not the paper's; chapter *Bounds*, section
``bounds-nonfrozen``). Every check is run next to a mutation it must reject."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rsa.models import MemRNN, RelRNN
from rsa.tasks import denoise_batch, make_generator
from rsa.theory import jacobians_into, path_jacobians
from rsa.theory.nonfrozen import (
    attention_terms,
    full_path_jacobians,
    nonfrozen_norms,
    one_step_jacobian,
    query_jacobian,
)

N, T_DELAY = 6, 4  # denoise sequences of T_DELAY + 20 = 24 steps


@pytest.fixture(scope="module")
def x():
    torch.set_num_threads(1)
    x, _ = denoise_batch(T_DELAY, 2, generator=make_generator(5))
    return x.double()


def network(cls=RelRNN, v_scale=10.0, seed=0, nonlinearity="tanh"):
    torch.manual_seed(seed)
    kw = {"nu": 4, "rho": 3} if cls is RelRNN else {}
    net = cls(11, N, nonlinearity=nonlinearity, **kw).double()
    with torch.no_grad():
        net.v.mul_(v_scale)  # sharper attention: larger dropped terms
    return net


def autograd_from(net, x, i, b, freeze=False):
    T = x.shape[0]
    D = jacobians_into(net, x, range(i, T), b=b, freeze_attention=freeze)
    return np.stack([np.zeros((N, N)) if t < i else D[t][i] for t in range(T)])


@pytest.mark.parametrize("cls,nonlinearity", [(RelRNN, "tanh"), (RelRNN, "modrelu"),
                                              (MemRNN, "tanh")])
def test_frozen_plus_rank_one_is_autograd(x, cls, nonlinearity):
    """Composed from the one-step pieces, frozen + rank-one (key and query) terms equal
    autograd with attention differentiated to 1e-10, from every source; the frozen part
    alone equals frozen autograd and the path expansion; the attention terms matter."""
    net = network(cls, nonlinearity=nonlinearity)
    for b in (0, 1):
        terms = attention_terms(net, x, b)
        for i in (0, 3, 11):
            full = full_path_jacobians(terms, i)
            assert np.abs(full - autograd_from(net, x, i, b)).max() < 1e-10
            frozen = full_path_jacobians(terms, i, attention=False)
            assert np.abs(frozen - autograd_from(net, x, i, b, freeze=True)).max() < 1e-10
            assert np.abs(frozen - path_jacobians(terms["W"], terms["J"], i)).max() < 1e-10
            assert np.abs(full - frozen).max() > 1e-3  # the check below can fail


@pytest.mark.parametrize("mutation", ["uncentred", "no query term", "no key term"])
def test_mutations_are_caught(x, mutation):
    """Each piece is needed: using h_j instead of h_j - c_k (dropping the -alpha_i
    centring of the softmax derivative), dropping the query term, or dropping the key
    term each moves the composed Jacobian away from autograd by far more than 1e-10."""
    net = network()
    terms = attention_terms(net, x, 0)
    if mutation == "uncentred":
        terms = dict(terms, c=np.zeros_like(terms["c"]))
    elif mutation == "no query term":
        terms = dict(terms, query_grad=np.zeros_like(terms["query_grad"]))
    else:
        terms = dict(terms, key_grad=np.zeros_like(terms["key_grad"]))
    err = np.abs(full_path_jacobians(terms, 0) - autograd_from(net, x, 0, 0)).max()
    assert err > 1e-4, err


def test_one_step_split(x):
    """dh_k/dh_{k-1} (the query does not depend on h_{k-1}) is exactly frozen + rank-one;
    the frozen part is w J_k, the other has rank one; a state outside the memory of
    step k has no rank-one term; the query term has rank <= the number of slots."""
    net = network()
    terms = attention_terms(net, x, 1)
    T = x.shape[0]
    D = jacobians_into(net, x, range(1, T), b=1)
    for k in range(2, T):
        frozen, rank_one = one_step_jacobian(terms, k, k - 1)
        assert np.abs(frozen + rank_one - D[k][k - 1]).max() < 1e-12
        assert np.allclose(frozen, terms["W"][k, k - 1] * terms["J"][k])
        s = np.linalg.svd(rank_one, compute_uv=False)
        assert s[0] > 1e-6 and s[1] < 1e-12 * s[0]
        assert np.abs(frozen - D[k][k - 1]).max() > 1e-6  # frozen alone is not exact
        Q = query_jacobian(terms, k)
        m = int((terms["index"][k] >= 0).sum())
        assert np.linalg.matrix_rank(Q, tol=1e-10 * max(np.abs(Q).max(), 1e-300)) <= m
    # RelRNN with nu = 4, rho = 3: step 23 does not hold every earlier state
    k = T - 1
    gone = sorted(set(range(k)) - set(terms["index"][k].tolist()))
    assert gone
    assert np.all(one_step_jacobian(terms, k, gone[0])[1] == 0)
    with pytest.raises(ValueError):
        one_step_jacobian(terms, 3, 3)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), v_scale=st.floats(0.1, 30.0),
       k_scale=st.floats(0.1, 5.0), q_scale=st.floats(0.1, 5.0))
def test_bound_holds_on_random_networks(x, seed, v_scale, k_scale, q_scale):
    """||alpha (h_j - c) g^T||_2 <= alpha ||h_j - c|| ||v|| ||W_k||_2 for every step and
    slot, and the query term <= spread ||v|| ||W_q||_2, on random networks; the key
    term norm is exact (autograd minus frozen, one step)."""
    net = network(v_scale=v_scale, seed=seed)
    with torch.no_grad():
        net.W_k.weight.mul_(k_scale)
        net.W_q.weight.mul_(q_scale)
    terms = attention_terms(net, x, 0)
    norms = nonfrozen_norms(terms)
    assert np.all(norms["key"] <= norms["key_bound"] * (1 + 1e-12))
    assert np.all(norms["query"] <= norms["query_bound"] * (1 + 1e-12))
    assert np.all(norms["key_bound"] <= norms["rho"][:, None] * terms["alpha"] * (1 + 1e-12))
    k = x.shape[0] - 1  # the key norm against an independent computation
    slot = int(np.nonzero(terms["index"][k] == k - 1)[0][0])
    c_term = (terms["alpha"][k, slot] * np.outer(terms["H"][k - 1] - terms["c"][k],
                                                  terms["key_grad"][k, slot]))
    assert np.isclose(np.linalg.norm(c_term, 2), norms["key"][k, slot], rtol=1e-10)


def test_bound_is_tight_when_scores_are_linear(x):
    """W_q = 0 and W_k = eps Q (Q orthogonal): tanh'(a) >= 1 - eps^2 n max||h||^2 and
    ||W_k^T u|| = eps ||u||, so the key bound is attained within a factor 1.001 at every
    slot; a bound 10 % smaller (a mutation) is violated."""
    net = network(v_scale=1.0)
    eps = 0.01
    with torch.no_grad():
        Q, _ = torch.linalg.qr(torch.randn(N, N, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(1)))
        net.W_k.weight.copy_(eps * Q)
        net.W_q.weight.zero_()
    terms = attention_terms(net, x, 0)
    norms = nonfrozen_norms(terms)
    live = norms["key_bound"] > 0
    ratio = norms["key"][live] / norms["key_bound"][live]
    assert live.sum() > 50
    assert ratio.min() > 1 / 1.001 and ratio.max() <= 1 + 1e-12
    assert np.all(norms["query"] == 0)  # W_q = 0: no query term
    assert np.any(norms["key"][live] > 0.9 * norms["key_bound"][live])  # the mutation fails


def test_rejects_models_without_attention(x):
    from rsa.models import RNN

    with pytest.raises(ValueError):
        attention_terms(RNN(11, N).double(), x, 0)
