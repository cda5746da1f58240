"""The book's figures: one shared style and the ``plot_*`` functions chapters call.

Every chapter calls :func:`set_style` once; each ``plot_*`` function draws one figure
and returns it (the chapter glues it under a name and caption, see
:func:`rsa.book.glue_figure`). Colours are fixed per model, so RelRNN has the same
colour in every chapter: the model's colour and label are those of its entry in
:mod:`rsa.registry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap, LogNorm, to_rgb
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from rsa import registry

__all__ = ["PALETTE", "FIGSIZE", "set_style", "model_color", "plot_memory_contents",
           "plot_attention", "plot_cost_vs_T", "plot_curves"]


class _RegistryView(Mapping):
    """A read-only dict that follows the table of :mod:`rsa.registry`."""

    def __init__(self, source):
        self._source = source

    def __getitem__(self, key):
        return self._source()[key]

    def __iter__(self):
        return iter(self._source())

    def __len__(self) -> int:
        return len(self._source())

    def __repr__(self) -> str:
        return repr(self._source())


# One colour per model, keyed by lower-case model name: the table's (rsa.registry), as
# RGB tuples (the book's are seaborn's "colorblind" palette).
PALETTE = _RegistryView(lambda: {m: to_rgb(c) for m, c in registry.palette().items()})
_CB = sns.color_palette("colorblind")
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
    color = registry.color(name)
    return None if color is None else to_rgb(color)


def _split_variant(name) -> tuple[str, str]:
    """(model, variant) of a curve's name: ``"memrnn_unfused"`` and ``"MemRNN, plain
    autograd"`` are variants of MemRNN; a name without "," or "_" has variant ``""``."""
    text = str(name)
    for sep in (",", "_"):
        base, found, variant = text.partition(sep)
        if found:
            return base.strip(), variant.strip()
    return text, ""


def _color(name):
    """The model colour of a curve; a variant takes its model's colour."""
    return model_color(_split_variant(name)[0])


def _variant_style(name) -> dict:
    """A model's curve is solid with round markers, a variant's dotted with squares."""
    return {"ls": ":", "marker": "s"} if _split_variant(name)[1] else {"ls": "-", "marker": "o"}


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
    A variant of a model, named ``"<model>, <variant>"`` (``"MemRNN, plain autograd"``),
    takes the model's colour, dotted with square markers.
    """
    df = pd.DataFrame(table)
    _require(df, ["model", "T", y])
    fig, ax = _fig_ax(ax)
    for name, g in df.groupby("model", sort=False):
        m = g.groupby("T")[y].median()
        ax.plot(m.index, m.values, label=name, color=_color(name), **_variant_style(name))
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


# ======================================================================================
# Theory chapters (book/vanishing.ipynb, book/bounds.ipynb, book/kappa_d_tradeoff.ipynb):
# gradient-norm curves, decay rates, maps of the gradient floor, and the cost/gradient
# tradeoff. Kept apart from the functions above; edited with those chapters.
# ======================================================================================

__all__ += ["plot_gradient_curves", "plot_decay_rates", "plot_floor_map", "plot_cost_floor"]

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
                   vmin: float | None = None, title: str | None = None):
    """A map of ``log10(values)`` over a grid: ``values[a, b]`` at (``xs[b]``, ``ys[a]``).

    Both axes are logarithmic (``xs``, ``ys``: positive and increasing). ``contours``:
    an optional (array like ``values``, levels) pair drawn as dashed lines (e.g. the
    cost nu + rho), named ``contour_label`` in the legend (unlabelled on the map, where
    the cell values are written).
    ``curve``: an optional (x, y, label) drawn on top. ``annotate`` writes each cell's
    value. ``vmin`` clips the colour scale from below (cells under it share one colour).
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
                        ncol=len(handles), fontsize="small", facecolor="0.3",
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


# ======================================================================================
# Experiment chapters (book/copy_denoise.ipynb, book/transfer.ipynb,
# book/gradients_trained.ipynb, book/accuracy_vs_cost.ipynb, book/digits.ipynb): learning
# curves, transfer, gradient profiles of trained networks, scaling with fitted slopes,
# accuracy against cost, test accuracy. Kept apart from the functions above; edited
# with those chapters. Only the shared helpers at the top of the file are used here.
# ======================================================================================

