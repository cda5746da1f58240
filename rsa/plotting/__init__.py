"""The book's figures: one shared style and the ``plot_*`` functions chapters call.

Every chapter calls :func:`set_style` once; each ``plot_*`` function draws one figure
and returns it (the chapter glues it under a name and caption, see
:func:`rsa.book.glue_figure`). Colours are fixed per model, so RelRNN has the same
colour in every chapter: the model's colour and label are those of its entry in
:mod:`rsa.models.registry`.

The package is split by concept: :mod:`rsa.plotting.style` (the style, model colours
and labels, shared helpers), :mod:`rsa.plotting.lines` (a value against T, one line per
model), :mod:`rsa.plotting.mechanism`, :mod:`rsa.plotting.theory` and
:mod:`rsa.plotting.experiments` (the figures of those chapters). Every name is
importable from here.
"""

from rsa.plotting.experiments import (
    _finish_panel,  # noqa: F401
    plot_accuracy_vs_cost,
    plot_grad_profiles,
    plot_learning_curves,
    plot_memory_vs_gradient,
    plot_panels,
    plot_run_curves,
    plot_scaling,
    plot_test_accuracy,
    plot_transfer,
    plot_updates_to_solve,
)
from rsa.plotting.lines import _curves, plot_curves, plot_value_against_T  # noqa: F401
from rsa.plotting.mechanism import (
    R_COLOR,
    S_COLOR,
    _memory_axes,  # noqa: F401
    _step_by_state,  # noqa: F401
    plot_attention,
    plot_cost_vs_T,
    plot_memory_contents,
)
from rsa.plotting.style import (
    _CB,  # noqa: F401
    _CHANCE,  # noqa: F401
    FIGSIZE,
    LEGEND_BELOW_PAD,
    MODEL_LABELS,
    PALETTE,
    _as_numpy,  # noqa: F401
    _by_model_order,  # noqa: F401
    _color,  # noqa: F401
    _fig_ax,  # noqa: F401
    _legend_below,  # noqa: F401
    _legend_outside,  # noqa: F401
    _panels,  # noqa: F401
    _plain_log_ticks,  # noqa: F401
    _RegistryView,  # noqa: F401
    _require,  # noqa: F401
    _split_variant,  # noqa: F401
    _variant_style,  # noqa: F401
    empty_figure,  # noqa: F401
    model_color,
    model_label,
    set_style,
)
from rsa.plotting.theory import (
    _KIND_STYLE,  # noqa: F401
    _log_edges,  # noqa: F401
    plot_cost_floor,
    plot_decay_rates,
    plot_floor_map,
    plot_gradient_curves,
)

__all__ = ["PALETTE", "FIGSIZE", "set_style", "model_color", "MODEL_LABELS", "model_label",
           "LEGEND_BELOW_PAD", "S_COLOR", "R_COLOR",
           # mechanism
           "plot_memory_contents", "plot_attention", "plot_cost_vs_T",
           # a value against T, one line per model; a generic line plot
           "plot_value_against_T", "plot_curves",
           # theory
           "plot_gradient_curves", "plot_decay_rates", "plot_floor_map", "plot_cost_floor",
           # experiments
           "plot_learning_curves", "plot_transfer", "plot_grad_profiles", "plot_scaling",
           "plot_memory_vs_gradient", "plot_accuracy_vs_cost", "plot_test_accuracy",
           "plot_panels", "plot_run_curves", "plot_updates_to_solve"]
