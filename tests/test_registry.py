"""The model registry (rsa.models.registry): a new model is its class and one entry; everything
that names models reads the table; options are checked in one place, with the messages
the rest of the package always gave."""

from __future__ import annotations

import contextlib
import io as _io
import json
import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgb
from torch import nn

import rsa
from rsa import plotting
from rsa.__main__ import main
from rsa.experiments import plan_runs
from rsa.experiments.measure import estimate_memory
from rsa.models import ModReLU, describe, heads, reference, registry
from rsa.models.registry import ModelSpec, PerTask
from rsa.train import TrainConfig, load_trained, resolve_config, train

PAPER_MODELS = ("rnn", "lstm", "memrnn", "relrnn", "rellstm")


class Leaky(nn.Module):
    """A toy core, h_t = (h_{t-1} + phi(U x_t + V h_{t-1})) / 2, h_0 = 0: no attention,
    no trace (``record=True`` is refused)."""

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh",
                 init: str = "xavier"):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.nonlinearity, self.init = nonlinearity, init
        self.U = nn.Linear(input_size, hidden_size)
        self.V = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.xavier_normal_(self.V.weight)
        self.phi = ModReLU(hidden_size) if nonlinearity == "modrelu" else nn.Tanh()

    def forward(self, x, record: bool = False, freeze_attention: bool = False):
        if record:
            raise NotImplementedError("the toy model keeps no trace")
        h, states = x.new_zeros(x.shape[1], self.hidden_size), []
        for x_t in x:
            h = (h + self.phi(self.U(x_t) + self.V(h))) / 2
            states.append(h)
        return torch.stack(states)


LEAKY = ModelSpec(
    "leaky", Leaky, "Leaky", "#000000", family="rnn", options=("nonlinearity", "init"),
    choices={"init": ("xavier",)},
    defaults={"lr": PerTask(copy=3e-3, denoise=3e-3, pixel=1e-3),
              "nonlinearity": PerTask(copy="modrelu", denoise="tanh", pixel="tanh")})


@pytest.fixture
def leaky():
    """The toy model registered for one test, and removed after it."""
    registry.register(LEAKY)
    try:
        yield LEAKY
    finally:
        registry.unregister("leaky")


def test_the_table_holds_the_papers_models_in_order():
    assert registry.names() == PAPER_MODELS
    assert rsa.MODELS == PAPER_MODELS and heads.MODELS == PAPER_MODELS
    assert tuple(heads._FUSED) == registry.fused_names() == ("memrnn", "relrnn", "rellstm")
    assert registry.with_option("rho") == ("relrnn", "rellstm")
    assert registry.with_option("nonlinearity") == ("rnn", "memrnn", "relrnn")
    assert [registry.get(m).model_class().__name__ for m in PAPER_MODELS] == \
        ["RNN", "LSTM", "MemRNN", "RelRNN", "RelLSTM"]
    # the views behave like the tuples they replace
    assert rsa.MODELS.index("relrnn") == 3 and len(rsa.MODELS) == 5
    assert list(rsa.MODELS + ("x",)) == [*PAPER_MODELS, "x"]
    assert json.dumps(list(rsa.MODELS)) == json.dumps(list(PAPER_MODELS))
    assert rsa.MODELS != list(PAPER_MODELS)  # like a tuple: not equal to a list


def test_the_table_agrees_with_the_classes():
    """Build-time defaults come from the class signatures; the table's choices are
    options the class takes."""
    assert registry.class_default("relrnn", "nu") == 10
    assert registry.class_default("rellstm", "rho") == 15
    assert registry.class_default("rnn", "nonlinearity") == "tanh"
    assert registry.class_default("lstm", "init") == "xavier"
    for m in PAPER_MODELS:
        spec = registry.get(m)
        built = heads.build_model(m, 2, 3)
        for option in spec.options:
            assert getattr(built, option) == registry.class_default(m, option), (m, option)
        assert spec.fused == hasattr(built, "fused")