__all__ += ["MODEL_LABELS", "model_label", "plot_learning_curves", "plot_transfer",
            "plot_grad_profiles", "plot_scaling", "plot_memory_vs_gradient",
            "plot_accuracy_vs_cost", "plot_test_accuracy", "plot_panels",
            "plot_run_curves", "plot_updates_to_solve"]

# How models are written in legends, and their order: the table's (rsa.registry).
MODEL_LABELS = _RegistryView(registry.labels)
_CHANCE = {"color": "0.35", "ls": ":", "lw": 1.4}


def model_label(name) -> str:
    """The printed name of a model (``"relrnn"`` -> ``"RelRNN"``); other names unchanged."""
    return registry.label(name) or str(name)


def _by_model_order(values) -> list:
    order = list(MODEL_LABELS)
    key = str.lower
    return sorted(values, key=lambda v: (order.index(key(str(v))) if key(str(v)) in order
                                         else len(order), str(v)))


def _panels(n: int, width: float = 4.6, height: float = 3.9, sharey: bool = True,
            ncols: int | None = None):
    """n panels, ``ncols`` per row (default: all in one row); unused ones hidden."""
    ncols = n if ncols is None else min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, sharey=sharey, squeeze=False,
                             figsize=(min(width * ncols + 0.6, 14.0), height * nrows))
    axes = list(axes.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _legend_below(ax, handles=None, title=None, ncol: int = 2):
    """A legend under the axes, clear of its tick labels and axis label, so that it
    covers no curve: anchored at the bottom of the axes and pushed down by a fixed
    distance (``borderaxespad`` is in font sizes), whatever the panel's height.
    ``fig.tight_layout()`` afterwards makes room for it."""
    if handles is None:
        handles, _ = ax.get_legend_handles_labels()
    if not handles:
        return None
    return ax.legend(handles=handles, title=title, fontsize="small", loc="upper center",
                     bbox_to_anchor=(0.5, 0.0), borderaxespad=LEGEND_BELOW_PAD,
                     ncol=min(ncol, len(handles)), frameon=False)


# distance from the bottom of the axes to a legend below it, in legend font sizes: room
# for the tick labels and the axis label
LEGEND_BELOW_PAD = 4.0


def _legend_outside(fig, ax, title=None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, title=title, fontsize="small", loc="center left",
                  bbox_to_anchor=(1.02, 0.5))


def _finish_panel(ax, v, chance, chance_label: str, xlabel: str, col_title: str,
                  logx: bool = False, logy: bool = False) -> None:
    """The common end of a learning-curve panel for the value ``v`` of its column: the
    dotted no-memory level (one number, or {value: level}), log axes, ticks, labels."""
    level = chance.get(v) if isinstance(chance, Mapping) else chance
    if level is not None:
        ax.axhline(level, label=chance_label, **_CHANCE)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_title(col_title.format(v))


def plot_learning_curves(table, y: str = "val_accuracy", x: str = "step", col: str = "T",
                         ylabel: str = "validation accuracy", xlabel: str = "updates",
                         col_title: str = "$T$ = {}", logx: bool = False,
                         logy: bool = False, chance=None, chance_label: str = "chance",
                         clip_top: float | None = None, col_order=None):
    """One panel per value of ``col`` (e.g. the delay T), one line per model.

    ``table``: a long DataFrame with columns ``model``, ``col``, ``x`` and ``y`` (one row
    per evaluation; rows with the same model, ``col`` and ``x`` are averaged, e.g.
    seeds). ``chance``: a dotted horizontal line at that level, or {``col`` value:
    level} for a level per panel, labelled ``chance_label``. ``clip_top``: values above
    it (a diverging run) are drawn at it as upward triangles, so they do not squash the
    other curves. ``col_order``: the panels' order (default: sorted).
    """
    df = pd.DataFrame(table)
    _require(df, ["model", col, x, y])
    values = list(col_order) if col_order is not None else sorted(df[col].unique())
    fig, axes = _panels(len(values))
    for ax, v in zip(axes, values, strict=True):
        g = df[df[col] == v]
        for m in _by_model_order(g["model"].unique()):
            h = g[g["model"] == m].groupby(x)[y].mean()
            shown = h.clip(upper=clip_top) if clip_top is not None else h
            ax.plot(shown.index, shown.values, marker="o", ms=3.5, label=model_label(m),
                    color=model_color(m))
            above = h[h > shown]
            if len(above):
                ax.plot(above.index, shown[above.index], ls="", marker="^", ms=9,
                        color=model_color(m), mec="black", zorder=4)
        _finish_panel(ax, v, chance, chance_label, xlabel, col_title, logx=logx, logy=logy)
    axes[0].set_ylabel(ylabel)
    if clip_top is not None and (df[y] > clip_top).any():
        axes[-1].plot([], [], ls="", marker="^", ms=9, color="0.6", mec="black",
                      label=f"above {clip_top:g}")
    _legend_outside(fig, axes[-1], "model")
    return fig


def plot_transfer(table, x: str = "T", y: str = "accuracy", T_train: int | None = None,
                  chance: float | None = None, ylabel: str = "accuracy on the answer steps",
                  xlabel: str = "delay $T$ at test (steps, log scale)", ax=None):
    """Accuracy of trained models evaluated at longer delays, one line per model, log x.

    ``table``: columns ``model``, ``x``, ``y``. ``T_train``: a dashed vertical line at the
    training delay; ``chance``: a dotted horizontal line.
    """
    df = pd.DataFrame(table)
    _require(df, ["model", x, y])
    fig, ax = _fig_ax(ax)
    for m in _by_model_order(df["model"].unique()):
        h = df[df["model"] == m].groupby(x)[y].mean()
        ax.plot(h.index, h.values, marker="o", label=model_label(m), color=model_color(m))
    if T_train is not None:
        ax.axvline(T_train, color="0.5", ls="--", lw=1.2, label=f"trained at $T$ = {T_train}")
    if chance is not None:
        ax.axhline(chance, label="chance", **_CHANCE)
    ax.set_xscale("log")
    ax.set_xticks(sorted(df[x].unique()))
    _plain_log_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _legend_outside(fig, ax)
    return fig


def plot_grad_profiles(table, hue: str = "model", col: str = "task",
                       style: str | None = "when", x: str = "t", y: str = "grad_norm",
                       col_title: str = "{}", hue_label=None,
                       ylabel: str = r"$\|\partial L / \partial h_t\|$ (log scale)",
                       xlabel: str = "step $t$", sharey: bool = True,
                       col_order=None, ncols: int | None = None):
    """Gradient norm against time: one panel per ``col`` value, one line per ``hue`` value.

    ``style`` (e.g. ``when`` in {start, end}): the value ``"start"`` is drawn thin and
    dashed, any other solid. Lines take the model colour of their ``hue`` value; when
    ``hue`` is not a model (e.g. rho) they are shades of the panel's model colour (its
    ``col`` value), light to dark in sorted order. Values <= 0 are dropped (log axis).
    ``hue_label``: a function formatting a hue value for the legend. ``col_order``: the
    panels' order (default: models first, in their usual order); ``ncols``: panels per
    row. A panel named "<model>, <anything>" takes the colours of <model>. Each panel's
    legend sits below it, where it covers no curve.
    """
    df = pd.DataFrame(table)
    _require(df, [hue, col, x, y] + ([style] if style else []))
    df = df[df[y] > 0]
    values = list(col_order) if col_order is not None else _by_model_order(df[col].unique())
    fig, axes = _panels(len(values), sharey=sharey, ncols=ncols)
    fmt = hue_label or (model_label if hue == "model" else str)
    for ax, v in zip(axes, values, strict=True):
        g = df[df[col] == v]
        hues = (_by_model_order(g[hue].unique()) if hue == "model"
                else sorted(g[hue].unique()))
        base = _color(v) or _CB[0]
        shades = sns.blend_palette([sns.light_palette(base, 5)[1], base,
                                    sns.dark_palette(base, 5)[1]], max(len(hues), 2))
        for k, h in enumerate(hues):
            color = model_color(h) or shades[k]
            gh = g[g[hue] == h]
            groups = (sorted(gh[style].unique(), key=lambda s: s != "start") if style
                      else [None])
            for s in groups:
                line = gh if s is None else gh[gh[style] == s]
                line = line.sort_values(x)
                start = s == "start"
                label = fmt(h) if s is None else f"{fmt(h)}, {s}"
                ax.plot(line[x], line[y], color=color, lw=1.0 if start else 1.8,
                        ls="--" if start else "-", alpha=0.8 if start else 1.0,
                        label=label)
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel(xlabel)
        ax.set_title(col_title.format(model_label(v)))
        _legend_below(ax)  # below the panel: never over the curves
    for ax in axes:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def plot_scaling(table, y: str, ylabel: str, x: str = "T",
                 xlabel: str = "delay $T$ (steps; log scale)", fits: Mapping | None = None,
                 ax=None, title: str | None = None):
    """A cost against T on log-log axes, one line per model, with fitted power laws.

    ``table``: columns ``model``, ``x``, ``y`` (several rows per point: the median is
    drawn). ``fits``: {model: (slope, intercept, x_min, x_max)} of ``log10 y = slope
    log10 x + intercept``, drawn dashed over [x_min, x_max]; the slope goes in the legend.
    """
    df = pd.DataFrame(table)
    _require(df, ["model", x, y])
    df = df[df[y].notna() & (df[y] > 0)]
    fig, ax = _fig_ax(ax)
    for m in _by_model_order(df["model"].unique()):
        h = df[df["model"] == m].groupby(x)[y].median()
        label = model_label(m)
        if fits and m in fits:
            slope, icpt, lo, hi = fits[m]
            label += f" (slope {slope:.2f})"
            xs = np.geomspace(lo, hi, 20)
            ax.plot(xs, 10 ** (slope * np.log10(xs) + icpt), color=_color(m),
                    ls="--", lw=1.0)
        ax.plot(h.index, h.values, label=label, color=_color(m), **_variant_style(m))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sorted(df[x].unique()))
    _plain_log_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _legend_outside(fig, ax, "model (fitted slope)" if fits else "model")
    if title:
        ax.set_title(title)
    return fig


