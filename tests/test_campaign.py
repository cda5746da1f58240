"""The campaign at the authors' protocol (rsa.experiments.campaign): its jobs' commands are valid
train commands, and a run resumes on a fresh clone from its committed in-flight state
exactly as if it had never stopped."""

from __future__ import annotations

import shutil

import pytest
import torch

from rsa import io
from rsa.__main__ import _train_parser
from rsa.experiments import campaign
from rsa.experiments.campaign import Job

ARGS = dict(model="rnn", task="copy", T=3, hidden_size=8, batch=2, steps=8, eval_every=2,
            checkpoint_every=2, eval_batch=4, optimizer="rmsprop", lr=1e-3, clip=1.0)


def _no_times(rows):
    return [{k: v for k, v in r.items() if "time" not in k} for r in rows]


def test_a_run_resumes_from_its_committed_state_on_a_fresh_clone_exactly(tmp_path):
    jobs = (Job("x", "tiny", ARGS),)
    name = jobs[0].name(0)
    campaign.run(tmp_path / "A" / "data", tmp_path / "A" / "runs", jobs=jobs,
                 log=lambda s: None)  # uninterrupted
    # B: trained 4 updates, then the process died (no results written), snapshot taken
    work = jobs[0].work(tmp_path / "B" / "runs", 0)
    from rsa.train import train

    train(seed=0, out_dir=str(work), progress=False, **{**ARGS, "steps": 4})
    (work / "results.json").unlink()
    assert campaign.snapshot(tmp_path / "B" / "data", tmp_path / "B" / "runs", jobs=jobs,
                             log=lambda s: None) == 1
    committed = tmp_path / "B" / "data" / "paper" / "inflight" / f"{name}.pt"
    assert torch.load(committed, weights_only=True)["state"]["step"] == 4
    # C: a fresh clone holds data/ only (runs/ is not committed)
    shutil.copytree(tmp_path / "B" / "data", tmp_path / "C" / "data")
    log = []
    campaign.run(tmp_path / "C" / "data", tmp_path / "C" / "runs", jobs=jobs, log=log.append)
    assert any("resuming from the committed state at update 4" in s for s in log), log
    assert not (tmp_path / "C" / "data" / "paper" / "inflight" / f"{name}.pt").exists()
    a, c = (io.load_run(tmp_path / x / "data" / "paper" / name) for x in "AC")
    assert _no_times(a["history"].to_dict("records")) == \
        _no_times(c["history"].to_dict("records"))
    wa, wc = (torch.load(tmp_path / x / "data" / "paper" / name / "model.pt",
                         weights_only=True) for x in "AC")
    wa, wc = wa.get("model", wa), wc.get("model", wc)
    assert wa.keys() == wc.keys() and all(torch.equal(wa[k], wc[k]) for k in wa)
    assert len(c["summary"]["segments"]) == 2 and c["summary"]["steps_done"] == 8
    assert all(s["git"]["commit"] for s in c["summary"]["segments"])


def test_a_snapshot_never_replaces_a_committed_state_by_an_older_one(tmp_path):
    jobs = (Job("x", "tiny", ARGS),)
    from rsa.train import train

    work = jobs[0].work(tmp_path / "runs", 0)
    train(seed=0, out_dir=str(work), progress=False, **{**ARGS, "steps": 4})
    (work / "results.json").unlink()
    campaign.snapshot(tmp_path / "data", tmp_path / "runs", jobs=jobs, log=lambda s: None)
    shutil.rmtree(tmp_path / "runs")
    train(seed=0, out_dir=str(work), progress=False, **{**ARGS, "steps": 2})
    (work / "results.json").unlink()
    assert campaign.snapshot(tmp_path / "data", tmp_path / "runs", jobs=jobs,
                             log=lambda s: None) == 0
    table = campaign.status_table(tmp_path / "data", jobs)
    assert table.loc[0, "updates done"] == 4 and table.loc[0, "state"] == "in flight"


@pytest.mark.parametrize("job", campaign.JOBS, ids=lambda j: j.name(j.seeds[0]))
def test_every_job_command_is_a_valid_train_command(job):
    import argparse

    p = argparse.ArgumentParser()
    _train_parser(p)
    words = campaign.job_command(job).split()
    assert words[:4] == ["python", "-m", "rsa", "train"]
    a = p.parse_args(words[4:])
    for k, v in job.args.items():
        assert getattr(a, k) == v, (k, getattr(a, k), v)
    assert not a.stall_updates and not a.patience_updates or job.cell == "f"  # no stall rule
    if job.cell in "abcg":
        assert a.steps == campaign.AUTHORS_STEPS


def test_a_finished_run_with_a_dirty_tree_and_no_diff_is_refused(tmp_path):
    m = {"git": {"commit": "abc", "dirty": True}}
    with pytest.raises(io.ProvenanceError, match="without its diff"):
        io.check_provenance(m, "x/manifest.json")
    io.check_provenance({"git": {"commit": "abc", "dirty": True, "diff": ""}}, "x")
    io.check_provenance({"git": {"commit": "abc", "dirty": False}}, "x")


def test_the_readme_campaign_table_is_the_committed_state():
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "tools/campaign_sync.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_population_is_snapshotted_only_at_one_update_for_all_its_runs(tmp_path):
    from rsa.train import train

    job = Job("x", "tiny", ARGS, seeds=(0, 1), population=True)
    for seed, steps in ((0, 4), (1, 2)):  # as if caught between two members' writes
        work = job.work(tmp_path / "runs", seed)
        train(seed=seed, out_dir=str(work), progress=False, **{**ARGS, "steps": steps})
        (work / "results.json").unlink()
    with pytest.raises(RuntimeError, match="stay at different updates"):
        campaign.snapshot(tmp_path / "data", tmp_path / "runs", jobs=(job,),
                          log=lambda s: None, wait_s=0)
    assert not (tmp_path / "data" / "paper" / "inflight").exists()


def test_a_dry_run_of_the_campaign_lists_the_commands_left_and_trains_nothing(
        tmp_path, capsys):
    from rsa import experiments

    assert experiments.main(["--scale", "paper", "--dry-run", "--runs-dir",
                             str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out and all(" python -m rsa train " in line for line in out)
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_a_tree_is_dirty_when_its_code_differs_and_then_the_diff_is_recorded(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "rsa").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "rsa" / "m.py").write_text("x = 1\n")
    (tmp_path / "data" / "r.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    (tmp_path / "data" / "r.json").unlink()  # a stored result moved: not the code
    assert io.git_commit(tmp_path)["dirty"] is False
    (tmp_path / "rsa" / "m.py").write_text("x = 2\n")
    g = io.git_commit(tmp_path)
    assert g["dirty"] is True and "+x = 2" in g["diff"]
    assert "diff" not in io.git_commit(tmp_path, diff=False)


def test_the_time_to_budget_ignores_one_interval_that_spans_a_pause(tmp_path):
    # 30 logged intervals of 250 updates at 2 s an update, one of them holding a pause of
    # two hours: the estimate keeps the pace of 2 s an update (a mean over the last 8
    # intervals would give 2 + 7200 / 2000 = 5.6 s)
    jobs = (Job("x", "tiny", {**ARGS, "steps": 10_000}),)
    hist, wall = [], 0.0
    for k in range(31):
        hist.append({"step": 250 * k, "wall_time_s": wall})
        wall += 500.0 + (7200.0 if k == 27 else 0.0)
    path = tmp_path / "data" / "paper" / "inflight" / f"{jobs[0].name(0)}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state": {"step": 7500, "best_val_accuracy": 0.5,
                          "wall_time_s": hist[-1]["wall_time_s"], "history": hist}}, path)
    row = campaign.status_table(tmp_path / "data", jobs).loc[0]
    assert row["state"] == "in flight" and row["updates done"] == 7500
    assert row["hours to budget"] == pytest.approx(2500 * 2.0 / 3600)


def test_the_time_to_budget_of_a_run_with_a_short_history(tmp_path):
    jobs = (Job("x", "tiny", {**ARGS, "steps": 1000}),)
    hist = [{"step": 250 * k, "wall_time_s": 3.0 * 250 * k} for k in range(3)]
    path = tmp_path / "data" / "paper" / "inflight" / f"{jobs[0].name(0)}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state": {"step": 500, "best_val_accuracy": 0.5, "wall_time_s": 1500.0,
                          "history": hist}}, path)
    row = campaign.status_table(tmp_path / "data", jobs).loc[0]
    assert row["hours to budget"] == pytest.approx(500 * 3.0 / 3600)


