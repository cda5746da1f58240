"""Time one training update of the authors' RelRNN beside rsa's (issue 30): the authors'
``RelMemRNN`` and copy-task model from their public repository, rsa's RelRNN on the
torch and the compiled kernel, interleaved (authors, authors one-backward, rsa torch, rsa
compiled, authors, ...), one thread, on the CPU; prints medians in ms and the ratios as a
markdown table.

The authors' code is not part of this project; get it and pass its path:

    git clone https://github.com/bhargav104/MemoryNets ../MemoryNets
    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_authors.py ../MemoryNets

``SOURCE`` is a checkout (a folder holding ``RNN.py``, ``common.py``, ``exp_numpy.py`` and
``copytask.py``) or a bare git repository of it (``git clone --bare``), whose ``HEAD``
files are then read with ``git show`` into a temporary folder.

The update, in both: copy task (delay T, 10 symbols, one-hot input of 10, 9 classes),
n = 128, tanh, nu (their ``lastk``) = 10, rho (their ``rsize``) = 15, RMSprop (alpha
0.99, their README's lr 2e-4), gradient norm clipped to 1.0, float32, one fixed batch
(drawing batches is left out of both). The authors' update is timed twice:

* *as written*: their ``train_model``'s step: zero_grad, forward (their ``Model``: a
  per-step loop with the loss at every step), ``loss2.backward(retain_graph=True)`` (the
  loss on the output steps only, for their gradient diagnostics, and the norm of
  ``V``'s gradient), zero_grad, ``loss.backward()``, clipping, ``optimizer.step()``
  (their every-500-updates plots and the print are left out);
* *one backward*: the same without the diagnostic ``loss2`` backward, which is the update
  rsa's :func:`rsa.train.loop.train_step` does.

Shims, all here (their files are run as they are otherwise):

* their ``RelMemRNN.forward`` calls ``.cuda()`` on new tensors: ``torch.Tensor.cuda`` is
  replaced by the identity while the tool runs (so everything stays on the CPU);
* ``copytask.py`` parses arguments and trains at import: only its functions
  ``generate_copying_sequence``, ``create_dataset``, ``onehot`` and its class ``Model``
  are taken from its syntax tree and run, with ``args`` (onehot, labels 8, c_length 10)
  and ``T`` as its globals;
* their ``exp_numpy.py`` (the matrix exponential of their orthogonal initialisation,
  used once at construction) calls ``torch.solve``, removed from torch since: their
  ``RNN.py`` gets a stand-in ``exp_numpy`` whose ``expm`` is ``torch.linalg.matrix_exp``
  (the same function; the timing does not depend on the initial weights anyway).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rsa.train.loop import train_step

AUTHOR_FILES = ("RNN.py", "common.py", "exp_numpy.py", "copytask.py")
HOW_TO_GET = ("get the authors' code with: git clone https://github.com/bhargav104/MemoryNets "
              "(or git clone --bare) and pass that folder as SOURCE")
HIDDEN, NU, RHO, LR, CLIP, C_LENGTH, LABELS = 128, 10, 15, 2e-4, 1.0, 10, 8


def author_folder(source: str | Path, tmp: Path) -> Path:
    """The folder holding the authors' files: ``source`` itself (a checkout) or, for a bare
    git repository, ``tmp`` with its HEAD's files. Raises SystemExit naming SOURCE if it
    is neither."""
    src = Path(source)
    if not src.exists():
        raise SystemExit(f"bench_authors: SOURCE {str(source)!r} does not exist; {HOW_TO_GET}")
    if all((src / f).is_file() for f in AUTHOR_FILES):
        return src
    if (src / "HEAD").is_file() and (src / "objects").is_dir():  # a bare repository
        for f in AUTHOR_FILES:
            r = subprocess.run(["git", "--git-dir", str(src), "show", f"HEAD:{f}"],
                               capture_output=True, check=False)
            if r.returncode:
                raise SystemExit(f"bench_authors: SOURCE {str(source)!r} is a git repository "
                                 f"without {f} at HEAD; {HOW_TO_GET}")
            (tmp / f).write_bytes(r.stdout)
        return tmp
    missing = [f for f in AUTHOR_FILES if not (src / f).is_file()]
    raise SystemExit(f"bench_authors: SOURCE {str(source)!r} is neither a checkout of the "
                     f"authors' code (missing {', '.join(missing)}) nor a bare git "
                     f"repository of it; {HOW_TO_GET}")


@contextlib.contextmanager
def cuda_is_identity():
    """Shim: ``Tensor.cuda`` returns the tensor itself (the authors' code calls it)."""
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


def load_authors(folder: Path, T: int) -> types.SimpleNamespace:
    """Their ``RelMemRNN`` class and, from ``copytask.py``'s syntax tree, their
    ``create_dataset``, ``onehot`` and ``Model`` (globals: ``args``, ``T``)."""
    names = ("RNN", "common", "exp_numpy")  # their module names, imported afresh
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    stub = types.ModuleType("exp_numpy")  # shim: their expm calls torch.solve
    stub.expm = torch.linalg.matrix_exp
    sys.modules["exp_numpy"] = stub
    sys.path.insert(0, str(folder))
    try:
        rnn_module = importlib.import_module("RNN")
    finally:
        sys.path.remove(str(folder))
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    tree = ast.parse((folder / "copytask.py").read_text())
    keep = {"generate_copying_sequence", "create_dataset", "onehot", "Model"}
    body = [node for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in keep]
    if {node.name for node in body} != keep:
        raise SystemExit(f"bench_authors: copytask.py lacks some of {sorted(keep)}")
    args = types.SimpleNamespace(onehot=True, labels=LABELS, c_length=C_LENGTH)
    ns = {"torch": torch, "nn": nn, "np": np, "args": args, "T": T}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(folder / "copytask.py"),
                 "exec"), ns)
    return types.SimpleNamespace(RelMemRNN=rnn_module.RelMemRNN, **ns)


