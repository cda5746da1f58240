"""Whether a figure can be read: every line style and colour drawn has a legend entry
(or the panel has one line style and one colour, named by its title), no log axis spans
more than :data:`MAX_DECADES` decades, and none reaches above :data:`MAX_LOG_VALUE` (a
run that blew up is marked, not drawn to 1e+28), no text is smaller than
:data:`MIN_TEXT_PX` pixels once the figure is shrunk into the book's column
(:data:`COLUMN_PX` wide), no two labels (tick labels, axis labels, titles), nor two
texts of a panel, overlap, and no panel is empty. Every chapter figure passes through
:func:`rsa.book.glue_figure`, which refuses a figure with a problem, so a chapter that
draws an unreadable figure fails to run.

Rotated labels are measured by their upright bounding boxes, so close labels turned by
45 degrees count as overlapping: turn them upright (90 degrees) instead.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.text import Text

# The widest span a log axis may show: the theory's decaying gradients need it (g(t) at
# lambda = 0.9 over 400 steps falls by 66 decades) ...
MAX_DECADES = 70.0
# ... but nothing the book draws on a log axis goes above this unless it blew up (a loss
# of 1e+28 beside losses of 1e-2 squashes every other curve into one band)
MAX_LOG_VALUE = 1e12
# The book's text column at a 1280 px window (a wider figure is shrunk to fit it) and the
# smallest text a reader can read there, in screen pixels
COLUMN_PX = 676.0
MIN_TEXT_PX = 9.0
MIN_POINTS = 3  # a data line; reference lines (axhline, axvline) have two
CAPS = ("_", "|")  # the caps of error bars: markers only, part of their bars


def _style(line: Line2D) -> tuple[str, str]:
    """(colour, line style); a line of markers only is styled by its marker."""
    style = str(line.get_linestyle())
    return to_hex(line.get_color()), (f"marker {line.get_marker()}" if style == "None"
                                      else style)


def _data_lines(ax) -> list[Line2D]:
    return [ln for ln in ax.get_lines() if ln.get_visible()
            and len(np.atleast_1d(ln.get_xdata())) >= MIN_POINTS
            and not (str(ln.get_linestyle()) == "None"
                     and ln.get_marker() in (*CAPS, None, "None", "", " "))]


def _legend_handles(fig) -> list:
    legends = [ax.get_legend() for ax in fig.axes] + list(fig.legends)
    handles = []
    for leg in legends:
        if leg is not None:
            handles += list(leg.legend_handles)
    return handles


def _handle_style(h) -> tuple[set[str], set[str]]:
    """The colours and line styles a legend handle shows."""
    colors, styles = set(), set()
    if isinstance(h, Line2D):
        colors.add(to_hex(h.get_color()))
        styles.add(_style(h)[1])
    else:  # patches, collections: their face and edge colours
        for get in ("get_facecolor", "get_edgecolor", "get_color"):
            if hasattr(h, get):
                c = np.atleast_2d(getattr(h, get)())
                colors |= {to_hex(tuple(row)) for row in c if len(row) in (3, 4)}
    return colors, styles


def _dpi(fig) -> float:
    """The resolution the figure is saved (and shown in the book) at."""
    import matplotlib as mpl

    dpi = mpl.rcParams["savefig.dpi"]
    return float(fig.dpi if dpi == "figure" else dpi)


def _texts(fig) -> list[Text]:
    """Every piece of text a reader sees: figure texts and legends, and the titles, axis
    labels, tick labels, texts and legends of the visible panels."""
    out = list(fig.texts)
    legends = list(fig.legends)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        out += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        out += list(ax.texts)
        for axis in (ax.xaxis, ax.yaxis):
            out += _tick_labels(ax, axis, minor=False) + _tick_labels(ax, axis, minor=True)
        legends.append(ax.get_legend())
    for leg in legends:
        if leg is not None and leg.get_visible():
            out += list(leg.get_texts()) + [leg.get_title()]
    return [t for t in out if t.get_visible() and t.get_text().strip()]


def _tick_labels(ax, axis, minor: bool) -> list[Text]:
    """The labels of the ticks inside the axis' view (matplotlib keeps others unshown)."""
    lo, hi = sorted(axis.get_view_interval())
    span = hi - lo
    ticks = axis.get_minor_ticks() if minor else axis.get_major_ticks()
    locs = axis.get_minorticklocs() if minor else axis.get_majorticklocs()
    out = []
    for tick, loc in zip(ticks, locs, strict=False):  # (matplotlib may keep spare ticks)
        if lo - 1e-9 * span <= loc <= hi + 1e-9 * span and tick.get_visible():
            for label in (tick.label1, tick.label2):
                if label.get_visible() and label.get_text().strip():
                    out.append(label)
    return out


def _overlap(a, b) -> bool:
    """Whether two boxes (display coordinates) overlap by more than a pixel each way (a
    box that is not finite, a text at a missing value, is nowhere)."""
    if not (np.isfinite(a.extents).all() and np.isfinite(b.extents).all()):
        return False
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > 1.0
            and min(a.y1, b.y1) - max(a.y0, b.y0) > 1.0)


