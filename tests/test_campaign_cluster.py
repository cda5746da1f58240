"""The campaign on a cluster or a GPU (``python -m rsa reproduce --scale paper
--executor slurm``, ``--device``): one array element per job left, requeued by SLURM's
warning and resumed as if never stopped; on a GPU the torch kernel."""

from __future__ import annotations

import importlib
import signal
import sys

import pytest
import torch

from rsa import experiments, io
from rsa.experiments import campaign, cluster
from rsa.experiments.campaign import Job
from rsa.train.lock import RunLockedError
from tests.helpers import holding, on_call
from tests.test_cluster import _sbatch_options, fake_slurm  # noqa: F401  (a fixture)

train_mod = importlib.import_module("rsa.train.loop")  # where the loop looks train_step up

ARGS = dict(model="rnn", task="copy", T=3, hidden_size=8, batch=2, steps=8, eval_every=2,
            checkpoint_every=2, eval_batch=4, optimizer="rmsprop", lr=1e-3, clip=1.0)
JOBS = (Job("x", "tiny", ARGS), Job("y", "tiny, lstm", {**ARGS, "model": "lstm"}))


def _no_times(history):
    return [{k: v for k, v in r.items() if "time" not in k} for r in history]


def test_a_campaign_job_requeued_by_slurm_resumes_as_if_uninterrupted(tmp_path, monkeypatch):
    name = JOBS[0].name(0)
    job = cluster.CampaignJob("cpu", str(tmp_path / "data"), str(tmp_path / "runs"),
                              jobs=JOBS)
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        real = train_mod.train_step
        monkeypatch.setattr(train_mod, "train_step", on_call(
            real, 3, lambda: signal.raise_signal(signal.SIGUSR2)))
        with pytest.raises(SystemExit):
            job(name)
        assert calls == [signal.SIGUSR2]  # handed to submitit's handler: requeue
        work = JOBS[0].work(tmp_path / "runs", 0)
        assert torch.load(work / "checkpoint.pt", weights_only=True)["state"]["step"] == 3
        assert not (tmp_path / "data" / "paper" / name).exists()  # not stored yet
        monkeypatch.setattr(train_mod, "train_step", real)
        again = job.checkpoint(name)  # what submitit resubmits
        assert again.function is job and again.args == (name,)
        assert again.result() == name
    finally:
        signal.signal(signal.SIGUSR2, previous)
    campaign.run(tmp_path / "whole" / "data", tmp_path / "whole" / "runs", jobs=JOBS[:1],
                 log=lambda s: None)
    a, b = (io.load_run(d / "paper" / name) for d in (tmp_path / "data",
                                                      tmp_path / "whole" / "data"))
    assert _no_times(a["history"].to_dict("records")) == \
        _no_times(b["history"].to_dict("records"))
    assert len(a["summary"]["segments"]) == 2  # before and after the requeue
    assert not (tmp_path / "data" / "paper" / "lstm").exists()  # only the element's job


