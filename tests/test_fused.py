"""The fused MemRNN (rsa/models/kernels/fused.py) against the plain-autograd loop of
rsa/models/cells.py,
and what the fused models (MemRNN, RelRNN, RelLSTM) share: the default, the fallbacks,
float32, the input errors.

Run as a script for the cost measurement (time and peak memory of one training update,
fused against unfused, each configuration in a fresh subprocess):

    nice .venv/bin/python tests/test_fused.py --T 200 500 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rsa import MemRNN, RelLSTM, RelRNN
from rsa.models.kernels.fused import MemRNNFunction, memrnn_fused
from rsa.models.kernels.rellstm import RelLSTMFunction
from rsa.models.kernels.screened import RelRNNFunction
from tests.helpers import fused_and_plain, fused_function_args, grads, saved_bytes

N_IN, N = 3, 5


def pair(nonlinearity, seed=0):
    """A fused and an unfused MemRNN (float64) with the same parameters."""
    return fused_and_plain(MemRNN, N_IN, N, nonlinearity, seed)


@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 2, 7])
def test_fused_equals_plain_autograd(T, B, nonlinearity):
    fused, plain = pair(nonlinearity, seed=T + 10 * B)
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, B, N_IN, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(T, B, N, generator=g, dtype=torch.float64)  # weighs every h_t
    H = fused(x)
    assert H.shape == (T, B, N)
    torch.testing.assert_close(H, plain(x), rtol=0, atol=1e-12)
    names = ["x"] + [name for name, _ in fused.named_parameters()]
    if nonlinearity == "modrelu":
        assert "phi.b" in names
    for name, a, b in zip(names, grads(fused, x, w), grads(plain, x, w), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=f"gradient of {name}")


# The fused models: MemRNN (rsa.models.kernels.fused), RelRNN (rsa.models.kernels.screened), RelLSTM
# (rsa.models.kernels.rellstm)
FUSED = [pytest.param(MemRNN, {}, MemRNNFunction, id="memrnn"),
         pytest.param(RelRNN, {"nu": 4, "rho": 3}, RelRNNFunction, id="relrnn"),
         pytest.param(RelLSTM, {"nu": 4, "rho": 3}, RelLSTMFunction, id="rellstm")]


@pytest.mark.parametrize("cls,kw,function", FUSED)
def test_fused_float32_close_to_float64(cls, kw, function):
    """float32 scores use the sigmoid form of tanh: still float32-accurate."""
    fused, plain = fused_and_plain(cls, N_IN, N, "tanh", 3, **kw)
    x = torch.randn(40, 2, N_IN, dtype=torch.float64)
    f32 = cls(N_IN, N, **kw).float()
    f32.load_state_dict(fused.state_dict())
    H32, H64 = f32(x.float()), plain(x)
    assert type(H32.grad_fn) is function._backward_cls
    torch.testing.assert_close(H32.double(), H64, rtol=0, atol=1e-5)
    g32 = torch.autograd.grad(H32.pow(2).sum(), list(f32.parameters()))
    g64 = torch.autograd.grad(H64.pow(2).sum(), list(plain.parameters()))
    for a, b in zip(g32, g64, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
def test_gradcheck_fused_function(nonlinearity):
    args = fused_function_args(6, 2, 4, nonlinearity)
    assert torch.autograd.gradcheck(memrnn_fused, args, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls,kw,function", FUSED)
def test_fused_is_the_default_and_the_fallbacks(cls, kw, function):
    model = cls(N_IN, N, **kw)
    assert model.fused is True
    x = torch.randn(4, 2, N_IN)
    H = model(x)
    assert type(H.grad_fn).__name__ == f"{function.__name__}Backward"
    assert type(H.grad_fn) is function._backward_cls
    # record, freeze_attention and fused=False take the plain loop
    assert function.__name__ not in type(model(x, record=True)[0].grad_fn).__name__
    assert function.__name__ not in type(model(x, freeze_attention=True).grad_fn).__name__
    assert function.__name__ not in type(cls(N_IN, N, fused=False, **kw)(x).grad_fn).__name__


@pytest.mark.parametrize("cls,kw,function", FUSED)
def test_fused_input_errors(cls, kw, function):
    model = cls(N_IN, N, **kw)
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, 3\), got \(4, 2\)"):
        model(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="sequence length T must be >= 1, got 0"):
        model(torch.zeros(0, 2, N_IN))


def test_fused_keeps_no_quadratic_n_memory():
    """Saved for backward: O(T n B + T^2 B), far below the plain loop's O(T^2 n B)."""
    torch.manual_seed(0)
    fused, plain = MemRNN(1, 16), MemRNN(1, 16, fused=False)
    T = 120
    bound = 4 * (6 * T * 2 * 16 + T * T * 2) + 2 * 16 * 16 * 4 * 4  # buffers, alpha, weights
    assert saved_bytes(fused, T) <= bound
    assert saved_bytes(plain, T) > 5 * saved_bytes(fused, T)


