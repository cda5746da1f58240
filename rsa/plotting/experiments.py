"""Figures of the experiment chapters (*Copy and denoise*, *Transfer*, *Gradients of
trained networks*, *Tradeoffs: accuracy, gradient propagation and cost*, *Pixel
classification*): learning curves, transfer, gradient profiles of trained networks,
scaling with fitted slopes, accuracy against cost, test accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FuncFormatter

from rsa.plotting.lines import plot_value_against_T
from rsa.plotting.style import (
    _CB,
    _CHANCE,
    MODEL_LABELS,
    _annotate_apart,
    _by_model_order,
    _color,
    _fig_ax,
    _legend_below,
    _legend_outside,
    _panels,
    _plain_log_ticks,
    _require,
    _split_variant,
    _variant_style,
    empty_figure,
    model_color,
    model_label,
)

# panels a row of learning curves (six delays: two rows of three)
RUN_COLUMNS = 3


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
    plot_value_against_T(df, y, x, ax=ax, agg="mean", style=lambda m: {"marker": "o"})
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
    per_row = len(values) if ncols is None else min(ncols, len(values))
    fig, axes = _panels(len(values), sharey=sharey, ncols=ncols,
                        width=4.6 if per_row < 3 else 3.2,
                        height=3.9 if per_row < 3 else 3.2)
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
        ax.set_xlim(df[x].min(), df[x].max())  # no tick past the data to crowd a neighbour
        ax.set_xlabel(xlabel)
        ax.set_title(col_title.format(model_label(v)))
    # one model per panel, named by its title: one legend for the line styles, below the
    # figure; otherwise each panel's legend below it (never over the curves)
    one_each = hue == "model" and style and all(
        df[df[col] == v][hue].nunique() <= 1 for v in values)
    if one_each:
        styles = sorted(df[style].unique(), key=lambda s: s != "start")
        handles = [plt.Line2D([], [], color="0.35", lw=1.0 if s == "start" else 1.8,
                              ls="--" if s == "start" else "-",
                              label=f"{s} (untrained)" if s == "start" else
                              f"{s} (trained)" if s == "end" else str(s))
                   for s in styles]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles),
                   fontsize="small", frameon=False, title="colour: the panel's model")
    else:
        for ax in axes:
            _legend_below(ax)
    for ax in axes:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(ylabel)
    # the shared legend takes the bottom 0.65 inch, whatever the figure's height
    fig.tight_layout(rect=(0, min(0.3, 0.65 / fig.get_figheight()) if one_each else 0, 1, 1))
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
    plot_value_against_T(df, y, x, ax=ax, fits=fits)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sorted(df[x].unique()))
    _plain_log_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if fits:  # the dashed lines' own entry
        ax.plot([], [], color="0.4", ls="--", label="fitted power law")
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
    # each label in a dark shade of its point's colour: whose "rho 3" it is
    notes = [(str(r[label]), (r[x], r[y]), tuple(0.55 * np.asarray(_color(r[color]) or
                                                                   (0.3, 0.3, 0.3))))
             for _, r in df.iterrows()]
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _legend_outside(fig, ax, "model")
    if title:
        ax.set_title(title)
    _annotate_apart(ax, notes)
    return fig


def plot_accuracy_vs_cost(table, x: str = "time_ms", y: str = "accuracy",
                          col: str = "task", marker: str = "T",
                          xlabel: str = "time per update (ms, log scale)",
                          ylabel: str = "final validation accuracy",
                          chance: float | None = None, col_order=None):
    """Accuracy reached against the cost of an update: one panel per ``col`` value (in
    ``col_order``, default sorted), one point per row, coloured by model, with a marker
    shape per ``marker`` value (keyed in the legend when there are several)."""
    df = pd.DataFrame(table)
    _require(df, ["model", x, y, col, marker])
    present = set(df[col].unique())  # no empty panel for a value without rows
    values = (sorted(present) if col_order is None
              else [v for v in col_order if v in present])
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
    if len(shapes) > 1:
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
    columns ``model``, ``x``, ``y``}; ``ylabels``: one label per panel. One legend,
    below the panels, names the models of all of them."""
    fig, axes = _panels(len(tables), sharey=False)
    for ax, (name, t), yl in zip(axes, tables.items(), ylabels, strict=True):
        df = pd.DataFrame(t)
        _require(df, ["model", x, y])
        plot_value_against_T(df, y, x, ax=ax, style=lambda m: (
            _variant_style(m) if _split_variant(m)[1] else {"marker": marker}))
        ax.set_xticks(sorted(df[x].unique()))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(yl)
        ax.set_title(name)
    # one legend below the panels, where it covers no curve: every model of any panel
    entries = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, h)
    # the models in their usual order, each followed by its variants ("MemRNN (plain
    # autograd)" after "MemRNN")
    order = [model_label(m) for m in MODEL_LABELS]

    def rank(label):
        name = label.split()[0]
        return (order.index(name) if name in order else len(order), label)

    labels = sorted(entries, key=rank)
    fig.tight_layout()
    if entries:
        fig.legend([entries[lb] for lb in labels], labels, fontsize="small",
                   loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False)
    return fig


