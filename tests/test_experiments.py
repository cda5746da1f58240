"""`python -m rsa reproduce` on a tiny plan: every stage writes its results with a
manifest, and a second call skips what is stored (resumable)."""

from __future__ import annotations

import pytest

from rsa import experiments, io
from rsa.models.heads import MODELS

TINY = experiments.Plan(Ts=(3,), seeds=(0,), steps=2, eval_every=1, rhos=(1,), rho_T=3,
                        digits_steps=1, transfer_Ts=(3,), transfer_max=12, grad_T=3)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv(io.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(io.RUNS_ENV, str(tmp_path / "runs"))
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


def test_shards_split_the_train_stage(tiny):
    """Two shards train disjoint halves of the runs; together, all of them."""
    logs = {0: [], 1: []}
    for i in (0, 1):
        experiments.reproduce("tiny", ["train"], log=logs[i].append, shard=(i, 2))
    names = {i: {line.split("] ")[1].split(":")[0] for line in log if "training" in line}
             for i, log in logs.items()}
    assert names[0] and names[1] and not names[0] & names[1]
    everything = {line.split("] ")[1].split(":")[0] for line in logs[0] + logs[1]
                  if line.startswith("[train")}
    assert names[0] | names[1] == everything
    log = []
    experiments.reproduce("tiny", ["train"], log=log.append)
    assert all("done" in line for line in log if line.startswith("[train")), log


@pytest.mark.parametrize("shard,stages,match", [
    ((2, 2), ["train"], r"shard must be \(i, n\) with 0 <= i < n, got \(2, 2\)"),
    ((0, 2), ["train", "transfer"], r"shard applies to stages \['train'\] only"),
])
def test_shard_errors(shard, stages, match):
    with pytest.raises(ValueError, match=match):
        experiments.reproduce("session", stages, shard=shard)


def test_shard_command_line(capsys):
    with pytest.raises(SystemExit):
        experiments.main(["--stages", "train", "--shard", "one/two"])
    assert "shard must look like i/n (e.g. 0/2), got 'one/two'" in capsys.readouterr().err


def test_cost_stage_writes_both_tables_and_resumes(tiny, monkeypatch):
    """The cost stage times every model (fused defaults) and the unfused MemRNN (up to
    ``unfused_max_T``), RelRNN and RelLSTM; memory is measured elsewhere (test_measure),
    faked here."""
    import dataclasses

    import rsa.experiments.bench
    import rsa.experiments.measure

    def fake_peak(*args, **kwargs):
        return {"peak_bytes": 2**20, "method": "fake"}

    monkeypatch.setattr(rsa.experiments.bench, "peak_memory", fake_peak)
    monkeypatch.setattr(rsa.experiments.measure, "peak_memory", fake_peak)
    monkeypatch.setitem(experiments.PLANS, "tiny",
                        dataclasses.replace(TINY, cost_Ts=(3, 4), unfused_max_T=3))
    experiments.reproduce("tiny", ("cost",), log=lambda s: None)
    cost = io.load_csv(tiny / "cost" / "cost.csv")
    assert sorted(zip(cost["model"], cost["T"], strict=True)) == sorted(
        (m, T) for m in MODELS for T in (3, 4))
    unfused = io.load_csv(tiny / "cost" / "cost_unfused.csv")
    assert list(zip(unfused["model"], unfused["T"], strict=True)) == [
        ("memrnn_unfused", 3), ("relrnn_unfused", 3), ("relrnn_unfused", 4),
        ("rellstm_unfused", 3), ("rellstm_unfused", 4)]
    for table in (cost, unfused):
        assert ((table["time_min_ms"] > 0) & (table["time_min_ms"] <= table["time_ms"])).all()
        assert (table["peak_mib"] == 1).all() and (table["batch"] == 10).all()
    assert io.load_manifest(tiny / "cost")["command"].endswith("--stages cost")
    log = []
    experiments.reproduce("tiny", ("cost",), log=log.append)
    assert log and all("done" in line for line in log), log


def test_the_baselines_follow_the_seed0_runs_of_the_papers_models():
    """SAB and the Transformer join copy and denoise at the converged plan's delays with
    seed 0, right after the paper's five models' seed-0 runs, and nowhere else."""
    names = [r["name"] for r in experiments.plan_runs("converged")]
    plan = experiments.PLANS["converged"]
    paper0 = [experiments.run_name(t, m, T, 0) for t in ("copy", "denoise") for T in plan.Ts
              for m in MODELS]
    base = [experiments.run_name(t, m, T, 0) for t in ("copy", "denoise") for T in plan.Ts
            for m in experiments.BASELINES]
    short = [experiments.run_name("copy", "sab", T, 0) for T in plan.sab_short_Ts]
    assert names[:len(paper0) + len(base)] == paper0 + base
    assert [n for n in names if any(f"/{m}_" in n for m in experiments.BASELINES)] == (
        base + short)
    assert all(r["steps"] == plan.steps and r["stop_when_solved"]
               for r in experiments.plan_runs("converged") if r["name"] in base)


def test_the_converged_plan_adds_sab_on_copy_at_short_delays_after_the_baselines():
    """SAB on copy at T = 20 and 50, seed 0, right after the baselines tier, with the
    same rules as the other copy runs (no variant); the other plans have none."""
    plan = experiments.PLANS["converged"]
    assert plan.sab_short_Ts == (20, 50)
    runs = experiments.plan_runs("converged")
    names = [r["name"] for r in runs]
    n_base = len(plan.Ts) * 2 * (len(MODELS) + len(experiments.BASELINES))
    assert names[n_base:n_base + 2] == ["copy/sab_T20_s0", "copy/sab_T50_s0"]
    assert names[n_base + 2] == experiments.run_name("copy", MODELS[0], plan.Ts[0], 1)
    ref = next(r for r in runs if r["name"] == "copy/sab_T100_s0")
    for r in runs[n_base:n_base + 2]:
        assert {k: v for k, v in r.items() if k not in ("T", "name")} == {
            k: v for k, v in ref.items() if k not in ("T", "name")}
        assert "variant" not in r and r["stop_when_nan"] and r["stall_updates"] == 5000
    assert experiments.transfer_delays(plan, "sab", 20) == [20, 40, 100, 200]
    for scale in ("session", "full"):
        assert experiments.PLANS[scale].sab_short_Ts == ()
        assert not any(r["T"] in (20, 50) for r in experiments.plan_runs(scale)
                       if r.get("T") is not None)


def test_a_reduced_budget_is_stated_and_grows_later(tiny):
    """``budget`` caps the updates, the run says so in its config and stops by the
    budget; a later call with the plan's budget trains it further from its checkpoint."""
    select = ["copy/rnn_T3_s0"]
    experiments.reproduce("tiny", ["train"], log=lambda s: None, select=select, budget=1)
    run = io.load_run(tiny / "copy/rnn_T3_s0")
    assert run["config"]["steps"] == 1 and run["summary"]["steps_done"] == 1
    assert run["summary"]["stop_reason"] == "budget" and not run["summary"]["solved"]
    log = []
    experiments.reproduce("tiny", ["train"], log=log.append, select=select, budget=1)
    assert "done" in log[0], log
    log.clear()
    experiments.reproduce("tiny", ["train"], log=log.append, select=select)
    assert "training 2 updates" in log[0], log
    run = io.load_run(tiny / "copy/rnn_T3_s0")
    assert run["config"]["steps"] == 2 and run["summary"]["steps_done"] == 2
    assert len(run["history"]) == 2  # resumed: the first update's evaluation is kept


@pytest.mark.parametrize("budget,stages,match", [
    (0, ["train"], "budget must be an int >= 1 \\(updates\\), got 0"),
    ("10", ["train"], "budget must be an int >= 1 \\(updates\\), got '10'"),
    (10, ["train", "cost"], r"budget applies to stages \['train'\] only"),
])
def test_budget_errors(budget, stages, match):
    with pytest.raises(ValueError, match=match):
        experiments.reproduce("session", stages, budget=budget)


def test_models_in_orders_by_the_registry_and_rejects_unknown_names():
    assert experiments.models_in(["transformer", "rnn", "sab", "rnn", "rellstm"]) == [
        "rnn", "rellstm", "sab", "transformer"]
    assert experiments.models_in([]) == []
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['gru'\] in the data"):
        experiments.models_in(["rnn", "gru"])


def test_transfer_delays_cap_the_quadratic_evaluations():
    plan = experiments.PLANS["converged"]
    assert experiments.transfer_delays(plan, "sab", 100) == [100, 200, 500, 1000]
    assert experiments.transfer_delays(plan, "memrnn", 200) == [200, 400, 1000, 2000]
    # MemRNN as far as it goes: at its cap where a multiple (or 5000) passes it
    assert experiments.transfer_delays(plan, "memrnn", 100) == [100, 200, 500, 1000, 2000]
    assert experiments.transfer_delays(plan, "memrnn", 500) == [500, 1000, 2000]
    assert experiments.transfer_delays(plan, "memrnn", 2000) == [2000]
    assert experiments.transfer_delays(plan, "transformer", 200) == [200, 400, 1000, 2000,
                                                                      5000]


def test_the_converged_cost_stage_measures_the_baselines_with_references(tiny, monkeypatch):
    """A converged plan adds cost_baselines/cost.csv: SAB and the Transformer with the LSTM
    and RelLSTM as references, timed in the same rounds; cost.csv keeps the paper's
    models; a second call keeps both."""
    import dataclasses

    import rsa.experiments.bench
    import rsa.experiments.measure

    def fake_peak(*args, **kwargs):
        return {"peak_bytes": 2**20, "method": "fake"}

    monkeypatch.setattr(rsa.experiments.bench, "peak_memory", fake_peak)
    monkeypatch.setattr(rsa.experiments.measure, "peak_memory", fake_peak)
    monkeypatch.setattr(experiments.cost, "BASELINE_COST_TS", (3, 4))
    monkeypatch.setitem(experiments.PLANS, "tiny", dataclasses.replace(
        TINY, cost_Ts=(3,), unfused_max_T=3, converged=True))
    experiments.reproduce("tiny", ("cost",), log=lambda s: None)
    assert set(io.load_csv(tiny / "cost" / "cost.csv")["model"]) == set(MODELS)
    base = io.load_csv(tiny / "cost_baselines" / "cost.csv")
    assert sorted(zip(base["model"], base["T"], strict=True)) == sorted(
        (m, T) for m in ("lstm", "rellstm", "sab", "transformer") for T in (3, 4))
    assert ((base["time_min_ms"] > 0) & (base["time_min_ms"] <= base["time_ms"])).all()
    manifest = io.load_manifest(tiny / "cost_baselines")
    assert manifest["parameters"]["references"] == ["lstm", "rellstm"]
    assert manifest["command"].endswith("--stages cost")
    log = []
    experiments.reproduce("tiny", ("cost",), log=log.append)
    assert len(log) == 3 and all("done" in line for line in log), log