def legibility_problems(fig, column_px: float = COLUMN_PX,
                        min_text_px: float = MIN_TEXT_PX) -> list[str]:
    """Text too small once ``fig`` is shrunk into the book's column; tick labels, axis
    labels and titles (of any panels) that overlap one another; texts of one panel
    (annotations) that overlap one another (the figure is drawn to measure them)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    dpi = _dpi(fig)
    width_px = fig.get_tightbbox(renderer).width * dpi  # as saved (bbox "tight")
    scale = min(1.0, column_px / width_px)
    out = []
    small = sorted({t.get_fontsize() for t in _texts(fig)
                    if t.get_fontsize() * dpi / 72 * scale < min_text_px})
    if small:
        smallest = small[0] * dpi / 72 * scale
        out.append(f"text of {small[0]:g} pt is {smallest:.1f} px once the figure "
                   f"({width_px:.0f} px wide) is shrunk into the {column_px:g} px column "
                   f"(at least {min_text_px:g} px: a narrower figure, or larger text)")
    labels = []  # (panel, text, box) of every tick label, axis label and title
    for k, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        where = f"panel {k + 1}" + (f" ({ax.get_title()!r})" if ax.get_title() else "")
        for axis in (ax.xaxis, ax.yaxis):
            labels += [(where, t.get_text(), t.get_window_extent(renderer))
                       for t in (_tick_labels(ax, axis, False) + _tick_labels(ax, axis, True)
                                 + [axis.label])
                       if t.get_visible() and t.get_text().strip()]
        labels += [(where, t.get_text(), t.get_window_extent(renderer))
                   for t in (ax.title, ax._left_title, ax._right_title)
                   if t.get_visible() and t.get_text().strip()]
        notes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in ax.texts
                 if t.get_visible() and t.get_text().strip()]
        clash = next(((a, b) for i, (a, ba) in enumerate(notes)
                      for b, bb in notes[i + 1:] if _overlap(ba, bb)), None)
        if clash:
            out.append(f"{where}: texts {clash[0]!r} and {clash[1]!r} overlap")
    clash = next(((a, b) for i, a in enumerate(labels) for b in labels[i + 1:]
                  if _overlap(a[2], b[2])), None)
    if clash:
        (wa, ta, _), (wb, tb, _) = clash
        out.append(f"labels overlap: {ta!r} of {wa} and {tb!r} of {wb}")
    return out


def _shows_data(ax) -> bool:
    """Whether a panel shows anything beyond reference lines: a line through two finite
    points or a marker in data coordinates, a collection (scatter, map, contour), an
    image, a patch (bars, cells) or a text (a panel that says why it is empty)."""
    for ln in ax.get_lines():
        if not ln.get_visible() or ln.get_transform() != ax.transData:
            continue  # axhline, axvline: a level, not data
        xy = np.asarray(ln.get_xydata(), dtype=float).reshape(-1, 2)
        n = int(np.isfinite(xy).all(axis=1).sum())
        marked = ln.get_marker() not in (None, "None", "", " ")
        if n >= 2 and str(ln.get_linestyle()) != "None" or n >= 1 and marked:
            return True
    return any(a.get_visible() for a in (*ax.collections, *ax.images, *ax.patches)) or any(
        t.get_visible() and t.get_text().strip() for t in ax.texts)


def problems(fig, max_decades: float = MAX_DECADES,
             max_log_value: float = MAX_LOG_VALUE) -> list[str]:
    """What makes ``fig`` hard to read, one sentence each (empty: nothing found)."""
    out = legibility_problems(fig)
    for k, ax in enumerate(fig.axes):
        if ax.get_visible() and ax.axison and not _shows_data(ax):  # (axis off: a legend)
            title = f" ({ax.get_title()!r})" if ax.get_title() else ""
            out.append(f"panel {k + 1}{title} is empty: draw what it stands for, or say "
                       f"why there is nothing")
    colors, styles = set(), set()
    for h in _legend_handles(fig):
        c, s = _handle_style(h)
        colors |= c
        styles |= s
    for k, ax in enumerate(fig.axes):
        where = f"panel {k + 1}" + (f" ({ax.get_title()!r})" if ax.get_title() else "")
        drawn = {_style(ln) for ln in _data_lines(ax)}
        if len({c for c, _ in drawn}) > 1:
            missing = sorted({c for c, _ in drawn} - colors)
            if missing:
                out.append(f"{where}: colour(s) {', '.join(missing)} drawn without a legend "
                           f"entry")
        if len({s for _, s in drawn}) > 1:
            missing = sorted({s for _, s in drawn} - styles)
            if missing:
                out.append(f"{where}: line style(s) {', '.join(missing)} drawn without a "
                           f"legend entry")
        for axis, scale, lim in (("x", ax.get_xscale(), ax.get_xlim()),
                                 ("y", ax.get_yscale(), ax.get_ylim())):
            lo, hi = sorted(abs(v) for v in lim)
            if scale == "log" and lo > 0 and math.log10(hi / lo) > max_decades:
                out.append(f"{where}: the {axis} axis spans {math.log10(hi / lo):.0f} "
                           f"decades (at most {max_decades:g})")
            if scale == "log" and hi > max_log_value:
                out.append(f"{where}: the {axis} axis reaches {hi:.0e} (at most "
                           f"{max_log_value:.0e}: mark runs that blew up, do not draw them)")
    return out