def plot_run_curves(table, y: str = "val_accuracy", x: str = "step", col: str = "T",
                    unit: str = "seed", ylabel: str = "validation accuracy",
                    xlabel: str = "updates", col_title: str = "$T$ = {}",
                    chance=None, chance_label: str = "no memory", solved=None,
                    solved_label: str = "solved", col_order=None, logy: bool = False,
                    clip_top: float | None = None,
                    clip_label: str = "exploded (off the scale)"):
    """Learning curves of runs of different lengths: one panel per ``col`` value, one
    thin line per run (a ``unit``, e.g. the seed) coloured by model, each ending where
    its run stopped. ``solved``: a level (e.g. 0.99) drawn as a dashed line. A column
    ``solved_step`` in ``table`` (per run, NaN when it was not solved) puts a star at
    the evaluation where each run was solved. ``chance``: a dotted level, or {``col``
    value: level}. ``clip_top``: the top of the y axis; a run whose value passes it (or
    is not finite) is drawn up to there and marked with a cross at the top edge
    (``clip_label``), so one exploded run does not squash the others into one band.
    Every model drawn in any panel has a legend entry; a panel with no finite value
    says so."""
    df = pd.DataFrame(table)
    _require(df, ["model", col, x, y, unit])
    values = list(col_order) if col_order is not None else sorted(df[col].unique())
    if not values:
        return empty_figure(xlabel, ylabel)
    # at most RUN_COLUMNS panels a row, so that the figure fits the book's column
    fig, axes = _panels(len(values), width=3.2, height=3.1, ncols=RUN_COLUMNS)
    drawn_models, clipped = [], False
    for ax, v in zip(axes, values, strict=True):
        g = df[df[col] == v]
        finite_any = False
        for m in _by_model_order(g["model"].unique()):
            for _, h in g[g["model"] == m].groupby(unit):
                h = h.sort_values(x)
                yv = h[y].to_numpy(dtype=float)
                bad = ~np.isfinite(yv) | ((yv > clip_top) if clip_top is not None else False)
                cut = int(np.argmax(bad)) if bad.any() else len(yv)
                xs, ys = h[x].to_numpy()[:cut], yv[:cut]
                if len(xs):
                    finite_any = True
                    # a run with one evaluation is a dot (a line of one point is nothing)
                    ax.plot(xs, ys, lw=1.4, alpha=0.85, color=model_color(m),
                            marker="o" if len(xs) == 1 else None, ms=4)
                    if m not in drawn_models:
                        drawn_models.append(m)
                if bad.any() and clip_top is not None:
                    ax.plot([h[x].to_numpy()[cut]], [clip_top], ls="", marker="x", ms=8,
                            mew=2, color=model_color(m), clip_on=False, zorder=5)
                    clipped = True
                    if m not in drawn_models:
                        drawn_models.append(m)
                if "solved_step" in h and h["solved_step"].notna().any():
                    at = h[h[x] == h["solved_step"].iloc[0]]
                    ax.plot(at[x], at[y], ls="", marker="*", ms=11, color=model_color(m),
                            mec="black", zorder=4)
        _finish_panel(ax, v, chance, chance_label, xlabel, col_title, logy=logy)
        if not finite_any:
            ax.text(0.5, 0.5, "no finite value\n(see the table of runs)",
                    transform=ax.transAxes, ha="center", va="center", fontsize="small",
                    color="0.35")
        if len(g) and (not finite_any or g[x].nunique() == 1):  # no span to show
            ax.set_xlim(0, max(1, float(g[x].max())) * 1.05)
        if solved is not None:
            ax.axhline(solved, color="0.3", ls="--", lw=1.0)
    if clip_top is not None:  # once all panels are drawn (they share the y axis)
        shown = df[y].to_numpy(dtype=float)
        shown = shown[np.isfinite(shown) & (shown <= clip_top) & ((shown > 0) | (not logy))]
        if len(shown):
            low = shown.min()
            axes[0].set_ylim(low * 0.7 if logy else low - 0.05 * (clip_top - low), clip_top)
    for ax in axes:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(ylabel)
        if clipped:  # the crosses sit on the top edge: the title clear above them
            ax.set_title(ax.get_title(), pad=12)
    handles = [plt.Line2D([], [], color=model_color(m), lw=1.8, label=model_label(m))
               for m in drawn_models]
    if chance is not None:
        handles.append(plt.Line2D([], [], **_CHANCE, label=chance_label))
    if solved is not None:
        handles.append(plt.Line2D([], [], color="0.3", ls="--", lw=1.0, label=solved_label))
    if "solved_step" in df and df["solved_step"].notna().any():
        handles.append(plt.Line2D([], [], ls="", marker="*", ms=11, color="0.6",
                                  mec="black", label="solved here"))
    if clipped:
        handles.append(plt.Line2D([], [], ls="", marker="x", ms=8, mew=2, color="0.4",
                                  label=clip_label))
    fig.tight_layout()
    # one legend below the panels (bbox "tight" keeps it when the figure is saved)
    fig.legend(handles=handles, title="model", fontsize="small", loc="upper center",
               bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(handles)), frameon=False)
    return fig


def plot_updates_to_solve(table, x: str = "T", y: str = "solved_step", col: str = "task",
                          ylabel: str = "updates to solve (log scale)",
                          xlabel: str = "delay $T$", budget_y: str = "steps_done",
                          col_order=None):
    """Updates each run needed to be solved, against the delay: one panel per ``col``
    (in ``col_order``, default sorted), one point per run coloured by model (models side
    by side at each ``x``), a line through each model's median over its solved runs; a
    run that was not solved is an open marker at the updates it trained (column
    ``budget_y``) with an upward arrow."""
    df = pd.DataFrame(table)
    _require(df, ["model", x, y, col, budget_y])
    present = set(df[col].unique())
    if col_order is not None and not present <= set(col_order):
        raise ValueError(f"col_order {list(col_order)!r} misses the panels "
                         f"{sorted(present - set(col_order))!r} of column {col!r}")
    values = (sorted(present) if col_order is None
              else [v for v in col_order if v in present])
    if not values:
        return empty_figure(xlabel, ylabel)
    xs = sorted(df[x].unique())
    models = _by_model_order(df["model"].unique())
    fig, axes = _panels(len(values), width=3.7)
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
