"""rsa.Transformer: causal (an output never depends on a later input, checked with
gradients), positions encoded (sinusoidal, at any length), its size next to the
recurrent models' at n = 128, inside TaskModel and rsa.train.train, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from rsa.models import heads
from rsa.models.transformer import Transformer, parameter_count, sinusoidal_positions
from rsa.train import train


def make(input_size=3, hidden_size=16, seed=0, **kwargs):
    torch.manual_seed(seed)
    return Transformer(input_size, hidden_size, **kwargs).double()


def test_an_output_never_depends_on_a_later_input():
    model = make()
    L = 9
    x = torch.randn(L, 2, 3, dtype=torch.float64, requires_grad=True)
    out = model(x)
    proj = torch.randn(out.shape[1:], dtype=torch.float64)  # (a LayerNorm's sum is fixed)
    for t in range(L):
        (g,) = torch.autograd.grad((out[t] * proj).sum(), x, retain_graph=True)
        per_step = g.abs().sum(dim=(1, 2))
        assert (per_step[t + 1:] == 0).all(), t
        assert (per_step[: t + 1] > 0).all(), t
    # and the same outputs when the future is changed
    y = x.detach().clone()
    y[5:] = torch.randn(L - 5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(model(y)[:5], out[:5].detach(), rtol=1e-12, atol=1e-12)


def test_positions_are_sinusoidal_and_unbounded():
    P = sinusoidal_positions(50, 8, dtype=torch.float64)
    t, i = 7, 1
    assert P[t, 2 * i] == pytest.approx(math.sin(t / 10000 ** (2 * i / 8)))
    assert P[t, 2 * i + 1] == pytest.approx(math.cos(t / 10000 ** (2 * i / 8)))
    model = make()
    # positions matter: the same input at every step gives different outputs
    x = torch.ones(6, 1, 3, dtype=torch.float64)
    out = model(x)
    assert not torch.allclose(out[3], out[4])
    # no maximum length, and no parameters in the encoding
    assert model(torch.randn(3000, 1, 3, dtype=torch.float64)).shape == (3000, 1, 8)
    assert parameter_count(model) == sum(p.numel() for p in model.parameters())
    assert not any("pos" in name for name, _ in model.named_parameters())


def test_size_next_to_the_recurrent_models():
    """d_model = n / 2 = 64, 2 layers, 4 heads, feed-forward 256 at n = 128: its count
    lies between the LSTM's (and SAB's) and RelLSTM's, the largest recurrent model."""
    core = heads.build_model("transformer", 10, 128)
    assert (core.d_model, core.num_layers, core.nhead, core.dim_feedforward) == \
        (64, 2, 4, 256) and core.hidden_size == 64
    count = parameter_count(core)
    d = 64
    assert count == 2 * (12 * d * d + 13 * d) + 10 * d + d + 2 * d
    recurrent = {m: parameter_count(heads.build_model(m, 10, 128))
                 for m in ("rnn", "lstm", "memrnn", "relrnn", "rellstm", "sab")}
    assert recurrent["lstm"] < recurrent["sab"] < count < recurrent["rellstm"]
    assert abs(count - recurrent["rellstm"]) / recurrent["rellstm"] < 0.04


def test_inside_task_model_and_train(tmp_path):
    model = heads.build_task_model("transformer", "copy", 16)
    x = torch.randn(12, 2, model.task.input_size)
    assert model(x).shape == (12, 2, model.task.n_classes)
    digits = heads.build_task_model("transformer", "digits", 16)
    assert digits(torch.randn(20, 2, digits.task.input_size)).shape == \
        (2, digits.task.n_classes)
    result = train(model="transformer", task="copy", T=3, hidden_size=16, batch=4,
                   eval_batch=8, steps=4, eval_every=2, progress=False,
                   out_dir=str(tmp_path / "run"))
    assert isinstance(result.model.core, Transformer)
    assert [row["step"] for row in result.history] == [2, 4]
    assert all(math.isfinite(row["val_loss"]) for row in result.history)


def test_record_and_freeze_attention_are_refused():
    model = make()
    x = torch.randn(4, 1, 3, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="got record=True, freeze_attention=False"):
        model(x, record=True)
    with pytest.raises(NotImplementedError, match="got record=False, freeze_attention=True"):
        model(x, freeze_attention=True)
    with pytest.raises(NotImplementedError, match="keeps no trace"):
        heads.build_task_model("transformer", "copy", 16)(torch.randn(4, 1, 10),
                                                          record=True)


@pytest.mark.parametrize("args, kwargs, message", [
    ((3, 0), {}, "hidden_size must be an int >= 2, got 0"),
    ((0, 16), {}, "input_size must be an int >= 1, got 0"),
    ((3, 16), dict(nhead=3), "d_model must be even and divisible by nhead=3, got 8"),
    ((3, 16), dict(num_layers=0), "num_layers must be an int >= 1, got 0"),
    ((3, 16), dict(d_model=2.0), "d_model must be an int >= 2, got 2.0"),
])
def test_bad_options(args, kwargs, message):
    with pytest.raises(ValueError) as error:
        Transformer(*args, **kwargs)
    assert str(error.value) == message


def test_bad_inputs():
    model = make()
    with pytest.raises(ValueError, match=r"x must have shape \(L, B, 3\), got \(5, 2, 4\)"):
        model(torch.zeros(5, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="sequence length L must be >= 1, got 0"):
        model(torch.zeros(0, 2, 3, dtype=torch.float64))
