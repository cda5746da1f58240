"""The compiled CPU kernel (rsa/models/kernels/compiled.py, issue 30) against the torch
path: the plain RNN with kernel="compiled" equals the plain-autograd loop to 1e-10 in
float64 (forward and every gradient, tanh and modReLU, with units cut off by modReLU's
bias, T = 1, ties at z = 0), passes gradcheck, equals it to float32 rounding in float32;
and the option's errors."""

from __future__ import annotations

import pytest
import torch

from rsa import RNN
from rsa.models.kernels import compiled
from rsa.models.kernels.compiled import CompiledRNNFunction, check_kernel
from tests.helpers import grads

pytestmark = pytest.mark.skipif(not compiled.available(),
                                reason="numba is not installed (extra 'compiled')")

N_IN, N = 3, 5


def pair(nonlinearity, seed=0, dtype=torch.float64, n_in=N_IN, n=N):
    """A compiled and a torch RNN with the same parameters; for modReLU, a bias large
    enough that some units are cut off."""
    torch.manual_seed(seed)
    torch_model = RNN(n_in, n, nonlinearity=nonlinearity).to(dtype)
    if nonlinearity == "modrelu":
        with torch.no_grad():
            torch_model.phi.b.uniform_(-0.5, 0.5)
    compiled_model = RNN(n_in, n, nonlinearity=nonlinearity, kernel="compiled").to(dtype)
    compiled_model.load_state_dict(torch_model.state_dict())
    return compiled_model, torch_model


