"""The book's figures: one shared style and the ``plot_*`` functions chapters call.

Every chapter calls :func:`set_style` once; each ``plot_*`` function draws one figure
and returns it (the chapter glues it under a name and caption, see
:func:`rsa.book.glue_figure`). Colours are fixed per model, so RelRNN has the same
colour in every chapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

__all__ = ["PALETTE", "FIGSIZE", "set_style", "model_color", "plot_memory_contents",
           "plot_attention", "plot_cost_vs_T", "plot_curves"]

# One colour per model (seaborn "colorblind"), keyed by lower-case model name.
_CB = sns.color_palette("colorblind")
PALETTE = {
    "rnn": _CB[7],      # grey: the baseline
    "lstm": _CB[0],     # blue
    "memrnn": _CB[3],   # red: full attention
    "relrnn": _CB[2],   # green: relevancy screening
    "rellstm": _CB[4],  # purple
    "sab": _CB[5],      # brown (only in the authors' numbers)
}
# Memory roles in the raster of plot_memory_contents: buffer S and relevant set R.
S_COLOR, R_COLOR = _CB[1], _CB[2]
FIGSIZE = (7.0, 4.0)


def set_style() -> None:
    """The one style of every figure in the book (seaborn ``notebook`` context)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    mpl.rcParams.update({
        "figure.figsize": FIGSIZE,
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "savefig.bbox": "tight",
        "axes.titlesize": "medium",
        "image.cmap": "viridis",
        "svg.hashsalt": "rsa",  # reproducible ids, should anyone save SVG
    })


def model_color(name: str):
    """The fixed colour of a model (``"RelRNN"``, ``"relrnn"``...), None if unknown."""
    return PALETTE.get(str(name).lower().replace("-", "").replace("_", ""))


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _step_by_state(trace, values, b: int) -> np.ndarray:
    """A (T, T) array M with M[j, t] = value of the slot holding h_{j+1} at step t+1
    (NaN where h_{j+1} is not in memory at that step)."""
    index = _as_numpy(trace.index)[:, b]  # (T, K)
    vals = np.broadcast_to(_as_numpy(values)[:, b], index.shape)
    T = index.shape[0]
    out = np.full((T, T), np.nan)
    t, k = np.nonzero(index >= 0)
    out[index[t, k], t] = vals[t, k]
    return out


def _memory_axes(ax, T: int, title: str | None) -> None:
    ax.set_xlabel("step $t$ (computing $h_t$)")
    ax.set_ylabel("stored state $h_j$ (time $j$)")
    ax.set_xlim(0.5, T + 0.5)
    ax.set_ylim(0.5, T + 0.5)
    ax.grid(False)
    if title:
        ax.set_title(title)


def plot_memory_contents(trace, b: int = 0, ax=None, title: str | None = None):
    """Which past states sit in the buffer S and the relevant set R at each step.

    A raster of ``trace`` (an :class:`rsa.models.Trace`) for sequence ``b``: a cell at
    (t, j) is coloured when h_j is in memory while h_t is computed, orange for S and
    green for R. Full attention (MemRNN) fills the whole lower triangle with S.
    """
    code = _step_by_state(trace, np.where(_as_numpy(trace.relevant), 2.0, 1.0), b)
    T = code.shape[0]
    fig, ax = _fig_ax(ax)
    cmap = ListedColormap([S_COLOR, R_COLOR])
    ax.imshow(np.ma.masked_invalid(code), origin="lower", cmap=cmap, vmin=1, vmax=2,
              extent=(0.5, T + 0.5, 0.5, T + 0.5), interpolation="nearest", aspect="auto")
    ax.plot([0.5, T + 0.5], [0.5, T + 0.5], color="0.7", lw=0.8, ls="--")
    _memory_axes(ax, T, title)
    ax.legend(handles=[Patch(color=S_COLOR, label="short-term buffer $S$"),
                       Patch(color=R_COLOR, label="relevant set $R$")],
              loc="upper left", frameon=True)
    return fig


def plot_attention(trace, b: int = 0, ax=None, title: str | None = None,
                   log: bool = True):
    """Attention weight alpha_j^{(t)} on each stored h_j while h_t is computed.

    Heat map of ``trace.alpha`` for sequence ``b`` over (step t, stored time j); blank
    where h_j is not in memory. ``log`` uses a logarithmic colour scale, since weights
    span decades.
    """
    A = _step_by_state(trace, trace.alpha, b)
    T = A.shape[0]
    fig, ax = _fig_ax(ax)
    finite = A[np.isfinite(A) & (A > 0)]
    norm = None
    if log and finite.size:
        norm = LogNorm(vmin=max(finite.min(), 1e-4), vmax=max(finite.max(), 1e-3))
    im = ax.imshow(np.ma.masked_invalid(A), origin="lower", norm=norm,
                   extent=(0.5, T + 0.5, 0.5, T + 0.5), interpolation="nearest",
                   aspect="auto")
    _memory_axes(ax, T, title)
    fig.colorbar(im, ax=ax, label=r"attention weight $\alpha_j^{(t)}$")
    return fig


def plot_cost_vs_T(table, y: str = "ms_per_step", ax=None,
                   ylabel: str = "time per step (ms)", title: str | None = None):
    """Cost per step against sequence length T, one line per model, log-log.

    ``table``: a DataFrame (or anything ``pd.DataFrame`` accepts) with columns
    ``model``, ``T`` and ``y``; several rows per (model, T) are shown as their median.
    """
    df = pd.DataFrame(table)
    _require(df, ["model", "T", y])
    fig, ax = _fig_ax(ax)
    for name, g in df.groupby("model", sort=False):
        m = g.groupby("T")[y].median()
        ax.plot(m.index, m.values, marker="o", label=name, color=model_color(name))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sorted(df["T"].unique()))
    _plain_log_ticks(ax)
    ax.set_xlabel("sequence length $T$ (steps)")
    ax.set_ylabel(ylabel)
    ax.legend(title="model", loc="upper left", bbox_to_anchor=(1.01, 1))  # off the lines
    if title:
        ax.set_title(title)
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


# -- internals ------------------------------------------------------------------------

def _fig_ax(ax):
    if ax is None:
        fig, ax = plt.subplots()
        return fig, ax
    return ax.figure, ax


def _plain_log_ticks(ax) -> None:
    """Tick labels of log axes as plain numbers (100, 0.5) instead of 10^2, 5x10^-1;
    minor ticks are labelled only when the axis spans less than a decade, where there
    would be too few major ones."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis, scale, lim in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                             (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
        if scale != "log":
            continue
        axis.set_major_formatter(plain)
        lo, hi = sorted(lim)
        narrow = lo > 0 and np.log10(hi / lo) < 1
        axis.set_minor_formatter(plain if narrow and axis is ax.yaxis else NullFormatter())


def _require(df: pd.DataFrame, cols: Iterable[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"table is missing column(s) {missing}; it has {list(df.columns)}")


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
