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

(the book's *Notation* page: {eq}`eq-attention-score`, {eq}`eq-attention-context`,
{eq}`eq-recurrent-update`), where the query q is s_{t-2} (s_0 = 0) and
h_1 = phi(U x_1 + b). MemRNN attends to
every past state; RelRNN to the screened memory S ∪ R of :mod:`rsa.models.memory`.
LSTM and RelLSTM use the same attention with LSTM gates reading [s_{t-1}; x_t].

The pieces: the cell (:class:`_RNNCell`, :class:`_LSTMCell`), the additive attention
(:meth:`_Recurrent.attend`) and the memory (:class:`rsa.models.memory.ScreenedMemory`), put
together by the loop :meth:`_Recurrent.forward`, which the chapter shows next to the
algorithm. A recorded pass (``record=True``) logs what each step saw through its memory
(:class:`_RecordingMemory`), outside the loop. The specification all of them (and the
fused functions) are tested against is :mod:`rsa.models.reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rsa.models.kernels.compiled import check_kernel, rnn_compiled_forward
from rsa.models.kernels.compiled_rellstm import lstm_compiled_forward, rellstm_compiled_forward
from rsa.models.kernels.compiled_screened import memrnn_compiled_forward, relrnn_compiled_forward
from rsa.models.kernels.fused import check_sequence
from rsa.models.kernels.fused import fused_forward as memrnn_fused_forward
from rsa.models.kernels.rellstm import fused_forward as rellstm_fused_forward
from rsa.models.kernels.screened import fused_forward as relrnn_fused_forward
from rsa.models.memory import ScreenedMemory

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
    """The loop shared by the five models: a cell (:class:`_RNNCell` or
    :class:`_LSTMCell`) reading s_{t-1}, and, with ``attention`` ("full" or
    "screened"), the additive attention (:meth:`attend`) over the memory R ∪ S
    (:class:`rsa.models.memory.ScreenedMemory`). ``gates``: rows of U and V per unit (1 for
    the RNN cell, 4 for the LSTM's)."""

    gates = 1
    attention: str | None = None

    def __init__(self, input_size: int, hidden_size: int, *, init: str,
                 nu: int | None = None, rho: int = 0, **cell_options):
        super().__init__()
        _check_sizes(input_size, hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        n, g = hidden_size, self.gates
        self.U = nn.Linear(input_size, g * n, bias=True)
        self.V = nn.Linear(n, g * n, bias=False)
        self._init_cell(init, **cell_options)
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

    def new_memory(self, T: int, B: int, x: torch.Tensor, record: bool = False):
        """The empty memory R ∪ S of a batch of B sequences of T steps: S holds the nu
        latest states (every past state for full attention), R at most rho; None for a
        model without attention. With ``record``, one that logs what each step saw."""
        if self.attention is None:
            return None
        nu = self.nu if self.attention == "screened" else None
        if record:
            return _RecordingMemory(nu, self.rho, B, self.hidden_size, x.device, x.dtype, T)
        return ScreenedMemory(nu, self.rho, B, self.hidden_size, x.device, x.dtype)

    def forward(self, x: torch.Tensor, record: bool = False, freeze_attention: bool = False):
        """Run over x (T, B, input_size). Returns H (T, B, n), and a :class:`Trace` if
        ``record``. ``freeze_attention`` detaches alpha in c: the gradient of the
        path-expansion chapter (attention weights held fixed)."""
        T, B = check_sequence(x, self.input_size)
        n = self.hidden_size
        # the input drive of every step in one matmul; unbind once (indexing Ux[t] per
        # step would make each backward allocate a (T, B, g n) gradient: O(T^2))
        Ux = self.U(x).unbind(0)  # T x (B, g n)
        memory = self.new_memory(T, B, x, record)  # R ∪ S, None without attention
        q = x.new_zeros(B, n)  # s_0 = 0, the query at t = 2
        s = cell = None  # h_1 = phi(U x_1 + b): no recurrent input
        states = []  # h_1, ..., h_T
        for t, ux in enumerate(Ux, start=1):  # step t computes h_t, as in the book
            if t > 1 and memory is None:
                s = states[-1]  # s_{t-1} = h_{t-1}
            elif t > 1:
                M = memory.memory()  # (B, m, 2n): [h_j | W_k h_j] for h_j in R ∪ S
                c, alpha = self.attend(q, M[..., n:], M[..., :n], freeze_attention)
                s = q = (states[-1] + c) / 2  # s_{t-1} = (h_{t-1} + c_t) / 2, next query
                memory.add_attention(alpha)  # relevance scores of the states in S
            h, cell = self.cell(ux, s, cell)  # h_t
            if memory is not None:
                memory.push(h, self.W_k(h))  # h_t enters S; the oldest may move to R
            states.append(h)
        H = torch.stack(states)  # (T, B, n)
        return (H, _trace(states, memory, x)) if record else H


class _RNNCell(_Recurrent):
    """h_t = phi(U x_t + V s_{t-1} + b), phi = tanh or modReLU, V orthogonal at init."""

    def _init_cell(self, init: str, nonlinearity: str = "tanh") -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.phi = ModReLU(self.hidden_size) if nonlinearity == "modrelu" else nn.Tanh()
        orthogonal_init(self.V.weight, init)

    def cell(self, ux, s, cell=None):
        """h_t from ux = U x_t + b and s_{t-1} (None: s = 0); no cell state (None)."""
        return self.phi(ux if s is None else ux + self.V(s)), None


class _LSTMCell(_Recurrent):
    """LSTM gates i, f, g, o on [s_{t-1}; x_t], Xavier-normal weights, zero bias."""

    gates = 4

    def _init_cell(self, init: str) -> None:
        if init != "xavier":
            raise ValueError(f"LSTM models take init='xavier' only, got {init!r}")
        nn.init.xavier_normal_(self.U.weight)
        nn.init.xavier_normal_(self.V.weight)
        nn.init.zeros_(self.U.bias)

    def cell(self, ux, s, cell):
        """(h_t, cell_t) from ux = U x_t + b, s_{t-1} (None: s = 0) and cell_{t-1}
        (None: 0, the first step)."""
        z = ux if s is None else ux + self.V(s)
        i, f, g, o = z.chunk(4, dim=-1)
        cell = torch.sigmoid(i) * torch.tanh(g) if cell is None else \
            torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cell), cell


class _RecordingMemory(ScreenedMemory):
    """A :class:`ScreenedMemory` that logs, at each step's :meth:`add_attention` (after
    the attention, before h_t is pushed), the weights, time indices and scores of its
    slots in a fixed layout [rho R slots | S slots] (nu, or T - 1 for full attention):
    what a :class:`Trace` holds."""

    def __init__(self, nu, rho, batch, hidden, device, dtype, T: int):
        super().__init__(nu, rho, batch, hidden, device, dtype)
        self.slots_R, self.slots_S = rho, nu if nu is not None else max(T - 1, 0)
        self.log = []

    def add_attention(self, alpha: torch.Tensor) -> None:
        super().add_attention(alpha)
        index, score, _ = self.snapshot(self.slots_R, self.slots_S)
        a = self.scatter_alpha(alpha.detach(), self.slots_R, self.slots_S)
        self.log.append((a, index, score))


def _trace(states: list, memory: _RecordingMemory | None, x: torch.Tensor) -> Trace:
    """The :class:`Trace` of a recorded forward pass, from its states and the log of its
    memory (step 1, and every step of a model without attention, saw an empty one)."""
    T, B = len(states), x.shape[1]
    slots_R, slots_S = (memory.slots_R, memory.slots_S) if memory is not None else (0, 0)
    K = slots_R + slots_S
    empty = (x.new_zeros(B, K), torch.full((B, K), -1, dtype=torch.long, device=x.device),
             x.new_zeros(B, K))
    rows = [empty, *(memory.log if memory is not None else [empty] * (T - 1))]
    alpha, index, score = (torch.stack(z) for z in zip(*rows, strict=True))
    relevant = torch.zeros(T, B, K, dtype=torch.bool, device=x.device)
    relevant[..., :slots_R] = True
    return Trace(states, alpha, index, score, relevant)


class RNN(_RNNCell):
    """h_t = phi(U x_t + V h_{t-1} + b), V orthogonal at init (*The paper* §2).

    ``kernel="torch"`` (default): the plain-autograd loop of :class:`_Recurrent`;
    ``kernel="compiled"``: a plain forward (no ``record``, no ``freeze_attention``) on CPU
    runs the whole sequence in numba-compiled code with a hand-written backward
    (:mod:`rsa.models.kernels.compiled`), equal to the loop to rounding."""

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh",
                 init: str = "orthogonal", kernel: str = "torch"):
        super().__init__(input_size, hidden_size, nonlinearity=nonlinearity, init=init)
        self.kernel = check_kernel(kernel)

    def forward(self, x: torch.Tensor, record: bool = False, freeze_attention: bool = False):
        if self.kernel == "compiled" and not record and not freeze_attention:
            check_sequence(x, self.input_size)
            return rnn_compiled_forward(self, x)
        return super().forward(x, record=record, freeze_attention=freeze_attention)


class _Fusable(_Recurrent):
    """A model whose plain forward can run as one fused autograd node (MemRNN, RelRNN,
    RelLSTM).

    With ``fused`` (the default) a forward without ``record`` or ``freeze_attention``
    calls the class's ``_fused_forward(model, x)`` (:mod:`rsa.models.kernels.fused`,
    :mod:`rsa.models.kernels.screened`, :mod:`rsa.models.kernels.rellstm`); otherwise, and always
    for
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


class MemRNN(_Fusable, _RNNCell):
    """Self-attentive RNN with full attention over every past state: O(T^2) per sequence.

    ``fused=True`` (default): a plain forward (no ``record``, no ``freeze_attention``)
    runs the whole sequence as one autograd node,
    :class:`rsa.models.kernels.fused.MemRNNFunction`. It
    keeps O(T n B + T^2 B) memory (states, keys, queries, attention weights) and
    recomputes the attention block in its hand-written backward, whose time is about
    twice the forward's (1.9-2.2x measured on CPU). ``fused=False`` is the plain-autograd
    loop, whose saved memory grows like T^2 n B (each step keeps its (B, t, n) attention
    tensors), the way the authors' implementation behaves; the cost chapters may show
    both. ``record=True`` and ``freeze_attention=True`` always take the plain loop.

    ``kernel="compiled"``: a plain forward on CPU runs the whole sequence in the
    compiled RelRNN kernel with a ring that never evicts
    (:func:`rsa.models.kernels.compiled_screened.memrnn_compiled`), the fused function's
    to rounding (``fused`` then picks nothing).
    """

    attention = "full"
    _fused_forward = memrnn_fused_forward

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh",
                 init: str = "orthogonal", fused: bool = True, kernel: str = "torch"):
        super().__init__(input_size, hidden_size, nonlinearity=nonlinearity, init=init,
                         fused=fused)
        self.kernel = check_kernel(kernel)

    def forward(self, x: torch.Tensor, record: bool = False, freeze_attention: bool = False):
        if self.kernel == "compiled" and not record and not freeze_attention:
            return memrnn_compiled_forward(self, x)
        return super().forward(x, record=record, freeze_attention=freeze_attention)


class RelRNN(_Fusable, _RNNCell):
    """Relevancy-screened RNN: attention over S (nu recent states) ∪ R (rho relevant).

    ``fused=True`` (default): a plain forward (no ``record``, no ``freeze_attention``)
    runs the whole sequence as one autograd node,
    :class:`rsa.models.kernels.screened.RelRNNFunction`: the screening is done on time indices,
    the backward is hand-written, and memory is O(T B (n + nu + rho)). ``fused=False``
    is the plain-autograd loop over :class:`rsa.models.memory.ScreenedMemory`, which the
    chapter *Relevancy screening* walks through; ``record=True`` and
    ``freeze_attention=True`` always take it.

    ``kernel="compiled"``: a plain forward on CPU runs the whole sequence, screening
    included, in numba-compiled code with a hand-written backward
    (:mod:`rsa.models.kernels.compiled_screened`), the fused function's to rounding
    (``fused`` then picks nothing: it chooses between the two torch paths).
    """

    attention = "screened"
    _fused_forward = relrnn_fused_forward

    def __init__(self, input_size: int, hidden_size: int, *, nu: int = 10, rho: int = 15,
                 nonlinearity: str = "tanh", init: str = "orthogonal", fused: bool = True,
                 kernel: str = "torch"):
        super().__init__(input_size, hidden_size, nonlinearity=nonlinearity, init=init,
                         nu=nu, rho=rho, fused=fused)
        self.kernel = check_kernel(kernel)

    def forward(self, x: torch.Tensor, record: bool = False, freeze_attention: bool = False):
        if self.kernel == "compiled" and not record and not freeze_attention:
            return relrnn_compiled_forward(self, x)
        return super().forward(x, record=record, freeze_attention=freeze_attention)


class LSTM(_LSTMCell):
    """Standard LSTM, gates i, f, g, o on [h_{t-1}; x_t], Xavier-normal weights.

    ``kernel``: as :class:`RNN`'s (``"compiled"``: :mod:`rsa.models.kernels.compiled`)."""

    def __init__(self, input_size: int, hidden_size: int, *, init: str = "xavier",
                 kernel: str = "torch"):
        super().__init__(input_size, hidden_size, init=init)
        self.kernel = check_kernel(kernel)

    def forward(self, x: torch.Tensor, record: bool = False, freeze_attention: bool = False):
        if self.kernel == "compiled" and not record and not freeze_attention:
            check_sequence(x, self.input_size)
            return lstm_compiled_forward(self, x)
        return super().forward(x, record=record, freeze_attention=freeze_attention)


class RelLSTM(_Fusable, _LSTMCell):
    """LSTM whose gates read [s_{t-1}; x_t], s_{t-1} = (h_{t-1} + c)/2, with c the
    relevancy-screened attention over LSTM outputs (s_0 = 0).

    ``fused=True`` (default): a plain forward (no ``record``, no ``freeze_attention``)
    runs the whole sequence as one autograd node,
    :class:`rsa.models.kernels.rellstm.RelLSTMFunction`, which shares the fused RelRNN's
    screening on time indices and attention (forward and hand-written backward) and adds
    the LSTM cell's backward; memory O(T B (n + nu + rho)). ``fused=False`` is the
    plain-autograd loop of :class:`_Recurrent` over :class:`rsa.models.memory.ScreenedMemory`;
    ``record=True`` and ``freeze_attention=True`` always take it.

    ``kernel="compiled"``: a plain forward on CPU runs the whole sequence, screening
    included, in numba-compiled code with a hand-written backward
    (:mod:`rsa.models.kernels.compiled_rellstm`), the fused function's to rounding
    (``fused`` then picks nothing: it chooses between the two torch paths).
    """

    attention = "screened"
    _fused_forward = rellstm_fused_forward

    def __init__(self, input_size: int, hidden_size: int, *, nu: int = 10, rho: int = 15,
                 init: str = "xavier", fused: bool = True, kernel: str = "torch"):
        super().__init__(input_size, hidden_size, init=init, nu=nu, rho=rho, fused=fused)
        self.kernel = check_kernel(kernel)

    def forward(self, x: torch.Tensor, record: bool = False, freeze_attention: bool = False):
        if self.kernel == "compiled" and not record and not freeze_attention:
            return rellstm_compiled_forward(self, x)
        return super().forward(x, record=record, freeze_attention=freeze_attention)
