"""The figures can be read: no legend over the curves of a gradient profile, no key
that looks like a model's marker, no text smaller than 9 points."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.text import Text

from rsa import plotting

MIN_POINTS = 9.0


@pytest.fixture(autouse=True)
def style():
    plotting.set_style()
    yield
    plt.close("all")


def grad_table(panels=("rnn", "relrnn", "memrnn"), hues=(3, 8, 18, 25)):
    rows = []
    for p in panels:
        for h in hues:
            for when in ("start", "end"):
                for t in range(1, 121):
                    rows.append({"model": p, "rho": h, "when": when, "t": t,
                                 "grad_norm": np.exp(-t / (10 + h)) + 1e-3 * h})
    return pd.DataFrame(rows)


def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("ncols", [None, 2])
def test_gradient_profile_legends_cover_no_panel(ncols):
    fig = plotting.plot_grad_profiles(grad_table(), hue="rho", col="model", ncols=ncols)
    renderer = drawn(fig)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    legends = [ax.get_legend() for ax in axes if ax.get_legend() is not None]
    assert len(legends) == len(axes)
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in axes:
            assert not overlaps(box, ax.get_window_extent(renderer)), "legend over a panel"
            label = ax.xaxis.label.get_window_extent(renderer)
            assert not overlaps(box, label), "legend over an axis label"
            for tick in ax.get_xticklabels():
                if tick.get_text():
                    assert not overlaps(box, tick.get_window_extent(renderer))


def cost_table():
    rows = []
    for task in ("copy", "denoise"):
        for m in ("rnn", "lstm", "memrnn", "relrnn", "rellstm"):
            for T in (100, 200, 500):
                rows.append({"task": task, "model": m, "T": T,
                             "time_ms": 10.0 * T / 100, "accuracy": 0.5})
    return pd.DataFrame(rows)


def test_the_shape_key_of_accuracy_against_cost_is_no_models_marker():
    fig = plotting.plot_accuracy_vs_cost(cost_table())
    legend = fig.axes[-1].get_legend()
    keys = [h for h in legend.legend_handles if h.get_label().startswith("T = ")]
    assert len(keys) == 3
    colours = {to_rgba(c)[:3] for c in plotting.PALETTE.values()}
    for key in keys:
        face = to_rgba(key.get_markerfacecolor())[:3]
        assert face == (1.0, 1.0, 1.0) and face not in colours


def figures():
    yield plotting.plot_grad_profiles(grad_table(), hue="rho", col="model")
    yield plotting.plot_accuracy_vs_cost(cost_table())
    yield plotting.plot_memory_vs_gradient(pd.DataFrame({
        "log_grad": [-1.0, -2.0, -3.0], "memory_mib": [10.0, 100.0, 1000.0],
        "label": ["T = 400", "T = 600", "T = 800"], "model": ["memrnn"] * 3}))
    yield plotting.plot_test_accuracy(pd.DataFrame({
        "task": ["digits", "digits", "pdigits", "pdigits"],
        "model": ["rnn", "lstm", "rnn", "lstm"], "test_accuracy": [0.9, 0.5, 0.8, 0.4]}))


def test_no_text_smaller_than_nine_points():
    for fig in figures():
        drawn(fig)
        small = sorted({(t.get_text(), round(t.get_fontsize(), 1)) for t in fig.findobj(Text)
                        if t.get_visible() and t.get_text().strip()
                        and t.get_fontsize() < MIN_POINTS})
        assert not small, small[:5]
        plt.close(fig)


def curves_with_an_explosion():
    rows = []
    for T in (100, 200):
        for m, seed in (("rnn", 0), ("relrnn", 0), ("lstm", 1)):
            for step in range(250, 5001, 250):
                loss = 0.2 * np.exp(-step / 2000)
                if m == "rnn" and T == 200 and step >= 1000:
                    loss = 1e28  # exploded
                if m == "lstm" and T == 100:
                    continue  # a model in one panel only
                rows.append({"model": m, "T": T, "seed": seed, "step": step, "val_loss": loss})
    rows.append({"model": "memrnn", "T": 500, "seed": 0, "step": 250, "val_loss": np.nan})
    return pd.DataFrame(rows)


def test_learning_curves_name_every_model_and_keep_exploded_runs_off_the_scale():
    fig = plotting.plot_run_curves(curves_with_an_explosion(), y="val_loss", logy=True,
                                   ylabel="validation loss", chance=0.1,
                                   chance_label="memoryless", clip_top=22.0)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + fig.legends
    labels = {t.get_text() for lg in legends for t in lg.get_texts()}
    for m in ("rnn", "relrnn", "lstm", "memrnn"):  # lstm and memrnn: not in the last panel
        assert plotting.model_label(m) in labels, (m, labels)
    assert any("off the scale" in t for t in labels)
    for ax in fig.axes:
        low, high = ax.get_ylim()
        assert high <= 22.0 + 1e-9 and np.log10(high / low) <= 12, (low, high)
    crosses = [ln for ax in fig.axes for ln in ax.lines if ln.get_marker() == "x"]
    assert len(crosses) == 2  # the exploded RNN and the MemRNN whose loss is not finite
    nan_panel = fig.axes[-1]
    assert any("no finite value" in t.get_text() for t in nan_panel.texts)


def test_one_model_per_panel_gets_one_legend_of_line_styles_below_the_figure():
    fig = plotting.plot_grad_profiles(grad_table(panels=("rnn", "relrnn"), hues=(3,))
                                      .drop(columns="rho").assign(panel=lambda d: d["model"]),
                                      hue="model", col="panel", style="when")
    assert all(ax.get_legend() is None for ax in fig.axes)  # no legend in a panel
    labels = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert labels == ["start (untrained)", "end (trained)"]


# -- the check every chapter figure passes (rsa.book.glue_figure) --------------------------

def test_a_line_without_a_legend_entry_is_a_problem():
    from rsa.plotting.readable import problems

    fig, ax = plt.subplots()
    x = np.arange(5)
    ax.plot(x, x, color="C0", label="a")
    ax.plot(x, x + 1, color="C1", label="b")
    assert any("colour" in p for p in problems(fig))  # two colours, no legend
    ax.legend()
    assert problems(fig) == []
    ax.plot(x, x + 2, color="C0", ls="--")  # a line style the legend does not show
    assert any("line style(s) --" in p for p in problems(fig))
    ax.errorbar(x, x, yerr=0.1, color="C0", capsize=3, ls="none")  # caps are not lines
    assert not any("marker" in p for p in problems(fig))


def test_a_log_axis_blown_up_or_too_wide_is_a_problem():
    from rsa.plotting.readable import MAX_DECADES, problems

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1e-2, 1.0, 1e28])
    ax.set_yscale("log")
    found = problems(fig)
    assert any("reaches" in p for p in found), found
    ax.set_ylim(10 ** -(MAX_DECADES + 1), 1.0)
    assert any("decades" in p for p in problems(fig))
    ax.set_ylim(1e-3, 10.0)
    assert problems(fig) == []


def test_glue_figure_refuses_an_unreadable_figure(monkeypatch):
    from rsa.book import glue_figure

    monkeypatch.delenv("RSA_FIGURE_REPORT", raising=False)
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1e-2, 1.0, 1e28])
    ax.set_yscale("log")
    with pytest.raises(ValueError, match="figure 'bad' cannot be read: panel 1: the y axis"):
        glue_figure("bad", fig)


def test_text_too_small_once_shrunk_into_the_column_is_a_problem():
    from rsa.plotting.readable import COLUMN_PX, problems

    fig, axes = plt.subplots(1, 3, figsize=(16.0, 4.0))  # 1600 px: shrunk to 0.4
    for ax in axes:
        ax.plot([1, 2, 3], [1, 2, 3])
    found = problems(fig)
    assert any("shrunk into the" in p for p in found), found
    fig.set_size_inches(COLUMN_PX / 100 * 0.95, 4.0)  # fits the column: not shrunk
    assert problems(fig) == []
    axes[0].set_title("tiny", fontsize=5)  # too small even unshrunk
    assert any("text of 5 pt" in p for p in problems(fig))


def test_overlapping_tick_labels_or_texts_are_a_problem():
    from rsa.plotting.readable import problems

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([0, 1, 2, 3], [0, 1, 2, 3])
    ax.set_xticks([0, 1, 2, 3], ["a long tick label"] * 4)
    assert any("labels overlap: 'a long tick label'" in p for p in problems(fig))
    ax.set_xticks([0, 1, 2, 3], ["a", "b", "c", "d"])
    assert problems(fig) == []
    ax.annotate("first label", (1, 1))
    ax.annotate("second label", (1.05, 1.02))
    assert any("texts 'first label' and 'second label' overlap" in p for p in problems(fig))


def test_tick_labels_of_neighbouring_panels_touching_are_a_problem():
    from rsa.plotting.readable import problems

    fig, axes = plt.subplots(1, 2, figsize=(6, 3), sharey=True)
    for ax in axes:
        ax.plot([0, 60, 120], [1, 2, 3])
        ax.set_xlim(0, 125)
        ax.set_xticks([0, 25, 50, 75, 100, 125])
    fig.subplots_adjust(wspace=0.0)  # '125' of the left panel runs into '0' of the right
    assert any("labels overlap: '125'" in p for p in problems(fig)), problems(fig)
    fig.subplots_adjust(wspace=0.3)
    assert problems(fig) == []


def test_labels_of_close_points_are_set_apart():
    from rsa.plotting.readable import problems

    rows = [{"model": m, "label": f"rho {r}", "log_grad": -2.5 + 0.02 * k,
             "memory_mib": 6.6 + 0.05 * k}
            for m in ("relrnn", "rellstm") for k, r in enumerate((3, 8, 15, 18, 25))]
    rows.append({"model": "relrnn", "label": "rho 40", "log_grad": np.nan,
                 "memory_mib": 6.6})  # a missing value: no point, no label
    fig = plotting.plot_memory_vs_gradient(pd.DataFrame(rows))
    assert len(fig.axes[0].texts) == 10
    assert problems(fig) == [], problems(fig)


def six_delays():
    rows = []
    for T in (20, 50, 100, 200, 500, 1000):
        for m in ("rnn", "lstm", "memrnn", "relrnn", "rellstm", "sab", "transformer"):
            for step in range(250, 5001, 250):
                rows.append({"model": m, "T": T, "seed": 0, "step": step, "task": "copy",
                             "val_accuracy": min(1.0, step / 5000), "steps_done": 5000,
                             "solved_step": 4000.0 if m == "relrnn" else np.nan})
    return pd.DataFrame(rows)


def test_many_panels_fit_the_column():
    """The book's widest figures: six delays, two tasks with seven models, twelve
    gradient profiles; none is shrunk so far that its text cannot be read."""
    from rsa.plotting.readable import legibility_problems

    runs = six_delays()
    twelve = grad_table(panels=("rnn", "lstm", "memrnn", "relrnn", "rellstm", "sab"),
                        hues=(3,)).drop(columns="rho")
    twelve = pd.concat([twelve.assign(panel=twelve["model"] + ", " + task)
                        for task in ("copy", "denoise")])
    for fig in (plotting.plot_run_curves(runs, chance=0.125, solved=0.99),
                plotting.plot_updates_to_solve(
                    pd.concat([runs, runs.assign(task="denoise")])
                    .drop_duplicates(["model", "T", "task"])),
                plotting.plot_grad_profiles(twelve, hue="model", col="panel",
                                            style="when", ncols=3)):
        assert legibility_problems(fig) == [], legibility_problems(fig)


def test_a_level_line_of_a_floor_map_is_named_in_its_legend():
    from rsa.plotting.readable import problems

    values = np.array([[1e-2, 1e-5, 1e-9], [1e-3, 1e-4, 1e-20]])
    fig = plotting.plot_floor_map(values, [1, 2, 4], [1, 3], contours=(values, [-6]),
                                  contour_label="level",
                                  lines=[(np.log10(values), [-4], "other level", {})])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["level", "other level"]
    assert problems(fig) == [], problems(fig)


def test_a_run_with_one_evaluation_is_a_dot_not_an_empty_panel():
    rows = [{"model": "relrnn", "T": 100, "seed": 0, "step": s, "val_accuracy": 0.5}
            for s in (250, 500, 750)]
    rows.append({"model": "relrnn", "T": 1000, "seed": 0, "step": 250, "val_accuracy": 0.1})
    fig = plotting.plot_run_curves(pd.DataFrame(rows))
    alone = fig.axes[1]
    dots = [ln for ln in alone.lines if len(ln.get_xdata()) == 1 and ln.get_marker() == "o"]
    assert len(dots) == 1
    lo, hi = alone.get_xlim()
    assert lo == 0 and hi > 250  # a span around the dot, not 237 to 263


def test_an_empty_panel_is_a_problem():
    from rsa.plotting.readable import problems

    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    axes[0].plot([0, 1, 2], [0, 1, 4])
    axes[1].plot([250], [0.0])  # one point, no marker: nothing to see
    axes[1].axhline(0.125, ls=":")  # a reference level alone shows no data
    found = problems(fig)
    assert any("panel 2 is empty" in p for p in found), found
    axes[1].lines[0].set_marker("o")
    assert problems(fig) == []
    axes[1].lines[0].remove()
    axes[1].text(0.5, 0.5, "no finite value", transform=axes[1].transAxes)
    assert problems(fig) == []  # a panel that says why it is empty
