"""Helpers for the book's chapters (``book/*.ipynb``): parameter checks, paths to the
repository and its stored results, and figures glued for their captions.

Chapters show the code they run with a ``{literalinclude}`` directive in a markdown
cell (``:pyobject: ScreenedMemory._consolidate``): Sphinx reads the source at build
time, so the book always shows the current code.

Every chapter has a cell tagged ``parameters`` (papermill) followed by a cell that
calls :func:`check_parameters`, so that a bad ``papermill -p name value`` fails at
once, with a message that names the parameter and what it accepts, instead of deep
inside a training loop (``CONTRIBUTING.md``).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

__all__ = ["check_parameters", "repo_root", "data_dir", "glue_figure"]

# Names an IPython kernel puts in the user namespace by itself.
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})


def repo_root() -> Path:
    """The repository root (the folder holding ``rsa/``, ``book/`` and ``data/``).

    Chapters run with different working directories (papermill: where it is called;
    nbval: the notebook's folder), so they locate files from here, never from ``cwd``.
    """
    return Path(__file__).resolve().parent.parent


def data_dir(name: str | None = None) -> Path:
    """``data/`` or ``data/<name>/``: where long runs store their results (``data/`` of
    the checkout, or ``$RSA_DATA_DIR`` when set: :func:`rsa.io.data_root`, the folder
    ``python -m rsa reproduce --data-dir`` writes)."""
    from rsa.io import data_root

    d = data_root()
    return d if name is None else d / name


def _is_parameter(name: str, value: Any) -> bool:
    if name.startswith("_") or name in _IPYTHON_NAMES:
        return False
    return not isinstance(value, types.ModuleType | types.FunctionType
                          | types.BuiltinFunctionType | type)


def _bounds(rule: tuple) -> tuple:
    """(lo, hi) of a numeric rule ``(int, lo, hi)``; a missing or None end is open."""
    return tuple((list(rule[1:3]) + [None, None])[:2])


def _describe(rule: tuple) -> str:
    """What a spec rule accepts, in words."""
    kind = rule[0]
    if isinstance(kind, str):
        return "one of " + ", ".join(repr(r) for r in rule)
    if kind is bool:
        return "a bool (True or False)"
    if kind is str:
        return "a string"
    if kind is list:
        return f"a list of {_describe(tuple(rule[1:]))}"
    lo, hi = _bounds(rule)
    name = kind.__name__
    if lo is None and hi is None:
        return f"an {name}" if name == "int" else f"a {name}"
    if hi is None:
        return f"{name} >= {lo}"
    if lo is None:
        return f"{name} <= {hi}"
    return f"{name} in [{lo}, {hi}]"


def _check_value(value: Any, rule: tuple) -> tuple[bool, Any]:
    """(ok, value) for one value; ints are accepted (and converted) for floats."""
    kind = rule[0]
    if isinstance(kind, str):  # a choice among strings
        return (isinstance(value, str) and value in rule), value
    if kind is bool:
        return isinstance(value, bool), value
    if kind is str:
        return isinstance(value, str), value
    if kind is list:
        if not isinstance(value, list):
            return False, value
        checked = [_check_value(v, tuple(rule[1:])) for v in value]
        return all(ok for ok, _ in checked), [v for _, v in checked]
    if kind not in (int, float):
        raise TypeError(f"unsupported rule {rule!r}: the first entry must be int, float, "
                        "bool, str, list or a string choice")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False, value
    if kind is int and not isinstance(value, int):
        return False, value
    value = kind(value)
    if value != value:  # NaN is never in range
        return False, value
    lo, hi = _bounds(rule)
    ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    return ok, value


def check_parameters(namespace: dict, spec: dict[str, tuple]) -> None:
    """Validate a chapter's parameters, as set by its ``parameters`` cell or papermill.

    ``namespace`` is the notebook's ``globals()``; ``spec`` maps each parameter name to
    a rule:

    - ``(int, lo, hi)`` / ``(float, lo, hi)``: a number in [lo, hi] (``None`` for an
      open end); an int is accepted for a float and converted in ``namespace``;
    - ``("quick", "full")``: one of these strings;
    - ``(bool,)`` or ``(str,)``: any bool / any string;
    - ``(list, int, lo, hi)``: a list whose items satisfy ``(int, lo, hi)``.

    Every other user-defined name in ``namespace`` counts as a parameter too (IPython's
    own names, names starting with ``_``, modules, functions and classes do not), so a
    misspelt ``papermill -p`` name is reported instead of silently ignored.

    Raises ``ValueError`` listing every unknown, missing, wrong-type or out-of-range
    parameter with what is accepted.
    """
    errors = []
    for name in sorted(k for k, v in namespace.items() if _is_parameter(k, v)):
        if name not in spec:
            errors.append(f"unknown parameter {name!r}; this chapter accepts: "
                          + ", ".join(sorted(spec)))
    for name, rule in spec.items():
        if not isinstance(rule, tuple) or not rule:
            raise TypeError(f"spec for {name!r} must be a non-empty tuple, got {rule!r}")
        if name not in namespace:
            errors.append(f"parameter {name!r} is missing from the parameters cell")
            continue
        ok, value = _check_value(namespace[name], rule)
        if ok:
            namespace[name] = value
        else:
            errors.append(f"parameter {name!r} = {namespace[name]!r} "
                          f"({type(namespace[name]).__name__}) is not accepted: "
                          f"expected {_describe(rule)}")
    if errors:
        raise ValueError("bad chapter parameters:\n  " + "\n  ".join(errors))


def plain_text(text: str) -> str:
    """``text`` without the Markdown marks a ``{glue:text}`` role would show raw: ``$``
    around math, backticks around code, ``**`` and ``*`` around emphasis."""
    import re

    text = re.sub(r"\$([^$]*)\$", r"\1", text)
    text = re.sub(r"`([^`]*)`", r"\1", text)
    return re.sub(r"\*\*?([^*]+)\*\*?", r"\1", text)


def glue_text(name: str, text: str) -> None:
    """Store ``text`` in the notebook under ``name`` for a ``{glue:text}`` role, as
    :func:`plain_text`: that role pastes text as it is, so Markdown in it would show raw
    on the page that quotes it (the landing page's findings and scorecard)."""
    from myst_nb import glue

    glue(name, plain_text(text), display=False)


def glue_figure(name: str, fig) -> None:
    """Store ``fig`` in the notebook under ``name`` for a ``{glue:figure}`` directive
    (its caption and label live there), without showing it twice, then close it. A
    figure that cannot be read (:func:`rsa.plotting.readable.problems`: a colour or line
    style without a legend entry, a log axis over too many decades or blown up, text
    too small once the figure is shrunk into the page column, overlapping labels or
    annotations, an empty panel) is refused with a ValueError naming the problems (with
    ``RSA_FIGURE_REPORT`` set to a file, they are appended there instead)."""
    import json
    import os

    import matplotlib.pyplot as plt
    from myst_nb import glue

    from rsa.plotting.readable import problems

    found = problems(fig)
    report = os.environ.get("RSA_FIGURE_REPORT")  # survey mode: record, do not refuse
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"figure": name, "problems": found}) + "\n")
    elif found:
        plt.close(fig)
        raise ValueError(f"figure {name!r} cannot be read: " + "; ".join(found))
    glue(name, fig, display=False)
    plt.close(fig)