def plot_memory_vs_gradient(table, x: str = "log_grad", y: str = "memory_mib",
                            label: str = "label", color: str = "model",
                            xlabel: str = r"mean over $t$ of $\log_{10} \|\partial L"
                                          r" / \partial h_t\|$",
                            ylabel: str = "memory (MiB, log scale)", ax=None,
                            title: str | None = None):
    """Memory against gradient propagation, one annotated point per row (the authors'
    figure type: memory against the average log gradient norm).

    ``table``: columns ``x``, ``y``, ``label`` (the annotation) and ``color`` (a model
    name, for the colour). Rows of the same colour are joined by a thin line in the
    order given (e.g. increasing rho).
    """
    df = pd.DataFrame(table)
    _require(df, [x, y, label, color])
    fig, ax = _fig_ax(ax)
    for m in _by_model_order(df[color].unique()):
        g = df[df[color] == m]
        c = _color(m)
        if len(g) > 1:
            ax.plot(g[x], g[y], color=c, lw=0.8, alpha=0.6)
        ax.scatter(g[x], g[y], color=c, s=55, edgecolor="black", zorder=3,
                   label=model_label(m), marker=_variant_style(m)["marker"])
        for _, r in g.iterrows():
            ax.annotate(str(r[label]), (r[x], r[y]), xytext=(5, 4),
                        textcoords="offset points", fontsize="small")
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _legend_outside(fig, ax, "model")
    if title:
        ax.set_title(title)
    return fig


