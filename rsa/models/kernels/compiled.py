"""Compiled CPU kernels (issue 30): the whole forward and hand-written backward of a
sequence in numba-compiled code, wrapped as an autograd function on CPU tensors
(zero-copy through ``Tensor.numpy()``). The torch path stays the reference and the
default; a model takes ``kernel="compiled"`` to use this one.

First model: the plain RNN, h_0 = phi(ux_0), h_t = phi(ux_t + V h_{t-1}), phi = tanh or
modReLU(z) = sign(z) relu(|z| + b) (as :mod:`rsa.models.kernels.fused`), with
ux = U x + b computed by torch (so U and b keep torch's autograd) and V the recurrent
matrix (n, n). The kernel runs the T steps' products as BLAS calls (``np.dot`` through
SciPy's BLAS) without autograd bookkeeping; its backward:

    G_z_t = (G_H_t + G_z_{t+1} V) phi'(z_t),   G_V = sum_{t >= 1} G_z_t^T h_{t-1},
    G_ux = G_z,   G_b = sum G_z sign(z) (modReLU),

with phi' = 1 - h^2 or sign(z)^2 [|z| + b > 0] (0 at z = 0, as autograd).

Second model: the plain LSTM (gates i, f, g, o of z_t = ux_t + V h_{t-1}, V (4n, n);
c_t = sigma(f) c_{t-1} + sigma(i) tanh(g), c_{-1} = 0; h_t = sigma(o) tanh(c_t)), whose
backward carries G_c_t = G_h_t sigma(o) (1 - tanh^2 c_t) + G_c_{t+1} sigma(f_{t+1}). Its
kernel lives with the RelLSTM's, whose cell it shares
(:mod:`rsa.models.kernels.compiled_rellstm`: :class:`CompiledLSTMFunction`): its float32
exponentials are vectorised (numba's scalar exp and tanh cost 20 to 55 ns a value, five
per state and step in the gates).

The models with attention have theirs in their own modules: the RelRNN and the MemRNN
in :mod:`rsa.models.kernels.compiled_screened`, the RelLSTM in
:mod:`rsa.models.kernels.compiled_rellstm`.

numba compiles on first call (measured by ``python tools/bench_kernels.py --compile``)
and caches the machine code on disk (``cache=True``: in ``__pycache__`` next to this
module, or in ``NUMBA_CACHE_DIR`` when that is set, e.g. for a read-only install).
"""

from __future__ import annotations

import numpy as np
import torch

KERNELS = ("torch", "compiled")

try:  # numba is an optional dependency (extra ``compiled``)
    import numba
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None


def available() -> bool:
    """Whether the compiled path can run here (numba importable)."""
    return numba is not None


def check_kernel(kernel: str) -> str:
    """``kernel`` if it is one of :data:`KERNELS` (and usable); ValueError otherwise."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "compiled" and not available():
        raise ValueError("kernel='compiled' needs numba, which is not installed; install "
                         "it with: pip install -e '.[compiled]' (or use kernel='torch')")
    return kernel


def _rnn_forward(ux, VT, phi_b, modrelu):  # pragma: no cover - compiled
    """H (T, B, n) and the pre-activations Z (kept for modReLU's backward)."""
    T, B, n = ux.shape
    H = np.empty_like(ux)
    Z = np.empty_like(ux)
    for t in range(T):
        if t == 0:
            Z[0] = ux[0]
        else:
            Z[t] = ux[t] + np.dot(H[t - 1], VT)
        if modrelu:
            for i in range(B):
                for j in range(n):
                    z = Z[t, i, j]
                    r = abs(z) + phi_b[j]
                    H[t, i, j] = np.sign(z) * r if r > 0 else 0.0 * z
        else:
            H[t] = np.tanh(Z[t])
    return H, Z


def _rnn_backward(H, Z, gH, V, phi_b, modrelu):  # pragma: no cover - compiled
    """G_ux (= G_z), G_V and G_b (modReLU's bias; zeros for tanh)."""
    T, B, n = H.shape
    gZ = np.empty_like(H)
    gb = np.zeros(n, H.dtype)
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            g = gH[t] + np.dot(gZ[t + 1], V)
        else:
            g = gH[t].copy()
        if modrelu:
            for i in range(B):
                for j in range(n):
                    z = Z[t, i, j]
                    s = np.sign(z)
                    d = s * s if abs(z) + phi_b[j] > 0 else 0.0 * z
                    g[i, j] = g[i, j] * d
                    gb[j] += g[i, j] * s
            gZ[t] = g
        else:
            gZ[t] = g * (1.0 - H[t] * H[t])
    if T > 1:
        gV = np.dot(gZ[1:].reshape((T - 1) * B, n).T.copy(),
                    H[:T - 1].reshape((T - 1) * B, n))
    else:
        gV = np.zeros((n, n), H.dtype)
    return gZ, gV, gb


if numba is not None:
    _rnn_forward = numba.njit(cache=True, nogil=True)(_rnn_forward)
    _rnn_backward = numba.njit(cache=True, nogil=True)(_rnn_backward)


def tensor_array(x: torch.Tensor) -> np.ndarray:
    """A contiguous numpy view of a CPU tensor (no copy when already contiguous)."""
    if x.device.type != "cpu":
        raise ValueError(f"the compiled kernel runs on CPU tensors only, got device "
                         f"{x.device}; use kernel='torch' on {x.device.type}")
    return x.detach().contiguous().numpy()


_array = tensor_array


class CompiledRNNFunction(torch.autograd.Function):
    """H = RNN(ux, V) over a whole sequence in compiled code; backward hand-written."""

    @staticmethod
    def forward(ctx, ux, V, phi_b):  # noqa: D102
        modrelu = phi_b is not None
        b = _array(phi_b) if modrelu else np.zeros(V.shape[0], _array(V).dtype)
        H, Z = _rnn_forward(_array(ux), np.ascontiguousarray(_array(V).T), b, modrelu)
        H = torch.from_numpy(H)
        ctx.modrelu = modrelu
        ctx.save_for_backward(H, torch.from_numpy(Z), V, torch.from_numpy(b))
        return H

    @staticmethod
    def backward(ctx, gH):  # noqa: D102
        H, Z, V, b = ctx.saved_tensors
        gZ, gV, gb = _rnn_backward(_array(H), _array(Z), _array(gH), _array(V), _array(b),
                                   ctx.modrelu)
        return (torch.from_numpy(gZ), torch.from_numpy(gV),
                torch.from_numpy(gb) if ctx.modrelu else None)


def rnn_compiled_forward(model, x: torch.Tensor) -> torch.Tensor:
    """The plain RNN ``model`` (tanh or modReLU) over x (T, B, input_size) through the compiled
    kernel: H (T, B, n), differentiable in all the model's parameters."""
    phi_b = model.phi.b if model.nonlinearity == "modrelu" else None
    return CompiledRNNFunction.apply(model.U(x), model.V.weight, phi_b)
