"""The landing page's summary figure (rsa.plotting.summary): the counts it shows are
the runs', every colour drawn has a legend entry, and the campaign's cells are marked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from rsa.plotting.summary import OUTCOME_COLORS, outcome_grid, plot_outcome_grid  # noqa: E402

RUNS = pd.DataFrame([
    dict(task="copy", T=100, model="rnn", solved=True, budget=20000),
    dict(task="copy", T=100, model="rnn", solved=True, budget=20000),
    dict(task="copy", T=100, model="lstm", solved=True, budget=20000),
    dict(task="copy", T=100, model="lstm", solved=False, budget=20000),
    dict(task="copy", T=200, model="rnn", solved=False, budget=5000),
    dict(task="denoise", T=100, model="rellstm", solved=False, budget=20000),
])


def test_outcome_grid_counts_the_runs():
    g = outcome_grid(RUNS).set_index(["task", "T", "model"])
    assert g.loc[("copy", 100, "rnn"), "outcome"] == "all"
    assert tuple(g.loc[("copy", 100, "lstm"), ["solved", "runs"]]) == (1, 2)
    assert g.loc[("copy", 100, "lstm"), "outcome"] == "some"
    assert g.loc[("copy", 200, "rnn"), "outcome"] == "none"


def test_every_colour_drawn_has_a_legend_entry_and_the_campaign_is_marked():
    camp = pd.DataFrame([dict(task="denoise", T=100, model="rellstm", best=0.63,
                              state="in flight"),
                         dict(task="copy", T=100, model="lstm", best=0.99,
                              state="solved at 5 000"),
                         dict(task="copy", T=100, model="lstm", best=0.99,
                              state="solved at 7 250"),
                         dict(task="copy", T=200, model="rnn", best=float("nan"),
                              state="not started"),
                         # one seed of three solved: not its 1.000 as the cell's accuracy
                         *(dict(task="copy", T=200, model="lstm", best=b, state=st)
                           for b, st in ((1.0, "solved at 9 000"), (0.41, "in flight"),
                                         (float("nan"), "in flight"))),
                         dict(task="denoise", T=100, model="lstm", best=float("nan"),
                              state="in flight")])  # before its first evaluation
    fig = plot_outcome_grid(RUNS, camp, authors_budget=200000)
    ax = fig.axes[0]
    legend = {h.get_label(): h for h in ax.get_legend().legend_handles}
    drawn = {tuple(round(c, 3) for c in p.get_facecolor()) for p in ax.patches
             if isinstance(p, Rectangle) and p.get_fill()}
    import matplotlib.colors as mc
    legend_colors = {tuple(round(c, 3) for c in mc.to_rgba(h.get_facecolor()))
                     for h in legend.values()}
    assert drawn <= legend_colors, drawn - legend_colors
    assert any("campaign" in k and "200 000" in k for k in legend)
    texts = [t.get_text() for t in ax.texts]
    assert "0.630" in texts and "solved 2/2" in texts and "not started" in texts
    assert "solved 1/3" in texts and "1.000" not in texts and "in flight" in texts
    assert "2/2" in texts and "1/2" in texts and "0/1" in texts
    assert "—" in texts  # denoise rnn: not run
    assert any("within its updates (at most 20 000)" in k for k in legend)
    assert set(OUTCOME_COLORS) == {"all", "some", "none", "not run"}


def test_no_copy_or_denoise_run_is_an_error():
    with pytest.raises(ValueError, match="no stored copy or denoise runs"):
        plot_outcome_grid(RUNS.assign(task="digits"))