def plot_accuracy_vs_cost(table, x: str = "time_ms", y: str = "accuracy",
                          col: str = "task", marker: str = "T",
                          xlabel: str = "time per update (ms, log scale)",
                          ylabel: str = "final validation accuracy",
                          chance: float | None = None):
    """Accuracy reached against the cost of an update: one panel per ``col`` value, one
    point per row, coloured by model, with a marker shape per ``marker`` value."""
    df = pd.DataFrame(table)
    _require(df, ["model", x, y, col, marker])
    values = sorted(df[col].unique())
    fig, axes = _panels(len(values))
    shapes = dict(zip(sorted(df[marker].unique()), "osD^v", strict=False))
    for ax, v in zip(axes, values, strict=True):
        g = df[df[col] == v]
        for m in _by_model_order(g["model"].unique()):
            for mk, h in g[g["model"] == m].groupby(marker):
                ax.scatter(h[x], h[y], color=model_color(m), marker=shapes.get(mk, "o"),
                           s=55, edgecolor="black", zorder=3)
        if chance is not None:
            ax.axhline(chance, **_CHANCE)
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        lo, hi = ax.get_xlim()
        if hi / lo < 10 ** 1.5:  # few decades: label the 2s and 5s as well
            from matplotlib.ticker import LogLocator

            ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda u, _: f"{u:g}"))
        ax.set_xlabel(xlabel)
        ax.set_title(str(v))
    axes[0].set_ylabel(ylabel)
    handles = [plt.Line2D([], [], ls="", marker="o", color=model_color(m), mec="black",
                          label=model_label(m))
               for m in _by_model_order(df["model"].unique())]
    # the shapes' key is hollow: a filled grey circle is the RNN (its colour is grey)
    handles += [plt.Line2D([], [], ls="", marker=s, mfc="white", mec="black",
                           label=f"{marker} = {k}") for k, s in shapes.items()]
    if chance is not None:
        handles.append(plt.Line2D([], [], label="chance", **_CHANCE))
    axes[-1].legend(handles=handles, fontsize="small", loc="center left",
                    bbox_to_anchor=(1.02, 0.5))
    return fig