# -- cost measurement (script only) ----------------------------------------------------------

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
from torch import nn
from rsa import MemRNN, RelRNN

a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
T, B, n, n_in = a["T"], a["B"], a["n"], 10

def kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

torch.manual_seed(0)
model = MemRNN(n_in, n, fused=a["fused"])
head = nn.Linear(n, n_in)
params = [*model.parameters(), *head.parameters()]
opt = torch.optim.RMSprop(params, lr=1e-3)
x = torch.randn(T, B, n_in)
y = torch.randint(0, n_in, (T, B))

def update(x, y):
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(head(model(x)).flatten(0, 1), y.flatten())
    loss.backward()
    opt.step()

update(x[:2], y[:2])  # priming: optimizer state, lazy init
opt.zero_grad(set_to_none=True)
Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
base = kb("VmRSS")
t0, c0 = time.perf_counter(), time.process_time()
update(x, y)
first = (time.perf_counter() - t0, time.process_time() - c0)
peak = (kb("VmHWM") - base) * 1024
times, cpus = [first[0]], [first[1]]
for _ in range(a["repeats"] - 1):
    t0, c0 = time.perf_counter(), time.process_time()
    update(x, y)
    times.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
print(json.dumps({"wall_s": times, "cpu_s": cpus, "peak_extra_bytes": peak,
                  "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def measure_update(T: int, fused: bool, *, B: int = 10, n: int = 128, repeats: int = 3,
                   threads: int = 1) -> dict:
    """Time (wall and CPU, each update) and peak extra RSS of a MemRNN training update
    (forward, cross-entropy on a linear head at every step, backward, RMSprop), float32,
    in a fresh subprocess."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), MALLOC_MMAP_THRESHOLD_="131072")
    args = dict(T=T, B=B, n=n, fused=fused, repeats=repeats, threads=threads)
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, nargs="+", default=[200, 500, 1000])
    p.add_argument("--B", type=int, default=10)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="updates per process")
    p.add_argument("--processes", type=int, default=1, help="fresh processes per config")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--unfused-max-T", type=int, default=1000)
    a = p.parse_args(argv)
    print(f"MemRNN update, B={a.B}, n={a.n}, float32, threads={a.threads}; medians over "
          f"{a.processes} process(es) x {a.repeats} update(s); peak = max extra RSS")
    for T in a.T:
        for fused in (True, False):
            if not fused and T > a.unfused_max_T:
                continue
            runs = [measure_update(T, fused, B=a.B, n=a.n, repeats=a.repeats,
                                   threads=a.threads) for _ in range(a.processes)]
            wall = statistics.median(t for r in runs for t in r["wall_s"])
            cpu = statistics.median(t for r in runs for t in r["cpu_s"])
            peak = statistics.median(r["peak_extra_bytes"] for r in runs)
            rss = statistics.median(r["maxrss_bytes"] for r in runs)
            print(f"T={T:5d} {'fused  ' if fused else 'unfused'} wall {wall:7.2f} s  "
                  f"cpu {cpu:7.2f} s  peak extra {peak / 2**20:8.1f} MiB  "
                  f"max RSS {rss / 2**20:8.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
