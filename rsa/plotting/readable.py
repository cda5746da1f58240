"""Whether a figure can be read: every line style and colour drawn has a legend entry
(or the panel has one line style and one colour, named by its title), no log axis spans
more than :data:`MAX_DECADES` decades, and none reaches above :data:`MAX_LOG_VALUE` (a
run that blew up is marked, not drawn to 1e+28). Every chapter figure passes through
:func:`rsa.book.glue_figure`, which refuses a figure with a problem, so a chapter that
draws an unreadable figure fails to run.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D

# The widest span a log axis may show: the theory's decaying gradients need it (g(t) at
# lambda = 0.9 over 400 steps falls by 66 decades) ...
MAX_DECADES = 70.0
# ... but nothing the book draws on a log axis goes above this unless it blew up (a loss
# of 1e+28 beside losses of 1e-2 squashes every other curve into one band)
MAX_LOG_VALUE = 1e12
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


def problems(fig, max_decades: float = MAX_DECADES,
             max_log_value: float = MAX_LOG_VALUE) -> list[str]:
    """What makes ``fig`` hard to read, one sentence each (empty: nothing found)."""
    out = []
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
