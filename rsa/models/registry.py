"""Every model of the book in one table: what it is, how it is drawn, what it accepts.

One entry (:class:`ModelSpec`) per model: its class, its label and colour in figures,
its family, whether it has a fused implementation, the options it takes with their
range (:data:`OPTIONS`, checked here by :func:`check_options`) and their per-task
defaults (the authors' settings, the book's page *The paper*, section 5), its memory
budget and its part in the experiment plan. Everything that names models reads it:

- :func:`rsa.models.heads.build_model`: the class and the options;
- :func:`rsa.train.resolve_config`: the per-task defaults (:func:`task_default`) and the
  options, checked without building a model; :class:`rsa.train.TrainConfig`'s docstring
  and the help of ``python -m rsa train`` (choices, :func:`describe_default`);
- :mod:`rsa.experiments` (the plan's model lists), :func:`rsa.experiments.measure.estimate_memory`
  (:func:`memory_budget`) and :mod:`rsa.plotting` (labels, colours, legend order).

Adding a model touches these files, and no other file of the package
(``tests/test_registry.py`` does it with a toy model registered at test time, trained
from the command line):

1. its class: a module of rsa (``rsa/models/cells.py`` for a recurrent core; a fused
   implementation, if any, in a module of its own under ``rsa/models/kernels/``), and
   its name in ``rsa/__init__.py`` if it is public;
2. one entry in the table below, ``rsa/models/registry.py`` (or a :func:`register` call
   anywhere before it is used): its options, defaults, memory, transfer cap, whether
   it has states, and its population forward (``population``; None: each run's own
   forward inside a population, stated when used);
3. a branch of the per-example reference, ``rsa/models/reference.py``
   (:func:`rsa.models.reference.branch`; for its exact class: a subclass needs its own);
4. its cases in the list of ``tests/test_models.py``. Tests that iterate over this
   table fail until 3 and 4 are done (``test_every_registered_model_*``), and train,
   reload and run every entry as a population (``tests/test_population.py``).

This module imports neither torch nor another module of rsa: the table names classes as
``"module:Class"``, imported when a model is first built, so that any module can read
the table (:mod:`rsa.models` included).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PerTask", "Option", "ModelSpec", "OPTIONS", "FAMILIES", "AUTHORS_ONLY",
           "MODELS", "FUSED", "register", "unregister", "get", "names", "registered",
           "fused_names",
           "with_option", "config_options", "check_options", "task_default", "entry_of",
           "class_default", "memory_budget", "label",
           "color", "labels", "palette", "UNFUSED_SUFFIX"]


# -- the building blocks -----------------------------------------------------------------

@dataclass(frozen=True)
class PerTask:
    """A default that depends on the task: its value on ``copy``, on ``denoise`` and on
    the pixel tasks (``pixel``: digits, pdigits, mnist, pmnist: every task but copy and
    denoise); ``long_copy`` = (T_min, value) is the value on copy at T >= T_min."""

    copy: Any
    denoise: Any
    pixel: Any
    long_copy: tuple[int, Any] | None = None

    @classmethod
    def same(cls, value) -> PerTask:
        """The same value on every task."""
        return cls(value, value, value)

    def value(self, task: str, T: int | None = None):
        """The value on ``task`` at delay ``T``."""
        if task == "copy":
            if self.long_copy is not None and T is not None and T >= self.long_copy[0]:
                return self.long_copy[1]
            return self.copy
        return self.denoise if task == "denoise" else self.pixel


@dataclass(frozen=True)
class Option:
    """A model option: a keyword of the model classes and of :func:`rsa.models.heads.build_model`
    (and, with ``config``, a field of :class:`rsa.train.TrainConfig` and a flag of
    ``python -m rsa train``). ``None`` always means "not given": the default applies.

    ``low``: an int option's smallest value; ``choices``: a str option's accepted values
    (a model may accept fewer, :attr:`ModelSpec.choices`), and with ``by_model`` its
    error names the model. Options of one ``group`` that a model does not take are
    refused together; ``absent`` is the message for a model that does not take the
    option (fields ``model``, ``value``, ``family``, ``user_list``; default: "... applies
    to ... only"). ``identity``: a run resumes only with the value it was made with
    (False: another computation of the same function, which may change on resume; each
    part of the run records its value).
    """

    name: str
    type: type
    help: str
    low: int | None = None
    choices: tuple[str, ...] | None = None
    by_model: bool = False
    group: str | None = None
    absent: str | None = None
    config: bool = True
    identity: bool = True

    def check(self, value, model: str, spec: ModelSpec):
        """``value`` (not None) as the model takes it, or ValueError naming it and what
        is accepted."""
        if self.type is bool:
            return bool(value)
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < self.low:
                raise ValueError(f"{self.name} must be an int >= {self.low}, got {value!r}")
            return value
        accepted = spec.choices.get(self.name, self.choices)
        if value not in accepted:
            if not self.by_model:
                raise ValueError(f"{self.name} must be one of {accepted}, got {value!r}")
            what = repr(accepted[0]) if len(accepted) == 1 else f"one of {accepted}"
            raise ValueError(f"{self.name} for {model!r} must be {what}, got {value!r}")
        return value


# What the cell of each family has (as error messages say it).
FAMILIES = {
    "rnn": "an RNN cell",   # h_t = phi(U x_t + V s_{t-1} + b), V orthogonal at init
    "lstm": "LSTM gates",   # gates i, f, g, o on [s_{t-1}; x_t], Xavier-normal weights
    "attention": "self-attention layers",  # no recurrence (rsa.Transformer)
}

# The options, in the order they are checked (and listed by the command line).
OPTIONS = {o.name: o for o in (
    Option("fused", bool, "the fused sequence function with a hand-written backward "
           "(True, the class's default) or the plain-autograd loop (False)", config=False),
    Option("nu", int, "short-term buffer size", low=1, group="screening"),
    Option("rho", int, "relevant-set size", low=0, group="screening"),
    Option("nonlinearity", str, "the nonlinearity phi of the cell",
           choices=("tanh", "modrelu"),
           absent="model {model!r} has {family} and takes no nonlinearity (got {value!r}); "
                  "nonlinearity applies to {user_list}"),
    Option("init", str, "initialisation of the recurrent matrix V",
           choices=("orthogonal", "orthogonal_random", "xavier"), by_model=True),
    Option("score_form", str, "how SAB computes its attention scores: released, the "
           "release's tanh of the state-slot concatenation, O(m n) a step; or separable, "
           "the same scores in O(m + n) a step, faster to train",
           choices=("released", "separable"), identity=False),
)}

# Per-task defaults that are not model options: fields of rsa.train.TrainConfig.
TRAINING_DEFAULTS = ("lr",)


def _linear_memory(B: int, n: int, L: int) -> int:
    """The default budget: O(L (nu + rho) n B) kept for backward, 64 B n L (nu + rho + 4)
    bytes with nu + rho = 25 (every model's plain loop but MemRNN's)."""
    return 64 * B * n * L * (25 + 4)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the table.

    - ``name``: lower-case letters and digits (``"relrnn"``): the command line's, the
      results' and the run folders' name (``_`` is kept for variants, ``memrnn_unfused``);
    - ``cls``: the core class (input_size, hidden_size, keyword options; forward as
      :class:`rsa.models.RNN`'s), or ``"module:Class"``, imported when first built;
    - ``label``, ``color``: its name in legends and its colour (any matplotlib colour;
      the book's are seaborn's "colorblind" palette, so every figure agrees);
    - ``family``: a key of :data:`FAMILIES`;
    - ``options``: the :data:`OPTIONS` it takes (``fused`` aside: see ``fused``), and
      ``choices``: those whose accepted values it narrows;
    - ``defaults``: per-task defaults :func:`rsa.train.resolve_config` fills in, for
      ``"lr"`` (required) and for options; an option without one keeps ``None`` in the
      configuration, and the class's own default applies (:func:`class_default`);
    - ``fused``: it has a fused implementation (and takes ``fused``, default True);
    - ``compiled``: it has a compiled CPU kernel (:mod:`rsa.models.kernels.compiled`,
      :mod:`rsa.models.kernels.compiled_screened`,
      :mod:`rsa.models.kernels.compiled_rellstm`;
      its class takes ``kernel="compiled"``; :func:`rsa.models.build_model`'s ``kernel``);
    - ``memory``, ``fused_memory``: an upper budget of the extra memory of one update,
      in bytes, as a function of (batch B, hidden size n, steps L); ``fused_memory`` for
      the fused implementation (:func:`rsa.experiments.measure.estimate_memory`);
    - ``long_delays``: trained at the experiment plan's longer delays too (converged
      plan: T = 1000, and seeds 1, 2 at T = 500);
    - ``transfer_max``: the longest delay the transfer stage evaluates it at (None: no
      cap; an O(T^2) evaluation has one), ``transfer_at_max``: evaluated at that cap
      itself in place of the delays beyond it, ``transfer_batch``: sequences per test
      delay (:func:`rsa.experiments.transfer_delays`, :func:`~rsa.experiments.transfer_batch`);
    - ``has_states``: its forward returns recurrent states h_t, so gradient profiles
      ||dL/dh_t|| exist (False: the Transformer);
    - ``population``: the batched forward a population of its runs shares
      (:data:`rsa.models.kernels.population.BATCHED`: ``"recurrent"``, ``"memrnn"``,
      ``"relrnn"``, ``"rellstm"``; a fused model uses it when built fused), or None:
      each run's own forward inside the population (the same results, no gain;
      population training says so when it happens);
    - ``in_plan``: part of :data:`MODELS`, the paper's models, which every plan trains
      in full (False: a model that can be built, configured, trained and drawn outside
      :data:`MODELS`; SAB and the Transformer, which the converged plan trains as its
      baselines, :data:`rsa.experiments.BASELINES`, and the chapters show where the
      stored data holds them).
    """

    name: str
    cls: type | str
    label: str
    color: str
    family: str
    options: tuple[str, ...] = ()
    defaults: Mapping[str, PerTask] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fused: bool = False
    compiled: bool = False
    memory: Callable[[int, int, int], int] = _linear_memory
    fused_memory: Callable[[int, int, int], int] | None = None
    long_delays: bool = False
    transfer_max: int | None = None
    transfer_at_max: bool = False
    transfer_batch: int = 100
    has_states: bool = True
    population: str | None = None
    in_plan: bool = True

    def takes(self, option: str) -> bool:
        """Whether the model takes ``option``."""
        return self.fused if option == "fused" else option in self.options

    def model_class(self) -> type:
        """The class (imported now if the table names it as ``"module:Class"``)."""
        if isinstance(self.cls, str):
            module, _, name = self.cls.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.cls


# -- the table: the paper's models (*The paper* §2) and the authors' defaults (§5) -------

_LR_RNN = PerTask(copy=1e-3, denoise=1e-3, pixel=1e-4)
_LR_LSTM = PerTask.same(1e-3)
_MODRELU = PerTask.same("modrelu")
_NU = PerTask(copy=10, denoise=15, pixel=10)
_RHO = PerTask(copy=15, denoise=15, pixel=10)
_XAVIER_ONLY = {"init": ("xavier",)}

_TABLE = (
    ModelSpec("rnn", "rsa.models:RNN", "RNN", "#949494",  # grey: the baseline
              family="rnn", options=("nonlinearity", "init"),
              defaults={"lr": _LR_RNN, "nonlinearity": _MODRELU}, long_delays=True,
              population="recurrent", compiled=True),
    ModelSpec("lstm", "rsa.models:LSTM", "LSTM", "#0173b2",  # blue
              family="lstm", options=("init",), choices=_XAVIER_ONLY,
              defaults={"lr": _LR_LSTM}, population="recurrent", compiled=True),
    ModelSpec("memrnn", "rsa.models:MemRNN", "MemRNN", "#d55e00",  # red: full attention
              family="rnn", options=("nonlinearity", "init"),
              defaults={"lr": _LR_RNN, "nonlinearity": _MODRELU}, fused=True,
              transfer_max=2000, transfer_at_max=True,  # O(T^2) evaluation
              population="memrnn", compiled=True,
              # plain loop: per step t several (B, t, n) float32 tensors (the stacked
              # memory, the attention pre-activation and its tanh): 8 B n L^2 bytes;
              # fused: the attention weights, B L^2 floats, and O(B n L) buffers
              memory=lambda B, n, L: 8 * B * n * L * L,
              fused_memory=lambda B, n, L: 8 * B * L * L + 64 * B * n * L),
    ModelSpec("relrnn", "rsa.models:RelRNN", "RelRNN", "#029e73",  # green: screening
              family="rnn", options=("nu", "rho", "nonlinearity", "init"),
              defaults={"lr": PerTask(copy=1e-3, denoise=1e-3, pixel=1e-4,
                                      long_copy=(1000, 2e-4)),
                        "nu": _NU, "rho": _RHO,
                        "nonlinearity": PerTask(copy="tanh", denoise="modrelu",
                                                pixel="modrelu")},
              fused=True, long_delays=True, population="relrnn", compiled=True,
              # fused: O(B n L) buffers, per step the nu + rho weights and row indices
              fused_memory=lambda B, n, L: 64 * B * n * L + 16 * B * L * 25),
    ModelSpec("rellstm", "rsa.models:RelLSTM", "RelLSTM", "#cc78bc",  # purple
              family="lstm", options=("nu", "rho", "init"), choices=_XAVIER_ONLY,
              defaults={"lr": _LR_LSTM, "nu": _NU, "rho": _RHO}, fused=True,
              population="rellstm", compiled=True,
              # fused: as RelRNN's with the larger buffers of the gates and cells
              fused_memory=lambda B, n, L: 160 * B * n * L + 16 * B * L * 25),
    # -- outside MODELS (in_plan=False): the converged plan's baselines -----------------
    ModelSpec("sab", "rsa.models.sab:SAB", "SAB", "#ca9161",  # brown: the authors' SAB numbers'
              family="lstm", defaults={"lr": _LR_LSTM},  # the release's copy lr
              options=("score_form",),
              # per step t the (B, m_t, 2n) tanh of the score and the (B, m_t) weights,
              # m_t <= 1 + t (attn_every_k >= 1): at most 4 B n L^2 bytes, plus the LSTM's
              memory=lambda B, n, L: 4 * B * n * L * L + _linear_memory(B, n, L),
              # O(T^2) evaluation: 100 sequences at T = 2000 take a quarter of an hour
              # and 16 GB here
              transfer_max=2000, transfer_batch=20, in_plan=False),
    ModelSpec("transformer", "rsa.models.transformer:Transformer", "Transformer", "#fbafe4",
              family="attention", defaults={"lr": _LR_LSTM},  # pink
              # per layer and head the (B, L, L) attention weights (softmax output and its
              # use): 2 layers x 4 heads x 2 x 4 bytes, plus linear buffers
              memory=lambda B, n, L: 64 * B * L * L + _linear_memory(B, n, L),
              has_states=False, in_plan=False),
)

# Models the book shows from the authors' numbers only (no class here): label, colour.
# (SAB was one until rsa.SAB: its entry keeps the label and colour.)
AUTHORS_ONLY: dict[str, tuple[str, str]] = {}
# A model's plain-autograd loop, where it has a fused default: "<name>_unfused".
UNFUSED_SUFFIX = "_unfused"


# -- the registry ------------------------------------------------------------------------

_REGISTRY: dict[str, ModelSpec] = {}
_NAME = re.compile(r"[a-z][a-z0-9]*")


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the table (after the others) and return it; ValueError if it is
    inconsistent (a bad or taken name, an unknown family or option, a default or a
    narrowed choice for an option it does not take, no learning-rate default)."""
    if not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name):
        raise ValueError(f"a model name is lower-case letters and digits, starting with a "
                         f"letter, got {spec.name!r}")
    if spec.name in _REGISTRY or spec.name in AUTHORS_ONLY:
        raise ValueError(f"model {spec.name!r} is already registered")
    if spec.family not in FAMILIES:
        raise ValueError(f"family must be one of {tuple(FAMILIES)}, got {spec.family!r}")
    unknown = [o for o in spec.options if o not in OPTIONS or o == "fused"]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} of {spec.name!r}; options: "
                         f"{', '.join(o for o in OPTIONS if o != 'fused')} (fused: set "
                         f"fused=True)")
    stray = [k for k in spec.defaults if k not in TRAINING_DEFAULTS and not spec.takes(k)]
    stray += [k for k in spec.choices if not spec.takes(k)
              or not set(spec.choices[k]) <= set(OPTIONS[k].choices or ())]
    if stray:
        raise ValueError(f"model {spec.name!r} has defaults or choices for options it does "
                         f"not take (or choices outside the option's): {stray}")
    if "lr" not in spec.defaults:
        raise ValueError(f"model {spec.name!r} needs a learning-rate default, "
                         f"defaults={{'lr': PerTask(...)}}")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> ModelSpec:
    """Remove the model ``name`` from the table (a test's model) and return its entry."""
    return _REGISTRY.pop(get(name).name)


def names() -> tuple[str, ...]:
    """The models of the plan (``in_plan``), in the table's order: :data:`MODELS`, the
    command line's choices, the order of legends and tables."""
    return tuple(n for n, s in _REGISTRY.items() if s.in_plan)


def registered() -> tuple[str, ...]:
    """Every model of the table: those of the plan, then those outside it (SAB, the
    Transformer), each in the table's order. :func:`get`, :func:`rsa.models.heads.build_model`
    and :func:`rsa.train.resolve_config` accept all of them."""
    return names() + tuple(n for n, s in _REGISTRY.items() if not s.in_plan)


def get(name: str) -> ModelSpec:
    """The entry of model ``name`` (any registered model, in the plan or not);
    ValueError naming it and the plan's names."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; accepted: {', '.join(names())}")
    return _REGISTRY[name]


def entry_of(core) -> ModelSpec | None:
    """The entry whose class is exactly ``type(core)`` (a subclass is a model of its
    own: it has an entry of its own, or none), or None."""
    for name in names():
        if _REGISTRY[name].model_class() is type(core):
            return _REGISTRY[name]
    return None


def fused_names() -> tuple[str, ...]:
    """The models with a fused implementation."""
    return tuple(n for n in registered() if _REGISTRY[n].fused)


def with_option(option: str) -> tuple[str, ...]:
    """The models that take ``option`` (e.g. ``"rho"``: the screened models)."""
    return tuple(n for n in registered() if _REGISTRY[n].takes(option))


def config_options() -> tuple[Option, ...]:
    """The options that are fields of :class:`rsa.train.TrainConfig`, in order."""
    return tuple(o for o in OPTIONS.values() if o.config)


class _Names(Sequence):
    """A live, read-only tuple of model names (it follows :func:`register`)."""

    def __init__(self, source: Callable[[], tuple[str, ...]]):
        self._source = source

    def __getitem__(self, index):
        return self._source()[index]

    def __len__(self) -> int:
        return len(self._source())

    def __iter__(self) -> Iterator[str]:
        return iter(self._source())

    def __add__(self, other):
        return self._source() + tuple(other)

    def __radd__(self, other):
        return tuple(other) + self._source()

    def __eq__(self, other):
        if isinstance(other, tuple | _Names):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self):
        return hash(self._source())

    def __repr__(self) -> str:
        return repr(self._source())


MODELS = _Names(names)        # rsa.MODELS, rsa.models.heads.MODELS
FUSED = _Names(fused_names)   # rsa.models.heads._FUSED


# -- options: the one place they are checked ---------------------------------------------

def _and(items) -> str:
    """"a", "a and b", "a, b and c"."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def check_options(model: str, **given) -> dict:
    """The options ``given`` to ``model`` that are not None, checked (``fused`` made a
    bool), in the order of :data:`OPTIONS`; those left None are left out (the class's
    default applies). Raises ValueError, naming the value and what is accepted, for an
    unknown model, a value out of range, or an option the model does not take."""
    spec = get(model)
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; options: {', '.join(OPTIONS)}")
    checked = {}
    for name, option in OPTIONS.items():
        value = given.get(name)
        if spec.takes(name):
            if value is not None:
                checked[name] = option.check(value, model, spec)
            continue
        group = [o for o in OPTIONS.values()
                 if o is option or (o.group is not None and o.group == option.group
                                    and not spec.takes(o.name))]
        if all(given.get(o.name) is None for o in group):
            continue
        users = with_option(name)
        if option.absent is not None:
            raise ValueError(option.absent.format(
                model=model, value=value, family=FAMILIES[spec.family],
                user_list=", ".join(users)))
        one = len(group) == 1
        raise ValueError(
            f"{_and(o.name for o in group)} {'applies' if one else 'apply'} to "
            f"{_and(users)} only; model {model!r} got "
            f"{', '.join(f'{o.name}={given.get(o.name)!r}' for o in group)} "
            f"(leave {'it' if one else 'them'} None)")
    return checked


# -- defaults ----------------------------------------------------------------------------

def task_default(model: str, name: str, task: str, T: int | None = None):
    """The per-task default of ``name`` (an option, or ``"lr"``) for ``model`` on
    ``task`` at delay ``T``; None where the table has none (the class's default applies)."""
    default = get(model).defaults.get(name)
    return None if default is None else default.value(task, T)


def class_default(model: str, option: str):
    """The default of ``option`` in the signature of ``model``'s class (what a None
    option builds), or None if the class has none."""
    parameter = inspect.signature(get(model).model_class()).parameters.get(option)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


# -- memory ------------------------------------------------------------------------------

def memory_budget(model: str, L: int, batch: int, hidden_size: int, fused: bool = True
                  ) -> int:
    """The table's budget of one update's extra memory, in bytes, over L steps."""
    spec = get(model)
    budget = spec.fused_memory if fused and spec.fused_memory is not None else spec.memory
    return budget(batch, hidden_size, L)


# -- how models are drawn ----------------------------------------------------------------

def labels() -> dict[str, str]:
    """{name: label} of every model (the plan's, then those outside it), then of the
    authors-only models, then of each fused model's plain loop (``"memrnn_unfused"``:
    ``"MemRNN (plain autograd)"``): the order of legends."""
    return {**{n: _REGISTRY[n].label for n in registered()},
            **{n: lab for n, (lab, _) in AUTHORS_ONLY.items()},
            **{n + UNFUSED_SUFFIX: f"{_REGISTRY[n].label} (plain autograd)"
               for n in fused_names()}}


def palette() -> dict[str, str]:
    """{name: colour} of every model (as :func:`labels`), then of the authors-only
    models."""
    return {**{n: _REGISTRY[n].color for n in registered()},
            **{n: c for n, (_, c) in AUTHORS_ONLY.items()}}


def _key(name) -> str:
    return str(name).lower().replace("-", "").replace("_", "")


def label(name) -> str | None:
    """The label of a model or variant (``"relrnn"``, ``"RelRNN"``...), None if unknown."""
    return labels().get(str(name).lower())


def color(name) -> str | None:
    """The colour of a model (``"RelRNN"``, ``"rel-rnn"``...), None if unknown."""
    return {_key(n): c for n, c in palette().items()}.get(_key(name))


for _spec in _TABLE:
    register(_spec)
del _spec
