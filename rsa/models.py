"""Recurrent models of the paper: RNN, LSTM, MemRNN, RelRNN, RelLSTM.

Definitions in *The paper* §2; derived step by step in the chapter *Relevancy
screening* (``book/relevancy_screening.ipynb``). Inputs are time-major,
``x: (T, B, input_size)``, like ``torch.nn.RNN``; outputs ``H: (T, B, n)`` with
``H[t-1] = h_t``.

The self-attentive update (MemRNN, RelRNN) at step t >= 2, with memory M:

    e_j   = v^T tanh(W_q q + W_k h_j)        for h_j in M      (additive attention)
    alpha = softmax(e)
    c_t   = sum_j alpha_j h_j
    s_{t-1} = (h_{t-1} + c_t) / 2
    h_t   = phi(U x_t + V s_{t-1} + b)

where the query q is s_{t-2} (s_0 = 0) and h_1 = phi(U x_1 + b). MemRNN attends to
every past state; RelRNN to the screened memory S ∪ R of :mod:`rsa.memory`.
LSTM and RelLSTM use the same attention with LSTM gates reading [s_{t-1}; x_t].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rsa.fused import check_sequence
from rsa.fused import fused_forward as memrnn_fused_forward
from rsa.fused_rellstm import fused_forward as rellstm_fused_forward
from rsa.fused_screened import fused_forward as relrnn_fused_forward
from rsa.memory import ScreenedMemory

__all__ = ["RNN", "LSTM", "MemRNN", "RelRNN", "RelLSTM", "ModReLU", "Trace",
           "henaff_skew", "orthogonal_init"]

NONLINEARITIES = ("tanh", "modrelu")
INITS = ("orthogonal", "orthogonal_random", "xavier")


@dataclass
class Trace:
    """What a ``record=True`` forward pass saw, step by step (K memory slots).

    - ``states``: the T hidden states h_t (B, n) as nodes of the autograd graph.
    - ``alpha`` (T, B, K): attention weight on each slot used to compute h_t.
    - ``index`` (T, B, K): 0-based time index of the state in each slot, -1 if empty.
    - ``score`` (T, B, K): relevance score of each slot's state after step t.
    - ``relevant`` (T, B, K): True for slots of the relevant set R.
    """

    states: list
    alpha: torch.Tensor
    index: torch.Tensor
    score: torch.Tensor
    relevant: torch.Tensor


class ModReLU(nn.Module):
    """modReLU(z) = sign(z) * relu(|z| + b), with a learned per-unit b ~ U(-0.01, 0.01)."""

    def __init__(self, n: int):
        super().__init__()
        self.b = nn.Parameter(torch.empty(n).uniform_(-0.01, 0.01))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sign(z) * torch.relu(z.abs() + self.b)


def henaff_skew(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Skew-symmetric A, block diagonal with 2x2 blocks [[0, th], [-th, 0]],
    th ~ U(-pi, pi) (Henaff et al. 2016); expm(A) is a block rotation."""
    A = torch.zeros(n, n)
    theta = (torch.rand(n // 2, generator=generator) * 2 - 1) * math.pi
    i = torch.arange(0, 2 * (n // 2), 2)
    A[i, i + 1] = theta
    A[i + 1, i] = -theta
    return A


def orthogonal_init(weight: torch.Tensor, init: str) -> None:
    """Initialise a square recurrent matrix in place.

    ``"orthogonal"``: V = expm(A), A Henaff-style skew-symmetric (the authors' default);
    ``"orthogonal_random"``: V = expm(A), A = (G - G^T)/2 with G Gaussian;
    ``"xavier"``: Xavier-normal.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    n = weight.shape[0]
    with torch.no_grad():
        if init == "xavier":
            nn.init.xavier_normal_(weight)
            return
        if init == "orthogonal":
            A = henaff_skew(n)
        else:
            G = torch.randn(n, n)
            A = (G - G.T) / 2
        weight.copy_(torch.linalg.matrix_exp(A.double()).to(weight.dtype))


def _check_sizes(input_size, hidden_size):
    for name, val in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be an int >= 1, got {val!r}")


class _Recurrent(nn.Module):
    """Shared forward loop. Subclasses set ``gates`` (1 for RNN, 4 for LSTM) and
    ``attention`` (None, "full" or "screened")."""

    gates = 1
    attention: str | None = None

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh",
                 init: str = "orthogonal", nu: int | None = None, rho: int = 0):
        super().__init__()
        _check_sizes(input_size, hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        n, g = hidden_size, self.gates
        self.U = nn.Linear(input_size, g * n, bias=True)
        self.V = nn.Linear(n, g * n, bias=False)
        if g == 1:
            if nonlinearity not in NONLINEARITIES:
                raise ValueError(
                    f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
            self.nonlinearity = nonlinearity
            self.phi = ModReLU(n) if nonlinearity == "modrelu" else nn.Tanh()
            orthogonal_init(self.V.weight, init)
        else:
            if init != "xavier":
                raise ValueError(f"LSTM models take init='xavier' only, got {init!r}")
            nn.init.xavier_normal_(self.U.weight)
            nn.init.xavier_normal_(self.V.weight)
            nn.init.zeros_(self.U.bias)
        self.init = init
        if self.attention is not None:
            self.W_q = nn.Linear(n, n, bias=False)
            self.W_k = nn.Linear(n, n, bias=False)
            bound = 1 / math.sqrt(n)
            self.v = nn.Parameter(torch.empty(n).uniform_(-bound, bound))
        if self.attention == "screened":
            for name, val, lo in (("nu", nu, 1), ("rho", rho, 0)):
                if not isinstance(val, int) or isinstance(val, bool) or val < lo:
                    raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")
        self.nu, self.rho = nu, rho

    # -- one step ----------------------------------------------------------------------
    def _cell(self, ux, s, cell):
        """h_t (and the LSTM cell) from U x_t + b and s_{t-1} (None means s = 0)."""
        z = ux if s is None else ux + self.V(s)
        if self.gates == 1:
            return self.phi(z), None
        i, f, g, o = z.chunk(4, dim=-1)
        cell = torch.sigmoid(i) * torch.tanh(g) if cell is None else \
            torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cell), cell

    def attend(self, q, keys, values, freeze_attention=False):
        """Additive attention: alpha = softmax_j(v^T tanh(W_q q + k_j)), c = sum alpha_j h_j.

        q (B, n); keys, values (B, m, n) with keys already W_k h_j. Returns c (B, n),
        alpha (B, m).
        """
        e = torch.tanh(self.W_q(q)[:, None, :] + keys) @ self.v  # (B, m)
        alpha = torch.softmax(e, dim=1)
        a = alpha.detach() if freeze_attention else alpha
        c = torch.bmm(a[:, None, :], values)[:, 0]  # (B, n)
        return c, alpha

    # -- the loop ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, record: bool = False, freeze_attention: bool = False):
        """Run over x (T, B, input_size). Returns H (T, B, n), and a :class:`Trace` if
        ``record``. ``freeze_attention`` detaches alpha in c: the gradient of the
        path-expansion chapter (attention weights held fixed)."""
        T, B = check_sequence(x, self.input_size)
        n = self.hidden_size
        # the input drive of every step in one matmul; unbind once (indexing Ux[t] per
        # step would make each backward allocate a (T, B, g n) gradient: O(T^2))
        Ux = self.U(x).unbind(0)  # T x (B, g n)
        memory = None
        if self.attention is not None:
            nu = self.nu if self.attention == "screened" else None
            memory = ScreenedMemory(nu, self.rho, B, n, x.device, x.dtype)
            q = x.new_zeros(B, n)  # s_0 = 0, the query at t = 2
        # slot layout of the trace: [R slots | S slots]
        slots_R = self.rho if memory is not None else 0
        slots_S = (self.nu if self.attention == "screened" else max(T - 1, 0)) \
            if memory is not None else 0
        states, rec = [], []
        h = s = cell = None
        for t in range(T):
            if t > 0:
                if memory is None:
                    s = h
                else:
                    M = memory.memory()  # (B, m, 2n): [h_j | W_k h_j]
                    c, alpha = self.attend(q, M[..., n:], M[..., :n], freeze_attention)
                    s = (h + c) / 2  # s_{t-1}
                    q = s
                    memory.add_attention(alpha)
            h, cell = self._cell(Ux[t], s, cell)
            if record:
                attended = memory is not None and t > 0
                rec.append(self._record(memory if attended else None,
                                        alpha if attended else None, slots_R, slots_S, B, x))
            if memory is not None:
                memory.push(h, self.W_k(h))
            states.append(h)
        H = torch.stack(states)  # (T, B, n)
        if not record:
            return H
        alpha, index, score, relevant = (torch.stack(z) for z in zip(*rec, strict=True))
        return H, Trace(states, alpha, index, score, relevant)

    @staticmethod
    def _record(memory, alpha, slots_R, slots_S, B, x):
        K = slots_R + slots_S
        relevant = torch.zeros(B, K, dtype=torch.bool, device=x.device)
        relevant[:, :slots_R] = True
        if memory is None:  # step 1, or a model without attention
            return (x.new_zeros(B, K), torch.full((B, K), -1, dtype=torch.long,
                                                  device=x.device),
                    x.new_zeros(B, K), relevant)
        index, score, _ = memory.snapshot(slots_R, slots_S)
        a = memory.scatter_alpha(alpha.detach(), slots_R, slots_S)
        return a, index, score, relevant


class RNN(_Recurrent):
    """h_t = phi(U x_t + V h_{t-1} + b), V orthogonal at init (*The paper* §2)."""

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh",
                 init: str = "orthogonal"):
        super().__init__(input_size, hidden_size, nonlinearity=nonlinearity, init=init)


class _Fusable(_Recurrent):
    """A model whose plain forward can run as one fused autograd node (MemRNN, RelRNN,
    RelLSTM).

    With ``fused`` (the default) a forward without ``record`` or ``freeze_attention``
    calls the class's ``_fused_forward(model, x)`` (:mod:`rsa.fused`,
    :mod:`rsa.fused_screened`, :mod:`rsa.fused_rellstm`); otherwise, and always for
    ``record=True`` or ``freeze_attention=True``, it runs the plain-autograd loop of
    :class:`_Recurrent`.
    """

    _fused_forward = None  # set by each subclass

    def __init__(self, *args, fused: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused = fused

    def forward(self, x: torch.Tensor, record: bool = False, freeze_attention: bool = False):
        if record or freeze_attention or not self.fused:
            return super().forward(x, record=record, freeze_attention=freeze_attention)
        return self._fused_forward(x)


class MemRNN(_Fusable):
    """Self-attentive RNN with full attention over every past state: O(T^2) per sequence.

    ``fused=True`` (default): a plain forward (no ``record``, no ``freeze_attention``)
    runs the whole sequence as one autograd node, :class:`rsa.fused.MemRNNFunction`. It
    keeps O(T n B + T^2 B) memory (states, keys, queries, attention weights) and
    recomputes the attention block in its hand-written backward, whose time is about
    twice the forward's (1.9-2.2x measured on CPU). ``fused=False`` is the plain-autograd
    loop, whose saved memory grows like T^2 n B (each step keeps its (B, t, n) attention
    tensors), the way the authors' implementation behaves; the cost chapters may show
    both. ``record=True`` and ``freeze_attention=True`` always take the plain loop.
    """

    attention = "full"
    _fused_forward = memrnn_fused_forward

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh",
                 init: str = "orthogonal", fused: bool = True):
        super().__init__(input_size, hidden_size, nonlinearity=nonlinearity, init=init,
                         fused=fused)


class RelRNN(_Fusable):
    """Relevancy-screened RNN: attention over S (nu recent states) ∪ R (rho relevant).

    ``fused=True`` (default): a plain forward (no ``record``, no ``freeze_attention``)
    runs the whole sequence as one autograd node,
    :class:`rsa.fused_screened.RelRNNFunction`: the screening is done on time indices,
    the backward is hand-written, and memory is O(T B (n + nu + rho)). ``fused=False``
    is the plain-autograd loop over :class:`rsa.memory.ScreenedMemory`, which the
    chapter *Relevancy screening* walks through; ``record=True`` and
    ``freeze_attention=True`` always take it.
    """

    attention = "screened"
    _fused_forward = relrnn_fused_forward

    def __init__(self, input_size: int, hidden_size: int, *, nu: int = 10, rho: int = 15,
                 nonlinearity: str = "tanh", init: str = "orthogonal", fused: bool = True):
        super().__init__(input_size, hidden_size, nonlinearity=nonlinearity, init=init,
                         nu=nu, rho=rho, fused=fused)


class LSTM(_Recurrent):
    """Standard LSTM, gates i, f, g, o on [h_{t-1}; x_t], Xavier-normal weights."""

    gates = 4

    def __init__(self, input_size: int, hidden_size: int, *, init: str = "xavier"):
        super().__init__(input_size, hidden_size, init=init)


class RelLSTM(_Fusable):
    """LSTM whose gates read [s_{t-1}; x_t], s_{t-1} = (h_{t-1} + c)/2, with c the
    relevancy-screened attention over LSTM outputs (s_0 = 0).

    ``fused=True`` (default): a plain forward (no ``record``, no ``freeze_attention``)
    runs the whole sequence as one autograd node,
    :class:`rsa.fused_rellstm.RelLSTMFunction`, which shares the fused RelRNN's
    screening on time indices and attention (forward and hand-written backward) and adds
    the LSTM cell's backward; memory O(T B (n + nu + rho)). ``fused=False`` is the
    plain-autograd loop over :class:`rsa.memory.ScreenedMemory` (the specification);
    ``record=True`` and ``freeze_attention=True`` always take it.
    """

    gates = 4
    attention = "screened"
    _fused_forward = rellstm_fused_forward

    def __init__(self, input_size: int, hidden_size: int, *, nu: int = 10, rho: int = 15,
                 init: str = "xavier", fused: bool = True):
        super().__init__(input_size, hidden_size, init=init, nu=nu, rho=rho, fused=fused)
