"""The fused models on a GPU: forward and backward on CUDA against the CPU reference.

Skipped where CUDA is unavailable (this project's CI and its CPU machines); run on a GPU
machine with ``python -m pytest tests/test_cuda.py``. In float64 the CUDA result must
equal the CPU's to rounding (1e-10); in float32, within 1e-4 of the float64 CPU result.
"""

from __future__ import annotations

import pytest
import torch

from rsa.models.heads import _FUSED, build_model, build_task_model
from rsa.tasks import copy_batch, make_generator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CONFIGS = [dict(nonlinearity="tanh"), dict(nonlinearity="modrelu")]


def _options(model: str, config: dict) -> dict:
    options = {} if model.endswith("lstm") else dict(config)
    if model in ("relrnn", "rellstm"):
        options.update(nu=3, rho=4)
    return options


def _pair(model: str, config: dict, dtype):
    torch.manual_seed(0)
    cpu = build_model(model, 5, 12, fused=False, **_options(model, config)).double()
    if config.get("nonlinearity") == "modrelu" and hasattr(cpu, "phi"):
        with torch.no_grad():
            cpu.phi.b.uniform_(-0.5, 0.5)  # some units cut off
    gpu = build_model(model, 5, 12, fused=True, **_options(model, config)).double()
    gpu.load_state_dict(cpu.state_dict())  # in float64, then cast
    return cpu, gpu.to("cuda", dtype)


def _outputs_and_grads(model, x, w):
    x = x.detach().requires_grad_(True)
    H = model(x)
    inputs = [x, *model.parameters()]
    g = torch.autograd.grad((H * w).sum(), inputs, allow_unused=True)
    g = [torch.zeros_like(i) if gi is None else gi for gi, i in zip(g, inputs, strict=True)]
    return [H.detach().cpu().double(), *(gi.cpu().double() for gi in g)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c["nonlinearity"])
@pytest.mark.parametrize("model", _FUSED)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)],
                         ids=["float64", "float32"])
def test_fused_on_cuda_equals_the_plain_loop_on_cpu(model, config, dtype, tol):
    cpu, gpu = _pair(model, config, dtype)
    torch.manual_seed(1)
    x, w = torch.randn(37, 3, 5, dtype=torch.float64), torch.randn(37, 3, 12,
                                                                 dtype=torch.float64)
    want = _outputs_and_grads(cpu, x, w)
    got = _outputs_and_grads(gpu, x.to("cuda", dtype), w.to("cuda", dtype))
    for name, a, b in zip(["H", "x", *dict(cpu.named_parameters())], got, want, strict=True):
        scale = max(1.0, b.abs().max().item())
        assert (a - b).abs().max().item() <= tol * scale, (model, name)


@pytest.mark.parametrize("model", ["rnn", "lstm", *_FUSED])
def test_a_training_update_on_cuda_matches_cpu(model):
    """One RMSprop update with clipping, from the same weights, on CUDA (float64) and CPU."""
    from rsa.train import make_optimizer, train_step

    x, y = copy_batch(20, 4, make_generator(0))
    losses, weights = [], []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        m = build_task_model(model, "copy", 16).double().to(device)
        opt = make_optimizer("rmsprop", m.parameters(), 1e-3)
        loss, _ = train_step(m, opt, x.double().to(device), y.to(device), clip=1.0)
        losses.append(loss)
        weights.append(torch.cat([p.detach().cpu().flatten() for p in m.parameters()]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-10)
    assert (weights[0] - weights[1]).abs().max().item() < 1e-10
