"""Figures of the theory chapters (*Vanishing gradients*, *Bounds*, *The κ–d tradeoff*):
gradient-norm curves, measured against predicted decay rates, maps of the gradient
floor, and the cost/gradient tradeoff.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import seaborn as sns

from rsa.plotting.style import PALETTE, _as_numpy, _fig_ax, _require, model_color

# How each kind of curve is drawn: measurements solid, exact model values thin, Monte
# Carlo as points with error bars, proven bounds dashed, approximations dash-dotted.
_KIND_STYLE = {
    "measured": {"lw": 2.2, "ls": "-"},
    "exact": {"lw": 1.4, "ls": "-"},
    "check": {"lw": 0, "marker": "o", "ms": 5, "mfc": "none", "mew": 1.2},
    "mc": {"lw": 0, "marker": "o", "ms": 4, "elinewidth": 1, "capsize": 2},
    "bound": {"lw": 1.6, "ls": "--"},
    "estimate": {"lw": 1.4, "ls": "-."},
    "reference": {"lw": 1.4, "ls": ":"},
}


def plot_gradient_curves(curves, ax=None, xlabel: str = "step $t$",
                         ylabel: str = r"$\Vert \partial h_t / \partial h_i \Vert$",
                         logx: bool = False, logy: bool = True, title: str | None = None,
                         legend_loc: str = "best", ylim: tuple | None = None):
    """Norms (of Jacobians, of gradients, or the bounds on them) against time.

    ``curves``: a list of dicts with ``x``, ``y``, ``label`` and optionally ``kind``
    (``"measured"`` by default; also ``"exact"``, ``"check"``, ``"mc"`` with ``yerr``,
    ``"bound"``, ``"estimate"``, ``"reference"``: each has one line style), ``color``
    (default: the model colour of ``model``, else the next palette colour) and
    ``every`` (draw every k-th point, for markers). Values <= 0 are left out on a log
    axis. ``legend_loc="outside"`` puts the legend right of the axes; ``ylim`` is a
    (bottom, top) pair, either None.
    """
    fig, ax = _fig_ax(ax)
    used = {model_color(c.get("model", "")) for c in curves} - {None}
    cycle = iter([c for c in sns.color_palette("colorblind", 10) if c not in used] * 3)
    handles = []  # in the order given, so that a curve's companions follow it
    for c in curves:
        kind = c.get("kind", "measured")
        if kind not in _KIND_STYLE:
            raise ValueError(f"kind must be one of {sorted(_KIND_STYLE)}, got {kind!r}")
        x, y = _as_numpy(c["x"]).astype(float), _as_numpy(c["y"]).astype(float)
        yerr = None if c.get("yerr") is None else _as_numpy(c["yerr"]).astype(float)
        keep = np.isfinite(y) & ((y > 0) if logy else True)
        step = max(int(c.get("every", 1)), 1)
        keep &= (np.arange(len(y)) % step) == 0
        color = c.get("color") or model_color(c.get("model", "")) or next(cycle)
        style = dict(_KIND_STYLE[kind])
        if kind == "mc":
            handles.append(ax.errorbar(x[keep], y[keep], color=color, label=c["label"],
                                       yerr=None if yerr is None else yerr[keep], **style))
        else:
            handles += ax.plot(x[keep], y[keep], color=color, label=c["label"], **style)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend_loc == "outside":
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  fontsize="small")
    else:
        ax.legend(handles=handles, loc=legend_loc, fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_decay_rates(table, ax=None, title: str | None = None):
    """Measured against predicted decay rate per step of a Jacobian norm, log-log, with
    the diagonal (prediction exact).

    ``table``: columns ``predicted``, ``measured`` (rates per step, e.g. -slope of
    ln ||dh_t/dh_1||) and ``group`` (one colour and marker per group, e.g. the
    initialisation). An optional ``setting`` column (e.g. the input scale) orders the
    points of a group, which are joined by a thin line, and is written next to the
    points of the first group.
    """
    df = pd.DataFrame(table)
    _require(df, ["predicted", "measured", "group"])
    fig, ax = _fig_ax(ax)
    markers = iter("osD^vP" * 3)
    groups = list(df.groupby("group", sort=False))
    for k, ((group, g), color) in enumerate(zip(groups, sns.color_palette("colorblind"),
                                                strict=False)):
        if "setting" in g:
            g = g.sort_values("setting")
        ax.plot(g["predicted"], g["measured"], marker=next(markers), ms=7, lw=0.8,
                color=color, label=str(group), zorder=3)
        if "setting" in g and k == 0:
            for _, row in g.iterrows():
                ax.annotate(f"{row['setting']:g}", (row["predicted"], row["measured"]),
                            textcoords="offset points", xytext=(6, -12),
                            fontsize="small", color=color)
    both = df[["predicted", "measured"]].to_numpy(dtype=float)
    lo, hi = np.nanmin(both) / 1.3, np.nanmax(both) * 1.3
    ax.plot([lo, hi], [lo, hi], color="0.5", ls=":", lw=1.2, label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted decay rate per step (nats)")
    ax.set_ylabel("measured decay rate per step (nats)")
    ax.legend(fontsize="small", loc="upper left")
    if title:
        ax.set_title(title)
    return fig


def _log_edges(v: np.ndarray) -> np.ndarray:
    """Cell edges around positive, increasing centres ``v`` on a log axis."""
    lv = np.log(v)
    mid = (lv[1:] + lv[:-1]) / 2
    first = lv[0] - (mid[0] - lv[0]) if len(v) > 1 else lv[0] - 0.5
    last = lv[-1] + (lv[-1] - mid[-1]) if len(v) > 1 else lv[-1] + 0.5
    return np.exp(np.concatenate([[first], mid, [last]]))


def plot_floor_map(values, xs, ys, ax=None, xlabel: str = "", ylabel: str = "",
                   cbar_label: str = r"$\log_{10} g$", contours=None,
                   contour_label: str | None = None, curve=None, annotate: bool = True,
                   vmin: float | None = None, title: str | None = None,
                   lines=()):
    """A map of ``log10(values)`` over a grid: ``values[a, b]`` at (``xs[b]``, ``ys[a]``).

    Both axes are logarithmic (``xs``, ``ys``: positive and increasing). ``contours``:
    an optional (array like ``values``, levels) pair drawn as dashed lines (e.g. the
    cost nu + rho), named ``contour_label`` in the legend (unlabelled on the map, where
    the cell values are written).
    ``curve``: an optional (x, y, label) drawn on top. ``lines``: more level lines,
    each (array like ``values``, levels, label, dict of line keywords: ``color``,
    ``ls``, ``lw``), drawn solid white by default and named in the legend. ``annotate``
    writes each cell's value. ``vmin`` clips the colour scale from below (cells under it
    share one colour).
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    V = np.log10(np.asarray(values, dtype=float))
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if V.shape != (len(ys), len(xs)):
        raise ValueError(f"values must have shape (len(ys), len(xs)) = ({len(ys)}, "
                         f"{len(xs)}), got {V.shape}")
    fig, ax = _fig_ax(ax)
    mesh = ax.pcolormesh(_log_edges(xs), _log_edges(ys), np.ma.masked_invalid(V),
                         cmap="viridis", vmin=vmin, shading="flat")
    fig.colorbar(mesh, ax=ax, label=cbar_label, extend="min" if vmin is not None else None)
    if annotate:
        lo, hi = mesh.get_clim()
        for a, y in enumerate(ys):
            for b, x in enumerate(xs):
                if np.isfinite(V[a, b]):
                    dark = (max(V[a, b], lo) - lo) < 0.6 * (hi - lo)
                    ax.text(x, y, f"{V[a, b]:.0f}", ha="center", va="center",
                            fontsize="small", color="white" if dark else "black")
    handles = []
    if contours is not None:
        C, levels = contours
        ax.contour(xs, ys, np.asarray(C, dtype=float), levels=levels, colors="white",
                   linewidths=1.2, linestyles="--")
        if contour_label:
            handles.append(Line2D([], [], color="white", ls="--", label=contour_label))
    for C, levels, label, kw in lines:
        style = {"color": "white", "ls": "-", "lw": 2.2, **kw}
        ax.contour(xs, ys, np.asarray(C, dtype=float), levels=levels,
                   colors=style["color"], linewidths=style["lw"], linestyles=style["ls"])
        handles.append(Line2D([], [], label=label, **style))
    if curve is not None:
        cx, cy, clabel = curve
        (line,) = ax.plot(cx, cy, color="tab:red", lw=2, label=clabel)
        handles.append(line)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(_log_edges(xs)[[0, -1]])
    ax.set_ylim(_log_edges(ys)[[0, -1]])
    ax.grid(False)
    for axis, v in ((ax.xaxis, xs), (ax.yaxis, ys)):
        axis.set_major_locator(FixedLocator(v))
        axis.set_major_formatter(FuncFormatter(lambda u, _: f"{u:g}"))
        axis.set_minor_locator(NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if handles:  # below the axes, so that no cell is hidden
        leg = ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                        ncol=min(len(handles), 2), fontsize="small", facecolor="0.3",
                        framealpha=0.9)
        for text in leg.get_texts():
            text.set_color("white")
    if title:
        ax.set_title(title)
    return fig


