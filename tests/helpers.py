"""Helpers shared by the tests: the fused models' (tests/test_fused*.py) and a wrapper that
interrupts training at a given update (train, population, cluster tests)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import torch


def fused_and_plain(cls, n_in: int, n: int, nonlinearity: str = "tanh", seed: int = 0,
                    **kwargs):
    """A fused and a plain-autograd model of ``cls`` (float64) with the same parameters;
    for modReLU, a bias large enough that some units are cut off. LSTM models (RelLSTM)
    have no nonlinearity option: ``nonlinearity`` must be "tanh" for them."""
    torch.manual_seed(seed)
    if cls.gates > 1:
        assert nonlinearity == "tanh", f"{cls.__name__} has LSTM gates, no {nonlinearity!r}"
    else:
        kwargs = dict(kwargs, nonlinearity=nonlinearity)
    fused = cls(n_in, n, **kwargs).double()
    if nonlinearity == "modrelu":
        with torch.no_grad():
            fused.phi.b.uniform_(-0.5, 0.5)
    plain = cls(n_in, n, fused=False, **kwargs).double()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def grads(model, x, w):
    """Gradients of sum(w * model(x)) w.r.t. x and every parameter (zeros where unused)."""
    inputs = [x, *model.parameters()]
    g = torch.autograd.grad((model(x) * w).sum(), inputs, allow_unused=True)
    return [torch.zeros_like(i) if gi is None else gi for gi, i in zip(g, inputs, strict=True)]


def saved_bytes(model, T: int, B: int = 2) -> int:
    """Bytes of the distinct storages autograd saves for backward in ``model`` on a
    random (T, B, 1) input."""
    sizes: dict[int, int] = {}

    def pack(t):
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(T, B, 1))
    return sum(sizes.values())


def fused_function_args(T: int, B: int, n: int, nonlinearity: str, seed: int = 1,
                        gates: int = 1) -> tuple:
    """Random float64 leaves (ux, V, W_q, W_k, v[, phi_b]) for gradcheck of a fused
    sequence function; modReLU's bias is 0.3, so that |z| + b stays away from 0 where
    finite differences would cross the kink. ``gates=4`` (the RelLSTM): ux is
    (T, B, 4n) and V (4n, n)."""
    torch.manual_seed(seed)
    dt = dict(dtype=torch.float64)

    def leaf(*shape, scale=1.0):
        return (scale * torch.randn(*shape, **dt)).requires_grad_(True)

    args = (leaf(T, B, gates * n), leaf(gates * n, n, scale=0.5), leaf(n, n, scale=0.5),
            leaf(n, n, scale=0.5), leaf(n))
    if nonlinearity == "modrelu":
        args = (*args, torch.full((n,), 0.3, **dt).requires_grad_(True))
    return args


def on_call(real, n: int, effect):
    """``real`` wrapped so that its ``n``-th call first runs ``effect()`` (raise a signal,
    which arrives in the middle of that update, or raise an error: a crash)."""
    calls = []

    def wrapped(*args):
        calls.append(1)
        if len(calls) == n:
            effect()
        return real(*args)

    return wrapped


def crash():
    raise RuntimeError("simulated crash")


@contextlib.contextmanager
def holding(folder):
    """Another process holding ``folder``'s run lock (rsa.train.lock) for the block;
    yields its Popen (``.pid`` names the holder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys, time\n"
            f"fd = os.open({str(folder / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0); os.pwrite(fd, str(os.getpid()).encode(), 0)\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


class _Faults:
    """Faults injected by tests/test_faults.py and how many the project survived (the
    test asserts what surviving means); printed at the end of the session."""

    def __init__(self):
        self.counts: dict[str, list[int]] = {}

    def add(self, kind: str, injected: int, survived: int) -> None:
        c = self.counts.setdefault(kind, [0, 0])
        c[0] += injected
        c[1] += survived


FAULTS = _Faults()
