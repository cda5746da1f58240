"""Measurement (rsa.experiments.measure) and the benchmark (rsa.experiments.bench):
gradient norms against closed forms, causality, cost helpers, and a bench smoke test (no
timing assertions)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsa.experiments.bench import main as bench_main
from rsa.experiments.bench import markdown_table, run_bench
from rsa.experiments.measure import (
    estimate_memory,
    grad_norms,
    peak_memory,
    saved_tensor_bytes,
    update_time,
    update_times,
)
from rsa.models.heads import MODELS, build_task_model
from rsa.tasks import copy_batch, denoise_batch, load_digits_data, make_generator


def tiny(model_name, task="copy", n=6):
    torch.manual_seed(0)
    opts = dict(nu=2, rho=2) if model_name in ("relrnn", "rellstm") else {}
    return build_task_model(model_name, task, n, **opts)


@pytest.mark.parametrize("model_name", MODELS)
def test_grad_norms_shape_and_support(model_name):
    model = tiny(model_name)
    x, y = copy_batch(5, 3, make_generator(0))
    g = grad_norms(model, x, y)
    assert g.shape == (25,) and torch.isfinite(g).all() and (g > 0).all()
    per = grad_norms(model, x, y, per_example=True)
    assert per.shape == (25, 3)
    # dL/dh_t stacks the per-example gradients of the mean loss: norms combine as
    # || dL/dh_t || = sqrt(sum_b (||dL_b/dh_t|| / B)^2)
    assert torch.allclose(g, (per / 3).pow(2).sum(1).sqrt(), rtol=1e-5)


@pytest.mark.parametrize("model_name", MODELS)
def test_gradient_is_zero_after_the_last_answer_step(model_name):
    model = tiny(model_name, "denoise")
    x, y = denoise_batch(4, 2, make_generator(1))
    g = grad_norms(model, x, y, answer_steps=[7, 9])
    assert torch.all(g[10:] == 0)  # h_t for t > 10 cannot influence outputs at steps <= 10
    assert torch.all(g[:10] > 0)


def test_last_state_gradient_matches_the_closed_form():
    # h_L only reaches the loss through the read-out at step L, so
    # dL/dh_L = W^T (softmax(z_L) - onehot(y_L)) / (10 B) for the answer loss
    model = tiny("rnn")
    x, y = copy_batch(3, 4, make_generator(2))
    with torch.no_grad():
        z = model(x)[-1]  # (B, 9)
        expected = (F.softmax(z, -1) - F.one_hot(y[-1], 9)) @ model.readout.weight / 40
    g = grad_norms(model, x, y)
    assert g[-1].item() == pytest.approx(expected.norm().item(), rel=1e-5)
    per = grad_norms(model, x, y, per_example=True)
    assert torch.allclose(per[-1], 4 * expected.norm(dim=1), rtol=1e-5)


def test_answer_loss_gradient_ignores_the_non_answer_targets():
    model = tiny("relrnn")
    x, y = copy_batch(3, 2, make_generator(3))
    y2 = y.clone()
    y2[:13] = 5  # targets before the answer steps do not enter the answer loss
    assert torch.equal(grad_norms(model, x, y), grad_norms(model, x, y2))


def test_frozen_attention_changes_only_attentive_models():
    x, y = copy_batch(6, 2, make_generator(4))
    rnn = tiny("rnn")
    assert torch.equal(grad_norms(rnn, x, y), grad_norms(rnn, x, y, freeze_attention=True))
    rel = tiny("relrnn")
    full, frozen = grad_norms(rel, x, y), grad_norms(rel, x, y, freeze_attention=True)
    assert not torch.allclose(full[:-1], frozen[:-1])
    assert full[-1] == pytest.approx(frozen[-1].item())  # h_L feeds no attention


def test_grad_norms_classification_and_errors():
    model = tiny("lstm", "digits")
    x, y = next(load_digits_data().batches("train", 5))
    g = grad_norms(model, x, y)
    assert g.shape == (64,) and (g > 0).all()
    with pytest.raises(ValueError, match="answer_steps applies to copy/denoise only"):
        grad_norms(model, x, y, answer_steps=[3])
    cm = tiny("rnn")
    xc, yc = copy_batch(2, 2, make_generator(0))
    with pytest.raises(ValueError, match=r"in \[0, 22\), got \[22\]"):
        grad_norms(cm, xc, yc, answer_steps=[22])


def test_update_time_and_errors():
    t = update_time("rnn", 3, batch=2, hidden_size=4, repeats=3, warmup=1)
    assert len(t["times_s"]) == 3 and t["median_s"] == sorted(t["times_s"])[1]
    assert t["threads"] == 1
    with pytest.raises(ValueError, match="repeats must be an int >= 1, got 0"):
        update_time("rnn", 3, repeats=0)


def test_update_times_warms_up_then_interleaves_rounds(monkeypatch):
    import rsa.train

    calls = []  # the sequence length L = T + 20 of each update, in order
    real = rsa.train.train_step
    monkeypatch.setattr(rsa.train, "train_step",
                        lambda model, opt, x, y, clip: calls.append(x.shape[0])
                        or real(model, opt, x, y, clip))
    res = update_times([("rnn", 3, 2), ("relrnn", 5, 2)], hidden_size=4, repeats=3, warmup=2)
    assert calls == [23, 23, 25, 25] + [23, 25] * 3
    assert [len(r["times_s"]) for r in res] == [3, 3]
    assert all(r["median_s"] == sorted(r["times_s"])[1] for r in res)
    with pytest.raises(ValueError, match="warmup must be an int >= 0, got -1"):
        update_times([("rnn", 3, 2)], warmup=-1)


def test_peak_memory_grows_with_T_and_in_a_subprocess():
    small = peak_memory("memrnn", 10, batch=4, hidden_size=32, isolate=False)
    assert small["peak_bytes"] >= 0 and small["method"].startswith("cpu")
    iso = peak_memory("memrnn", 200, batch=10, hidden_size=64, fused=False)  # fresh process
    # plain-autograd MemRNN keeps O(B n L^2) floats: at L = 220 that is tens of MiB, far
    # above the few-page resolution of the RSS measurement
    saved = saved_tensor_bytes("memrnn", 200, batch=10, hidden_size=64, fused=False)
    assert saved > 20 * 2**20
    fused = saved_tensor_bytes("memrnn", 200, batch=10, hidden_size=64)
    assert fused < saved / 4  # the fused default keeps only O(B n L + B L^2)
    assert 0.9 * saved < iso["peak_bytes"] < 2 * saved
    assert iso["peak_bytes"] < estimate_memory("memrnn", 200, batch=10, hidden_size=64,
                                               fused=False)


@pytest.mark.parametrize("model_name", MODELS)
def test_saved_bytes_quadratic_for_memrnn_linear_for_the_others(model_name):
    # once the screened memory is full (25 steps) every step saves the same tensors
    v = [saved_tensor_bytes(model_name, T, batch=2, hidden_size=8) for T in (40, 70, 100)]
    first, second = v[1] - v[0], v[2] - v[1]
    if model_name == "memrnn":  # each step saves O(t) more: constant second difference
        assert second - first > 0.2 * first
    else:
        assert first == second > 0


def test_estimate_memory_is_quadratic_for_memrnn_only():
    assert estimate_memory("memrnn", 2 * 120 - 20, fused=False) == \
        4 * estimate_memory("memrnn", 100, fused=False)
    assert estimate_memory("memrnn", 1000) < estimate_memory("memrnn", 1000, fused=False) / 50
    assert estimate_memory("relrnn", 2 * 120 - 20) == 2 * estimate_memory("relrnn", 100)
    assert estimate_memory("rellstm", 2 * 120 - 20) == 2 * estimate_memory("rellstm", 100)
    # the fused RelLSTM's budget: above its saved tensors, below the plain loop's
    fused = estimate_memory("rellstm", 200, batch=2, hidden_size=8)
    assert saved_tensor_bytes("rellstm", 200, batch=2, hidden_size=8) < fused
    assert fused < estimate_memory("rellstm", 200, batch=2, hidden_size=8, fused=False) / 5


def test_update_times_with_options_per_configuration(monkeypatch):
    """A configuration's own options (the plain loop) next to the default, one round."""
    import rsa.experiments.measure

    built = []
    real = rsa.experiments.measure.build_task_model
    monkeypatch.setattr(rsa.experiments.measure, "build_task_model",
                        lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    res = update_times([("rellstm", 3, 2), ("rellstm", 3, 2, {"fused": False})],
                       hidden_size=4, repeats=1, warmup=0, nu=2)
    assert len(res) == 2 and all(len(r["times_s"]) == 1 for r in res)
    assert [(m.core.fused, m.core.nu) for m in built] == [(True, 2), (False, 2)]


def test_bench_times_the_plain_loop_next_to_the_fused_model(monkeypatch):
    import rsa.experiments.bench

    peaks = []

    def fake_peak(model_name, T, **kwargs):
        peaks.append((model_name, kwargs.get("fused", True)))
        return {"peak_bytes": 2**20, "method": "fake"}

    monkeypatch.setattr(rsa.experiments.bench, "peak_memory", fake_peak)
    rows = run_bench(("rellstm", "rellstm_unfused", "memrnn_unfused"), (30,), batch=2,
                     hidden_size=4, large_batch=0, repeats=1, warmup=0)
    assert [r["model"] for r in rows] == ["rellstm", "rellstm_unfused", "memrnn_unfused"]
    assert peaks == [("rellstm", True), ("rellstm", False), ("memrnn", False)]
    assert all(r["time_ms"] > 0 for r in rows)
    fused, plain = rows[0]["saved_mib"], rows[1]["saved_mib"]
    assert 0 < fused < plain / 2  # the unfused row really is the plain loop
    with pytest.raises(ValueError, match="unknown model.*rnn_unfused"):
        run_bench(("rnn_unfused",), (3,))


def test_bench_smoke(capsys):
    rows = run_bench(("rnn", "memrnn"), (3,), batch=2, hidden_size=4, large_batch=3,
                     large_T=4, repeats=1, warmup=0, memory=False)
    assert [(r["model"], r["T"], r["batch"]) for r in rows] == [
        ("rnn", 3, 2), ("memrnn", 3, 2), ("rnn", 4, 3), ("memrnn", 4, 3)]
    assert all(r["time_ms"] > 0 and r["skipped"] is None for r in rows)
    assert all(0 < r["time_min_ms"] == min(r["times_ms"]) <= r["time_ms"] for r in rows)
    skipped = run_bench(("memrnn",), (3,), batch=2, hidden_size=4, large_batch=0,
                        repeats=1, warmup=0, memory=False, max_memory_gb=1e-9)
    assert skipped[0]["skipped"].startswith("estimated") and skipped[0]["time_ms"] is None
    table = markdown_table(rows + skipped)
    assert table.splitlines()[0].startswith("| model | T | B | time / update (ms, median) "
                                            "| fastest (ms) |")
    assert all(line.count("|") == 8 for line in table.splitlines())
    assert "| memrnn | 3 | 2 | skipped (estimated" in table
    assert bench_main(["--models", "rnn", "--T", "2", "--batch", "2", "--large-batch", "0",
                       "--hidden-size", "4", "--repeats", "1", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "torch threads 1" in out and "| rnn | 2 | 2 |" in out
    with pytest.raises(ValueError, match="unknown model"):
        run_bench(("gru",), (3,))
