"""Scale-out without a cluster (issue 15): devices, data/runs folders, SLURM submission
through submitit (its local executor, and a fake ``sbatch`` that keeps the scripts),
SIGUSR1/SIGUSR2 checkpoint and requeue, ``--dry-run`` estimates, TensorBoard scalars."""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import torch

from rsa import book, experiments, io
from rsa.__main__ import main as rsa_main
from rsa.experiments import cluster, report
from rsa.train import train
from rsa.train.lock import claim
from tests.helpers import crash, on_call

train_mod = importlib.import_module("rsa.train.loop")  # where the loop looks train_step up

# a converged-style plan (incremental stages) small enough for seconds of CPU
TINY = experiments.Plan(Ts=(3,), seeds=(0,), steps=4, eval_every=1, rhos=(1,), rho_T=3,
                        digits_steps=1, transfer_max=12, grad_T=3, cost_Ts=(3,),
                        unfused_max_T=3, converged=True)
TWO = ["copy/rnn_T3_s0", "copy/lstm_T3_s0"]
RUN = dict(model="rnn", task="copy", T=3, hidden_size=6, batch=4, eval_batch=8,
           eval_every=1, checkpoint_every=100, progress=False)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv(io.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(io.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.setitem(experiments.PLANS, "tiny", TINY)
    return tmp_path


def strip_times(history):
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in history]


def same_parameters(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


def _signal_at_update(monkeypatch, signum, update):
    real = train_mod.train_step
    monkeypatch.setattr(train_mod, "train_step",
                        on_call(real, update, lambda: signal.raise_signal(signum)))
    return real


# -- SIGUSR1/SIGUSR2: finish the update, save, stop; the rerun resumes exactly ------------

@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2])
def test_sigusr_saves_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, monkeypatch,
                                                                 signum):
    full = train(**RUN, steps=6)
    seen = []
    previous = signal.signal(signum, lambda s, f: seen.append(s))
    try:
        real = _signal_at_update(monkeypatch, signum, 3)
        with pytest.raises(SystemExit) as stop:
            train(**RUN, steps=6, out_dir=str(tmp_path))
        assert stop.value.code == 128 + signum
        assert seen == []  # the loop took the signal, not the handler before it ...
        handler = signal.getsignal(signum)
        handler(signum, None)  # ... which is back in place afterwards
        assert seen == [signum]
        ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
        assert ckpt["state"]["step"] == 3  # update 3 was finished and saved
        monkeypatch.setattr(train_mod, "train_step", real)
        resumed = train(**RUN, steps=6, out_dir=str(tmp_path))
    finally:
        signal.signal(signum, previous)
    assert strip_times(resumed.history) == strip_times(full.history)
    assert same_parameters(resumed.model, full.model)


def test_a_job_hands_the_signal_to_submitit_and_its_requeue_resumes(tiny, monkeypatch):
    """The array element's job (cluster.PlanJob) stopped by SIGUSR2: the checkpoint is
    saved, the handler that was there before (submitit's: checkpoint() and requeue) is
    called, and the requeued call finishes the run as an uninterrupted one."""
    job = cluster.PlanJob("tiny", TINY, ("train",), "cpu", str(tiny / "data"),
                          str(tiny / "runs"))
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        real = _signal_at_update(monkeypatch, signal.SIGUSR2, 2)
        with pytest.raises(SystemExit):
            job("copy/rnn_T3_s0")
        assert calls == [signal.SIGUSR2]
        resubmitted = job.checkpoint("copy/rnn_T3_s0")
        assert resubmitted.function is job and resubmitted.args == ("copy/rnn_T3_s0",)
        work = tiny / "runs" / "tiny" / "copy" / "rnn_T3_s0"
        assert torch.load(work / "checkpoint.pt", weights_only=True)["state"]["step"] == 2
        with claim(work) as owner:  # the claim is released for the next attempt
            assert owner is None and (work / ".lock").read_text() == str(os.getpid())
        monkeypatch.setattr(train_mod, "train_step", real)
        resubmitted.result()  # the requeued job
    finally:
        signal.signal(signal.SIGUSR2, previous)
    whole = cluster.PlanJob("tiny", TINY, ("train",), "cpu", str(tiny / "whole"),
                            str(tiny / "whole_runs"))
    whole("copy/rnn_T3_s0")
    a = io.load_json(tiny / "data" / "tiny" / "copy" / "rnn_T3_s0" / "results.json")
    b = io.load_json(tiny / "whole" / "tiny" / "copy" / "rnn_T3_s0" / "results.json")
    assert a["complete"] and b["complete"]
    assert strip_times(a["history"]) == strip_times(b["history"])
    assert len(a["summary"]["segments"]) == 2  # two parts: before and after the requeue