def test_the_time_to_budget_follows_the_current_part_once_it_has_three_intervals(tmp_path):
    # 30 intervals at 4 s an update on the torch kernel, then a part on the compiled
    # kernel at 1 s an update: with 2 intervals of it the estimate is still the last 20's
    # median (4 s); with 3 it is the new part's 1 s
    jobs = (Job("x", "tiny", {**ARGS, "steps": 100_000}),)
    path = tmp_path / "data" / "paper" / "inflight" / f"{jobs[0].name(0)}.pt"
    path.parent.mkdir(parents=True)
    for new, pace in ((2, 4.0), (3, 1.0)):
        hist, wall = [], 0.0
        for k in range(31 + new):
            hist.append({"step": 250 * k, "wall_time_s": wall})
            wall += 250 * (4.0 if k < 30 else 1.0)
        step = hist[-1]["step"]
        segs = [{"start_step": 0, "kernel": "torch"}, {"start_step": 7500, "kernel": "compiled"}]
        torch.save({"config": {"kernel": "compiled"},
                    "state": {"step": step, "best_val_accuracy": 0.5, "segments": segs,
                              "wall_time_s": hist[-1]["wall_time_s"], "history": hist}}, path)
        row = campaign.status_table(tmp_path / "data", jobs).loc[0]
        assert row["hours to budget"] == pytest.approx((100_000 - step) * pace / 3600), new
        assert row["kernel"] == "torch, compiled from 7 500"


def test_every_stored_run_records_the_kernel_of_its_job_and_in_flight_runs_their_parts():
    """A stored run's job names the kernel its record holds (the torch kernel for those
    trained before the compiled kernels landed: their results record none, or 'torch'),
    so that its recorded command names it. An in-flight run may resume on another kernel
    than its last part's (the RelRNN copy T = 1000 did): every part then names its
    kernel, and the last part's is the checkpoint's."""
    from rsa.book import data_dir

    data = data_dir()
    stored = inflight = 0
    for job in campaign.JOBS:
        for seed in job.seeds:
            name = job.name(seed)
            results = data / campaign.SCALE / name / "results.json"
            state = data / campaign.SCALE / "inflight" / f"{name}.pt"
            if results.is_file():
                config = io.load_json(results)["config"]
                assert config.get("kernel", "torch") == job.args.get("kernel", "torch"), name
                stored += 1
            elif state.is_file():
                ckpt = torch.load(state, map_location="cpu", weights_only=True)
                made = ckpt["config"].get("kernel", "torch")
                parts = [g.get("kernel", made) for g in ckpt["state"]["segments"]]
                assert parts and parts[-1] == made, name
                assert set(parts) <= {"torch", "compiled"}, name
                inflight += 1
    assert stored >= 8 and stored + inflight >= 10


def test_kernel_parts_names_each_kernel_and_where_it_took_over():
    parts = campaign.kernel_parts
    assert parts([], {}) == "torch"
    assert parts([], {"kernel": "compiled"}) == "compiled"
    # parts recorded before they named their kernel ran on the config's (a resume fills
    # them in, rsa.train.loop, before its own part is added)
    old = [{"start_step": 0}, {"start_step": 40343}]
    assert parts(old, {}) == "torch"
    assert parts(old, {"kernel": "compiled"}) == "compiled"
    old = [dict(g, kernel="torch") for g in old]
    assert parts([*old, {"start_step": 47045, "kernel": "compiled"},
                  {"start_step": 50000, "kernel": "compiled"}],
                 {"kernel": "compiled"}) == "torch, compiled from 47 045"
    assert parts([{"start_step": 0, "kernel": "compiled"}, {"start_step": 9, "kernel": "torch"}],
                 {"kernel": "torch"}) == "compiled, torch from 9"
    # a part on a GPU says so (its hours are a GPU's), and so does a move back to the CPU
    gpu = [{"start_step": 0, "kernel": "compiled", "device": "cpu"},
           {"start_step": 60000, "kernel": "torch", "device": "cuda:0"},
           {"start_step": 61000, "kernel": "torch", "device": "cpu"}]
    assert parts(gpu, {"kernel": "compiled"}) == \
        "compiled, torch on cuda:0 from 60 000, torch from 61 000"


