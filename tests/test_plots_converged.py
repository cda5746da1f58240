"""The plots of the converged experiments: one line per run, a star where a run was
solved, open markers for runs that were not, and a figure that says so when empty."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rsa.plotting import plot_run_curves, plot_updates_to_solve  # noqa: E402


def _history():
    rows = []
    for seed, (n, solved) in enumerate([(4, 3), (6, None)]):
        for k in range(1, n + 1):
            rows.append({"model": "rnn", "T": 100, "seed": seed, "step": 10 * k,
                         "val_accuracy": k / n, "solved_step": np.nan if solved is None
                         else 10 * solved})
    return pd.DataFrame(rows)


def test_run_curves_draw_each_run_to_where_it_stopped_and_star_the_solved_one():
    fig = plot_run_curves(_history(), solved=0.99)
    ax = fig.axes[0]
    curves = [ln for ln in ax.lines if len(ln.get_xdata()) > 1 and ln.get_linestyle() == "-"]
    assert sorted(int(ln.get_xdata()[-1]) for ln in curves) == [40, 60]
    stars = [ln for ln in ax.lines if ln.get_marker() == "*" and len(ln.get_xdata())]
    assert [(float(s.get_xdata()[0]), float(s.get_ydata()[0])) for s in stars] == [(30, 0.75)]


def test_updates_to_solve_marks_unsolved_runs_at_their_updates():
    table = pd.DataFrame([
        {"task": "copy", "T": 100, "model": "rnn", "solved_step": 400.0, "steps_done": 500},
        {"task": "copy", "T": 100, "model": "lstm", "solved_step": np.nan, "steps_done": 5000},
        {"task": "copy", "T": 200, "model": "rnn", "solved_step": 900.0, "steps_done": 1000}])
    fig = plot_updates_to_solve(table)
    ax = fig.axes[0]
    filled = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections
                             if c.get_offsets().size and c.get_facecolor()[0][0] != 1.0])
    assert sorted(filled.tolist()) == [400.0, 900.0]
    open_ = [c for c in ax.collections if c.get_offsets().size
             and tuple(c.get_facecolor()[0][:3]) == (1.0, 1.0, 1.0)]
    assert [c.get_offsets()[0, 1] for c in open_] == [5000.0]


def test_empty_tables_give_a_figure_that_says_so():
    for fig in (plot_run_curves(pd.DataFrame(columns=["model", "T", "step",
                                                      "val_accuracy", "seed"])),
                plot_updates_to_solve(pd.DataFrame(columns=["model", "T", "solved_step",
                                                            "task", "steps_done"]))):
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert texts == ["no runs stored yet"]


def test_updates_to_solve_draws_panels_in_the_order_given_and_rejects_a_missing_one():
    import pytest

    table = pd.DataFrame([
        {"panel": "RelRNN", "rho": 3, "model": "relrnn", "solved_step": 400.0,
         "steps_done": 500},
        {"panel": "RelLSTM", "rho": 3, "model": "rellstm", "solved_step": np.nan,
         "steps_done": 5000}])
    default = plot_updates_to_solve(table, x="rho", col="panel")
    assert [ax.get_title() for ax in default.axes[:2]] == ["RelLSTM", "RelRNN"]
    ordered = plot_updates_to_solve(table, x="rho", col="panel",
                                    col_order=["RelRNN", "RelLSTM", "unused"])
    assert [ax.get_title() for ax in ordered.axes[:2]] == ["RelRNN", "RelLSTM"]
    with pytest.raises(ValueError, match="misses the panels \\['RelLSTM'\\]"):
        plot_updates_to_solve(table, x="rho", col="panel", col_order=["RelRNN"])