# -- submitit: the local executor runs a tiny plan end to end -----------------------------

def test_submitit_local_executor_runs_a_tiny_plan_end_to_end(tiny):
    out = cluster.submit("tiny", ["train", "transfer"], cluster="local", select=TWO,
                         device="cpu", data_dir=tiny / "data", runs_dir=tiny / "runs",
                         tensorboard=True, log=lambda s: None)
    assert len(out["array"]) == 2 and set(out["stages"]) == {"transfer"}
    assert sorted(j.result() for j in out["array"]) == sorted(TWO)
    for name in TWO:
        run = io.load_run(tiny / "data" / "tiny" / name)
        assert run["complete"] and run["summary"]["steps_done"] == TINY.steps
        work = tiny / "runs" / "tiny" / name
        assert list(work.glob("events.out.tfevents.*"))  # TensorBoard next to history.csv
    transfer = io.load_csv(tiny / "data" / "tiny" / "transfer" / "transfer.csv")
    assert sorted(set(transfer["model"])) == ["lstm", "rnn"]  # ran after the array
    # submitting again: everything selected is stored, no array
    again = cluster.submit("tiny", ["train"], cluster="local", select=TWO, device="cpu",
                           data_dir=tiny / "data", runs_dir=tiny / "runs",
                           log=lambda s: None)
    assert again["array"] == []


# -- SLURM: a fake sbatch keeps the submitted scripts -------------------------------------

@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    kept = tmp_path / "sbatch"
    kept.mkdir()
    (bin_ / "sbatch").write_text(
        "#!/bin/sh\n"
        f'n=$(ls "{kept}" | wc -l)\n'
        'for last; do :; done\n'
        f'cp "$last" "{kept}/$n.sh"\n'
        'echo "Submitted batch job $((4200 + n))"\n')
    (bin_ / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit looks for it
    for f in bin_.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    return kept


def _sbatch_options(script: Path) -> dict:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script.read_text(), re.M))


def test_slurm_submission_is_one_array_and_dependent_stages(tiny, fake_slurm):
    out = cluster.submit("tiny", ["train", "transfer", "gradients", "cost"],
                         cluster="slurm", select=["copy/*"], device="cuda",
                         data_dir=tiny / "data", runs_dir=tiny / "runs", partition="gpu",
                         mem_gb=16, time_min=120, max_parallel=3, log=lambda s: None)
    scripts = sorted(fake_slurm.iterdir(), key=lambda p: int(p.stem))
    assert len(scripts) == 4  # one array, three stages
    n_copy = len([r for r in experiments.plan_runs("tiny") if r["task"] == "copy"])
    array = _sbatch_options(scripts[0])
    assert array["array"] == f"0-{n_copy - 1}%3"  # one element per run
    assert array["gpus-per-node"] == "1"
    assert array["signal"].startswith("USR2@")  # time to checkpoint before the end
    assert array["partition"] == "gpu" and array["time"] == "120"
    assert array["mem"] == "16GB"
    assert "dependency" not in array
    assert len(out["array"]) == n_copy and out["array"][0].job_id == "4200_0"
    for script in scripts[1:]:
        options = _sbatch_options(script)
        assert options["dependency"] == "afterok:4200"
        assert "array" not in options and options["gpus-per-node"] == "1"
    assert [j.job_id for j in out["stages"].values()] == ["4201", "4202", "4203"]