@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
@pytest.mark.parametrize("T,B", [(1, 1), (2, 3), (17, 4)])
def test_compiled_rnn_equals_torch_float64(nonlinearity, T, B):
    comp, ref = pair(nonlinearity)
    x = torch.randn(T, B, N_IN, dtype=torch.float64, requires_grad=True)
    w = torch.randn(T, B, N, dtype=torch.float64)
    assert torch.allclose(comp(x), ref(x), rtol=0, atol=1e-10)
    g_comp, g_ref = grads(comp, x, w), grads(ref, x, w)
    assert len(g_comp) == len(g_ref)
    for a, b in zip(g_comp, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (a - b).abs().max()
    if nonlinearity == "modrelu":  # the cut-off units exist: the case is tested
        z = ref.U(x)
        assert ((z.abs() + ref.phi.b) <= 0).any()


def test_compiled_rnn_modrelu_zero_preactivation():
    """A pre-activation exactly 0 (modReLU's kink: sign 0, gradient 0, as autograd)."""
    comp, ref = pair("modrelu")
    with torch.no_grad():
        for m in (comp, ref):
            m.U.weight.zero_()
            m.U.bias.zero_()
            m.phi.b.fill_(0.1)
    x = torch.randn(3, 2, N_IN, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, N, dtype=torch.float64)
    for a, b in zip(grads(comp, x, w), grads(ref, x, w), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
def test_gradcheck_compiled_function(nonlinearity):
    torch.manual_seed(1)
    T, B, n = 6, 2, 4
    ux = torch.randn(T, B, n, dtype=torch.float64, requires_grad=True)
    V = (0.5 * torch.randn(n, n, dtype=torch.float64)).requires_grad_(True)
    phi_b = (torch.full((n,), 0.3, dtype=torch.float64).requires_grad_(True)
             if nonlinearity == "modrelu" else None)
    assert torch.autograd.gradcheck(CompiledRNNFunction.apply, (ux, V, phi_b),
                                    eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
def test_compiled_rnn_float32_rounding(nonlinearity):
    """In float32, the compiled path is within float32 rounding of the torch path (both
    against the float64 computation: same order of error)."""
    comp, ref = pair(nonlinearity, dtype=torch.float32, n=16)
    ref64 = pair(nonlinearity, n=16)[1]
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x = torch.randn(50, 4, N_IN, requires_grad=True)
    w = torch.randn(50, 4, 16)
    H = comp(x)
    assert H.dtype == torch.float32
    err = (H.double() - ref64(x.double())).abs().max().item()
    err_torch = (ref(x).double() - ref64(x.double())).abs().max().item()
    assert err <= 1e-5 and err <= 10 * err_torch + 1e-6, (err, err_torch)
    x64 = x.detach().double().requires_grad_(True)
    for a, b in zip(grads(comp, x, w), grads(ref64, x64, w.double()), strict=True):
        assert a.dtype == torch.float32
        assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-4), (a.double() - b).abs().max()


def test_compiled_rnn_record_takes_torch_loop():
    comp, ref = pair("tanh")
    x = torch.randn(4, 2, N_IN, dtype=torch.float64)
    H, trace = comp(x, record=True)
    assert torch.allclose(H, ref(x), rtol=0, atol=1e-12)


def test_kernel_option_errors():
    with pytest.raises(ValueError, match=r"kernel must be one of \('torch', 'compiled'\).*'numba'"):
        RNN(1, 4, kernel="numba")
    assert check_kernel("torch") == "torch"
    comp, _ = pair("tanh")
    with pytest.raises(ValueError, match=r"x must have shape"):
        comp(torch.randn(4, 2, N_IN + 1, dtype=torch.float64))


# -- the option through training: recorded, resumed on the same kernel, old runs torch ----

TINY = dict(model="rnn", task="copy", T=3, hidden_size=6, batch=4, eval_batch=8,
            eval_every=2, checkpoint_every=2, progress=False)


def test_config_kernel_default_and_errors():
    from rsa.train.config import _IDENTITY_DEFAULTS, config_command, resolve_config
    assert resolve_config(**TINY).kernel == "torch"
    assert _IDENTITY_DEFAULTS["kernel"] == "torch"  # a stored run without it: torch
    assert "--kernel" not in config_command(resolve_config(**TINY))  # old commands hold
    assert "--kernel compiled" in config_command(resolve_config(**TINY, kernel="compiled"))
    with pytest.raises(ValueError, match=r"model .relrnn. has no compiled kernel.*rnn, lstm"):
        resolve_config(**dict(TINY, model="relrnn"), kernel="compiled")
    with pytest.raises(ValueError, match=r"kernel must be one of.*'fast'"):
        resolve_config(**TINY, kernel="fast")
    with pytest.raises(ValueError, match=r"CPU only.*'cuda'"):
        resolve_config(**TINY, kernel="compiled", device="cuda")


def test_compiled_run_records_its_kernel_and_resumes_on_it(tmp_path):
    from rsa import io
    from rsa.train import train
    out = tmp_path / "run"
    r = train(**TINY, steps=2, kernel="compiled", out_dir=str(out))
    assert r.model.core.kernel == "compiled"
    assert io.load_manifest(out)["parameters"]["kernel"] == "compiled"
    with pytest.raises(ValueError, match=r"different config.*'kernel': \('compiled', 'torch'\)"):
        train(**TINY, steps=4, out_dir=str(out))
    resumed = train(**TINY, steps=4, kernel="compiled", out_dir=str(out))
    assert resumed.summary["steps_done"] == 4


def test_compiled_training_equals_torch_training():
    """Two updates of the copy task, float32: the same losses to float32 rounding."""
    from rsa.train import train
    a = train(**TINY, steps=4, kernel="compiled")
    b = train(**TINY, steps=4)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)


def test_population_refuses_the_compiled_kernel():
    from rsa.train.population import train_population
    with pytest.raises(ValueError, match=r"population trains on kernel='torch' only.*"
                                         r"'compiled'"):
        train_population(**TINY, steps=2, kernel="compiled", seeds=[0, 1])


# -- the LSTM ------------------------------------------------------------------------------

def lstm_pair(seed=0, dtype=torch.float64, n=N):
    from rsa import LSTM
    torch.manual_seed(seed)
    ref = LSTM(N_IN, n).to(dtype)
    with torch.no_grad():  # a nonzero gate bias, so every gate's path is exercised
        ref.U.bias.uniform_(-0.5, 0.5)
    comp = LSTM(N_IN, n, kernel="compiled").to(dtype)
    comp.load_state_dict(ref.state_dict())
    return comp, ref


@pytest.mark.parametrize("T,B", [(1, 1), (2, 3), (17, 4)])
def test_compiled_lstm_equals_torch_float64(T, B):
    comp, ref = lstm_pair()
    x = torch.randn(T, B, N_IN, dtype=torch.float64, requires_grad=True)
    w = torch.randn(T, B, N, dtype=torch.float64)
    assert torch.allclose(comp(x), ref(x), rtol=0, atol=1e-10)
    for a, b in zip(grads(comp, x, w), grads(ref, x, w), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (a - b).abs().max()


def test_gradcheck_compiled_lstm_function():
    from rsa.models.kernels.compiled import CompiledLSTMFunction
    torch.manual_seed(2)
    T, B, n = 6, 2, 3
    ux = torch.randn(T, B, 4 * n, dtype=torch.float64, requires_grad=True)
    V = (0.5 * torch.randn(4 * n, n, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(CompiledLSTMFunction.apply, (ux, V), eps=1e-6, atol=1e-7)


def test_compiled_lstm_float32_rounding():
    comp, ref = lstm_pair(dtype=torch.float32, n=16)
    ref64 = lstm_pair(n=16)[1]
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x = torch.randn(50, 4, N_IN, requires_grad=True)
    w = torch.randn(50, 4, 16)
    H = comp(x)
    assert H.dtype == torch.float32
    err = (H.double() - ref64(x.double())).abs().max().item()
    err_torch = (ref(x).double() - ref64(x.double())).abs().max().item()
    assert err <= 1e-5 and err <= 10 * err_torch + 1e-6, (err, err_torch)
    x64 = x.detach().double().requires_grad_(True)
    for a, b in zip(grads(comp, x, w), grads(ref64, x64, w.double()), strict=True):
        assert a.dtype == torch.float32
        assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-4), (a.double() - b).abs().max()
