"""Resuming a run never rewrites its record into something that was not run, and a
checkpoint that cannot be resumed is refused in one line that says what to do."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from rsa import io
from rsa.__main__ import main
from rsa.train import ResumeError, train

TINY = dict(model="relrnn", task="copy", T=3, hidden_size=6, batch=4, eval_batch=8, nu=2,
            rho=2, eval_every=2, checkpoint_every=2, progress=False)
RECORD = ("results.json", "manifest.json", "history.csv", "model.pt", "checkpoint.pt")
CLI = ["train", "--model", "rnn", "--T", "2", "--hidden-size", "4", "--eval-every", "1",
       "--eval-batch", "4", "--no-progress", "--json"]


def snapshot(folder) -> dict:
    return {name: (folder / name).read_bytes() for name in RECORD}


def test_fewer_updates_than_the_checkpoint_holds_is_refused_and_nothing_rewritten(tmp_path):
    train(**TINY, steps=4, out_dir=str(tmp_path))
    before = snapshot(tmp_path)
    with pytest.raises(ResumeError) as err:
        train(**TINY, steps=2, out_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "checkpoint.pt") in msg
    assert "already holds 4 updates" in msg and "--steps 4" in msg
    assert "--no-resume" in msg and "--out-dir" in msg
    assert snapshot(tmp_path) == before
    # the way out works: start over with fewer updates
    fresh = train(**TINY, steps=2, out_dir=str(tmp_path), resume=False)
    assert fresh.summary["steps_done"] == 2
    assert io.load_json(tmp_path / "results.json")["config"]["steps"] == 2


def test_running_a_finished_runs_command_again_rewrites_nothing_and_says_so(tmp_path):
    first = train(**TINY, steps=4, out_dir=str(tmp_path))
    before = snapshot(tmp_path)
    again = train(**TINY, steps=4, out_dir=str(tmp_path))
    assert snapshot(tmp_path) == before
    assert again.note is not None and "nothing was trained or rewritten" in again.note
    assert again.summary == first.summary and again.history == first.history
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                 first.model.state_dict().values(),
                                                 strict=True))
    assert first.note is None


def test_a_run_interrupted_before_its_last_write_is_completed(tmp_path):
    train(**TINY, steps=4, out_dir=str(tmp_path))
    results = io.load_json(tmp_path / "results.json")
    results["complete"] = False  # as if stopped between the last checkpoint and the end
    io.write_json(tmp_path / "results.json", results)
    again = train(**TINY, steps=4, out_dir=str(tmp_path))
    assert again.note is None
    assert io.load_json(tmp_path / "results.json")["complete"] is True


def test_the_cli_refuses_fewer_updates_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main([*CLI, "--steps", "3", "--out", out]) == 0
    manifest = (tmp_path / "run" / "manifest.json").read_bytes()
    capsys.readouterr()
    assert main([*CLI, "--steps", "2", "--out", out]) == 2
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "already holds 3 updates" in error[0]
    assert "--no-resume" in error[0] and "Traceback" not in err
    assert (tmp_path / "run" / "manifest.json").read_bytes() == manifest


def test_the_cli_says_when_a_finished_run_is_only_loaded(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main([*CLI, "--steps", "2", "--out", out]) == 0
    capsys.readouterr()
    assert main([*CLI, "--steps", "2", "--out", out]) == 0
    captured = capsys.readouterr()
    assert "nothing was trained or rewritten" in captured.err
    assert json.loads(captured.out)["steps_done"] == 2


def corrupt_truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_garbage(path):
    path.write_bytes(b"not a checkpoint")


def corrupt_missing_weight(path):
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"].pop(sorted(ckpt["model"])[0])  # e.g. a checkpoint of older model code
    torch.save(ckpt, path)


def corrupt_missing_state(path):
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state"]
    torch.save(ckpt, path)


@pytest.mark.parametrize("corrupt", [corrupt_truncated, corrupt_garbage,
                                     corrupt_missing_weight, corrupt_missing_state])
def test_a_checkpoint_that_cannot_be_resumed_gives_one_line_with_the_way_out(tmp_path,
                                                                              corrupt):
    train(**TINY, steps=2, out_dir=str(tmp_path))
    corrupt(tmp_path / "checkpoint.pt")
    with pytest.raises(ResumeError) as err:
        train(**TINY, steps=4, out_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400
    assert str(tmp_path / "checkpoint.pt") in msg and "cannot be resumed" in msg
    assert "--no-resume" in msg and "--out-dir" in msg
    assert train(**TINY, steps=4, out_dir=str(tmp_path), resume=False).summary[
        "steps_done"] == 4


def test_the_cli_reports_a_truncated_checkpoint_without_a_traceback(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*CLI, "--steps", "2", "--out", str(out)]) == 0
    corrupt_truncated(out / "checkpoint.pt")
    capsys.readouterr()
    assert main([*CLI, "--steps", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[0].startswith(f"error: checkpoint '{out / 'checkpoint.pt'}' "
                                          "cannot be resumed")


def test_a_different_config_is_refused_in_one_line_naming_the_flags(tmp_path):
    train(**TINY, steps=2, out_dir=str(tmp_path))
    with pytest.raises(ResumeError) as err:
        train(**TINY, steps=4, lr=0.01, out_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "'lr': (0.001, 0.01)" in msg
    assert "--no-resume" in msg and "--out-dir" in msg


def test_results_and_manifest_record_the_output_folder_relative_to_the_repository(
        tmp_path, monkeypatch):
    monkeypatch.setattr(io, "REPO_ROOT", tmp_path)
    out = tmp_path / "runs" / "x"
    r = train(**TINY, steps=2, out_dir=str(out),
              argv=[str(tmp_path / "rsa" / "__main__.py"), "train", "--out-dir", str(out)])
    assert r.config["out_dir"] == "runs/x" and r.out_dir == out
    for name in ("results.json", "manifest.json"):
        assert str(tmp_path) not in (out / name).read_text(), name
    m = io.load_manifest(out)
    assert m["parameters"]["out_dir"] == "runs/x" and "--out-dir runs/x" in m["command"]
    assert m["argv"] == "python -m rsa train --out-dir runs/x"
    assert torch.load(out / "model.pt", weights_only=True)["config"]["out_dir"] == "runs/x"
    # resuming from the stored (relative) record works from any working directory
    monkeypatch.chdir(tmp_path / "runs")
    assert train(**TINY, steps=4, out_dir=str(out)).summary["steps_done"] == 4


def test_no_progress_widget_warning_in_a_notebook_without_ipywidgets(monkeypatch, recwarn):
    import rsa.train.loop as train_mod

    monkeypatch.setattr(train_mod, "_in_notebook", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed
    bar = train_mod._progress_bar(True, total=3)
    assert bar.disable
    train(**{**TINY, "progress": True}, steps=2)
    assert not [w for w in recwarn if "IProgress" in str(w.message)]
