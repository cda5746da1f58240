"""Lines: one value against the delay or sequence length T, one line per model
(:func:`plot_value_against_T`, the one implementation behind the cost, scaling, transfer
and side-by-side panel figures), and a generic line plot (:func:`plot_curves`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from rsa.plotting.style import (
    _as_numpy,
    _by_model_order,
    _color,
    _fig_ax,
    _plain_log_ticks,
    _require,
    _variant_style,
    model_color,
    model_label,
)


def plot_value_against_T(table, y: str, x: str = "T", ax=None, *, agg: str = "median",
                         fits: Mapping | None = None, order: str = "models",
                         label: Callable = model_label, style: Callable = _variant_style):
    """``y`` against ``x`` (the delay or sequence length T), one line per model, in the
    model's colour: the ``agg`` ("median" or "mean") of the rows at each ``x`` (e.g.
    repeats or seeds). Draws the lines only and returns the figure; the caller sets
    scales, ticks, labels and the legend.

    ``table``: columns ``model``, ``x``, ``y``. ``order``: "models" (the models' usual
    order, :mod:`rsa.models.registry`) or "given" (as they first appear). ``label``: the
    legend entry of a model name; ``style``: its line style (default: solid with round
    markers, a variant ``"<model>, <variant>"`` or ``"<model>_<variant>"`` dotted with
    squares, in its model's colour). ``fits``: {model: (slope, intercept, x_min,
    x_max)} of ``log10 y = slope log10 x + intercept``, drawn dashed over [x_min,
    x_max], with the slope in the legend.
    """
    if agg not in ("median", "mean"):
        raise ValueError(f"agg must be 'median' or 'mean', got {agg!r}")
    if order not in ("models", "given"):
        raise ValueError(f"order must be 'models' or 'given', got {order!r}")
    df = pd.DataFrame(table)
    _require(df, ["model", x, y])
    fig, ax = _fig_ax(ax)
    models = (_by_model_order(df["model"].unique()) if order == "models"
              else list(dict.fromkeys(df["model"])))
    for m in models:
        h = getattr(df[df["model"] == m].groupby(x)[y], agg)()
        text = label(m)
        if fits and m in fits:
            slope, icpt, lo, hi = fits[m]
            text += f" (slope {slope:.2f})"
            xs = np.geomspace(lo, hi, 20)
            ax.plot(xs, 10 ** (slope * np.log10(xs) + icpt), color=_color(m),
                    ls="--", lw=1.0)
        ax.plot(h.index, h.values, label=text, color=_color(m), **style(m))
    return fig


def plot_curves(data, x: str | None = None, y: str | None = None, hue: str = "model",
                ax=None, xlabel: str | None = None, ylabel: str | None = None,
                logx: bool = False, logy: bool = False, title: str | None = None,
                legend_title: str | None = None):
    """Generic line plot: one curve per ``hue`` value (model colours where they apply).

    ``data`` is either a long DataFrame with columns ``x``, ``y`` and ``hue``, or a
    mapping ``{label: (xs, ys)}``.
    """
    fig, ax = _fig_ax(ax)
    for label, xs, ys in _curves(data, x, y, hue):
        ax.plot(xs, ys, label=str(label), color=model_color(label))
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel(xlabel if xlabel is not None else (x or ""))
    ax.set_ylabel(ylabel if ylabel is not None else (y or ""))
    ax.legend(title=legend_title if legend_title is not None else
              (hue if not isinstance(data, Mapping) else None))
    if title:
        ax.set_title(title)
    return fig

def _curves(data, x, y, hue):
    if isinstance(data, Mapping):
        for label, (xs, ys) in data.items():
            yield label, _as_numpy(xs), _as_numpy(ys)
        return
    df = pd.DataFrame(data)
    _require(df, [x, y, hue])
    for label, g in df.groupby(hue, sort=False):
        g = g.sort_values(x)
        yield label, g[x].to_numpy(), g[y].to_numpy()
