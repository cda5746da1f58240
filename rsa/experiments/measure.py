"""Measurements: gradient propagation ||dL/dh_t|| and the cost of a training update.

Used by the chapters *Gradient propagation* and *Cost* and by :mod:`rsa.experiments.bench`.

**Gradient propagation.** The loss L is the cross-entropy on the answer steps only (the
last 10 steps of copy/denoise, the last step of a classification), so ||dL/dh_t|| says
how much of the answer's error signal reaches the state at step t. The states are the
``trace.states`` of ``model(x, record=True)``, nodes of the autograd graph, so
``torch.autograd.grad(L, trace.states)`` is the total derivative dL/dh_t through every
path (the recurrence and the attention skip connections). With
``freeze_attention=True`` the attention weights are held fixed, the setting of the
path expansion (*The paper* §3).

**Cost of an update** (forward + backward + gradient clipping + optimizer step, exactly
:func:`rsa.train.train_step`):

- time: median wall-clock time over ``repeats`` updates after ``warmup`` updates, on
  one fixed batch (CUDA is synchronised before reading the clock);
- peak memory: the peak *extra* memory of one update above what is live when it starts
  (parameters, optimizer state, the batch): that is the part that grows with T. On
  CUDA, ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` at the start
  (bytes in live tensors, after ``reset_peak_memory_stats``). On CPU, torch has no
  public allocator counter, so we measure the process: in a fresh subprocess per
  configuration (no memory cached by earlier work), after one priming update at T = 1,
  the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``) and the result is
  VmHWM after the update minus VmRSS before it. The subprocess fixes glibc's mmap
  threshold (``MALLOC_MMAP_THRESHOLD_=131072``) so that freed large blocks go back to
  the OS instead of being cached by malloc; the RSS then tracks live memory (without
  it, the same MemRNN update measured 355 to 441 MiB from run to run). This counts
  pages the process really touched, including allocator overhead, with a resolution
  of a few pages; where ``clear_refs`` is unavailable it falls back to the
  ``ru_maxrss`` delta (which can miss an update that peaks below an earlier mark; the
  result says which method was used).
- saved for backward (:func:`saved_tensor_bytes`): the bytes of the distinct storages
  autograd keeps for the backward pass of one forward, counted with
  ``torch.autograd.graph.saved_tensors_hooks``: deterministic, device independent, and
  a lower bound on the peak (they are all alive together when the forward ends). On
  CPU the peak above is within a few tens of percent of it.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from rsa.models import registry
from rsa.models.heads import TaskModel, build_task_model
from rsa.tasks import get_task, load_pixel_data, make_generator, synthetic_batch

__all__ = ["grad_norms", "update_time", "update_times", "peak_memory", "saved_tensor_bytes",
           "estimate_memory"]


def grad_norms(model: TaskModel, x: torch.Tensor, y: torch.Tensor, *,
               answer_steps=None, freeze_attention: bool = False,
               per_example: bool = False) -> torch.Tensor:
    """||dL/dh_t|| for every step t, with L the loss on the answer steps only.

    ``answer_steps``: 0-based steps whose cross-entropy makes L (copy/denoise only;
    default :meth:`TaskModel.answer_steps`, the last 10). Returns a (L,) tensor: entry
    t-1 is the Frobenius norm of dL/dh_t over the batch (L averaged over answer steps
    and batch). ``per_example=True`` returns (L, B): the norm of each example's own loss
    gradient (B times its row of dL/dh_t, since examples do not interact). Steps after
    the last answer step get exactly 0.
    """
    logits, trace = model(x, record=True, freeze_attention=freeze_attention)
    length, batch = x.shape[0], x.shape[1]
    if answer_steps is None:
        loss = model.answer_loss(logits, y)
    else:
        if not model.sequence_output:
            raise ValueError(f"answer_steps applies to copy/denoise only; task "
                             f"{model.task.name!r} answers at its last step")
        steps = torch.as_tensor(list(answer_steps), dtype=torch.long)
        if steps.numel() == 0 or steps.min() < 0 or steps.max() >= length:
            raise ValueError(f"answer_steps must be non-empty 0-based steps in [0, {length}),"
                             f" got {list(answer_steps)!r}")
        steps = steps.to(logits.device)
        loss = model.loss(logits[steps], y[steps])
    grads = torch.autograd.grad(loss, trace.states, allow_unused=True)
    G = torch.stack([torch.zeros_like(s) if g is None else g
                     for g, s in zip(grads, trace.states, strict=True)])  # (L, B, n)
    if per_example:
        return G.norm(dim=-1).detach() * batch
    return G.flatten(1).norm(dim=1).detach()


# -- cost -----------------------------------------------------------------------------------

def _setup(model_name, T, batch, hidden_size, task, device, seed, model_options):
    from rsa.train import make_optimizer, torch_device

    dev = torch_device(device)
    spec = get_task(task)
    torch.manual_seed(seed)
    model = build_task_model(model_name, spec, hidden_size, **model_options).to(dev)
    optimizer = make_optimizer("rmsprop", model.parameters(), 1e-3)
    g = make_generator(seed)
    if spec.kind == "sequence":
        x, y = synthetic_batch(spec, T, batch, g, dev)
    else:
        data = load_pixel_data(spec)
        x, y = next(iter(data.batches("train", batch, dev)))
    return model, optimizer, x, y, dev


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def update_time(model_name: str, T: int, *, batch: int = 10, hidden_size: int = 128,
                task: str = "copy", repeats: int = 5, warmup: int = 1, device: str = "cpu",
                seed: int = 0, **model_options) -> dict:
    """Wall time of one training update (:func:`rsa.train.train_step`, clip 1.0).

    Returns ``{"median_s", "times_s" (each repeat), "repeats", "warmup", "threads"}``.
    """
    return update_times([(model_name, T, batch)], hidden_size=hidden_size, task=task,
                        repeats=repeats, warmup=warmup, device=device, seed=seed,
                        **model_options)[0]


def update_times(configs, *, hidden_size: int = 128, task: str = "copy", repeats: int = 5,
                 warmup: int = 1, device: str = "cpu", seed: int = 0,
                 **model_options) -> list[dict]:
    """:func:`update_time` for each ``(model_name, T, batch)`` in ``configs``, timed in
    interleaved rounds: after ``warmup`` updates of each configuration, each of the
    ``repeats`` rounds times one update of every configuration in turn. A configuration
    may carry a fourth item, a dict of model options that update ``model_options`` for
    it alone (e.g. ``("rellstm", 1000, 10, {"fused": False})``, the plain loop timed in
    the same rounds as the fused default).

    Why: on a shared virtual machine the same update can run twice as slowly for seconds
    to minutes at a time (the book's *Using rsa*, Speed). Timed one configuration after
    the other, a slow period lands on a few configurations only and bends the curve of time against
    T; interleaved, every configuration sees the same mix of fast and slow periods.
    """
    from rsa.train import train_step

    for name, val in (("repeats", repeats), ("warmup", warmup)):
        if isinstance(val, bool) or not isinstance(val, int) or val < (name == "repeats"):
            raise ValueError(f"{name} must be an int >= {int(name == 'repeats')}, got {val!r}")
    setups = [_setup(m, T, B, hidden_size, task, device, seed,
                     {**model_options, **(own[0] if own else {})})
              for m, T, B, *own in configs]
    for model, opt, x, y, _ in setups:
        for _ in range(warmup):
            train_step(model, opt, x, y, 1.0)
    times = [[] for _ in setups]
    for _ in range(repeats):
        for (model, opt, x, y, dev), ts in zip(setups, times, strict=True):
            _sync(dev)
            t0 = time.perf_counter()
            train_step(model, opt, x, y, 1.0)
            _sync(dev)
            ts.append(time.perf_counter() - t0)
    return [{"median_s": statistics.median(ts), "times_s": ts, "repeats": repeats,
             "warmup": warmup, "threads": torch.get_num_threads()} for ts in times]


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def _peak_in_process(model_name, T, batch, hidden_size, task, device, seed, model_options):
    from rsa.train import train_step

    model, opt, x, y, dev = _setup(model_name, T, batch, hidden_size, task, device, seed,
                                   model_options)
    # priming update on a 1-step-delay batch: optimizer state, lazy kernels, autograd
    # threads, so they are not counted as part of the update
    if model.sequence_output:
        xp, yp = synthetic_batch(model.task, 1, batch, make_generator(seed), dev)
    else:
        xp, yp = x[:1], y
    train_step(model, opt, xp, yp, 1.0)
    opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        _sync(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        train_step(model, opt, x, y, 1.0)
        _sync(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        return {"peak_bytes": int(peak), "base_bytes": int(base),
                "method": "cuda max_memory_allocated - memory_allocated at start"}
    if _reset_peak_rss():
        base = _status_kb("VmRSS")
        train_step(model, opt, x, y, 1.0)
        peak = (_status_kb("VmHWM") - base) * 1024
        return {"peak_bytes": int(peak), "base_bytes": base * 1024,
                "method": "cpu VmHWM - VmRSS at start (peak RSS reset via clear_refs)"}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train_step(model, opt, x, y, 1.0)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"peak_bytes": int((after - before) * scale), "base_bytes": None,
            "method": "cpu ru_maxrss delta (peak RSS could not be reset)"}


def peak_memory(model_name: str, T: int, *, batch: int = 10, hidden_size: int = 128,
                task: str = "copy", device: str = "cpu", seed: int = 0,
                isolate: bool | None = None, timeout: float | None = None,
                **model_options) -> dict:
    """Peak extra memory of one training update (see the module docstring for what is
    measured on each device). ``isolate`` runs it in a fresh subprocess (default: on
    CPU). Returns ``{"peak_bytes", "base_bytes", "method"}``.
    """
    if isolate is None:
        isolate = not str(device).startswith("cuda")
    args = dict(model_name=model_name, T=T, batch=batch, hidden_size=hidden_size, task=task,
                device=device, seed=seed, model_options=model_options)
    if not isolate:
        return _peak_in_process(**args)
    # same package, same thread count, no memory left over from this process
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")  # freed big blocks leave the RSS
    code = ("import json, sys, torch; from rsa.experiments.measure import _peak_in_process; "
            "a = json.loads(sys.argv[1]); torch.set_num_threads(a.pop('threads')); "
            "print(json.dumps(_peak_in_process(**a)))")
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps({**args, "threads": torch.get_num_threads()})],
        capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {model_name} at T={T} failed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def saved_tensor_bytes(model_name: str, T: int, *, batch: int = 10, hidden_size: int = 128,
                       task: str = "copy", device: str = "cpu", seed: int = 0,
                       **model_options) -> int:
    """Bytes autograd saves for the backward pass of one forward pass (loss included):
    the sum of the sizes of the distinct storages handed to ``saved_tensors_hooks``."""
    model, _, x, y, _ = _setup(model_name, T, batch, hidden_size, task, device, seed,
                               model_options)
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()  # all alive until backward: no address reuse
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(model(x), y)
    return sum(storages.values())


def estimate_memory(model_name: str, T: int, *, batch: int = 10, hidden_size: int = 128,
                    fused: bool = True) -> int:
    """A rough upper estimate, in bytes, of an update's extra memory, used only to skip
    configurations that would not fit (MemRNN at large T): the budget of the model's
    entry in :mod:`rsa.models.registry` over L = T + 20 steps (``memory``, or ``fused_memory``
    for its fused implementation; the table says what each one counts).

    Measured on CPU against the budget: MemRNN's plain loop, 355 MiB at T = 200, B = 10,
    n = 128 (495 MiB budgeted); the fused RelLSTM, 128 MiB at T = 1000, B = 10, n = 128
    (203 MiB budgeted).
    """
    return registry.memory_budget(model_name, T + 20, batch, hidden_size, fused)