def test_a_toy_model_is_its_class_and_one_entry(leaky, tmp_path):
    # listed, after the paper's models
    assert registry.names() == (*PAPER_MODELS, "leaky") and rsa.MODELS[-1] == "leaky"
    assert heads._FUSED == ("memrnn", "relrnn", "rellstm")

    # built, with its options checked by the table
    core = heads.build_model("leaky", 3, 5)
    assert isinstance(core, Leaky) and core.nonlinearity == "tanh"  # the class's default
    assert heads.build_model("leaky", 3, 5, nonlinearity="modrelu").nonlinearity == "modrelu"
    assert heads.build_task_model("leaky", "denoise", 5).core.hidden_size == 5
    for kwargs, message in [
        (dict(nu=2), "nu and rho apply to relrnn and rellstm only; model 'leaky' got nu=2, "
                     "rho=None (leave them None)"),
        (dict(init="orthogonal"), "init for 'leaky' must be 'xavier', got 'orthogonal'"),
        (dict(fused=True), "fused applies to memrnn, relrnn and rellstm only; model "
                           "'leaky' got fused=True (leave it None)"),
        (dict(nonlinearity="relu"), "nonlinearity must be one of ('tanh', 'modrelu'), "
                                    "got 'relu'"),
    ]:
        with pytest.raises(ValueError) as error:
            heads.build_model("leaky", 3, 5, **kwargs)
        assert str(error.value) == message

    # configured: its per-task defaults from its entry
    copy = resolve_config(model="leaky", task="copy")
    assert (copy.lr, copy.nonlinearity, copy.init, copy.nu) == (3e-3, "modrelu", None, None)
    assert resolve_config(model="leaky", task="denoise").nonlinearity == "tanh"
    assert resolve_config(model="leaky", task="digits").lr == 1e-3
    with pytest.raises(ValueError, match="nu and rho apply to relrnn and rellstm only"):
        resolve_config(model="leaky", nu=3)

    # trained for a few updates with rsa.train.train
    result = train(model="leaky", task="copy", T=3, hidden_size=6, batch=4, eval_batch=8,
                   steps=4, eval_every=2, progress=False, out_dir=str(tmp_path / "run"))
    assert isinstance(result.model.core, Leaky)
    assert result.config["model"] == "leaky" and result.config["lr"] == 3e-3
    assert [row["step"] for row in result.history] == [2, 4]
    assert all(math.isfinite(row["val_loss"]) for row in result.history)
    assert (tmp_path / "run" / "model.pt").is_file()

    # the command line offers it, the experiment plan runs it, the memory budget has it
    help_text = _io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "{rnn,lstm,memrnn,relrnn,rellstm,leaky,sab,transformer}" in help_text.getvalue()
    session = plan_runs("session")
    assert {r["task"] for r in session if r["model"] == "leaky"} == \
        {"copy", "denoise", "digits", "pdigits"}
    assert not any(r["model"] == "leaky" and "rho" in r for r in session)
    assert estimate_memory("leaky", 100) == estimate_memory("rnn", 100)

    # drawn with the book's style: its label, its colour, after the paper's models
    assert plotting.model_label("leaky") == plotting.MODEL_LABELS["leaky"] == "Leaky"
    assert plotting.model_color("Leaky") == plotting.PALETTE["leaky"] == to_rgb("#000000")
    assert plotting._by_model_order(["sab", "leaky", "rellstm"]) == ["rellstm", "leaky", "sab"]
    fig = plotting.plot_learning_curves(pd.DataFrame(
        [{"model": m, "T": 3, **row} for m in ("rnn", "leaky") for row in result.history]))
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert to_rgb(lines["Leaky"].get_color()) == to_rgb("#000000")
    assert to_rgb(lines["RNN"].get_color()) == plotting.PALETTE["rnn"]
    plt.close(fig)


def leaky_reference(model, x, freeze_attention=False):
    """The toy model's branch of the reference (rsa.models.reference): its equation on one
    example x (T, input_size), written out; no attention, so no weights, R or scores."""
    h, hs = torch.zeros(model.hidden_size, dtype=x.dtype), []
    for x_t in x:
        z = model.U.weight @ x_t + model.U.bias + model.V.weight @ h
        phi = torch.tanh(z) if model.nonlinearity == "tanh" else \
            torch.sign(z) * torch.relu(z.abs() + model.phi.b)
        h = (h + phi) / 2
        hs.append(h)
    return hs, [{} for _ in hs], [[] for _ in hs], [{} for _ in hs]


