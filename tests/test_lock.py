"""One writer per run (rsa.train.lock): two processes never train one run folder, a
killed process leaves no lock behind, and the second process is told who holds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from rsa.train import train
from rsa.train.lock import RunLockedError, claim, hold
from tests.helpers import holding

TINY = dict(model="rnn", task="copy", T=3, hidden_size=8, steps=4, eval_every=2,
            batch=2, progress=False)


def test_claim_is_held_reentrantly_by_its_process_and_refused_to_another(tmp_path):
    with claim(tmp_path / "run") as first:
        assert first is None
        with claim(tmp_path / "run") as again:  # reproduce claims, then train claims
            assert again is None
        assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())
    assert (tmp_path / "run" / ".lock").read_text() == ""
    with holding(tmp_path / "other") as holder:
        with claim(tmp_path / "other") as owner:
            assert owner == f"process {holder.pid}"
        with pytest.raises(RunLockedError, match=f"process {holder.pid}"):
            with hold(tmp_path / "other"):
                pass


def test_train_refuses_a_folder_another_process_trains(tmp_path):
    with holding(tmp_path / "run") as holder:
        with pytest.raises(RunLockedError, match=f"being trained by process {holder.pid}"):
            train(out_dir=str(tmp_path / "run"), **TINY)
    assert not (tmp_path / "run" / "results.json").exists()
    train(out_dir=str(tmp_path / "run"), **TINY)  # the holder is gone: the lock with it
    assert (tmp_path / "run" / "results.json").is_file()


def test_an_out_dir_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "f").write_text("x")
    for bad in (tmp_path / "f", tmp_path / "f" / "under"):
        with pytest.raises(ValueError, match="is a file; choose another --out-dir"):
            train(out_dir=str(bad), **TINY)


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "rsa", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_two_processes_on_one_run_one_trains_the_other_says_who(tmp_path):
    """The issue's probe: two `rsa train` started together on one --out-dir."""
    out = tmp_path / "run"
    args = ["train", "--model", "rnn", "--T", "3", "--hidden-size", "8", "--steps", "400",
            "--eval-every", "100", "--batch", "2", "--no-progress", "--out-dir", str(out),
            "--threads", "1"]
    a = _cli(*args)
    time.sleep(0.3)
    b = _cli(*args)
    (_, ae), (_, be) = a.communicate(timeout=300), b.communicate(timeout=300)
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 2], (a.returncode, ae, b.returncode, be)
    loser = be if b.returncode == 2 else ae
    assert "is being trained by process" in loser and len(loser.strip().splitlines()) == 2
    assert (out / "results.json").is_file()


def test_sigterm_saves_the_checkpoint_and_says_so_and_resume_says_from_where(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "rnn", "--T", "3", "--hidden-size", "8", "--steps",
            "200000", "--eval-every", "50", "--batch", "2", "--no-progress", "--out-dir",
            str(out), "--threads", "1"]
    p = _cli(*args)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").is_file() and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM: checkpoint saved in" in err, err
    q = _cli(*[a if a != "200000" else "1" for a in args])  # fewer steps than done: refused
    _, err2 = q.communicate(timeout=120)
    assert q.returncode == 2 and "already holds" in err2
    import torch

    done = torch.load(out / "checkpoint.pt", weights_only=True)["state"]["step"]
    r = _cli(*[a if a != "200000" else str(done + 50) for a in args])
    _, err3 = r.communicate(timeout=300)
    assert r.returncode == 0, err3
    assert f"resuming {out} from update {done} of {done + 50}" in err3


def test_threads_zero_is_one_line(tmp_path):
    p = _cli("train", "--threads", "0", "--out-dir", str(tmp_path / "r"))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "--threads must be 1 or more" in err and "Traceback" not in err
