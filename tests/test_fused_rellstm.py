"""The fused RelLSTM (rsa/models/kernels/rellstm.py) against the plain-autograd loop of
rsa/models/cells.py and the slow reference of rsa/models/reference.py, in float64.

The plain loop's screening is checked slot by slot against the reference in
tests/test_models.py. The fused function shares the fused RelRNN's screening on time
indices and attention (rsa/models/kernels/screened.py) and adds the LSTM cell with its
hand-written backward: it must give the same outputs and gradients as the plain loop on
every configuration of tests/test_fused_screened.py (R filling and being replaced,
nu = 1, rho = 0, rho > T, T < nu, T = 1), when every score ties, and under gradcheck.
The default, the fallbacks, float32 and the input errors are tested with the other
fused models in tests/test_fused.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rsa.models.kernels.screened as fs
from rsa import RelLSTM, RelRNN
from rsa.models.kernels.rellstm import RelLSTMFunction, rellstm_fused
from rsa.models.reference import reference_forward
from tests.helpers import fused_and_plain, fused_function_args, grads, saved_bytes
from tests.test_fused_screened import CONFIGS, replacements

N_IN, N = 3, 5


def pair(nu, rho, seed=0):
    """A fused and an unfused RelLSTM (float64) with the same parameters."""
    return fused_and_plain(RelLSTM, N_IN, N, "tanh", seed, nu=nu, rho=rho)


def assert_same(fused, plain, T, B, seed=0):
    """Outputs (to 1e-12) and the gradients of x and of every parameter (to 1e-10)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, N_IN, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(T, B, N, generator=g, dtype=torch.float64)  # weighs every h_t
    H = fused(x)
    assert type(H.grad_fn) is RelLSTMFunction._backward_cls
    torch.testing.assert_close(H, plain(x), rtol=0, atol=1e-12)
    names = ["x"] + [name for name, _ in fused.named_parameters()]
    assert sorted(names) == ["U.bias", "U.weight", "V.weight", "W_k.weight", "W_q.weight", "v",
                             "x"]
    for name, a, b in zip(names, grads(fused, x, w), grads(plain, x, w), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=f"gradient of {name}")
    return x


@pytest.mark.parametrize("T,B,nu,rho", CONFIGS)
def test_fused_equals_plain_autograd(T, B, nu, rho):
    fused, plain = pair(nu, rho, seed=T + 10 * B)
    assert_same(fused, plain, T, B, seed=T)


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 30), B=st.integers(1, 3), nu=st.integers(1, 6), rho=st.integers(0, 6),
       seed=st.integers(0, 10**6))
def test_fused_equals_plain_property(T, B, nu, rho, seed):
    fused, plain = pair(nu, rho, seed=seed)
    assert_same(fused, plain, T, B, seed=seed)


def test_equal_where_states_in_R_are_replaced():
    """With the initial v and W_k the RelLSTM's attention is nearly uniform and states
    in R are rarely replaced; scaled by 3, they are, per example: the fused model must
    replace the same ones (first minimum, strictly greater)."""
    fused, plain = pair(4, 3, seed=4)
    with torch.no_grad():
        for m in (fused, plain):
            m.v.mul_(3)
            m.W_k.weight.mul_(3)
    x = torch.randn(30, 3, N_IN, generator=torch.Generator().manual_seed(30),
                    dtype=torch.float64)
    assert replacements(plain, x) >= 5
    assert_same(fused, plain, 30, 3, seed=30)  # the same x


def test_a_long_sequence_with_large_gates():
    """Saturated gates and long cell memory (a large forget bias over 200 steps): the
    cell's gradient path through f_t is exercised far back in time."""
    fused, plain = pair(5, 4, seed=7)
    with torch.no_grad():
        for m in (fused, plain):
            m.U.bias[N:2 * N] = 3.0  # f_t close to 1
            m.U.weight.mul_(3)
    assert_same(fused, plain, 200, 2, seed=3)


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


def test_fused_equals_reference():
    """States against the reference's equations, and gradients against autograd through
    the reference (which shares no code with either implementation)."""
    fused, _ = pair(3, 2, seed=4)
    x = torch.randn(16, 3, N_IN, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64, requires_grad=True)
    H = fused(x)
    hs = [torch.stack(reference_forward(fused, x[:, b])[0]) for b in range(3)]
    for b in range(3):
        torch.testing.assert_close(H[:, b], hs[b], rtol=0, atol=1e-12)
    w = torch.randn(16, 3, N, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    wrt = [x, *fused.parameters()]
    g_fused = torch.autograd.grad((H * w).sum(), wrt)
    g_ref = torch.autograd.grad((torch.stack(hs, dim=1) * w).sum(), wrt)
    for (name, _), a, b in zip([("x", x), *fused.named_parameters()], g_fused, g_ref,
                               strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=f"gradient of {name}")


def test_gradcheck_fused_function():
    def f(*a):
        return rellstm_fused(*a, nu=2, rho=2)

    args = fused_function_args(9, 2, 4, "tanh", gates=4)
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


def test_gradcheck_fused_function_without_R():
    def f(*a):
        return rellstm_fused(*a, nu=1, rho=0)

    args = fused_function_args(5, 3, 3, "tanh", seed=2, gates=4)
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


def test_fused_float32_long_sequence_close_to_float64():
    """float32 (the sigmoid form of the scores) over 300 steps stays float32-accurate
    against the float64 plain loop, states and gradients."""
    fused, plain = pair(10, 15, seed=5)
    f32 = RelLSTM(N_IN, N, nu=10, rho=15).float()
    f32.load_state_dict(fused.state_dict())
    x = torch.randn(300, 3, N_IN, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64)
    H32, H64 = f32(x.float()), plain(x)
    assert type(H32.grad_fn) is RelLSTMFunction._backward_cls
    torch.testing.assert_close(H32.double(), H64, rtol=0, atol=1e-5)
    g32 = torch.autograd.grad(H32.pow(2).sum(), list(f32.parameters()))
    g64 = torch.autograd.grad(H64.pow(2).sum(), list(plain.parameters()))
    for a, b in zip(g32, g64, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


def test_both_fused_models_run_the_same_attention_code(monkeypatch):
    """The fused RelRNN and RelLSTM share the screened attention (forward, screening,
    backward) of rsa.models.kernels.screened: both call it once per step."""
    calls = []
    for cls, method in ((fs.Attention, "attend"), (fs.Attention, "screen"),
                        (fs.AttentionGrad, "step")):
        real = getattr(cls, method)

        def spy(self, t, *args, _real=real, _name=method, **kwargs):
            calls.append(_name)
            return _real(self, t, *args, **kwargs)

        monkeypatch.setattr(cls, method, spy)
    x = torch.randn(7, 2, N_IN)
    for model in (RelRNN(N_IN, N, nu=2, rho=2), RelLSTM(N_IN, N, nu=2, rho=2)):
        calls.clear()
        model(x).sum().backward()
        assert sorted(calls) == sorted(["attend", "screen", "step"] * 6), type(model)


def test_fused_function_argument_errors():
    W, V = torch.zeros(N, N), torch.zeros(4 * N, N)
    ux = torch.zeros(3, 2, 4 * N)
    with pytest.raises(ValueError, match="nu must be an int >= 1, got 0"):
        rellstm_fused(ux, V, W, W, torch.zeros(N), nu=0, rho=2)
    with pytest.raises(ValueError, match="rho must be an int >= 0, got -1"):
        rellstm_fused(ux, V, W, W, torch.zeros(N), nu=2, rho=-1)
    with pytest.raises(ValueError, match=r"ux must have shape \(T >= 1, B, 4n\) with n = 5, "
                                         r"got \(3, 2, 5\)"):
        rellstm_fused(torch.zeros(3, 2, N), V, W, W, torch.zeros(N), nu=2, rho=2)
    with pytest.raises(ValueError, match=r"got \(0, 2, 20\)"):
        rellstm_fused(torch.zeros(0, 2, 4 * N), V, W, W, torch.zeros(N), nu=2, rho=2)


def test_fused_memory_is_linear_and_small():
    """Saved for backward: O(T B n) buffers (the attention tensors are recomputed),
    linear in T and well below the plain loop's (B, nu + rho, 2n) memory per step."""
    torch.manual_seed(0)
    fused = RelLSTM(1, 16, nu=10, rho=15)
    plain = RelLSTM(1, 16, nu=10, rho=15, fused=False)
    a, b = saved_bytes(fused, 200), saved_bytes(fused, 400)
    assert 1.9 < b / a < 2.1
    assert saved_bytes(plain, 200) > 4 * a