def plot_test_accuracy(table, x: str = "task", y: str = "test_accuracy",
                       ylabel: str = "test accuracy", chance: float | None = None,
                       ax=None):
    """Grouped bars: one group per ``x`` value (e.g. digits, permuted digits), one bar per
    model, each labelled with its value."""
    df = pd.DataFrame(table)
    _require(df, ["model", x, y])
    fig, ax = _fig_ax(ax)
    groups = list(dict.fromkeys(df[x]))
    models = _by_model_order(df["model"].unique())
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        g = df[df["model"] == m].set_index(x).reindex(groups)
        pos = np.arange(len(groups)) - 0.4 + width * (k + 0.5)
        bars = ax.bar(pos, g[y].to_numpy(), width, color=model_color(m),
                      label=model_label(m), edgecolor="black", lw=0.5)
        ax.bar_label(bars, fmt="%.2f", fontsize="small", padding=2)
    if chance is not None:
        ax.axhline(chance, label="chance", **_CHANCE)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    _legend_outside(fig, ax, "model")
    return fig


def plot_panels(tables: Mapping, x: str, y: str, ylabels, xlabel: str,
                titles=None, marker: str = "o"):
    """Side-by-side panels with their own y axes, one line per model in each: e.g. the
    authors' memory numbers next to ours. ``tables``: {panel title: DataFrame with
    columns ``model``, ``x``, ``y``}; ``ylabels``: one label per panel."""
    fig, axes = _panels(len(tables), sharey=False)
    for ax, (name, t), yl in zip(axes, tables.items(), ylabels, strict=True):
        df = pd.DataFrame(t)
        _require(df, ["model", x, y])
        for m in _by_model_order(df["model"].unique()):
            h = df[df["model"] == m].sort_values(x)
            style = _variant_style(m) if _split_variant(m)[1] else {"marker": marker}
            ax.plot(h[x], h[y], label=model_label(m), color=_color(m), **style)
        ax.set_xticks(sorted(df[x].unique()))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(yl)
        ax.set_title(name)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_run_curves(table, y: str = "val_accuracy", x: str = "step", col: str = "T",
                    unit: str = "seed", ylabel: str = "validation accuracy",
                    xlabel: str = "updates", col_title: str = "$T$ = {}",
                    chance=None, chance_label: str = "no memory", solved=None,
                    solved_label: str = "solved", col_order=None, logy: bool = False):
    """Learning curves of runs of different lengths: one panel per ``col`` value, one
    thin line per run (a ``unit``, e.g. the seed) coloured by model, each ending where
    its run stopped. ``solved``: a level (e.g. 0.99) drawn as a dashed line. A column
    ``solved_step`` in ``table`` (per run, NaN when it was not solved) puts a star at
    the evaluation where each run was solved. ``chance``: a dotted level, or {``col``
    value: level}."""
    df = pd.DataFrame(table)
    _require(df, ["model", col, x, y, unit])
    values = list(col_order) if col_order is not None else sorted(df[col].unique())
    if not values:
        return _empty_figure(xlabel, ylabel)
    fig, axes = _panels(len(values))
    for ax, v in zip(axes, values, strict=True):
        g = df[df[col] == v]
        for m in _by_model_order(g["model"].unique()):
            for k, (_, h) in enumerate(g[g["model"] == m].groupby(unit)):
                h = h.sort_values(x)
                ax.plot(h[x], h[y], lw=1.4, alpha=0.85, color=model_color(m),
                        label=model_label(m) if k == 0 else None)
                if "solved_step" in h and h["solved_step"].notna().any():
                    at = h[h[x] == h["solved_step"].iloc[0]]
                    ax.plot(at[x], at[y], ls="", marker="*", ms=11, color=model_color(m),
                            mec="black", zorder=4)
        _finish_panel(ax, v, chance, chance_label, xlabel, col_title, logy=logy)
        if solved is not None:
            ax.axhline(solved, color="0.3", ls="--", lw=1.0, label=solved_label)
    axes[0].set_ylabel(ylabel)
    if "solved_step" in df and df["solved_step"].notna().any():
        axes[-1].plot([], [], ls="", marker="*", ms=11, color="0.6", mec="black",
                      label="solved here")
    _legend_outside(fig, axes[-1], "model")
    return fig