def authors_setup(authors, T: int, batch: int, seed: int = 0):
    """Their copy-task RelRNN as their ``copytask.py`` builds it (README's RelRNN command:
    tanh, lr 2e-4; defaults: henaff init, xavier input init, lastk 10, rsize 15), with
    RMSprop, and one batch (L, B, 1) from their ``create_dataset``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    rnn = authors.RelMemRNN(LABELS + 2, HIDDEN, NU, RHO, "tanh", bias=True, cuda=False,
                            r_initializer="henaff", i_initializer="xavier")
    net = authors.Model(HIDDEN, rnn)
    net.rnn.T = T + 20
    net.rnn.cutoff = 0.0
    opt = torch.optim.RMSprop(net.parameters(), lr=LR, alpha=0.99, weight_decay=0)
    x, y = authors.create_dataset(batch, T, C_LENGTH)
    return net, opt, x.transpose(0, 1), y.transpose(0, 1)


def authors_step(net, opt, x, y, diagnostics: bool) -> float:
    """One update of their ``train_model`` (``diagnostics``: with its ``loss2`` backward)."""
    opt.zero_grad()
    loss, accuracy, hidden_states, vals, loss2 = net.forward(x, y)
    if diagnostics:
        loss2.backward(retain_graph=True)
        torch.norm(net.rnn.V.weight.grad).cpu().numpy()
        opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
    opt.step()
    return loss.item()


def rsa_setup(T: int, kernel: str, batch: int, seed: int = 0):
    """rsa's RelRNN on the copy task (tools/bench_kernels.py's setup), tanh, nu 10, rho 15,
    with the authors' lr."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_kernels import _setup

    return _setup("relrnn", T, kernel, batch, HIDDEN, seed, nonlinearity="tanh", nu=NU,
                  rho=RHO, lr=LR)


def bench(authors_folder: Path, T: int, batch: int, rounds: int) -> dict:
    """Median seconds of one update for each of the four, interleaved."""
    authors = load_authors(authors_folder, T)
    a_net, a_opt, a_x, a_y = authors_setup(authors, T, batch)
    steps = {
        "authors": lambda: authors_step(a_net, a_opt, a_x, a_y, True),
        "authors_one": lambda: authors_step(a_net, a_opt, a_x, a_y, False),
    }
    for kernel in ("torch", "compiled"):
        m, opt, x, y, clip = rsa_setup(T, kernel, batch)
        steps[kernel] = (lambda m=m, opt=opt, x=x, y=y, clip=clip:
                         train_step(m, opt, x, y, clip))
    times = {k: [] for k in steps}
    for step in steps.values():  # warm-up (and compile)
        step()
    for _ in range(rounds):
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", metavar="SOURCE",
                   help="a checkout (or bare git repository) of github.com/bhargav104/MemoryNets")
    p.add_argument("--cases", nargs="+", default=["500x10", "200x100"], metavar="TxB",
                   help="delay T and batch B, e.g. 500x10 (default: 500x10 200x100)")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    cases = []
    for case in a.cases:
        try:
            T, B = (int(v) for v in case.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bench_authors: --cases takes TxB such as 500x10, "
                             f"got {case!r}") from None
        cases.append((T, B))
    if a.rounds < 1:
        raise SystemExit(f"bench_authors: --rounds must be >= 1, got {a.rounds}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = author_folder(a.source, Path(tmp))
        torch.set_num_threads(1)
        print("| T | B | authors (ms) | authors, one backward (ms) | rsa torch (ms) | "
              "rsa compiled (ms) | authors / compiled | authors one / compiled | "
              "rsa torch / compiled |")
        print("|---|---|---|---|---|---|---|---|---|")
        with cuda_is_identity():
            for T, B in cases:
                r = bench(folder, T, B, a.rounds)
                ms = {k: 1e3 * v for k, v in r.items()}
                print(f"| {T} | {B} | {ms['authors']:.1f} | {ms['authors_one']:.1f} | "
                      f"{ms['torch']:.1f} | {ms['compiled']:.1f} | "
                      f"{ms['authors'] / ms['compiled']:.1f} | "
                      f"{ms['authors_one'] / ms['compiled']:.1f} | "
                      f"{ms['torch'] / ms['compiled']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
