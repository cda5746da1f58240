"""The compiled CPU kernels (rsa/models/kernels/compiled.py and compiled_screened.py,
issue 30) against the torch path: the plain RNN and LSTM with kernel="compiled" equal the
plain-autograd loop to 1e-10 in float64 (forward and every gradient, tanh and modReLU,
with units cut off by modReLU's bias, T = 1, ties at z = 0), pass gradcheck, equal it to
float32 rounding in float32; the RelRNN's, the RelLSTM's and the MemRNN's compiled
kernels equal the fused torch paths the same way (screening decisions included:
relevant-set changes and ties); the option's errors; training runs that record the
kernel and resume on it."""

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
    with pytest.raises(ValueError, match=r"model .sab. has no compiled kernel.*"
                                         r"rnn, lstm, memrnn, relrnn, rellstm\); "
                                         r"use kernel='torch'"):
        resolve_config(**dict(TINY, model="sab"), kernel="compiled")
    assert resolve_config(**dict(TINY, model="relrnn"), kernel="compiled").kernel == "compiled"
    with pytest.raises(ValueError, match=r"kernel must be one of.*'fast'"):
        resolve_config(**TINY, kernel="fast")
    with pytest.raises(ValueError, match=r"CPU only.*'cuda'"):
        resolve_config(**TINY, kernel="compiled", device="cuda")


def _segment_kernels(out):
    import json
    return [(g["start_step"], g["end_step"], g["kernel"])
            for g in json.loads((out / "results.json").read_text())["summary"]["segments"]]


def _same_weights(a, b, exact):
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q) if exact else torch.allclose(p, q, rtol=1e-4, atol=1e-5)


def _check_kernel_resume(tmp_path, capfd, args):
    """A run records its kernel in each part; resumed on its kernel it continues exactly;
    resumed on the other kernel it trains on (the switch said and recorded) to the same
    weights within float32 rounding; a checkpoint whose parts name no kernel (made when
    the kernel was an identity field) ran on its config's kernel."""
    import shutil

    from rsa import io
    from rsa.train import train
    from rsa.train.checkpoint import CHECKPOINT
    out, same, other = tmp_path / "run", tmp_path / "same", tmp_path / "other"
    r = train(**args, steps=2, kernel="compiled", out_dir=str(out))
    assert r.model.core.kernel == "compiled"
    assert io.load_manifest(out)["parameters"]["kernel"] == "compiled"
    assert _segment_kernels(out) == [(0, 2, "compiled")]
    shutil.copytree(out, same)
    shutil.copytree(out, other)
    capfd.readouterr()
    resumed = train(**args, steps=4, kernel="compiled", out_dir=str(same))
    assert "kernel" not in capfd.readouterr().err
    _same_weights(resumed, train(**args, steps=4, kernel="compiled"), exact=True)
    assert _segment_kernels(same) == [(0, 2, "compiled"), (2, 4, "compiled")]
    switched = train(**args, steps=4, out_dir=str(other))  # the torch kernel
    assert ("from update 2 of 4 on the torch kernel (its updates so far ran on the compiled "
            "kernel") in capfd.readouterr().err
    assert switched.model.core.kernel == "torch"
    assert _segment_kernels(other) == [(0, 2, "compiled"), (2, 4, "torch")]
    _same_weights(switched, resumed, exact=False)
    # a checkpoint from before segments named their kernel: its parts ran on its config's
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    del ckpt["config"]["kernel"], ckpt["state"]["segments"][0]["kernel"]
    torch.save(ckpt, out / CHECKPOINT)
    train(**args, steps=3, kernel="compiled", out_dir=str(out))
    assert "ran on the torch kernel" in capfd.readouterr().err
    assert _segment_kernels(out) == [(0, 2, "torch"), (2, 3, "compiled")]


def test_compiled_run_records_its_kernel_and_may_resume_on_the_other(tmp_path, capfd):
    _check_kernel_resume(tmp_path, capfd, TINY)


def test_compiled_training_equals_torch_training():
    """Two updates of the copy task, float32: the same losses to float32 rounding."""
    from rsa.train import train
    a = train(**TINY, steps=4, kernel="compiled")
    b = train(**TINY, steps=4)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)


def test_population_on_the_compiled_kernel_runs_each_runs_compiled_forward():
    """(Equality with the torch population: tests/test_population.py.)"""
    from rsa.models.kernels.population import batched, batched_forward
    from rsa.train.population import train_population
    comp, _ = relrnn_pair()
    assert batched_forward(comp) is None  # never the torch batched forward in its place
    pop = train_population(**TINY, steps=2, kernel="compiled", seeds=[0, 1])
    assert [r.model.core.kernel for r in pop] == ["compiled", "compiled"]
    assert not batched(pop[0].model)


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
    from rsa.models.kernels.compiled_rellstm import CompiledLSTMFunction
    torch.manual_seed(2)
    T, B, n = 6, 2, 3
    ux = torch.randn(T, B, 4 * n, dtype=torch.float64, requires_grad=True)
    V = (0.5 * torch.randn(4 * n, n, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(CompiledLSTMFunction.apply, (ux, V), eps=1e-6, atol=1e-7)


# -- the RelRNN (rsa/models/kernels/compiled_screened.py) ----------------------------------

def relrnn_pair(nonlinearity="tanh", seed=0, dtype=torch.float64, n=N, nu=3, rho=4,
                v="normal", key_scale=1.0):
    """A compiled and a fused torch RelRNN with the same parameters (modReLU: some units
    cut off). ``v``: "normal" (N(0, 1): scores that differ, states enter and leave R),
    "zero" (uniform attention) or "onehot" (N(0, 1e10): attention weights exactly 0 or 1,
    so relevance scores are counts and tie exactly, between different states);
    ``key_scale``: W_k scaled, for keys beyond the compiled kernel's exponential range."""
    from rsa import RelRNN
    torch.manual_seed(seed)
    ref = RelRNN(N_IN, n, nu=nu, rho=rho, nonlinearity=nonlinearity).to(dtype)
    with torch.no_grad():
        ref.v.normal_().mul_({"normal": 1.0, "zero": 0.0, "onehot": 1e5}[v])
        if nonlinearity == "modrelu":
            ref.phi.b.uniform_(-0.5, 0.5)
        ref.W_k.weight.mul_(key_scale)
    comp = RelRNN(N_IN, n, nu=nu, rho=rho, nonlinearity=nonlinearity,
                  kernel="compiled").to(dtype)
    comp.load_state_dict(ref.state_dict())
    return comp, ref


def r_changes(model, x):
    """(replacements in R once full, exact ties among R's lowest scores) in the plain loop's
    record of ``model`` on ``x``."""
    _, trace = model(x, record=True)
    R = trace.relevant[0, 0]
    idx, score = trace.index[..., R], trace.score[..., R]
    full = (idx >= 0).all(-1)  # (T, B)
    changed = (full[1:] & full[:-1] & (idx[1:] != idx[:-1]).any(-1)).sum().item()
    low = score.min(-1, keepdim=True).values
    ties = (full & ((score == low).sum(-1) > 1)).sum().item()
    return changed, ties


def compiled_slots(model, x):
    """SL (T, K, B): the states (time indices) each step of the compiled kernel (of the
    RelRNN, the RelLSTM or the MemRNN) attended."""
    from rsa import RelLSTM
    from rsa.models.kernels import compiled_rellstm
    from rsa.models.kernels.compiled_screened import _LIMIT, _forward
    from rsa.models.kernels.fused import fused_inputs
    ux, V, W_q, W_k, v, phi_b = (None if a is None else a.detach().contiguous().numpy()
                                 for a in fused_inputs(model, x))
    VQT = torch.cat([model.V.weight, model.W_q.weight]).t().contiguous().detach().numpy()
    if isinstance(model, RelLSTM):
        out = compiled_rellstm._forward(ux, VQT, W_k.T.copy(), v, model.nu, model.rho,
                                        _LIMIT[ux.dtype])
    else:  # the MemRNN: a ring of nu = T that never evicts, rho = 0
        nu, rho = (x.shape[0], 0) if model.attention == "full" else (model.nu, model.rho)
        out = _forward(ux, VQT, W_k.T.copy(), v, phi_b if phi_b is not None else 0 * v,
                       phi_b is not None, nu, rho, _LIMIT[ux.dtype])
    return out[-2]


RELRNN_CASES = [  # T, B, nu, rho, nonlinearity, seed, v
    (1, 2, 3, 4, "tanh", 0, "normal"), (2, 3, 1, 1, "tanh", 1, "normal"),
    (40, 3, 3, 4, "tanh", 2, "normal"), (40, 3, 3, 4, "modrelu", 3, "normal"),
    (60, 4, 2, 5, "tanh", 4, "normal"), (30, 2, 4, 0, "modrelu", 5, "normal"),
    (45, 3, 3, 4, "tanh", 6, "zero"), (60, 3, 3, 4, "tanh", 0, "onehot"),
    (60, 3, 3, 4, "tanh", 2, "onehot"), (60, 3, 2, 3, "modrelu", 9, "onehot")]


@pytest.mark.parametrize("T,B,nu,rho,nonlinearity,seed,v", RELRNN_CASES)
def test_compiled_relrnn_equals_fused_float64(T, B, nu, rho, nonlinearity, seed, v):
    comp, ref = relrnn_pair(nonlinearity, seed, nu=nu, rho=rho, v=v)
    check_screened_equals_fused(comp, ref, T, B, 7 + (nonlinearity == "modrelu"), v)


def check_screened_equals_fused(comp, ref, T, B, n_grads, v):
    """The compiled model ``comp`` against the fused torch ``ref`` (RelRNN or RelLSTM) on
    a random float64 sequence (T, B): outputs, loss and the ``n_grads`` gradients to
    1e-10, the states attended at every step, and (T >= 40, rho > 0, attention not
    uniform) that the relevant set changes once full (with ties, for one-hot attention)."""
    nu, rho = ref.nu, ref.rho
    x = torch.randn(T, B, N_IN, dtype=torch.float64, requires_grad=True)
    w = torch.randn(T, B, N, dtype=torch.float64)
    assert torch.allclose(comp(x), ref(x), rtol=0, atol=1e-10)
    loss_c, loss_r = (comp(x) * w).sum(), (ref(x) * w).sum()
    assert abs(loss_c.item() - loss_r.item()) <= 1e-10
    g_comp, g_ref = grads(comp, x, w), grads(ref, x, w)
    # x, U (weight, bias), V, W_q, W_k, v and modReLU's b
    assert len(g_comp) == len(g_ref) == n_grads
    for a, b in zip(g_comp, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (a - b).abs().max()
    # the screening's decisions: every step attends the same states as the plain loop
    # (compared directly: with one-hot attention, tied states that are never attended
    # leave the outputs unchanged whichever of them is kept)
    _, trace = ref(x, record=True)
    SL = compiled_slots(comp, x)
    for t in range(T):
        m = min(t, nu) + min(rho, max(0, t - nu))
        for b in range(B):
            want = sorted(i for i in trace.index[t, b].tolist() if i >= 0)
            assert sorted(SL[t, :m, b].tolist()) == want, (t, b)
    if T >= 40 and rho > 0 and v != "zero":
        changed, ties = r_changes(ref, x)
        assert changed > 0  # the relevant set changes once full: the screening is tested
        if v == "onehot":  # exact ties decided by the first-minimum and strictly-greater rules
            assert ties > 0


# -- the RelLSTM (rsa/models/kernels/compiled_rellstm.py) ---------------------------------

def rellstm_pair(seed=0, dtype=torch.float64, n=N, nu=3, rho=4, v="normal", key_scale=1.0):
    """A compiled and a fused torch RelLSTM with the same parameters, ``v`` and
    ``key_scale`` as :func:`relrnn_pair`'s; a nonzero gate bias, so every gate's path is
    exercised."""
    from rsa import RelLSTM
    torch.manual_seed(seed)
    ref = RelLSTM(N_IN, n, nu=nu, rho=rho).to(dtype)
    with torch.no_grad():
        ref.v.normal_().mul_({"normal": 1.0, "zero": 0.0, "onehot": 1e5}[v])
        ref.U.bias.uniform_(-0.5, 0.5)
        ref.W_k.weight.mul_(key_scale)
    comp = RelLSTM(N_IN, n, nu=nu, rho=rho, kernel="compiled").to(dtype)
    comp.load_state_dict(ref.state_dict())
    return comp, ref


@pytest.mark.parametrize("T,B,nu,rho,nonlinearity,seed,v", RELRNN_CASES)
def test_compiled_rellstm_equals_fused_float64(T, B, nu, rho, nonlinearity, seed, v):
    """The RelRNN's cases (its nonlinearity aside: the LSTM has none to choose), keys
    scaled by 3: the LSTM's outputs, o tanh(cell), are smaller than the RNN's states, and
    with unscaled keys the attention is so even that R never changes in two of the cases
    (the check would then not test the screening)."""
    comp, ref = rellstm_pair(seed, nu=nu, rho=rho, v=v, key_scale=3.0)
    check_screened_equals_fused(comp, ref, T, B, 7, v)


def test_compiled_rellstm_keys_beyond_exponential_range():
    """Keys |W_k h| > 170 take np.tanh in the compiled RelLSTM too."""
    comp, ref = rellstm_pair(seed=8, key_scale=2000.0)
    x = torch.randn(20, 2, N_IN, dtype=torch.float64, requires_grad=True)
    w = torch.randn(20, 2, N, dtype=torch.float64)
    assert (ref.W_k(ref(x)).abs() > 170).any()
    for a, b in zip(grads(comp, x, w), grads(ref, x, w), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (a - b).abs().max()


def test_gradcheck_compiled_rellstm_function():
    from rsa.models.kernels.compiled_rellstm import CompiledRelLSTMFunction
    from tests.helpers import fused_function_args
    args = fused_function_args(9, 2, 3, "tanh", seed=3, gates=4)
    assert torch.autograd.gradcheck(lambda *a: CompiledRelLSTMFunction.apply(*a, 2, 2), args,
                                    eps=1e-6, atol=1e-7)


def test_rellstm_kernel_option():
    from rsa import RelLSTM
    with pytest.raises(ValueError, match=r"kernel must be one of \('torch', 'compiled'\).*'jit'"):
        RelLSTM(1, 4, kernel="jit")
    comp, ref = rellstm_pair()
    x = torch.randn(6, 2, N_IN, dtype=torch.float64)
    H, _ = comp(x, record=True)  # record takes the torch loop
    assert torch.allclose(H, ref(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"x must have shape"):
        comp(torch.randn(4, 2, N_IN + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"RelLSTM kernel runs in float32 or float64, got "
                                         r"torch.bfloat16"):
        comp.to(torch.bfloat16)(torch.randn(4, 2, N_IN, dtype=torch.bfloat16))


# -- the MemRNN: the compiled RelRNN kernel with a ring that never evicts ------------------

def memrnn_pair(nonlinearity="tanh", seed=0, dtype=torch.float64, n=N):
    """A compiled and a fused torch MemRNN with the same parameters (v ~ N(0, 1), so the
    attention is not even; modReLU: some units cut off)."""
    from rsa import MemRNN
    torch.manual_seed(seed)
    ref = MemRNN(N_IN, n, nonlinearity=nonlinearity).to(dtype)
    with torch.no_grad():
        ref.v.normal_()
        if nonlinearity == "modrelu":
            ref.phi.b.uniform_(-0.5, 0.5)
    comp = MemRNN(N_IN, n, nonlinearity=nonlinearity, kernel="compiled").to(dtype)
    comp.load_state_dict(ref.state_dict())
    return comp, ref


@pytest.mark.parametrize("T,B,nonlinearity,seed", [
    (1, 2, "tanh", 0), (2, 3, "modrelu", 1), (40, 3, "tanh", 2), (40, 3, "modrelu", 3)])
def test_compiled_memrnn_equals_fused_float64(T, B, nonlinearity, seed):
    comp, ref = memrnn_pair(nonlinearity, seed)
    x = torch.randn(T, B, N_IN, dtype=torch.float64, requires_grad=True)
    w = torch.randn(T, B, N, dtype=torch.float64)
    assert torch.allclose(comp(x), ref(x), rtol=0, atol=1e-10)
    g_comp, g_ref = grads(comp, x, w), grads(ref, x, w)
    assert len(g_comp) == len(g_ref) == 7 + (nonlinearity == "modrelu")
    for a, b in zip(g_comp, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (a - b).abs().max()
    if T > 2:  # full attention, not the last nu states: the attended set grows with t
        SL = compiled_slots(comp, x)
        assert sorted(SL[T - 1, :T - 1, 0].tolist()) == list(range(T - 1))


def test_gradcheck_compiled_memrnn():
    from rsa.models.kernels.compiled_screened import memrnn_compiled
    from tests.helpers import fused_function_args
    args = fused_function_args(9, 2, 3, "modrelu", seed=4)
    assert torch.autograd.gradcheck(memrnn_compiled, args, eps=1e-6, atol=1e-7)


def test_compiled_relrnn_keys_beyond_exponential_range():
    """Keys |W_k h| > 170 take np.tanh in the compiled kernel (exp(2a) exp(2b) would
    leave float64's range): still the fused path's function."""
    comp, ref = relrnn_pair(seed=8, key_scale=400.0)
    x = torch.randn(20, 2, N_IN, dtype=torch.float64, requires_grad=True)
    w = torch.randn(20, 2, N, dtype=torch.float64)
    H = ref(x)
    assert (ref.W_k(H).abs() > 170).any()
    for a, b in zip(grads(comp, x, w), grads(ref, x, w), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (a - b).abs().max()


@pytest.mark.parametrize("seed", range(6))
def test_compiled_screening_step_equals_torch(seed):
    """One screening step on score tables full of ties (scores in {0, 1, 2}): the compiled
    step makes the torch path's decisions (first slot of lowest score, replaced only by a
    strictly greater score; R filling; S filling)."""
    import numpy as np

    from rsa.models.kernels.compiled_screened import _screen
    from rsa.models.kernels.screened import _screen_step
    g = torch.Generator().manual_seed(seed)
    nu, rho, B, T = 3, 4, 64, 50
    for nS, nR in ((1, 0), (nu, 0), (nu, 2), (nu, rho), (nu, rho)):
        t = int(torch.randint(nu, T, (1,), generator=g))
        slot = torch.randint(0, t, (nu + rho, B), generator=g)
        score = torch.randint(0, 3, (nu + rho, B), generator=g).double()
        alpha = torch.randint(0, 2, (nu + rho, B), generator=g).double()
        s_np, c_np = slot.numpy().copy(), score.numpy().copy()
        got = _screen(s_np, c_np, alpha.numpy(), t, nS, nR, nu, rho)
        score[:nS] += alpha[:nS]
        if nS == nu:
            trow = torch.arange(T)[:, None].expand(T, B)
            nR = _screen_step(slot, score, trow, t, nu, rho, nR, torch.arange(rho)[:, None])
        else:
            slot[nS], nS = t, nS + 1
        assert got == (nS, nR)
        assert np.array_equal(s_np, slot.numpy()) and np.array_equal(c_np, score.numpy())


@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
def test_gradcheck_compiled_relrnn_function(nonlinearity):
    from rsa.models.kernels.compiled_screened import CompiledRelRNNFunction
    from tests.helpers import fused_function_args
    args = fused_function_args(9, 2, 3, nonlinearity, seed=3)
    args = (*args, None) if len(args) == 5 else args
    assert torch.autograd.gradcheck(lambda *a: CompiledRelRNNFunction.apply(*a, 2, 2), args,
                                    eps=1e-6, atol=1e-7)


FLOAT32_PAIRS = {
    "rnn tanh": lambda **kw: pair("tanh", **kw),
    "rnn modrelu": lambda **kw: pair("modrelu", **kw),
    "lstm": lstm_pair,
    # RelRNN in float32: its own vectorised exponential, tanh from it
    "relrnn tanh": lambda **kw: relrnn_pair("tanh", **kw),
    "relrnn modrelu": lambda **kw: relrnn_pair("modrelu", **kw),
    "rellstm": rellstm_pair,  # its gates' exponentials and tanh: the vectorised ones
    "memrnn modrelu": lambda **kw: memrnn_pair("modrelu", **kw),
}


@pytest.mark.parametrize("case", FLOAT32_PAIRS)
def test_compiled_float32_rounding(case):
    """In float32, the compiled path is within float32 rounding of the torch path (both
    against the float64 computation: same order of error)."""
    make = FLOAT32_PAIRS[case]
    comp, ref = make(dtype=torch.float32, n=16)
    ref64 = make(n=16)[1]
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


def test_vectorised_float32_exp_within_two_ulp():
    import numpy as np

    from rsa.models.kernels.compiled_screened import _vexp
    x = np.linspace(-43, 44, 200001).astype(np.float32)
    out, ib = np.empty_like(x), np.empty(x.size, np.int32)
    _vexp(x, np.float32(2), out, ib)
    ref = np.exp(2 * x.astype(np.float64))
    assert (np.abs(out - ref) / ref).max() <= 2 * np.finfo(np.float32).eps


def test_relrnn_kernel_option():
    from rsa import MemRNN, RelRNN
    with pytest.raises(ValueError, match=r"kernel must be one of \('torch', 'compiled'\).*'jit'"):
        RelRNN(1, 4, kernel="jit")
    with pytest.raises(ValueError, match=r"kernel must be one of.*'numba'"):
        MemRNN(1, 4, kernel="numba")
    comp, ref = relrnn_pair()
    x = torch.randn(6, 2, N_IN, dtype=torch.float64)
    H, _ = comp(x, record=True)  # record takes the torch loop
    assert torch.allclose(H, ref(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"x must have shape"):
        comp(torch.randn(4, 2, N_IN + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"float32 or float64, got torch.bfloat16"):
        comp.to(torch.bfloat16)(torch.randn(4, 2, N_IN, dtype=torch.bfloat16))


@pytest.mark.parametrize("model", ["relrnn", "rellstm", "memrnn"])
def test_compiled_screened_run_records_its_kernel_and_may_resume_on_the_other(
        tmp_path, capfd, model):
    _check_kernel_resume(tmp_path, capfd, dict(TINY, model=model, T=4, **(
        {} if model == "memrnn" else dict(nu=2, rho=3))))