def test_a_finished_classification_run_reads_as_finished_not_as_not_solved(tmp_path):
    """MNIST has no solved rule: its finished run stopped by early stopping or its budget."""
    jobs = (Job("f", "pixels", {"model": "rnn", "task": "mnist10k", "steps": 8000}),
            Job("a", "copy", {**ARGS, "steps": 8000}))
    for job, reason in zip(jobs, ("patience", "budget"), strict=True):
        folder = tmp_path / "data" / "paper" / job.name(0)
        folder.mkdir(parents=True)
        io.write_json(folder / "results.json", {"complete": True, "config": {}, "summary": {
            "steps_done": 1200, "best_val_accuracy": 0.9, "wall_time_s": 36.0,
            "stop_reason": reason, "solved_step": None}})
    table = campaign.status_table(tmp_path / "data", jobs)
    assert table.loc[0, "state"] == "finished at 1 200, stopped by patience"
    assert table.loc[1, "state"] == "not solved within 1 200 (budget)"


def test_classification_status_reads_a_finished_and_a_missing_run(tmp_path):
    jobs = (Job("f", "RNN", {"model": "rnn", "task": "mnist10k", "steps": 8000}),
            Job("f", "LSTM", {"model": "lstm", "task": "mnist10k", "steps": 8000}),
            Job("a", "copy", {**ARGS, "steps": 8000}))  # not a classification run
    folder = tmp_path / "data" / "paper" / jobs[0].name(0)
    folder.mkdir(parents=True)
    io.write_json(folder / "results.json", {"complete": True, "config": {}, "summary": {
        "steps_done": 1200, "best_val_accuracy": 0.9, "wall_time_s": 7200.0,
        "stop_reason": "patience", "solved_step": None, "best_model_test_accuracy": 0.88}})
    rnn, lstm = campaign.classification_status(tmp_path / "data", 80, jobs)
    assert rnn == {"model": "rnn", "epochs done": 15.0, "budget (epochs)": 100.0,
                   "best validation accuracy": 0.9, "test accuracy (best weights)": 0.88,
                   "CPU-hours": 2.0, "state": "stopped by patience"}
    assert lstm["epochs done"] is None and lstm["state"] == "not started"
    assert lstm["test accuracy (best weights)"] is None


def test_the_compiled_kernel_falls_back_to_torch_without_numba(monkeypatch):
    from rsa.models.kernels import compiled

    said = []
    monkeypatch.setattr(compiled, "available", lambda: False)
    args = campaign._runnable({"model": "relrnn", "kernel": "compiled"}, said.append)
    assert args == {"model": "relrnn", "kernel": "torch"} and "numba" in said[0]
    monkeypatch.setattr(compiled, "available", lambda: True)
    assert campaign._runnable({"kernel": "compiled"}, said.append) == {"kernel": "compiled"}


def test_classification_status_gives_none_not_nan_and_any_stop_reason(tmp_path):
    jobs = tuple(Job("f", m, {"model": m, "task": "mnist10k", "steps": 8000})
                 for m in ("rnn", "lstm", "relrnn"))
    for job, reason in zip(jobs[:2], ("nan", None), strict=True):
        folder = tmp_path / "data" / "paper" / job.name(0)
        folder.mkdir(parents=True)
        io.write_json(folder / "results.json", {"complete": True, "config": {}, "summary": {
            "steps_done": 160, "best_val_accuracy": 0.5, "wall_time_s": 36.0,
            "stop_reason": reason, "solved_step": None, "best_model_test_accuracy": 0.4}})
    table = campaign.status_table(tmp_path / "data", jobs)
    assert list(table["state"][:2]) == ["finished at 160, stopped: diverged (NaN loss)",
                                        "finished at 160, stopped: no reason recorded"]
    rnn, lstm, relrnn = campaign.classification_status(tmp_path / "data", 80, jobs)
    assert rnn["state"] == "stopped: diverged (NaN loss)"
    assert lstm["state"] == "stopped: no reason recorded"
    assert relrnn["best validation accuracy"] is None and relrnn["CPU-hours"] is None
    assert relrnn["epochs done"] is None


