"""The model-dependent defaults of the table (:mod:`rsa.models.registry`) in words: the
help of ``python -m rsa train`` (:func:`describe_default`) and the docstring of
:class:`rsa.train.TrainConfig` (:func:`defaults_doc`), generated, never typed.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from typing import Any

from rsa.models.registry import (
    OPTIONS,
    TRAINING_DEFAULTS,
    ModelSpec,
    PerTask,
    class_default,
    config_options,
    get,
    registered,
    with_option,
)


def _entries() -> list[ModelSpec]:
    return [get(n) for n in registered()]


def _words(value) -> str:
    if isinstance(value, float) and value != 0 and abs(value) < 1e-2:
        mantissa, exponent = f"{value:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return str(value)


_TASK_WORDS = (("copy", "copy"), ("denoise", "denoise"), ("pixel", "pixel tasks"))


def _per_task_words(default: PerTask) -> str:
    """"10 for copy, 15 for denoise, 10 for pixel tasks": equal neighbours merged."""
    runs: list[list] = []
    for attr, words in _TASK_WORDS:
        value = getattr(default, attr)
        if runs and runs[-1][0] == value:
            runs[-1][1].append(words)
        else:
            runs.append([value, [words]])
    text = _words(runs[0][0]) if len(runs) == 1 else ", ".join(
        f"{_words(v)} for {' and '.join(w)}" for v, w in runs)
    if default.long_copy is not None:
        T_min, value = default.long_copy
        text += f", but {_words(value)} on copy at T >= {T_min}"
    return text


def _majority_words(specs: list[ModelSpec], name: str) -> str:
    """"modrelu, but tanh for relrnn on copy": the most common value, then the others."""
    cells = [(s.name, words, getattr(s.defaults[name], attr))
             for s in specs for attr, words in _TASK_WORDS]
    common = Counter(v for _, _, v in cells).most_common(1)[0][0]
    by_value: dict[tuple, list[str]] = {}
    for model, words, value in cells:
        if value != common:
            by_value.setdefault((value, words), []).append(model)
    merged: dict[tuple, list[str]] = {}  # (value, models) -> task words
    for (value, words), models in by_value.items():
        merged.setdefault((value, tuple(models)), []).append(words)
    everyone = tuple(s.name for s in specs)
    parts = [f"{_words(v)}{'' if m == everyone else ' for ' + ', '.join(m)} on "
             f"{' and '.join(w)}" for (v, m), w in merged.items()]
    parts += [f"{_words(s.defaults[name].long_copy[1])} for {s.name} on copy at T >= "
              f"{s.defaults[name].long_copy[0]}" for s in specs
              if s.defaults[name].long_copy is not None]
    return _words(common) + (", but " + "; ".join(parts) if parts else "")


def describe_default(name: str) -> str:
    """The default of ``name`` (an option, or ``"lr"``) in words, from the table: its
    per-task default (e.g. "15 for copy and denoise, 10 for pixel tasks"; "modrelu, but
    tanh for relrnn on copy"), or for an option without one each class's default
    ("orthogonal for rnn, ...; xavier, the only choice, for lstm, ...")."""
    specs = [s for s in _entries() if name in s.defaults]
    if specs:
        if len({s.defaults[name] for s in specs}) == 1:  # one table for all its models
            return _per_task_words(specs[0].defaults[name])
        return _majority_words(specs, name)
    by_value: dict[Any, list[ModelSpec]] = {}
    for s in _entries():
        if s.takes(name):
            by_value.setdefault(class_default(s.name, name), []).append(s)
    return "; ".join(
        f"{_words(value)}"
        f"{', the only choice,' if all(s.choices.get(name) == (value,) for s in specs) else ''}"
        f" for {', '.join(s.name for s in specs)}" for value, specs in by_value.items())


def defaults_doc(indent: str = "    ") -> str:
    """The model-dependent defaults as a reST list (for :class:`rsa.train.TrainConfig`)."""
    lines = []
    for name in (*TRAINING_DEFAULTS, *(o.name for o in config_options())):
        users = with_option(name) if name in OPTIONS else registered()
        only = "" if len(users) == len(registered()) else f" ({', '.join(users)} only)"
        kept = "" if any(name in s.defaults for s in _entries()) else \
            " (the class's own default: the configuration keeps None)"
        lines.append(textwrap.fill(f"- ``{name}``{only}: {describe_default(name)}{kept}",
                                   width=88, initial_indent=indent,
                                   subsequent_indent=indent + "  "))
    return "\n".join(lines)