def plot_updates_to_solve(table, x: str = "T", y: str = "solved_step", col: str = "task",
                          ylabel: str = "updates to solve (log scale)",
                          xlabel: str = "delay $T$", budget_y: str = "steps_done"):
    """Updates each run needed to be solved, against the delay: one panel per ``col``,
    one point per run coloured by model (models side by side at each ``x``), a line
    through each model's median over its solved runs; a run that was not solved is an
    open marker at the updates it trained (column ``budget_y``) with an upward arrow."""
    df = pd.DataFrame(table)
    _require(df, ["model", x, y, col, budget_y])
    values = sorted(df[col].unique())
    if not values:
        return _empty_figure(xlabel, ylabel)
    xs = sorted(df[x].unique())
    models = _by_model_order(df["model"].unique())
    fig, axes = _panels(len(values))
    for ax, v in zip(axes, values, strict=True):
        g = df[df[col] == v]
        for k, m in enumerate(models):
            h = g[g["model"] == m]
            off = (k - (len(models) - 1) / 2) * 0.12
            pos = {t: i + off for i, t in enumerate(xs)}
            ok = h[h[y].notna()]
            ax.scatter([pos[t] for t in ok[x]], ok[y], color=model_color(m), s=40,
                       edgecolor="black", zorder=3)
            med = ok.groupby(x)[y].median()
            ax.plot([pos[t] for t in med.index], med.values, color=model_color(m), lw=1.2)
            no = h[h[y].isna()]
            ax.scatter([pos[t] for t in no[x]], no[budget_y], facecolor="white",
                       edgecolor=model_color(m), marker="^", s=55, lw=1.6, zorder=3)
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xticks(range(len(xs)), [str(t) for t in xs])
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xlabel(xlabel)
        ax.set_title(str(v))
    axes[0].set_ylabel(ylabel)
    handles = [plt.Line2D([], [], ls="-", marker="o", color=model_color(m), mec="black",
                          label=model_label(m)) for m in models]
    handles.append(plt.Line2D([], [], ls="", marker="^", mfc="white", mec="0.3",
                              label="not solved (updates trained)"))
    axes[-1].legend(handles=handles, fontsize="small", loc="center left",
                    bbox_to_anchor=(1.02, 0.5))
    return fig


def _empty_figure(xlabel: str, ylabel: str):
    """A figure that says there is nothing to show yet (a plan not run this far)."""
    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.text(0.5, 0.5, "no runs stored yet", ha="center", va="center",
            transform=ax.transAxes, fontsize="large", color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig
