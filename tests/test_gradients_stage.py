"""The gradient stage of a converged plan (``reproduce --stages gradients``): it measures
||dL/dh_t|| at initialisation and at the end for every stored run of the gradient set,
incrementally (a second call measures only the runs stored since), and says what is
missing."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from rsa import experiments, io
from rsa.train import train

TINY = experiments.Plan(Ts=(3,), seeds=(0,), steps=2, eval_every=1, rhos=(1,), rho_T=3,
                        digits_steps=1, transfer_Ts=(3,), transfer_max=12, grad_T=3,
                        stop_when_solved=True, stall_updates=1, converged=True)
L = 3 + 20  # steps of a T = 3 sequence
FIRST = ["copy/rnn_T3_s0", "denoise/relrnn_T3_rho1_s0"]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv(io.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(io.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.setitem(experiments.PLANS, "tiny", TINY)
    calls = []
    grad_rows = experiments.gradients.grad_rows

    def counted(model, task, T, seed):
        calls.append((type(model.core).__name__.lower(), task))
        return grad_rows(model, task, T, seed)

    monkeypatch.setattr(experiments.gradients, "grad_rows", counted)
    return tmp_path / "data" / "tiny", calls


def _profiles(grads):
    return {(r["model"], r["task"], "" if r["rho"] != r["rho"] else int(r["rho"]), r["when"]):
            g.sort_values("t")["grad_norm"].to_numpy()
            for r, g in ((g.iloc[0], g) for _, g in grads.groupby(
                ["model", "task", "rho", "when"], dropna=False))}


def test_the_set_is_the_seed0_runs_at_grad_T_and_the_ablation():
    plan = dataclasses.replace(TINY, Ts=(3, 5), seeds=(0, 1))
    experiments.PLANS["tiny_set"] = plan
    try:
        _, missing = experiments.gradients._grad_plan_runs("tiny_set", plan, io.data_root())
    finally:
        del experiments.PLANS["tiny_set"]
    names = {s["name"] for s in missing}
    assert "copy/rnn_T3_s0" in names and "denoise/rellstm_T3_s0" in names
    assert "denoise/rellstm_T3_rho1_s0" in names and "denoise/relrnn_T3_rho1_s0" in names
    assert not any("_T5_" in n or n.endswith("_s1") for n in names), names
    assert not any(n.startswith(("digits", "pdigits")) for n in names)
    # 2 tasks x (5 models + SAB), and 2 models x 1 rho; not the Transformer (no states h_t)
    assert "copy/sab_T3_s0" in names and not any("transformer" in n for n in names)
    assert len(names) == 2 * 6 + 2


def test_incremental_gradient_stage(tiny):
    data, calls = tiny
    log = []
    experiments.reproduce("tiny", ["train"], log=log.append, select=FIRST)
    # a run whose results are stored but whose weights are not (yet): not measured
    half = data / "copy" / "memrnn_T3_s0"
    half.mkdir(parents=True)
    for f in experiments.RESULT_FILES:
        shutil.copy(data / "copy" / "rnn_T3_s0" / f, half / f)

    experiments.reproduce("tiny", ["gradients"], log=log.append)
    out = data / "gradients"
    grads = io.load_csv(out / "grad_norms.csv")
    assert list(grads.columns) == list(experiments.gradients._GRAD_COLUMNS)
    profiles = _profiles(grads)
    assert set(profiles) == {("rnn", "copy", "", w) for w in ("start", "end")} | {
        ("relrnn", "denoise", 1, w) for w in ("start", "end")}
    assert sorted(calls) == sorted([("rnn", "copy"), ("relrnn", "denoise")] * 2)
    for key, p in profiles.items():
        assert len(p) == L and np.isfinite(p).all() and (p[-10:] > 0).all(), key
    # training moved the weights (stall_updates=1 may stop it after one update), so the
    # end differs from the start
    assert not np.allclose(profiles["rnn", "copy", "", "start"],
                           profiles["rnn", "copy", "", "end"], rtol=1e-6, atol=0)
    for name in FIRST:
        s = io.load_run(data / name)["summary"]
        model, task = name.split("/")[1].split("_")[0], name.split("/")[0]
        rows = grads[(grads["model"] == model) & (grads["task"] == task)]
        assert (rows["steps_done"] == s["steps_done"]).all()
        assert (rows["solved"] == s["solved"]).all()
        assert (rows["stop_reason"] == s["stop_reason"]).all()
    manifest = io.load_manifest(out)
    p = manifest["parameters"]
    assert sorted(p["runs"]) == sorted(FIRST)
    assert "copy/memrnn_T3_s0" in p["missing"] and "copy/lstm_T3_s0" in p["missing"]
    assert not set(p["missing"]) & set(FIRST)
    assert "not solve" in p["note"] and "stall" in p["note"]
    assert manifest["command"] == "python -m rsa reproduce --scale tiny --stages gradients"

    # one more stored run, trained with a learning rate so small that its weights do not
    # move: its end profile must equal its start, which therefore is the initialisation
    # train() started from
    first_csv = (out / "grad_norms.csv").read_text()
    train(model="lstm", task="copy", T=3, seed=0, steps=2, eval_every=1, lr=1e-30,
          out_dir=str(data / "copy" / "lstm_T3_s0"), progress=False)
    calls.clear()
    log.clear()
    experiments.reproduce("tiny", ["gradients"], log=log.append)
    assert calls == [("lstm", "copy")] * 2, calls  # its start and end, nothing else
    assert [line for line in log if "lstm_T3_s0" in line], log
    assert not [line for line in log if "rnn_T3_s0" in line and "lstm" not in line], log
    text = (out / "grad_norms.csv").read_text()
    assert text.startswith(first_csv)  # the earlier rows, kept as they were
    grads = io.load_csv(out / "grad_norms.csv")
    profiles = _profiles(grads)
    assert len(grads) == 3 * 2 * L
    start, end = profiles["lstm", "copy", "", "start"], profiles["lstm", "copy", "", "end"]
    np.testing.assert_allclose(end, start, rtol=1e-5)
    assert sorted(io.load_manifest(out)["parameters"]["runs"]) == sorted(
        FIRST + ["copy/lstm_T3_s0"])

    # nothing new: nothing computed, nothing rewritten
    calls.clear()
    log.clear()
    experiments.reproduce("tiny", ["gradients"], log=log.append)
    assert calls == [] and len(log) == 1 and "done" in log[0], log
    assert (out / "grad_norms.csv").read_text() == text


def test_a_run_trained_further_is_measured_again(tiny):
    data, calls = tiny
    experiments.reproduce("tiny", ["train"], log=lambda s: None, select=FIRST[:1])
    experiments.reproduce("tiny", ["gradients"], log=lambda s: None)
    # the same run, stored again after more updates (a longer budget)
    folder = data / FIRST[0]
    train(model="rnn", task="copy", T=3, seed=0, steps=4, eval_every=1,
          out_dir=str(folder), progress=False)
    calls.clear()
    experiments.reproduce("tiny", ["gradients"], log=lambda s: None)
    assert len(calls) == 2, calls
    grads = io.load_csv(data / "gradients" / "grad_norms.csv")
    assert len(grads) == 2 * L and (grads["steps_done"] == 4).all()