def test_slurm_cpu_jobs_ask_for_no_gpu_and_the_cli_submits(tiny, fake_slurm, capsys):
    code = experiments.main(["--scale", "tiny", "--stages", "train", "--executor", "slurm",
                             "--device", "cpu", "--select", "copy/*_T3_s0", "--data-dir",
                             str(tiny / "data"), "--runs-dir", str(tiny / "runs")])
    assert code == 0
    (script,) = fake_slurm.iterdir()
    options = _sbatch_options(script)
    n = len(experiments.select_runs(experiments.plan_runs("tiny"), ["copy/*_T3_s0"]))
    assert options["array"].split("%")[0] == f"0-{n - 1}"
    assert "gpus-per-node" not in options and "gres" not in options
    assert f"{n} run(s) as job array 4200" in capsys.readouterr().out
    assert (tiny / "runs" / "slurm" / "tiny").is_dir()  # submitit's folder under runs


def test_slurm_without_slurm_is_a_clear_error(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no srun, no sbatch
    with pytest.raises(ValueError, match=r"--executor slurm: .*srun.*submit from a machine "
                                         r"of the cluster"):
        cluster.submit("tiny", ["train"], device="cpu", data_dir=tiny / "data",
                       runs_dir=tiny / "runs")


def test_missing_submitit_is_a_clear_error(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ValueError, match=r"--executor slurm needs the submitit package.*"
                                         r"pip install -e '\.\[cluster\]' in the checkout"):
        cluster.submit("tiny", ["train"], device="cpu")


# -- devices, folders, determinism -----------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        experiments.main(["--scale", "session", "--stages", "cost", "--device", "cuda:1"])
    err = capsys.readouterr().err
    assert "--device cuda:1" in err and "CUDA is not available" in err
    with pytest.raises(SystemExit):
        experiments.main(["--scale", "session", "--stages", "cost", "--device", "gpu"])
    assert "--device must be cpu, cuda, cuda:N or auto, got 'gpu'" in capsys.readouterr().err


def test_every_stage_gets_the_device(tiny, monkeypatch):
    got = {}
    for stage in ("transfer", "gradients", "cost"):
        monkeypatch.setitem(experiments.stages._STAGE_FUNCS, stage,
                            lambda scale, plan, store, log, device, s=stage:
                            got.update({s: device}))
    monkeypatch.setattr(experiments.stages, "stage_train",
                        lambda *a: got.update({"train": a[6]}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    experiments.reproduce("tiny", experiments.STAGES, log=lambda s: None, device="auto")
    assert got == dict.fromkeys(experiments.STAGES, "cpu")


def test_data_and_runs_dirs_and_the_environment_variable(tiny, monkeypatch):
    data, runs = tiny / "elsewhere" / "data", tiny / "elsewhere" / "runs"
    experiments.reproduce("tiny", ["train"], log=lambda s: None, select=["copy/rnn_T3_s0"],
                          data_dir=data, runs_dir=runs)
    assert io.load_run(data / "tiny" / "copy" / "rnn_T3_s0")["complete"]
    assert (runs / "tiny" / "copy" / "rnn_T3_s0" / "checkpoint.pt").is_file()
    assert not (tiny / "data").exists() and not (tiny / "runs").exists()
    assert io.data_root() == tiny / "data"  # the defaults are unchanged afterwards
    monkeypatch.setenv(io.DATA_ENV, str(data))
    monkeypatch.setenv(io.RUNS_ENV, str(runs))
    assert io.data_root() == data and io.runs_root() == runs
    assert book.data_dir("tiny") == data / "tiny"  # what the chapters read
    monkeypatch.delenv(io.DATA_ENV)
    assert book.data_dir() == io.REPO_ROOT / "data"
    stored, _ = experiments.load_stored_runs("tiny", data=data)
    assert list(stored) == ["copy/rnn_T3_s0"]


def test_writing_inside_site_packages_is_refused(tiny):
    inside = tiny / "venv" / "lib" / "python3.11" / "site-packages" / "data"
    with pytest.raises(ValueError, match=r"inside an installed package.*--data-dir DIR "
                                         r"\(or set RSA_DATA_DIR=DIR\)"):
        experiments.reproduce("tiny", ["train"], log=lambda s: None, data_dir=inside)
    with pytest.raises(ValueError, match=r"--runs-dir DIR \(or set RSA_RUNS_DIR=DIR\)"):
        experiments.reproduce("tiny", ["train"], log=lambda s: None, runs_dir=inside)
    assert not inside.exists()


def test_deterministic_is_recorded_in_the_manifests(tiny):
    try:
        assert experiments.main(["--scale", "tiny", "--stages", "train", "--select",
                                 "copy/rnn_T3_s0", "--deterministic"]) == 0
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
    manifest = io.load_manifest(tiny / "data" / "tiny" / "copy" / "rnn_T3_s0")
    assert manifest["machine"]["deterministic_algorithms"] is True
    experiments.main(["--scale", "tiny", "--stages", "train", "--select", "copy/lstm_T3_s0"])
    manifest = io.load_manifest(tiny / "data" / "tiny" / "copy" / "lstm_T3_s0")
    assert manifest["machine"]["deterministic_algorithms"] is False


# -- dry run ------------------------------------------------------------------------------

def test_dry_run_multiplies_updates_by_the_measured_time(tiny):
    cost = tiny / "data" / "tiny" / "cost"
    io.write_csv(cost / "cost.csv", [
        {"model": m, "T": T, "batch": 10, "time_ms": ms}
        for m, T, ms in (("rnn", 2, 10.0), ("rnn", 4, 30.0), ("lstm", 3, 7.2))])
    rows = {r["name"]: r for r in report.estimate("tiny", "cpu")}
    rnn, lstm = rows["copy/rnn_T3_s0"], rows["copy/lstm_T3_s0"]
    assert rnn["ms_per_update"] == pytest.approx(20.0)  # between T = 2 and 4
    assert rnn["source"].startswith("interpolated from T=2,4")
    assert rnn["hours"] == pytest.approx(TINY.steps * 20.0 / 3.6e6)
    assert lstm["ms_per_update"] == 7.2 and lstm["source"].startswith("measured")
    assert rows["copy/memrnn_T3_s0"]["hours"] is None  # no measurement: said, not guessed
    text = report.dry_run("tiny", "cpu")
    assert "no measurement" in text and "No measurement of the time per update" in text
    assert re.search(r"Estimated CPU time of the \d+ runs to run", text)


def test_dry_run_counts_a_run_stopped_by_a_smaller_budget_as_to_run(tiny):
    """As the train stage does: a run stored with --budget below the plan's is trained
    further by a later call, so the dry run lists it as to run, not as stored."""
    experiments.reproduce("tiny", ["train"], log=lambda s: None, select=["copy/rnn_T3_s0"],
                          budget=1)
    stored = {r["name"]: r["stored"] for r in report.estimate("tiny", "cpu")}
    assert stored["copy/rnn_T3_s0"] is False
    experiments.reproduce("tiny", ["train"], log=lambda s: None, select=["copy/rnn_T3_s0"])
    stored = {r["name"]: r["stored"] for r in report.estimate("tiny", "cpu")}
    assert stored["copy/rnn_T3_s0"] is True


def test_dry_run_cli_on_the_full_plan_gives_totals(capsys):
    assert experiments.main(["--scale", "full", "--dry-run"]) == 0
    text = capsys.readouterr().out
    n = len(experiments.plan_runs("full"))
    assert f"Plan 'full' on cpu: {n} runs" in text
    assert re.search(r"\d+\.\d CPU-hours", text)
    assert experiments.main(["--scale", "full", "--dry-run", "--device", "cuda"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\d+\.\d GPU-hours", text) and "gpu_session.log" in text
    assert "No measurement of the time per update on cuda" in text  # the pixel tasks


# -- TensorBoard --------------------------------------------------------------------------

def test_tensorboard_scalars_are_the_history(tmp_path):
    # the cluster extra (make setup installs it): this test needs tensorboard, not skipped
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(**RUN, steps=4, out_dir=str(tmp_path), tensorboard=True)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    val = [(e.step, e.value) for e in events.Scalars("val/loss")]
    assert val == [(r["step"], pytest.approx(r["val_loss"], rel=1e-6))
                   for r in result.history]
    assert {"train/loss", "train/accuracy", "val/accuracy", "time/wall_s"} <= set(
        events.Tags()["scalars"])


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code = rsa_main(["train", "--model", "rnn", "--T", "3", "--steps", "1", "--out-dir",
                     str(tmp_path), "--no-progress", "--tensorboard"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--tensorboard needs the tensorboard package" in err
    assert "pip install -e '.[cluster]' in the checkout" in err
    assert "rsa[cluster]" not in err  # that would install the unrelated Python-RSA
    assert not (tmp_path / "results.json").exists()


def test_status_and_dry_run_read_the_data_dir_given(tiny, capsys):
    empty = tiny / "fresh"
    with pytest.raises(SystemExit):  # a folder that does not exist is named, not read as empty
        experiments.main(["--scale", "tiny", "--status", "--data-dir", str(empty)])
    assert f"--data-dir {str(empty)!r} is not a folder" in capsys.readouterr().err
    empty.mkdir()
    assert experiments.main(["--scale", "tiny", "--status", "--data-dir", str(empty)]) == 0
    n = len(experiments.plan_runs("tiny"))
    out = capsys.readouterr().out
    assert f"0 runs stored (0.0 hours of training, the sum of their wall times), {n} not " \
        f"run yet." in out
    assert out.rstrip().endswith(f"0 done, 0 stored at a reduced budget (the train stage "
                                 f"trains them further), {n} not stored.")
    experiments.reproduce("tiny", ["train"], log=lambda s: None, select=["copy/rnn_T3_s0"],
                          data_dir=empty)
    assert experiments.main(["--scale", "tiny", "--dry-run", "--data-dir", str(empty)]) == 0
    m = re.search(r"Plan 'tiny' on cpu: (\d+) runs, 1 stored, (\d+) to run\.",
                  capsys.readouterr().out)
    # n runs, and the converged plan's alternative of the stored run (not solved in 4)
    assert m and (int(m[1]), int(m[2])) == (n + 1, n)


def test_tensorboard_of_a_resumed_run_holds_each_update_once(tmp_path, monkeypatch):
    """A crash after the evaluation of update 3 but before its checkpoint (every 2
    updates): the resumed run redoes update 3, and purges the first event of it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = {**RUN, "checkpoint_every": 2}
    real = train_mod.train_step
    monkeypatch.setattr(train_mod, "train_step", on_call(real, 4, crash))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(**run, steps=6, out_dir=str(tmp_path), tensorboard=True)
    monkeypatch.setattr(train_mod, "train_step", real)
    result = train(**run, steps=6, out_dir=str(tmp_path), tensorboard=True)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    val = [(e.step, e.value) for e in events.Scalars("val/loss")]
    assert val == [(r["step"], pytest.approx(r["val_loss"], rel=1e-6))
                   for r in result.history]
    assert [s for s, _ in val] == [1, 2, 3, 4, 5, 6]


def test_status_and_dry_run_count_the_plan_by_one_rule(capsys):
    """--status and --dry-run agree on the stored converged plan (they once said 138
    stored, 0 to run, and 147 stored, 5 to run)."""
    assert experiments.main(["--scale", "converged", "--status"]) == 0
    status = capsys.readouterr().out
    m = re.search(r"All (\d+) runs of the plan.*?: (\d+) done, (\d+) stored at a reduced "
                  r"budget .*?, (\d+) not stored\.", status, re.S)
    assert m, status[-400:]
    total, done, reduced, missing = map(int, m.groups())
    assert experiments.main(["--scale", "converged", "--dry-run"]) == 0
    d = re.search(r"Plan 'converged' on cpu: (\d+) runs, (\d+) stored, (\d+) to run",
                  capsys.readouterr().out)
    assert d and tuple(map(int, d.groups())) == (total, done, reduced + missing)
    assert total == done + reduced + missing == len(experiments.plan_runs("converged"))


def test_slurm_dry_run_says_what_it_would_submit_and_submits_nothing(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # not needed for a dry run
    n = len(experiments.plan_runs("tiny"))
    text = cluster.submit("tiny", experiments.STAGES, device="cpu", gpus=0, cpus=2,
                          mem_gb=4, time_min=90, max_parallel=3, dry_run=True)
    assert "nothing was submitted" in text
    assert f"one job array 'rsa-tiny-train' of {n} element(s)" in text
    assert "at most 3 at a time" in text and "0 GPU(s), 2 CPU(s), 4 GB, 90 min" in text
    assert text.count("--dependency=afterok:<array>") == 3  # transfer, gradients, cost
    assert not (tiny / "runs").exists()  # no submitit folder, nothing written
