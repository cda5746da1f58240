"""A small causal Transformer: self-attention without recurrence, the other end of the
book's title.

Built from ``torch.nn.TransformerEncoderLayer`` (no attention written here) with a causal
mask, so the output at step t reads x_1, ..., x_t only, like the recurrent models':

    z_t^0 = E x_t + b_E + P_t                  (P: sinusoidal positions)
    z^l   = Layer_l(z^{l-1}, causal mask)      (pre-LayerNorm, l = 1..num_layers)
    out_t = LayerNorm(z_t^L)                   (L, B, d_model), read by the task's read-out

**Positions: fixed sinusoidal encodings** (Vaswani et al. 2017), P_{t,2i} =
sin(t / 10000^{2i/d}), P_{t,2i+1} = cos(t / 10000^{2i/d}), t the 0-based step. They are
defined at every step, without parameters and without a maximum length, so a model
trained at one delay can be *run* at any longer one (the transfer experiment); whether it
still works there is that experiment's question, since it has only seen positions up to
its training length. A learned position table would stop at its length (no transfer at
all); relative schemes (ALiBi, rotary) need attention code of their own, which this
model does not write.

**Size.** ``hidden_size`` is the n of the recurrent models it is compared with; the
model's width is d_model = n / 2 (64 at n = 128), 4 heads of 16, 2 layers, a feed-forward
width of 4 d_model: 24 d^2 + 27 d parameters in the layers, about 100 k at n = 128 (the
count with the input embedding: :func:`parameter_count`), between the LSTM and SAB
(about 72 k on copy) and RelLSTM (about 104 k), the largest recurrent model; one layer
of width 128 would be the same size but could not compose two attention steps.
``self.hidden_size`` is d_model, the width of the output the read-out reads.

No dropout (the recurrent models have none). ``record=True`` and
``freeze_attention=True`` are refused: the layers do not return their attention weights
as a trace of states (there are no recurrent states h_t to take gradients at).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Transformer", "sinusoidal_positions"]


def sinusoidal_positions(L: int, d: int, device=None, dtype=None) -> torch.Tensor:
    """P (L, d): P[t, 2i] = sin(t w_i), P[t, 2i+1] = cos(t w_i), w_i = 10000^{-2i/d}."""
    t = torch.arange(L, device=device, dtype=torch.float64)[:, None]
    w = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, device=device,
                                                    dtype=torch.float64) / d)
    P = torch.zeros(L, d, device=device, dtype=torch.float64)
    P[:, 0::2] = torch.sin(t * w)
    P[:, 1::2] = torch.cos(t * w)[:, : d // 2]
    return P.to(dtype or torch.get_default_dtype())


def _check_int(name, value, low):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


class Transformer(nn.Module):
    """Causal Transformer encoder over the input sequence (the module docstring).

    ``Transformer(input_size, hidden_size)``: d_model = hidden_size // 2 unless given
    (it must be even and divisible by ``nhead``), ``num_layers`` = 2, ``nhead`` = 4,
    ``dim_feedforward`` = 4 d_model. Parameters: ``E`` (the input embedding), ``layers``
    (``nn.TransformerEncoder``), ``norm`` (the final LayerNorm).
    """

    def __init__(self, input_size: int, hidden_size: int, *, d_model: int | None = None,
                 num_layers: int = 2, nhead: int = 4, dim_feedforward: int | None = None):
        super().__init__()
        _check_int("input_size", input_size, 1)
        _check_int("hidden_size", hidden_size, 2)
        d = hidden_size // 2 if d_model is None else d_model
        _check_int("d_model", d, 2)
        _check_int("num_layers", num_layers, 1)
        _check_int("nhead", nhead, 1)
        if d % 2 or d % nhead:
            raise ValueError(f"d_model must be even and divisible by nhead={nhead}, got {d}")
        ff = 4 * d if dim_feedforward is None else dim_feedforward
        _check_int("dim_feedforward", ff, 1)
        self.input_size, self.hidden_size = input_size, d
        self.d_model, self.num_layers, self.nhead, self.dim_feedforward = d, num_layers, nhead, ff
        self.E = nn.Linear(input_size, d)
        layer = nn.TransformerEncoderLayer(d, nhead, ff, dropout=0.0, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, record: bool = False, freeze_attention: bool = False):
        """Outputs (L, B, d_model) for x (L, B, input_size); out[t] depends on x[:t+1]."""
        if record or freeze_attention:
            raise NotImplementedError(
                f"the Transformer keeps no trace of recurrent states: record and "
                f"freeze_attention must be False, got record={record!r}, "
                f"freeze_attention={freeze_attention!r}")
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (L, B, {self.input_size}), got "
                             f"{tuple(x.shape)}")
        L = x.shape[0]
        if L < 1:
            raise ValueError(f"sequence length L must be >= 1, got {L}")
        z = self.E(x) + sinusoidal_positions(L, self.d_model, x.device, x.dtype)[:, None]
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=x.device,
                                                              dtype=x.dtype)
        return self.norm(self.layers(z, mask=mask, is_causal=True))


def parameter_count(module: nn.Module) -> int:
    """The number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
