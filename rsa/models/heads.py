"""A recurrent core plus the task's read-out and loss (*The paper* §4).

:class:`TaskModel` puts a linear read-out n -> classes on a core model of
:mod:`rsa.models`:

- copy/denoise: logits at every step, (L, B, C); the training loss is the
  cross-entropy averaged over all L steps and the batch; the accuracy is over the last
  10 steps (the answer steps). :meth:`TaskModel.answer_loss` is the cross-entropy on the
  answer steps only, the loss whose gradient the chapter *Gradient propagation*
  measures (:func:`rsa.experiments.measure.grad_norms`).
- classification: logits from the last hidden state h_L, (B, C).

:func:`build_model` makes a core by name from the table of :mod:`rsa.models.registry`, which
checks the combination of options.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsa.models import registry
from rsa.models.kernels.compiled import check_kernel
from rsa.tasks import N_DATA, TaskSpec, get_task

__all__ = ["MODELS", "build_model", "check_model_kernel", "TaskModel", "build_task_model"]

# Views of the table of rsa.models.registry (they follow rsa.models.registry.register).
MODELS = registry.MODELS
_FUSED = registry.FUSED


def check_model_kernel(model_name: str, kernel: str) -> str:
    """``kernel`` if model ``model_name`` can run on it; ValueError naming the value and
    what is accepted otherwise (an unknown kernel, numba missing, or a model without a
    compiled kernel)."""
    check_kernel(kernel)
    if kernel == "compiled" and not registry.get(model_name).compiled:
        have = [m for m in registry.names() if registry.get(m).compiled]
        raise ValueError(f"model {model_name!r} has no compiled kernel yet (kernel="
                         f"'compiled' applies to {', '.join(have)}); use kernel='torch'")
    return kernel


def build_model(model_name: str, input_size: int, hidden_size: int, nu: int | None = None,
                rho: int | None = None, nonlinearity: str | None = None,
                init: str | None = None, fused: bool | None = None,
                kernel: str = "torch", score_form: str | None = None) -> nn.Module:
    """The core model ``model_name``, one of :data:`MODELS` (:mod:`rsa.models.registry`).

    ``fused`` (MemRNN, RelRNN and RelLSTM; default True) picks the fused sequence
    function with a hand-written backward (:mod:`rsa.models.kernels.fused`,
    :mod:`rsa.models.kernels.screened`,
    :mod:`rsa.models.kernels.rellstm`); ``fused=False`` is the plain-autograd loop (for MemRNN,
    memory growing like T^2 n B).

    ``None`` options take the class's default (RelRNN/RelLSTM: nu=10, rho=15; RNN
    family: tanh, orthogonal init; LSTMs: xavier). Raises ValueError, naming the value
    and what is accepted, for an unknown name, nu < 1, rho < 0, nu/rho on a model
    without screening, a nonlinearity on an LSTM, or an unknown init
    (:func:`rsa.models.registry.check_options`).

    ``kernel``: ``"torch"`` (default, the reference) or ``"compiled"`` (the compiled CPU
    kernel of :mod:`rsa.models.kernels.compiled`, for the models whose table entry has
    ``compiled``); ValueError for another value or a model without one.
    """
    options = registry.check_options(model_name, fused=fused, nu=nu, rho=rho,
                                     nonlinearity=nonlinearity, init=init,
                                     score_form=score_form)
    if check_model_kernel(model_name, kernel) == "compiled":
        options["kernel"] = kernel
    return registry.get(model_name).model_class()(input_size, hidden_size, **options)


class TaskModel(nn.Module):
    """``core`` + linear read-out + the loss and accuracy of ``task``.

    ``model(x)`` returns logits: (L, B, C) for copy/denoise, (B, C) for classification;
    ``model(x, record=True)`` also returns the core's :class:`rsa.models.Trace`.
    """

    def __init__(self, core: nn.Module, task: str | TaskSpec):
        super().__init__()
        self.task = get_task(task)
        if core.input_size != self.task.input_size:
            raise ValueError(f"task {self.task.name!r} has input size "
                             f"{self.task.input_size}, core has {core.input_size}")
        self.core = core
        self.readout = nn.Linear(core.hidden_size, self.task.n_classes)

    @property
    def sequence_output(self) -> bool:
        return self.task.kind == "sequence"

    def forward(self, x: torch.Tensor, record: bool = False, freeze_attention: bool = False):
        out = self.core(x, record=record, freeze_attention=freeze_attention)
        H, trace = out if record else (out, None)  # H: (L, B, n)
        logits = self.readout(H if self.sequence_output else H[-1])
        return (logits, trace) if record else logits

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training loss: cross-entropy averaged over all steps (and the batch)."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def answer_steps(self, length: int) -> range:
        """0-based steps that carry an answer: the last 10 (copy/denoise) or the last."""
        return range(length - N_DATA, length) if self.sequence_output else \
            range(length - 1, length)

    def answer_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the answer steps only (same as :meth:`loss` when classifying)."""
        if not self.sequence_output:
            return self.loss(logits, y)
        return self.loss(logits[-N_DATA:], y[-N_DATA:])

    @torch.no_grad()
    def accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fraction of correct predictions on the answer steps (a 0-dim tensor)."""
        if self.sequence_output:
            logits, y = logits[-N_DATA:], y[-N_DATA:]
        return (logits.argmax(-1) == y).float().mean()


def build_task_model(model_name: str, task: str | TaskSpec, hidden_size: int, **options
                     ) -> TaskModel:
    """:func:`build_model` with the task's input size, wrapped in a :class:`TaskModel`."""
    spec = get_task(task)
    return TaskModel(build_model(model_name, spec.input_size, hidden_size, **options), spec)
