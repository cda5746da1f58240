"""The fused RelRNN (rsa/models/kernels/screened.py) against the plain-autograd loop of
rsa/models/cells.py and the slow reference of rsa/models/reference.py, in float64.

The plain loop's screening (S, R, scores, ties) is itself checked slot by slot against
the reference in tests/test_models.py; here the fused function, which redoes the
screening on time indices, must give the same states and gradients, including on
sequences where R's states get replaced and where every score ties.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rsa import RelRNN
from rsa.models.kernels.screened import RelRNNFunction, _memory_size, relrnn_fused
from rsa.models.reference import reference_forward
from tests.helpers import fused_and_plain, fused_function_args, grads, saved_bytes

N_IN, N = 3, 5

# (T, B, nu, rho): R filling and being replaced, nu = 1, rho = 0, rho > T, T < nu, T = 1
CONFIGS = [(1, 2, 3, 2), (2, 3, 1, 0), (6, 2, 1, 1), (30, 3, 4, 3), (40, 2, 10, 15),
           (25, 2, 3, 0), (12, 2, 30, 4), (20, 1, 2, 50)]


def pair(nu, rho, nonlinearity="tanh", seed=0):
    """A fused and an unfused RelRNN (float64) with the same parameters."""
    return fused_and_plain(RelRNN, N_IN, N, nonlinearity, seed, nu=nu, rho=rho)


def assert_same(fused, plain, T, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, N_IN, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(T, B, N, generator=g, dtype=torch.float64)  # weighs every h_t
    H = fused(x)
    assert type(H.grad_fn) is RelRNNFunction._backward_cls
    torch.testing.assert_close(H, plain(x), rtol=0, atol=1e-12)
    names = ["x"] + [name for name, _ in fused.named_parameters()]
    for name, a, b in zip(names, grads(fused, x, w), grads(plain, x, w), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=f"gradient of {name}")
    return x


@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
@pytest.mark.parametrize("T,B,nu,rho", CONFIGS)
def test_fused_equals_plain_autograd(T, B, nu, rho, nonlinearity):
    fused, plain = pair(nu, rho, nonlinearity, seed=T + 10 * B)
    assert_same(fused, plain, T, B, seed=T)


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 30), B=st.integers(1, 3), nu=st.integers(1, 6), rho=st.integers(0, 6),
       seed=st.integers(0, 10**6))
def test_fused_equals_plain_property(T, B, nu, rho, seed):
    fused, plain = pair(nu, rho, seed=seed)
    assert_same(fused, plain, T, B, seed=seed)


def replacements(model, x):
    """How many times a state already in R was replaced, over all examples and steps."""
    _, trace = model(x, record=True)
    R = torch.where(trace.relevant, trace.index, -1)  # (T, B, K): R slots' time indices
    full = (R >= 0).sum(-1) == model.rho
    changed = (R[1:] != R[:-1]).any(-1) & full[:-1]
    return int(changed.sum())


def test_the_comparison_exercises_replacement_in_R():
    """The (30, 3, 4, 3) configuration replaces states in R: the equality above covers
    the per-example replacement, not only the filling of R."""
    fused, plain = pair(4, 3, seed=30 + 30)
    x = torch.randn(30, 3, N_IN, generator=torch.Generator().manual_seed(30),
                    dtype=torch.float64)
    assert replacements(plain, x) >= 3


@pytest.mark.parametrize("nu,rho", [(2, 2), (3, 2), (1, 3), (2, 1)])
def test_fused_ties(nu, rho):
    """v = 0: every attention is uniform, relevance scores tie exactly, and R keeps its
    first-minimum, strictly-greater order; dL/dv is still non-zero."""
    fused, plain = pair(nu, rho, seed=nu + rho)
    with torch.no_grad():
        fused.v.zero_()
        plain.v.zero_()
    x = assert_same(fused, plain, 14, 2, seed=1)
    H = fused(x)
    for b in range(2):
        hs, *_ = reference_forward(fused, x[:, b].detach())
        torch.testing.assert_close(H[:, b], torch.stack(hs), rtol=0, atol=1e-12)
    assert torch.autograd.grad(H.sum(), fused.v)[0].abs().sum() > 0


@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
def test_fused_equals_reference(nonlinearity):
    fused, _ = pair(3, 2, nonlinearity, seed=4)
    x = torch.randn(16, 3, N_IN, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    H = fused(x)
    for b in range(3):
        hs, *_ = reference_forward(fused, x[:, b])
        torch.testing.assert_close(H[:, b], torch.stack(hs), rtol=0, atol=1e-12)


@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
def test_gradcheck_fused_function(nonlinearity):
    def f(*a):
        return relrnn_fused(*a, nu=2, rho=2)

    args = fused_function_args(9, 2, 4, nonlinearity)
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


def test_memory_size():
    """|M_t| counted the long way: S holds the last min(t, nu) states, R the first that
    left S, up to rho."""
    for nu, rho in [(1, 0), (1, 3), (4, 2), (10, 15)]:
        for t in range(1, 40):
            left = max(0, t - nu)
            assert _memory_size(t, nu, rho) == len(range(max(0, t - nu), t)) + min(rho, left)


def test_fused_function_argument_errors():
    """The model-level input errors are shared with MemRNN (tests/test_fused.py)."""
    W = torch.zeros(N, N)
    with pytest.raises(ValueError, match="nu must be an int >= 1, got 0"):
        relrnn_fused(torch.zeros(3, 2, N), W, W, W, torch.zeros(N), nu=0, rho=2)
    with pytest.raises(ValueError, match="rho must be an int >= 0, got -1"):
        relrnn_fused(torch.zeros(3, 2, N), W, W, W, torch.zeros(N), nu=2, rho=-1)


def test_fused_memory_is_linear_and_small():
    """Saved for backward: O(T B n) buffers (the attention tensors are recomputed),
    linear in T and well below the plain loop's (B, nu + rho, 2n) memory per step."""
    torch.manual_seed(0)
    fused, plain = RelRNN(1, 16, nu=10, rho=15), RelRNN(1, 16, nu=10, rho=15, fused=False)
    a, b = saved_bytes(fused, 200), saved_bytes(fused, 400)
    assert 1.9 < b / a < 2.1
    assert saved_bytes(plain, 200) > 5 * a
