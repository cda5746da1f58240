"""Autograd on real models: state Jacobians, step Jacobians and loss gradients, with
attention differentiated or frozen (chapter *Bounds on gradient propagation*).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from rsa.theory.arguments import check_int
from rsa.theory.paths import chain_edges, edge_weights
from rsa.theory.patterns import pattern_from_trace


# -- autograd on real models ------------------------------------------------------------
def state_jacobians(model, x: torch.Tensor, i: int, freeze_attention: bool = False):
    """D[t, b] = dh_t/dh_i (n x n) of example b, by autograd on a :mod:`rsa.models`
    model, for t = 0..T-1 (zero for t < i, the identity at t = i). Returns (T, B, n, n).

    h_i is perturbed as a node of the graph (for an LSTM the cell state is held fixed).
    ``freeze_attention=True`` drops the terms from differentiating alpha: the Jacobian of
    the path expansion (*The paper* §3.1). Exact columns by the double-backward trick:
    one backward gives G(v) = sum_t (dh_t/dh_i)^T v_t, linear in the v_t; differentiating
    <G, e_m> with respect to each v_t gives column m of every dh_t/dh_i at once
    (1 + n backward passes, not T n).
    """
    _, trace = model(x, record=True, freeze_attention=freeze_attention)
    h = trace.states
    T = len(h)
    i = check_int("i", i, 0, T - 1)
    B, n = h[i].shape
    v = [torch.zeros_like(h[t], requires_grad=True) for t in range(i, T)]
    y = sum((h[t] * v[t - i]).sum() for t in range(i, T))
    (G,) = torch.autograd.grad(y, h[i], create_graph=True)
    D = np.zeros((T, B, n, n))
    for m in range(n):
        e_m = torch.zeros_like(G)
        e_m[:, m] = 1.0
        cols = torch.autograd.grad(G, v, grad_outputs=e_m, retain_graph=True, allow_unused=True)
        for t, col in enumerate(cols, start=i):
            if col is not None:
                D[t, :, :, m] = col.detach().cpu().double().numpy()
    return D


def jacobian_norms(model, x: torch.Tensor, i: int, freeze_attention: bool = False):
    """Frobenius norm ||dh_t/dh_i||_F for t = 0..T-1 and each example: (T, B).

    Frobenius because ||D||_F^2 / n is the mean of ||D u||^2 over unit vectors u
    uniform on the sphere: the quantity g(i, t) of :func:`mean_square_gradient` predicts.
    See :func:`state_jacobians` for ``freeze_attention``.
    """
    D = state_jacobians(model, x, i, freeze_attention=freeze_attention)
    return np.linalg.norm(D, axis=(-2, -1))


def loss_gradient_norms(model, x: torch.Tensor, loss_fn, freeze_attention: bool = False):
    """||dL/dh_t|| for t = 0..T-1: (T,), the norm over the whole (B, n) state.

    ``loss_fn`` maps H (T, B, n) to a scalar tensor (it holds any output layer). dL/dh_t
    is the total derivative, through every later step, from ``trace.states``.
    """
    H, trace = model(x, record=True, freeze_attention=freeze_attention)
    grads = torch.autograd.grad(loss_fn(H), trace.states, allow_unused=True)
    return np.array([0.0 if g is None else float(g.norm()) for g in grads])


def step_jacobians(model, x: torch.Tensor, b: int = 0):
    """The per-step Jacobians J_k = diag(phi'(z_k)) V and the edge weights W of example
    ``b``, from a recorded forward pass of an RNN, MemRNN or RelRNN (any ``phi``: tanh,
    modReLU): z_k = U x_k + b + V s_{k-1}, s_{k-1} = sum_j w_{jk} h_j. Returns (J, W),
    J of shape (T, n, n) in float64 (J_0 is diag(phi'(z_0)) V, unused by the expansion),
    W of shape (T, T): ``path_jacobians(W, J, i)`` is then the frozen-attention
    dh_t/dh_i (chapter *Bounds*)."""
    if getattr(model, "gates", 1) != 1:
        raise ValueError(
            "step_jacobians needs a model of the RNN family (one Jacobian per "
            "step); an LSTM's state has a second recurrent path"
        )
    with torch.no_grad():
        H, trace = model(x, record=True)
    T = H.shape[0]
    b = check_int("b", b, 0, H.shape[1] - 1)
    W = chain_edges(T) if model.attention is None else edge_weights(pattern_from_trace(trace, b))
    with torch.no_grad():
        h = H[:, b].double()
        s = torch.as_tensor(W) @ h  # row k: s_{k-1}; row 0 is 0 (no recurrence at t = 1)
        z = model.U(x[:, b]).double() + s @ model.V.weight.double().T
    z.requires_grad_(True)
    phi = copy.deepcopy(model.phi).double()  # a float64 copy; the model is left as it is
    (phi_prime,) = torch.autograd.grad(phi(z).sum(), z)  # phi acts elementwise
    V = model.V.weight.detach().double()
    J = phi_prime.detach()[:, :, None] * V
    return J.numpy(), W


def loss_gradients(model, x: torch.Tensor, loss_fn, freeze_attention: bool = False):
    """The direct and the total gradient of a loss with respect to every state:
    (gamma, delta), each (T, B, n) in float64, gamma_t = dl/dh_t through ``loss_fn`` alone
    (the read-out at step t) and delta_t = dL/dh_t through every later step as well.

    ``loss_fn`` maps H (T, B, n) to a scalar tensor. ``freeze_attention`` as in
    :func:`state_jacobians`."""
    H, trace = model(x, record=True, freeze_attention=freeze_attention)
    loss = loss_fn(H)
    (gamma,) = torch.autograd.grad(loss, H, retain_graph=True)
    total = torch.autograd.grad(loss, trace.states, allow_unused=True)
    delta = torch.stack(
        [torch.zeros_like(h) if g is None else g for g, h in zip(total, trace.states, strict=True)]
    )
    return gamma.detach().cpu().double().numpy(), delta.detach().cpu().double().numpy()
