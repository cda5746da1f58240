"""Figures of the mechanism (the chapter *Relevancy screening*): what sits in memory at
each step, the attention weights over it, and the cost per step against T.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.patches import Patch

from rsa.plotting.lines import plot_value_against_T
from rsa.plotting.style import _CB, _as_numpy, _fig_ax, _plain_log_ticks, _require

# Memory roles in the raster of plot_memory_contents: buffer S and relevant set R.
S_COLOR, R_COLOR = _CB[1], _CB[2]


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
    A variant of a model, named ``"<model>, <variant>"`` (``"MemRNN, plain autograd"``),
    takes the model's colour, dotted with square markers.
    """
    df = pd.DataFrame(table)
    _require(df, ["model", "T", y])
    fig, ax = _fig_ax(ax)
    plot_value_against_T(df, y, ax=ax, order="given", label=lambda name: name)
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