def plot_cost_floor(table, ax=None, references: Mapping | None = None,
                    colors: Mapping | None = None,
                    xlabel: str = "attended states per step (mean over the sequence)",
                    ylabel: str = r"gradient floor $\min_i g(i, L)$",
                    title: str | None = None, ylim: tuple | None = None):
    """The tradeoff in one picture: cost per step against the gradient floor, log-log.

    ``table``: columns ``family``, ``cost`` and ``floor``; an optional ``group`` column
    splits a family into lines (e.g. one line per rho, drawn from light to dark in the
    family's colour). Each family (or group) is a line through its points sorted by
    cost; a single point is a large marker. ``colors``: {family: colour}; other families
    take the colour of the model they are named after, else the next free colour.
    ``references``: {label: y} drawn as horizontal dotted lines (e.g. the plain RNN).
    ``ylim``: (bottom, top), either None; points outside are cut off.
    """
    df = pd.DataFrame(table)
    _require(df, ["family", "cost", "floor"])
    fig, ax = _fig_ax(ax)
    cycle = iter([c for c in sns.color_palette("colorblind")
                  if c not in PALETTE.values()] * 3)
    markers = iter("oDs^vP*X" * 3)
    for family, g in df.groupby("family", sort=False):
        base = ((colors or {}).get(family) or model_color(str(family).split(" ")[0])
                or next(cycle))
        marker = next(markers)
        groups = (list(g.groupby("group", sort=False)) if "group" in g
                  and g["group"].notna().any() else [(None, g)])
        shades = sns.light_palette(base, n_colors=len(groups) + 2)[2:]
        for (group, h), shade in zip(groups, shades, strict=True):
            h = h.sort_values("cost")
            label = str(family) if group is None else f"{family}, {group}"
            color = base if group is None else shade
            if len(h) == 1:
                ax.scatter(h["cost"], h["floor"], s=90, marker=marker, color=color,
                           edgecolor="black", zorder=4, label=label)
            else:
                ax.plot(h["cost"], h["floor"], marker=marker, ms=5, color=color,
                        label=label)
    for (label, y), color in zip((references or {}).items(), ["0.35", "0.6", "0.8"],
                                 strict=False):
        ax.axhline(y, color=color, ls=":", lw=1.5, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title)
    return fig