def test_the_dry_run_leaves_out_a_finished_classification_run(tmp_path, monkeypatch):
    import argparse

    folder = tmp_path / "data" / "paper" / "mnist10k" / "rnn_s0"
    folder.mkdir(parents=True)
    io.write_json(folder / "results.json", {"complete": True, "config": {}, "summary": {}})
    said = []
    a = argparse.Namespace(data_dir=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"),
                           status=False, dry_run=True, snapshot=False, select=None,
                           executor="local", device="cpu")
    assert campaign.main(a, log=said.append) == 0
    assert not any(line.startswith("[f] mnist10k/rnn_s0") for line in said)
    assert any(line.startswith("[f] mnist10k/lstm_s0") for line in said)


def test_the_state_says_where_a_copy_or_denoise_run_exploded(tmp_path):
    # the chapter's diagnosis (a validation loss not finite or above 10 ln 9 = 21.97 on
    # copy): a stored run, an in-flight one, and one that came near the bound but stayed
    # below it; an MNIST run is never diagnosed
    jobs = tuple(Job("e", f"run {k}", {**ARGS, "steps": 8}, seeds=(k,)) for k in range(3))
    data = tmp_path / "data"
    losses = {0: [0.5, 30.0, 0.4, 0.3], 1: [0.5, float("nan"), 0.4], 2: [0.5, 21.9, 0.4, 0.3]}

    def history(k):
        return [{"step": 2 * (i + 1), "val_loss": v, "wall_time_s": float(i)}
                for i, v in enumerate(losses[k])]

    for k in (0, 2):
        folder = data / "paper" / jobs[k].name(k)
        folder.mkdir(parents=True)
        io.write_json(folder / "results.json", {
            "complete": True, "config": {"task": "copy"}, "history": history(k),
            "summary": {"steps_done": 8, "best_val_accuracy": 0.5, "wall_time_s": 4.0,
                        "stop_reason": "budget", "solved_step": None}})
    path = data / "paper" / "inflight" / f"{jobs[1].name(1)}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"config": {"task": "copy"},
                "state": {"step": 6, "best_val_accuracy": 0.5, "wall_time_s": 3.0,
                          "history": history(1)}}, path)
    table = campaign.status_table(data, jobs)
    assert list(table["state"]) == ["not solved within 8 (budget), exploded at 4",
                                    "in flight, exploded at 4", "not solved within 8 (budget)"]
    assert campaign._exploded(history(0), {"task": "mnist10k"}) is None


def test_a_population_counts_the_time_of_its_longest_run_once(tmp_path):
    # three seeds trained as one population, stopped after 1, 3 and 2 hours of its clock:
    # the process ran 3 hours, shown on the first run's row
    job = Job("a", "pop", {**ARGS, "steps": 8}, seeds=(0, 1, 2), population=True)
    for seed, hours in zip(job.seeds, (1.0, 3.0, 2.0), strict=True):
        folder = tmp_path / "data" / "paper" / job.name(seed)
        folder.mkdir(parents=True)
        io.write_json(folder / "results.json", {
            "complete": True, "config": {"task": "copy"}, "history": [],
            "summary": {"steps_done": 8, "best_val_accuracy": 0.5,
                        "wall_time_s": 3600 * hours, "stop_reason": "solved",
                        "solved_step": 6}})
    table = campaign.status_table(tmp_path / "data", (job,))
    assert table.loc[0, "CPU-hours"] == pytest.approx(3.0)
    assert table["CPU-hours"][1:].isna().all()


def test_a_run_stopped_by_the_nan_rule_says_so(tmp_path):
    job = Job("e", "nan", {**ARGS, "steps": 8})
    folder = tmp_path / "data" / "paper" / job.name(0)
    folder.mkdir(parents=True)
    io.write_json(folder / "results.json", {
        "complete": True, "config": {"task": "copy"},
        "history": [{"step": 2, "val_loss": 0.5}, {"step": 4, "val_loss": float("nan")}],
        "summary": {"steps_done": 4, "best_val_accuracy": 0.9, "wall_time_s": 4.0,
                    "stop_reason": "nan", "solved_step": None}})
    state = campaign.status_table(tmp_path / "data", (job,)).loc[0, "state"]
    assert state == "not solved within 4 (NaN loss), exploded at 4"