def test_the_campaign_as_a_job_array_trains_each_job_left_once(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    out = cluster.submit_campaign(cluster="debug", device="cpu", data_dir=data,
                                  runs_dir=runs, jobs=JOBS, log=lambda s: None)
    assert [j.result() for j in out] == [job.name(0) for job in JOBS]
    for job in JOBS:
        run = io.load_run(data / "paper" / job.name(0))
        assert run["complete"] and run["summary"]["steps_done"] == 8
    again = cluster.submit_campaign(cluster="debug", device="cpu", data_dir=data,
                                    runs_dir=runs, jobs=JOBS, log=lambda s: None)
    assert again == []  # every job stored: no array


def test_the_campaign_on_slurm_asks_for_a_gpu_per_element(tmp_path, fake_slurm):  # noqa: F811
    out = cluster.submit_campaign(device="cuda", data_dir=tmp_path / "data",
                                  runs_dir=tmp_path / "runs", jobs=JOBS, select=["y"],
                                  partition="gpu", time_min=600, log=lambda s: None)
    (script,) = fake_slurm.iterdir()
    options = _sbatch_options(script)
    assert options["gpus-per-node"] == "1" and options["partition"] == "gpu"
    assert options["time"] == "600" and options["signal"].startswith("USR2@")
    assert len(out) == 1 and "array" not in options  # one job (y): no array index
    assert options["job-name"] == "rsa-paper"


def test_on_a_gpu_a_job_trains_with_the_torch_kernel():
    args = {**ARGS, "kernel": "compiled"}
    assert campaign._on_device(args, "cpu") is args
    assert campaign._on_device(args, "cuda:1") == {**args, "device": "cuda:1",
                                                   "kernel": "torch"}


def test_the_slurm_dry_run_of_the_campaign_submits_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # not needed for a dry run
    assert experiments.main(["--scale", "paper", "--dry-run", "--executor", "slurm",
                             "--device", "cuda", "--select", "g", "--max-parallel", "2",
                             "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    (g,) = [job for job in campaign.JOBS if job.cell == "g"]
    assert f"[g] {g.name(0)}: python -m rsa train " in out
    assert "--device cuda" in out and "--kernel torch" in out
    assert "nothing was submitted" in out and "1 element(s)" in out
    assert "1 GPU(s)" in out and "at most 2 at a time" in out
    assert not (tmp_path / "runs").exists()


def test_a_select_that_names_no_campaign_job_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        experiments.main(["--scale", "paper", "--select", "zz", "--runs-dir",
                          str(tmp_path / "runs")])
    assert "--select zz names no campaign job" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_device_auto_is_resolved_on_the_node_not_where_it_is_submitted(tmp_path,
                                                                      fake_slurm):  # noqa: F811
    out = cluster.submit_campaign(device="auto", data_dir=tmp_path / "data",
                                  runs_dir=tmp_path / "runs", jobs=JOBS, select=["x"],
                                  log=lambda s: None)
    assert out[0].submission().function.device == "auto"  # what the node receives
    (script,) = fake_slurm.iterdir()
    assert _sbatch_options(script)["gpus-per-node"] == "1"


def test_the_slurm_dry_run_with_device_auto_shows_the_job_as_it_is(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    assert experiments.main(["--scale", "paper", "--dry-run", "--executor", "slurm",
                             "--device", "auto", "--select", "g", "--runs-dir",
                             str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "--kernel compiled" in out and "(on a GPU node: --device cuda --kernel torch)" in out


def test_every_select_item_must_name_a_job(tmp_path):
    with pytest.raises(ValueError, match=r"--select zz names no campaign job"):
        campaign.jobs_left(tmp_path / "data", ["x", "zz"], JOBS)
    assert campaign.jobs_left(tmp_path / "data", ["x"], JOBS) == [JOBS[0]]


def test_an_element_whose_run_another_process_trains_fails(tmp_path):
    job = cluster.CampaignJob("cpu", str(tmp_path / "data"), str(tmp_path / "runs"),
                              jobs=JOBS)
    with holding(JOBS[0].work(tmp_path / "runs", 0)) as other, \
            pytest.raises(RunLockedError, match=rf"{JOBS[0].name(0)}: trained by another"):
        job(JOBS[0].name(0))
    assert other.pid and not (tmp_path / "data" / "paper" / JOBS[0].name(0)).exists()
    with pytest.raises(ValueError, match="names no campaign job"):
        job("copy/nothing_s0")


def test_a_population_job_is_one_element_and_stores_every_seed(tmp_path):
    pop = (Job("p", "pop", ARGS, seeds=(0, 1), population=True),)
    (element,) = cluster.submit_campaign(cluster="debug", device="cpu", jobs=pop,
                                         data_dir=tmp_path / "data",
                                         runs_dir=tmp_path / "runs", log=lambda s: None)
    assert element.result() == pop[0].name(0)
    for seed in (0, 1):
        assert io.load_run(tmp_path / "data" / "paper" / pop[0].name(seed))["complete"]
