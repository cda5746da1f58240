"""Heads, training, checkpoint/resume, results files, manifest and atomic writes."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import re
import signal
import socket
import sys

import numpy
import pytest
import torch
import torch.nn.functional as F

from rsa import io
from rsa.__main__ import _train_parser, main
from rsa.models.heads import TaskModel, build_model, build_task_model
from rsa.tasks import copy_batch, evaluate_transfer, make_generator
from rsa.train import (
    DeviceUnavailableError,
    TrainConfig,
    config_command,
    load_trained,
    resolve_config,
    train,
)
from tests.helpers import crash, on_call

# the package, even if it re-exports the function `train` under the same name
train_mod = importlib.import_module("rsa.train")
# the loop's module: the tests replace its train_step and evaluate
loop_mod = importlib.import_module("rsa.train.loop")


TINY = dict(model="relrnn", task="copy", T=3, hidden_size=6, batch=4, eval_batch=8, nu=2,
            rho=2, eval_every=2, checkpoint_every=2, progress=False)
TIME_FIELDS = ("wall_time_s", "train_time_s")


def strip_times(history):
    return [{k: v for k, v in row.items() if k not in TIME_FIELDS} for row in history]


def same_parameters(a, b):
    return all(torch.equal(p, q) for p, q in
               zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# -- heads ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(model_name="gru"), r"unknown model 'gru'; accepted: rnn, lstm, memrnn"),
    (dict(model_name="relrnn", nu=0), r"nu must be an int >= 1, got 0"),
    (dict(model_name="rellstm", rho=-1), r"rho must be an int >= 0, got -1"),
    (dict(model_name="rnn", nu=3), r"nu and rho apply to relrnn and rellstm only.*'rnn'"),
    (dict(model_name="memrnn", rho=3), r"nu and rho apply.*'memrnn'.*rho=3"),
    (dict(model_name="lstm", nonlinearity="tanh"), r"'lstm' has LSTM gates.*'tanh'"),
    (dict(model_name="rellstm", init="orthogonal"), r"must be 'xavier', got 'orthogonal'"),
    (dict(model_name="rnn", nonlinearity="relu"), r"nonlinearity must be one of .*'relu'"),
    (dict(model_name="rnn", init="eye"), r"init for 'rnn' must be one of .*'eye'"),
    (dict(model_name="lstm", fused=False), r"fused applies to memrnn, relrnn and rellstm only"
                                           r".*'lstm'"),
])
def test_build_model_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(input_size=3, hidden_size=4, **kwargs)


def test_build_model_passes_options():
    m = build_model("relrnn", 3, 5, nu=4, rho=7, nonlinearity="modrelu", init="xavier")
    assert (m.nu, m.rho, m.nonlinearity, m.init, m.hidden_size) == (4, 7, "modrelu",
                                                                    "xavier", 5)
    assert type(build_model("rellstm", 3, 5)).__name__ == "RelLSTM"
    assert build_model("relrnn", 3, 5).fused is True
    assert build_model("relrnn", 3, 5, fused=False).fused is False
    assert build_model("rellstm", 3, 5).fused is True
    assert build_model("rellstm", 3, 5, fused=False).fused is False


def test_sequence_head_loss_over_all_steps_accuracy_over_last_ten():
    torch.manual_seed(0)
    model = build_task_model("rnn", "copy", 8)
    x, y = copy_batch(4, 3, make_generator(0))
    logits = model(x)
    assert logits.shape == (24, 3, 9)
    H = model.core(x)
    assert torch.allclose(logits, model.readout(H))
    by_hand = sum(F.cross_entropy(logits[t], y[t]) for t in range(24)) / 24
    assert torch.allclose(model.loss(logits, y), by_hand)
    assert torch.allclose(model.answer_loss(logits, y),
                          sum(F.cross_entropy(logits[t], y[t]) for t in range(14, 24)) / 10)
    # right on the answer steps, wrong everywhere else: accuracy 1
    fake = F.one_hot(y, 9).float()
    fake[:14] = F.one_hot((y[:14] + 1) % 9, 9).float()
    assert model.accuracy(fake, y) == 1.0
    fake[-1, 0] = F.one_hot((y[-1, 0] + 1) % 9, 9).float()
    assert model.accuracy(fake, y) == pytest.approx(29 / 30)
    assert list(model.answer_steps(24)) == list(range(14, 24))


def test_classification_head_reads_the_last_state():
    torch.manual_seed(0)
    model = build_task_model("lstm", "digits", 5)
    x = torch.rand(64, 7, 1)
    logits = model(x)
    assert logits.shape == (7, 10)
    assert torch.allclose(logits, model.readout(model.core(x)[-1]))
    with pytest.raises(ValueError, match="input size 10, core has 3"):
        TaskModel(build_model("rnn", 3, 4), "copy")


# -- configuration ------------------------------------------------------------------------------

def test_defaults_follow_the_paper():
    c = resolve_config(model="relrnn", task="copy")
    assert (c.T, c.hidden_size, c.optimizer, c.lr, c.clip, c.batch, c.steps) == \
        (100, 128, "rmsprop", 1e-3, 1.0, 10, 200_000)
    assert (c.nonlinearity, c.nu, c.rho) == ("tanh", 10, 15)
    assert resolve_config(model="relrnn", task="copy", T=1000).lr == 2e-4
    assert resolve_config(model="rnn", task="copy", T=1000).lr == 1e-3
    d = resolve_config(model="rellstm", task="denoise")
    assert (d.nu, d.rho, d.nonlinearity) == (15, 15, None)
    r = resolve_config(model="rnn", task="denoise")
    assert (r.nonlinearity, r.nu, r.rho) == ("modrelu", None, None)
    p = resolve_config(model="rnn", task="pdigits")
    assert (p.T, p.hidden_size, p.optimizer, p.lr, p.batch, p.eval_every, p.steps) == \
        (64, 100, "adam", 1e-4, 100, 13, 200 * 13)
    assert resolve_config(model="lstm", task="digits").lr == 1e-3
    assert resolve_config(model="relrnn", task="mnist").steps == 200 * 550
    assert resolve_config(model="relrnn", task="digits").nu == 10


@pytest.mark.parametrize("overrides, error, message", [
    (dict(colour="red"), ValueError, r"unknown config field\(s\) \['colour'\]"),
    (dict(model="gru"), ValueError, r"unknown model 'gru'"),
    (dict(task="ptb"), ValueError, r"unknown task 'ptb'; accepted: copy"),
    (dict(T=0), ValueError, r"T must be an int >= 1, got 0"),
    (dict(task="digits", T=100), ValueError, r"fixed length 64; T must be None or 64"),
    (dict(optimizer="sgd"), ValueError, r"unknown optimizer 'sgd'; accepted: rmsprop, adam"),
    (dict(lr=-1.0), ValueError, r"lr must be a finite number > 0, got -1.0"),
    (dict(clip=-0.5), ValueError, r"clip must be .* >= 0 .* got -0.5"),
    (dict(batch=0), ValueError, r"batch must be an int >= 1, got 0"),
    (dict(device="gpu"), ValueError, r"device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    (dict(nu=0), ValueError, r"nu must be an int >= 1, got 0"),
    (dict(model="lstm", rho=3), ValueError, r"nu and rho apply to relrnn and rellstm only"),
    (dict(model="lstm", nonlinearity="tanh"), ValueError, r"takes no nonlinearity"),
])
def test_config_errors(overrides, error, message):
    with pytest.raises(error, match=message):
        resolve_config(**overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_but_unavailable():
    with pytest.raises(DeviceUnavailableError, match="'cuda' requested but CUDA is not"):
        train(**TINY, steps=1, device="cuda")


# -- training runs ------------------------------------------------------------------------------

def test_tiny_run_writes_results_csv_and_manifest(tmp_path):
    out = tmp_path / "run"
    r = train(**TINY, steps=5, out_dir=str(out))
    assert [row["step"] for row in r.history] == [2, 4]  # every eval_every updates
    assert r.summary["steps_done"] == 5 and r.summary["n_parameters"] > 0
    assert r.summary["final_val_loss"] != r.history[-1]["val_loss"]  # evaluated at step 5
    results = io.load_json(out / "results.json")
    assert results["complete"] is True and results["config"] == r.config
    assert results["history"] == r.history and results["summary"] == r.summary
    table = io.load_csv(out / "history.csv")
    assert list(table.columns) == ["step", "train_loss", "train_accuracy", "val_loss",
                                   "val_accuracy", "wall_time_s", "train_time_s"]
    assert table["step"].tolist() == [2, 4]
    assert table["val_loss"].tolist() == pytest.approx([h["val_loss"] for h in r.history])
    assert all(row["wall_time_s"] >= row["train_time_s"] > 0 for row in r.history)
    assert sorted(os.listdir(out)) == [".lock", "checkpoint.pt", "history.csv",
                                       "manifest.json", "model.pt", "results.json"]
    assert (out / ".lock").read_text() == ""  # released (rsa.train.lock); no temp files
    run = io.load_run(out)
    assert run["complete"] and run["summary"] == r.summary and run["config"] == r.config
    assert run["history"]["val_accuracy"].tolist() == [h["val_accuracy"] for h in r.history]
    assert run["manifest"]["command"] == config_command(resolve_config(r.config))


def test_manifest_contents(tmp_path):
    out = tmp_path / "run"
    r = train(**TINY, steps=2, seed=7, out_dir=str(out), argv=["python", "-m", "rsa", "x"])
    m = io.load_manifest(out)
    assert m["parameters"] == r.config and m["seed"] == 7 and m["complete"] is True
    assert m["argv"] == "python -m rsa x"
    sha = m["git"]["commit"]
    assert sha is None or re.fullmatch(r"[0-9a-f]{40}", sha)
    assert m["versions"] == {"python": platform.python_version(), "torch": torch.__version__,
                             "numpy": numpy.__version__, "rsa": "0.1.0"}
    assert m["machine"]["device"] == "cpu" and m["machine"]["torch_threads"] == 1
    assert m["wall_time_s"] == pytest.approx(r.summary["wall_time_s"])
    host = socket.gethostname()
    if len(host) >= 4:
        assert host not in json.dumps(m)
    # the recorded command regenerates the same configuration
    argv = m["command"].split()
    assert argv[:4] == ["python", "-m", "rsa", "train"]
    p = argparse.ArgumentParser()
    _train_parser(p)
    a = vars(p.parse_args(argv[4:]))
    a.pop("threads"), a.pop("tensorboard"), a.pop("json")  # options of the command, not of the run
    assert resolve_config(a) == resolve_config(r.config)


def test_same_seed_same_run_other_seed_other_run():
    a, b = train(**TINY, steps=4), train(**TINY, steps=4)
    c = train(**TINY, steps=4, seed=1)
    assert strip_times(a.history) == strip_times(b.history)
    assert same_parameters(a.model, b.model)
    assert strip_times(a.history) != strip_times(c.history)


def test_resume_gives_exactly_the_uninterrupted_run(tmp_path):
    full = train(**TINY, steps=6, out_dir=str(tmp_path / "full"))
    part = tmp_path / "part"
    first = train(**TINY, steps=3, out_dir=str(part))  # stops between two evaluations
    assert first.summary["steps_done"] == 3
    resumed = train(**TINY, steps=6, out_dir=str(part))
    assert strip_times(resumed.history) == strip_times(full.history)
    assert same_parameters(resumed.model, full.model)
    ck_full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    ck_part = torch.load(part / "checkpoint.pt", weights_only=True)
    opt_a, opt_b = ck_full["optimizer"]["state"], ck_part["optimizer"]["state"]
    assert all(torch.equal(opt_a[k]["square_avg"], opt_b[k]["square_avg"]) for k in opt_a)
    assert torch.equal(ck_full["data"]["generator"], ck_part["data"]["generator"])
    assert resumed.summary["wall_time_s"] >= first.summary["wall_time_s"]


def test_crash_loses_only_work_after_the_last_checkpoint(tmp_path, monkeypatch):
    full = train(**TINY, steps=6)
    real = train_mod.train_step
    monkeypatch.setattr(loop_mod, "train_step", on_call(real, 5, crash))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(**TINY, steps=6, out_dir=str(tmp_path))
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state"]["step"] == 4
    assert io.load_json(tmp_path / "results.json")["complete"] is False
    monkeypatch.setattr(loop_mod, "train_step", real)
    resumed = train(**TINY, steps=6, out_dir=str(tmp_path))
    assert strip_times(resumed.history) == strip_times(full.history)
    assert same_parameters(resumed.model, full.model)


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler, whatever the test runner inherited (a job started
    with nohup or in the background has SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_saves_the_current_step_and_resumes(tmp_path, monkeypatch,
                                                   python_sigint_handler):
    full = train(**TINY, steps=6)
    real = train_mod.train_step
    monkeypatch.setattr(loop_mod, "train_step",
                        on_call(real, 3, lambda: signal.raise_signal(signal.SIGINT)))
    with pytest.raises(KeyboardInterrupt):
        train(**TINY, steps=6, out_dir=str(tmp_path))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # update 3 was completed and saved: nothing is lost
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state"]["step"] == 3
    monkeypatch.setattr(loop_mod, "train_step", real)
    resumed = train(**TINY, steps=6, out_dir=str(tmp_path))
    assert strip_times(resumed.history) == strip_times(full.history)
    assert same_parameters(resumed.model, full.model)


def test_resume_refuses_a_different_config(tmp_path):
    train(**TINY, steps=2, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"different config.*'lr': \(0.001, 0.01\)"):
        train(**TINY, steps=4, lr=0.01, out_dir=str(tmp_path))
    fresh = train(**TINY, steps=1, lr=0.01, out_dir=str(tmp_path), resume=False)
    assert fresh.summary["steps_done"] == 1


def test_first_perfect_and_best_step(monkeypatch):
    accuracies = iter([0.5, 1.0, 0.9, 1.0])

    def fake_evaluate(model, batches):
        return {"loss": 0.1, "accuracy": next(accuracies)}

    monkeypatch.setattr(loop_mod, "evaluate", fake_evaluate)
    r = train(**TINY, steps=8)
    assert (r.summary["first_perfect_step"], r.summary["best_step"],
            r.summary["best_val_accuracy"]) == (4, 4, 1.0)
    accuracies = iter([0.5, 1.0, 0.9, 1.0])
    r = train(**TINY, steps=8, stop_at_perfect=True)
    assert r.summary["steps_done"] == 4 and r.summary["stopped_early"] is True
    accuracies = iter([0.25, 0.75])
    r = train(**TINY, steps=4)
    assert r.summary["first_perfect_step"] is None and r.summary["best_step"] == 4


def test_digits_run_reports_epochs_and_test_accuracy():
    r = train(model="rnn", task="digits", hidden_size=4, batch=50, steps=3, eval_every=2,
              progress=False)
    assert [row["step"] for row in r.history] == [2]
    assert r.history[0]["epoch"] == pytest.approx(2 / 26)
    assert 0 <= r.summary["test_accuracy"] <= 1 and r.summary["test_loss"] > 0


def test_load_trained_and_transfer(tmp_path):
    r = train(**TINY, steps=2, out_dir=str(tmp_path))
    model = load_trained(tmp_path)
    assert same_parameters(model, r.model) and not model.training
    rows = evaluate_transfer(model, [3, 9], batch=4)
    assert [row["T"] for row in rows] == [3, 9]
    os.remove(tmp_path / "checkpoint.pt")  # the weights alone (model.pt) are enough
    assert same_parameters(load_trained(tmp_path), r.model)
    with pytest.raises(FileNotFoundError, match=r"checkpoint.*not found; regenerate it with"):
        os.remove(tmp_path / "model.pt")
        load_trained(tmp_path)


# -- command line -------------------------------------------------------------------------------

def test_cli_train_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--model", "rnn", "--T", "2", "--hidden-size", "4", "--steps", "2",
                 "--eval-every", "1", "--eval-batch", "4", "--out", str(out),
                 "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps_done"] == 2 and summary["out_dir"] == str(out)
    assert io.load_manifest(out)["argv"].startswith("python -m rsa train --model rnn")
    assert main(["train", "--model", "rnn", "--nu", "4", "--no-progress"]) == 2
    assert "nu and rho apply to relrnn and rellstm only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "gru"])


def test_config_command_is_complete():
    c = resolve_config(**TINY, steps=5)
    cmd = config_command(c)
    assert "--model relrnn" in cmd and "--nu 2" in cmd and "--no-progress" in cmd
    assert "--init" not in cmd  # None: the model's default
    assert isinstance(TrainConfig(), TrainConfig)


# -- atomic files -----------------------------------------------------------------------------

def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "r.json"
    io.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        io.write_json(path, {"a": 2, "b": object()})  # fails midway through the dump
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError, match="boom"), io.atomic_open(tmp_path / "new.txt") as f:
        f.write("partial")
        raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["r.json"]  # no partial file, no temp file


def test_json_csv_roundtrip_and_nan(tmp_path):
    io.write_json(tmp_path / "x.json", {"loss": math.nan, "t": torch.tensor(2.5)})
    assert io.load_json(tmp_path / "x.json") == {"loss": None, "t": 2.5}
    io.write_csv(tmp_path / "x.csv", [{"a": 1, "b": None}, {"a": 2, "c": "z"}])
    assert (tmp_path / "x.csv").read_text() == "a,b,c\n1,,\n2,,z\n"


def test_missing_files_name_the_regenerating_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*nope.json' not found; no command"):
        io.load_json(tmp_path / "nope.json")
    io.write_json(tmp_path / "manifest.json", {"command": "python -m rsa bench --T 100"})
    with pytest.raises(FileNotFoundError, match=r"regenerate it with:\n    python -m rsa "
                                                r"bench --T 100"):
        io.load_csv(tmp_path / "bench.csv")
    with pytest.raises(FileNotFoundError, match="make data"):
        io.load_json(tmp_path / "other.json", regenerate="make data")
    assert sys.modules["rsa.io"] is io


# -- stopping rules: solved, stalled, patience --------------------------------------------

def _history(accuracies=None, losses=None, every=250):
    n = len(accuracies if accuracies is not None else losses)
    return [{"step": every * (i + 1),
             "val_accuracy": None if accuracies is None else accuracies[i],
             "val_loss": None if losses is None else losses[i],
             "wall_time_s": 10.0 * (i + 1), "train_time_s": 9.0 * (i + 1)}
            for i in range(n)]


def test_solved_needs_two_consecutive_evaluations_at_99_percent():
    assert train_mod.solved_at(_history([0.5, 0.995, 0.98, 0.99, 1.0])) == 1000
    assert train_mod.solved_at(_history([0.5, 0.995, 0.98, 0.99])) is None  # unconfirmed
    assert train_mod.solved_at(_history([0.989, 0.9899, 0.5])) is None  # below 99 %
    assert train_mod.solved_at(_history([1.0, 1.0])) == 250
    assert train_mod.solved_at([]) is None


def test_memoryless_loss_is_that_of_the_uniform_guess_on_the_answer_steps():
    T = 30
    assert train_mod.memoryless_loss("copy", T) == pytest.approx(10 * math.log(8) / (T + 20))
    # a predictor exact on the blanks and uniform over the 8 data symbols on the answers
    x, y = copy_batch(T, 64, make_generator(0))
    logits = torch.full((T + 20, 64, 9), -1e9)
    logits.scatter_(2, y.unsqueeze(-1), 0.0)  # exact everywhere ...
    logits[-10:] = -1e9
    logits[-10:, :, 1:9] = 0.0  # ... but uniform over the symbols where they are asked
    loss = F.cross_entropy(logits.reshape(-1, 9), y.reshape(-1)).item()
    assert loss == pytest.approx(train_mod.memoryless_loss("copy", T), rel=1e-6)


def test_stalled_when_no_loss_of_the_window_beats_the_memoryless_bar():
    base = 1.0  # the bar is 0.9
    flat = _history(losses=[1.0] * 30)
    assert train_mod.stalled_at(flat, 5000, base) == 5000  # 20 evaluations of 250
    assert train_mod.stalled_at(flat, 0, base) is None  # disabled
    learning = _history(losses=[1.0] * 10 + [0.85] + [1.0] * 29)  # good at step 2750
    assert train_mod.stalled_at(learning, 5000, base) == 7750  # 5000 updates after it
    assert train_mod.stalled_at(_history(losses=[0.95] * 30), 5000, base) == 5000
    assert train_mod.stalled_at(_history(losses=[0.89] * 30), 5000, base) is None
    assert train_mod.stalled_at(_history(losses=[float("nan")] * 30), 5000, base) == 5000


def test_patience_counts_updates_since_the_best_accuracy():
    h = _history([0.1, 0.5, 0.4, 0.5, 0.45, 0.6, 0.3, 0.3, 0.3, 0.3], every=100)
    assert train_mod.patience_exhausted_at(h, 400) == 1000  # best 0.6 at 600
    assert train_mod.patience_exhausted_at(h, 300) == 500  # 0.5 at 200; equal is no gain
    assert train_mod.patience_exhausted_at(h, 0) is None
    assert train_mod.patience_exhausted_at(h, 500) is None


def _fake_evaluations(monkeypatch, accuracies, losses=None):
    values = iter(zip(accuracies, losses or [0.1] * len(accuracies), strict=True))

    def fake_evaluate(model, batches):
        a, l_ = next(values)
        return {"loss": l_, "accuracy": a}

    monkeypatch.setattr(loop_mod, "evaluate", fake_evaluate)


def test_run_stops_when_solved_and_records_update_and_time(monkeypatch, tmp_path):
    _fake_evaluations(monkeypatch, [0.5, 0.995, 0.999, 0.2, 0.2, 0.2])
    r = train(**TINY, steps=12, stop_when_solved=True, out_dir=str(tmp_path))
    s = r.summary
    assert (s["steps_done"], s["solved"], s["solved_step"], s["stop_reason"],
            s["stopped_early"]) == (6, True, 4, "solved", True)
    assert s["solved_wall_time_s"] == r.history[1]["wall_time_s"] > 0
    assert s["segments"][0]["start_step"] == 0 and s["segments"][0]["end_step"] == 6
    # without the rule the same evaluations run to the budget, still marked solved at 4
    _fake_evaluations(monkeypatch, [0.5, 0.995, 0.999, 0.2, 0.2, 0.2])
    s = train(**TINY, steps=12).summary
    assert (s["steps_done"], s["solved"], s["solved_step"], s["stop_reason"]) == \
        (12, True, 4, "budget")


def test_run_stops_when_stalled_but_not_while_it_learns(monkeypatch):
    bar = 0.9 * train_mod.memoryless_loss("copy", 3)
    _fake_evaluations(monkeypatch, [0.1] * 6, [bar * 1.01] * 6)
    s = train(**TINY, steps=12, stall_updates=4).summary
    assert (s["steps_done"], s["stop_reason"], s["solved"]) == (4, "stalled", False)
    _fake_evaluations(monkeypatch, [0.1] * 6, [bar * 1.01, bar * 0.99] * 3)
    s = train(**TINY, steps=12, stall_updates=4).summary
    assert (s["steps_done"], s["stop_reason"]) == (12, "budget")


def test_patience_stops_a_pixel_run(monkeypatch):
    # five validations, then the test set with the final and the best-validation weights
    _fake_evaluations(monkeypatch, [0.3, 0.5, 0.4, 0.45, 0.5, 0.6, 0.7])
    s = train(model="rnn", task="digits", hidden_size=4, batch=50, steps=12, eval_every=2,
              patience_updates=6, progress=False).summary
    assert (s["steps_done"], s["stop_reason"], s["best_step"]) == (10, "patience", 4)
    assert (s["test_accuracy"], s["best_model_test_accuracy"]) == (0.6, 0.7)


@pytest.mark.parametrize("bad,match", [
    (dict(stall_updates=-1), "stall_updates must be an int >= 0"),
    (dict(patience_updates=1.5), "patience_updates must be an int >= 0"),
    (dict(stop_when_solved="yes"), "stop_when_solved must be a bool"),
    (dict(task="digits", T=None, stall_updates=10), "stall_updates applies to copy and "
                                                    "denoise only"),
])
def test_stopping_rules_reject_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(**{**TINY, **bad})


def test_a_stopped_run_resumed_with_a_rule_changed_is_refused(tmp_path):
    train(**TINY, steps=2, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"'stall_updates': \(0, 4\)"):
        train(**TINY, steps=4, stall_updates=4, out_dir=str(tmp_path))


# -- the NaN rule -------------------------------------------------------------------------------

def test_nan_at_is_the_first_evaluation_with_a_training_loss_not_finite():
    rows = [{"step": 2, "train_loss": 0.5}, {"step": 4, "train_loss": float("inf")},
            {"step": 6, "train_loss": float("nan")}]
    assert train_mod.nan_at(rows) == 4
    assert train_mod.nan_at(rows[:1]) is None
    assert train_mod.nan_at([{"step": 2, "train_loss": None}]) == 2


def _nan_from(monkeypatch, update):
    """train_step returns a NaN loss from the ``update``-th call on (weights untouched)."""
    calls = {"n": 0}
    real = loop_mod.train_step

    def fake(model, optimizer, x, y, clip):
        calls["n"] += 1
        loss, acc = real(model, optimizer, x, y, clip)
        return (float("nan"), acc) if calls["n"] >= update else (loss, acc)

    monkeypatch.setattr(loop_mod, "train_step", fake)


def test_the_nan_rule_stops_at_the_first_non_finite_training_loss(monkeypatch, tmp_path):
    _nan_from(monkeypatch, 3)
    s = train(**TINY, steps=12, stop_when_nan=True).summary
    assert (s["steps_done"], s["stop_reason"], s["stopped_early"]) == (4, "nan", True)
    _nan_from(monkeypatch, 3)
    s = train(**TINY, steps=12).summary  # without the rule: to the budget
    assert (s["steps_done"], s["stop_reason"]) == (12, "budget")
    cmd = config_command(resolve_config(**TINY, steps=5, stop_when_nan=True))
    assert "--stop-when-nan" in cmd
    assert "--stop-when-nan" not in config_command(resolve_config(**TINY, steps=5))
    with pytest.raises(ValueError, match="stop_when_nan must be a bool"):
        resolve_config(**TINY, stop_when_nan=1)


def test_the_nan_rule_may_be_turned_on_at_resume_only_where_it_would_not_have_fired(
        monkeypatch, tmp_path):
    from rsa.experiments.train_stage import _nan_before_the_rule

    clean, bad = tmp_path / "clean", tmp_path / "bad"
    train(**TINY, steps=4, out_dir=str(clean))
    resumed = train(**TINY, steps=6, stop_when_nan=True, out_dir=str(clean))
    assert resumed.summary["steps_done"] == 6 and resumed.config["stop_when_nan"] is True
    assert _nan_before_the_rule(clean, {**TINY, "steps": 8, "stop_when_nan": True}) is None
    _nan_from(monkeypatch, 3)
    train(**TINY, steps=4, out_dir=str(bad))  # NaN at update 3, no rule: it went on
    monkeypatch.undo()
    with pytest.raises(ValueError, match="without stop_when_nan .* at update 4"):
        train(**TINY, steps=8, stop_when_nan=True, out_dir=str(bad))
    assert _nan_before_the_rule(bad, {**TINY, "steps": 8, "stop_when_nan": True}) == 4
    assert _nan_before_the_rule(bad, {**TINY, "steps": 8}) is None  # the rule is off
    train(**TINY, steps=8, out_dir=str(bad))  # as it was made: it resumes


def test_stop_reasons_read_as_words():
    """The NaN rule's "nan" reads as a divergence, not as missing data; a missing reason
    reads as missing."""
    from rsa.train import stop_in_words

    assert stop_in_words("nan") == "diverged (NaN loss)"
    assert stop_in_words(None) == "—" and stop_in_words(float("nan")) == "—"
    assert stop_in_words(None, missing="not recorded") == "not recorded"
    assert stop_in_words("stalled") == "stalled" and stop_in_words("budget") == "budget"
