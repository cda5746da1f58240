"""`python -m rsa reproduce` on a tiny plan: every stage writes its results with a
manifest, and a second call skips what is stored (resumable)."""

from __future__ import annotations

import pytest

from rsa import experiments, io
from rsa.heads import MODELS

TINY = experiments.Plan(Ts=(3,), seeds=(0,), steps=2, eval_every=1, rhos=(1,), rho_T=3,
                        digits_steps=1, transfer_Ts=(3,), transfer_max=12, grad_T=3)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "DATA", tmp_path / "data")
    monkeypatch.setattr(experiments, "RUNS", tmp_path / "runs")
    monkeypatch.setitem(experiments.PLANS, "tiny", TINY)
    return tmp_path / "data" / "tiny"


def test_reproduce_writes_every_stage_and_resumes(tiny):
    log = []
    experiments.reproduce("tiny", ("train", "transfer", "gradients"), log=log.append)
    for task in ("copy", "denoise"):
        for model in MODELS:
            run = io.load_run(tiny / experiments.run_name(task, model, 3, 0))
            assert run["complete"] and run["summary"]["wall_time_s"] > 0
            assert not (tiny / experiments.run_name(task, model, 3, 0) / "checkpoint.pt").exists()
    rho_run = tiny / experiments.run_name("denoise", "relrnn", 3, 0, rho=1)
    assert (rho_run / "results.json").is_file()
    assert (tiny / experiments.run_name("digits", "lstm", None, 0) / "manifest.json").is_file()

    transfer = io.load_csv(tiny / "transfer" / "transfer.csv")
    assert set(transfer["model"]) == set(MODELS)
    assert sorted(set(transfer["T"])) == [3, 6, 12, 15, 30]
    assert ((transfer["accuracy"] >= 0) & (transfer["accuracy"] <= 1)).all()
    grads = io.load_csv(tiny / "gradients" / "grad_norms.csv")
    assert set(grads["when"]) == {"start", "end"}
    assert grads["t"].max() == 3 + 20  # every step of a T + 20 sequence
    for stage in ("transfer", "gradients"):
        assert io.load_manifest(tiny / stage)["command"].endswith(f"--stages {stage}")

    log.clear()
    experiments.reproduce("tiny", ("train", "transfer", "gradients"), log=log.append)
    assert all("done" in line for line in log), log  # nothing is recomputed


@pytest.mark.parametrize("args,match", [
    (("huge",), "scale must be one of"),
    (("session", ("train", "plot")), r"unknown stage\(s\) \['plot'\]"),
])
def test_reproduce_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        experiments.reproduce(*args)
