"""The book's bottom line as one picture (the landing page; drawn in *Copy and denoise*):
for every task, delay and model, whether the stored runs solved it, with the regime they
were trained in, and where the campaign at the authors' budget stands.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch, Rectangle

from rsa.plotting.style import _by_model_order, _require, model_label

OUTCOME_COLORS = {"all": "#1a9850", "some": "#a6d96a", "none": "#d9d9d9", "not run": "white"}
CAMPAIGN_COLOR = "#e66101"


def outcome_grid(table) -> pd.DataFrame:
    """One row per (task, T, model) of the runs ``table`` (:func:`rsa.experiments.runs_table`
    columns ``task``, ``T``, ``model``, ``solved``, ``budget``): ``runs``, ``solved``
    (how many) and ``outcome``: "all", "some" or "none" of its runs solved, and the
    largest ``budget`` its runs had."""
    df = pd.DataFrame(table)
    _require(df, ["task", "T", "model", "solved", "budget"])
    g = df.groupby(["task", "T", "model"], sort=False)
    out = g.agg(runs=("solved", "size"), solved=("solved", "sum"),
                budget=("budget", "max")).reset_index()
    out["outcome"] = np.where(out["solved"] == out["runs"], "all",
                              np.where(out["solved"] > 0, "some", "none"))
    return out


def plot_outcome_grid(table, campaign=None, tasks=("copy", "denoise"),
                      authors_budget: int | None = None):
    """Task and delay (rows) by model (columns): a cell is coloured by how many of its
    stored runs were solved (every run, some, none within their updates, not run) and
    says ``k/n``. ``campaign``: rows with ``task``, ``T``, ``model``, ``best`` (best
    validation accuracy so far) and ``state`` of the runs trained at the authors'
    budget; such a cell gets an outlined box that says "solved k/n" once k of its n
    seeds are solved, else the best accuracy so far ("in flight" before a first
    evaluation), or "not started". ``authors_budget`` is named in the legend."""
    grid = outcome_grid(table)
    grid = grid[grid["task"].isin(tasks)]
    rows = [(t, T) for t in tasks for T in sorted(grid[grid["task"] == t]["T"].unique())]
    models = _by_model_order(grid["model"].unique())
    if not rows or not models:
        raise ValueError("no stored copy or denoise runs to draw")
    camp = pd.DataFrame(campaign) if campaign is not None else pd.DataFrame(
        columns=["task", "T", "model", "best", "state"])
    fig, ax = plt.subplots(figsize=(0.95 * len(models) + 2.2, 0.55 * len(rows) + 2.4))
    budgets = set()
    for i, (task, T) in enumerate(rows):
        for j, m in enumerate(models):
            cell = grid[(grid["task"] == task) & (grid["T"] == T) & (grid["model"] == m)]
            if len(cell):
                c = cell.iloc[0]
                color, text = OUTCOME_COLORS[c["outcome"]], f"{c['solved']}/{c['runs']}"
                if c["outcome"] == "none":
                    budgets.add(int(c["budget"]))
            else:
                color, text = OUTCOME_COLORS["not run"], "—"
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=color, edgecolor="white", lw=2))
            ax.text(j + 0.5, i + 0.38, text, ha="center", va="center", fontsize=12)
            mine = camp[(camp["task"] == task) & (camp["T"] == T) & (camp["model"] == m)]
            if len(mine):
                ax.add_patch(Rectangle((j + 0.05, i + 0.05), 0.9, 0.9, fill=False,
                                       edgecolor=CAMPAIGN_COLOR, lw=2.2))
                states = mine["state"].astype(str)
                k = int(states.str.startswith("solved").sum())
                best = mine[~states.str.startswith("solved")]["best"].max()
                label = (f"solved {k}/{len(mine)}" if k else
                         "not started" if (states == "not started").all() else
                         f"{best:.3f}" if best == best else "in flight")
                ax.text(j + 0.5, i + 0.74, label, ha="center", va="center", fontsize=10,
                        color=CAMPAIGN_COLOR, fontweight="bold")
    ax.set_xlim(0, len(models))
    ax.set_ylim(len(rows), 0)
    ax.set_xticks(np.arange(len(models)) + 0.5, [model_label(m) for m in models],
                  rotation=90, ha="center", va="bottom")  # upright: no two collide
    ax.xaxis.tick_top()
    ax.set_yticks(np.arange(len(rows)) + 0.5, [f"{t}, $T$ = {T}" for t, T in rows])
    ax.tick_params(length=0, labelsize=12)
    for side in ax.spines.values():
        side.set_visible(False)
    within = "" if not budgets else (
        f" within its updates (at most {max(budgets):,}".replace(",", " ") + ")")
    handles = [Patch(facecolor=OUTCOME_COLORS["all"], label="solved in every run"),
               Patch(facecolor=OUTCOME_COLORS["some"], label="solved in some runs"),
               Patch(facecolor=OUTCOME_COLORS["none"], label="not solved" + within),
               Patch(facecolor="white", edgecolor="0.6", label="not run (—)")]
    if len(camp):
        auth = "" if authors_budget is None else \
            f" ({authors_budget:,}".replace(",", " ") + " updates)"
        handles.append(Patch(facecolor="white", edgecolor=CAMPAIGN_COLOR, lw=2,
                             label=f"campaign at the authors' budget{auth}: seeds "
                                   f"solved, else best accuracy so far"))
    # one entry a line: two columns would make the figure wider than the page column
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=1,
              fontsize=11, frameon=False)
    fig.tight_layout()
    return fig