def test_a_new_model_is_its_class_an_entry_a_reference_branch_and_tests(leaky, tmp_path,
                                                                         capsys):
    """What adding a model takes (rsa/models/registry.py's docstring lists the files): the class
    and its entry (above), a branch of the reference, and tests; then it trains from the
    command line and is rebuilt from what the run wrote."""
    with pytest.raises(TypeError, match="no reference for Leaky; models with one: LSTM"):
        reference.reference_forward(Leaky(3, 5), torch.zeros(2, 3))
    reference.branch(Leaky)(leaky_reference)
    try:
        # the class against its reference, in float64 (values and gradients)
        torch.manual_seed(0)
        core = heads.build_model("leaky", 3, 5, nonlinearity="modrelu").double()
        x = torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)
        H, H_ref = core(x), reference.reference_batch(core, x)
        torch.testing.assert_close(H, H_ref, rtol=1e-12, atol=1e-12)
        wrt = [x, *core.parameters()]
        for g, g_ref in zip(torch.autograd.grad(H.pow(2).sum(), wrt),
                            torch.autograd.grad(H_ref.pow(2).sum(), wrt), strict=True):
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)

        # trained from the command line with the task's defaults of its entry
        out = tmp_path / "run"
        assert main(["train", "--model", "leaky", "--task", "copy", "--T", "3",
                     "--hidden-size", "6", "--batch", "4", "--steps", "4", "--eval-every",
                     "2", "--eval-batch", "8", "--out", str(out), "--no-progress", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["steps_done"] == 4
        run = json.loads((out / "results.json").read_text())
        assert (run["config"]["model"], run["config"]["lr"]) == ("leaky", 3e-3)
        assert run["config"]["nonlinearity"] == "modrelu"

        # rebuilt from the run's model.pt, and still its reference's equation
        trained = load_trained(out)
        assert isinstance(trained.core, Leaky) and trained.core.nonlinearity == "modrelu"
        core = trained.core.double()
        x = torch.randn(5, 3, core.input_size, dtype=torch.float64)
        torch.testing.assert_close(core(x), reference.reference_batch(core, x),
                                   rtol=1e-12, atol=1e-12)
    finally:
        reference._BRANCHES.pop(Leaky)


def test_a_removed_model_is_gone_everywhere(leaky):
    registry.unregister("leaky")
    try:
        assert rsa.MODELS == PAPER_MODELS and "leaky" not in plotting.MODEL_LABELS
        assert plotting.model_color("leaky") is None
        with pytest.raises(ValueError, match="unknown model 'leaky'; accepted: rnn, lstm"):
            heads.build_model("leaky", 3, 5)
    finally:
        registry.register(LEAKY)  # for the fixture to remove


def test_resolve_config_checks_options_without_building_a_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("resolve_config built a model")

    monkeypatch.setattr(registry.ModelSpec, "model_class", refuse)
    assert resolve_config(model="relrnn", task="denoise").nu == 15
    with pytest.raises(ValueError, match="rho must be an int >= 0, got -2"):
        resolve_config(model="rellstm", rho=-2)


def test_a_bad_entry_is_refused():
    base = dict(cls=Leaky, label="X", color="k", family="rnn",
                defaults={"lr": PerTask.same(1e-3)})
    for spec, message in [
        (ModelSpec("rnn", **base), "'rnn' is already registered"),
        (ModelSpec("Toy_1", **base), "lower-case letters and digits"),
        (ModelSpec("toy", **{**base, "family": "gru"}), "family must be one of"),
        (ModelSpec("toy", **base, options=("heads",)), r"unknown option\(s\) \['heads'\]"),
        (ModelSpec("toy", **{**base, "defaults": {"lr": PerTask.same(1e-3),
                                                  "nu": PerTask.same(3)}}),
         r"options it does not take .*\['nu'\]"),
        (ModelSpec("toy", **base, options=("init",), choices={"init": ("eye",)}),
         r"choices outside the option's\): \['init'\]"),
        (ModelSpec("toy", **{**base, "defaults": {}}), "needs a learning-rate default"),
    ]:
        with pytest.raises(ValueError, match=message):
            registry.register(spec)
    assert registry.names() == PAPER_MODELS


# Every message of an option error, word for word, as build_model and resolve_config
# gave them before the table (the existing tests match parts of them).
@pytest.mark.parametrize("model, options, message", [
    ("gru", {}, "unknown model 'gru'; accepted: rnn, lstm, memrnn, relrnn, rellstm"),
    ("relrnn", dict(nu=0), "nu must be an int >= 1, got 0"),
    ("rellstm", dict(nu=2.5), "nu must be an int >= 1, got 2.5"),
    ("relrnn", dict(nu=True), "nu must be an int >= 1, got True"),
    ("rellstm", dict(rho=-1), "rho must be an int >= 0, got -1"),
    ("rnn", dict(nu=3), "nu and rho apply to relrnn and rellstm only; model 'rnn' got nu=3, "
                        "rho=None (leave them None)"),
    ("memrnn", dict(nu=3, rho=4), "nu and rho apply to relrnn and rellstm only; model "
                                  "'memrnn' got nu=3, rho=4 (leave them None)"),
    ("lstm", dict(rho=3), "nu and rho apply to relrnn and rellstm only; model 'lstm' got "
                          "nu=None, rho=3 (leave them None)"),
    ("lstm", dict(nonlinearity="tanh"), "model 'lstm' has LSTM gates and takes no "
                                        "nonlinearity (got 'tanh'); nonlinearity applies "
                                        "to rnn, memrnn, relrnn"),
    ("rnn", dict(nonlinearity="relu"), "nonlinearity must be one of ('tanh', 'modrelu'), "
                                       "got 'relu'"),
    ("rnn", dict(init="eye"), "init for 'rnn' must be one of ('orthogonal', "
                              "'orthogonal_random', 'xavier'), got 'eye'"),
    ("rellstm", dict(init="orthogonal"), "init for 'rellstm' must be 'xavier', got "
                                         "'orthogonal'"),
    # the first bad option in the order fused, nu, rho, nonlinearity, init
    ("rnn", dict(nu=0, nonlinearity="relu"), "nu and rho apply to relrnn and rellstm only; "
                                             "model 'rnn' got nu=0, rho=None (leave them "
                                             "None)"),
    ("lstm", dict(nonlinearity="modrelu", init="eye"), "model 'lstm' has LSTM gates and "
                                                       "takes no nonlinearity (got "
                                                       "'modrelu'); nonlinearity applies to "
                                                       "rnn, memrnn, relrnn"),
])
def test_option_errors_are_word_for_word_the_same(model, options, message):
    with pytest.raises(ValueError) as built:
        heads.build_model(model, 3, 4, **options)
    assert str(built.value) == message
    with pytest.raises(ValueError) as configured:
        resolve_config(model=model, **options)
    assert str(configured.value) == message


@pytest.mark.parametrize("model, options, message", [
    ("lstm", dict(fused=False), "fused applies to memrnn, relrnn and rellstm only; model "
                                "'lstm' got fused=False (leave it None)"),
    ("rnn", dict(fused=1, nu=0), "fused applies to memrnn, relrnn and rellstm only; model "
                                 "'rnn' got fused=1 (leave it None)"),
])
def test_fused_errors_are_word_for_word_the_same(model, options, message):
    with pytest.raises(ValueError) as built:
        heads.build_model(model, 3, 4, **options)
    assert str(built.value) == message


def test_the_defaults_docs_are_generated_from_the_table(capsys):
    assert describe.describe_default("nu") == "10 for copy, 15 for denoise, 10 for pixel tasks"
    assert describe.describe_default("rho") == "15 for copy and denoise, 10 for pixel tasks"
    assert describe.describe_default("nonlinearity") == "modrelu, but tanh for relrnn on copy"
    assert describe.describe_default("init") == \
        "orthogonal for rnn, memrnn, relrnn; xavier, the only choice, for lstm, rellstm"
    assert describe.describe_default("lr") == \
        "1e-3, but 1e-4 for rnn, memrnn, relrnn on pixel tasks; 2e-4 for relrnn on copy " \
        "at T >= 1000"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    doc = " ".join(TrainConfig.__doc__.split())
    for name in ("lr", "nu", "rho", "nonlinearity", "init"):
        described = describe.describe_default(name)
        assert f"(default: {described})" in text and described in doc, name
    assert "[generated" not in TrainConfig.__doc__


def test_the_defaults_are_the_authors():
    """The table gives what resolve_config always gave (*The paper*, section 5)."""
    expect = {("relrnn", "copy", 100): (1e-3, 10, 15, "tanh"),
              ("relrnn", "copy", 1000): (2e-4, 10, 15, "tanh"),
              ("relrnn", "denoise", 1000): (1e-3, 15, 15, "modrelu"),
              ("relrnn", "digits", None): (1e-4, 10, 10, "modrelu"),
              ("rellstm", "copy", 1000): (1e-3, 10, 15, None),
              ("rellstm", "pmnist", None): (1e-3, 10, 10, None),
              ("memrnn", "copy", 100): (1e-3, None, None, "modrelu"),
              ("rnn", "mnist", None): (1e-4, None, None, "modrelu"),
              ("lstm", "pdigits", None): (1e-3, None, None, None)}
    for (model, task, T), values in expect.items():
        c = resolve_config(model=model, task=task, T=T)
        assert (c.lr, c.nu, c.rho, c.nonlinearity) == values, (model, task, T)
        assert c.init is None


def test_memory_budgets_are_the_tables():
    L, B, n = 120, 10, 128
    assert estimate_memory("memrnn", 100, fused=False) == 8 * B * n * L * L
    assert estimate_memory("memrnn", 100) == 8 * B * L * L + 64 * B * n * L
    assert estimate_memory("relrnn", 100) == 64 * B * n * L + 16 * B * L * 25
    assert estimate_memory("rellstm", 100) == 160 * B * n * L + 16 * B * L * 25
    for model, fused in (("rnn", True), ("lstm", False), ("relrnn", False)):
        assert estimate_memory(model, 100, fused=fused) == 64 * B * n * L * 29


def test_the_command_line_trains_the_baselines_outside_the_plan(tmp_path):
    """SAB and the Transformer are not in the plan, but `python -m rsa train` takes them."""
    import argparse

    from rsa.__main__ import _train_parser

    p = argparse.ArgumentParser()
    _train_parser(p)
    for model in ("sab", "transformer"):
        assert model not in registry.names() and model in registry.registered()
        assert p.parse_args(["--model", model]).model == model
    with pytest.raises(SystemExit):
        p.parse_args(["--model", "gru"])


@pytest.mark.parametrize("name", registry.registered())
def test_the_experiments_take_each_models_facts_from_its_registry_entry(name):
    """Transfer cap, sequences per delay and whether the model has states h_t live in the
    registry entry; the experiments read them there, and has_states is what the model
    does."""
    from rsa import experiments
    from rsa.tasks import copy_batch

    spec = registry.get(name)
    assert experiments.transfer_batch(name) == spec.transfer_batch
    plan = experiments.PLANS["converged"]
    delays = experiments.transfer_delays(plan, name, 500)
    if spec.transfer_max is not None:
        assert max(delays) <= spec.transfer_max
        assert (spec.transfer_max in delays) == spec.transfer_at_max
    else:
        assert max(delays) >= plan.transfer_max
    assert (name in experiments.NO_STATES) == (not spec.has_states)
    torch.manual_seed(0)
    model = heads.build_task_model(name, "copy", 8).eval()
    x, _ = copy_batch(3, 2)
    with torch.no_grad():
        if not spec.has_states:  # it keeps no trace of states, and says so
            with pytest.raises(NotImplementedError, match="no trace of recurrent states"):
                model(x, record=True)
            return
        _, trace = model(x, record=True)
    assert len(trace.states) == x.shape[0], name  # one h_t per step
