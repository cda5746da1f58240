"""The book's one figure style: :func:`set_style`, the colour and label of each model
(read from the table of :mod:`rsa.models.registry`, so a model has the same colour and name in
every chapter), and the small helpers every figure module shares (axes, panels,
legends, log ticks, table checks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import to_rgb
from matplotlib.ticker import FuncFormatter, NullFormatter

from rsa.models import registry


class _RegistryView(Mapping):
    """A read-only dict that follows the table of :mod:`rsa.models.registry`."""

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


# One colour per model, keyed by lower-case model name, and how models are written in
# legends (and their order): views of the table of rsa.models.registry, not copies of it. The
# colours are RGB tuples (the book's are seaborn's "colorblind" palette).
PALETTE = _RegistryView(lambda: {m: to_rgb(c) for m, c in registry.palette().items()})
MODEL_LABELS = _RegistryView(registry.labels)
_CB = sns.color_palette("colorblind")
FIGSIZE = (7.0, 4.0)
# a dotted reference level (chance, no memory)
_CHANCE = {"color": "0.35", "ls": ":", "lw": 1.4}
# distance from the bottom of the axes to a legend below it, in legend font sizes: room
# for the tick labels and the axis label
LEGEND_BELOW_PAD = 4.0


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

def model_label(name) -> str:
    """The printed name of a model (``"relrnn"`` -> ``"RelRNN"``); other names unchanged."""
    return registry.label(name) or str(name)

def _by_model_order(values) -> list:
    order = list(MODEL_LABELS)
    key = str.lower
    return sorted(values, key=lambda v: (order.index(key(str(v))) if key(str(v)) in order
                                         else len(order), str(v)))

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

def _legend_outside(fig, ax, title=None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, title=title, fontsize="small", loc="center left",
                  bbox_to_anchor=(1.02, 0.5))

# Where a point's label may go, in points from the point (first choice first): right of
# it or left of it, just above or below, then ever further up and down (with a leader line)
_NOTE_OFFSETS = tuple((dx, dy, "left" if dx > 0 else "right", "bottom" if dy > 0 else "top")
                      for step in (4, 14, 24, 34, 44, 54) for dy in (step, -step)
                      for dx in (5, -5))


def _annotate_apart(ax, notes) -> list:
    """Label points (``notes``: (text, (x, y)[, colour]), in data coordinates) so that no
    label overlaps another: each goes to the first place of :data:`_NOTE_OFFSETS` clear
    of those already placed (the first place when none is; the readability check then
    says so), a label moved away from its point with a thin leader line. Call it once
    the axes' limits and scales are set."""
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()

    def place(text, xy, color, dx, dy, ha, va):
        far = abs(dy) > 14
        return ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points",
                           fontsize="small", ha=ha, va=va, color=color,
                           arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6,
                                       "shrinkA": 0, "shrinkB": 3} if far else None)

    placed, boxes = [], []
    for text, xy, *color in notes:
        if not np.isfinite(np.asarray(xy, dtype=float)).all():
            continue  # a point not drawn (a missing value) gets no label
        color = color[0] if color else None
        for offset in _NOTE_OFFSETS:
            note = place(text, xy, color, *offset)
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer)  # the text, not its leader
            if not any(box.overlaps(b) for b in boxes):
                break
            note.remove()
        else:
            note = place(text, xy, color, *_NOTE_OFFSETS[0])
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer)
        placed.append(note)
        boxes.append(box)
    return placed


def empty_figure(xlabel: str, ylabel: str):
    """A figure that says there is nothing to show yet (a plan not run this far)."""
    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.text(0.5, 0.5, "no runs stored yet", ha="center", va="center",
            transform=ax.transAxes, fontsize="large", color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig
