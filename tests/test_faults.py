"""Fault injection: a run killed at random moments (kill -9), of a single run, of a
population and of the reproduce stages, resumes to the result of an uninterrupted run;
every stored file kind, truncated or corrupted, is refused with one line that names the
file and the fix (or a readable copy is used); two processes on one run (tests/test_lock.py);
a full disk on write loses nothing. The counts are printed at the end of the session
(``faults injected, survived``: tests/conftest.py)."""

from __future__ import annotations

import contextlib
import errno
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rsa import io
from rsa.train import ResumeError, load_trained, train
from tests.helpers import FAULTS

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "rnn", "--task", "copy", "--T", "3", "--hidden-size", "8", "--batch",
        "2", "--eval-every", "20", "--eval-batch", "4", "--threads", "1", "--no-progress"]
STEPS = 600


def _rows(folder: Path) -> list[dict]:
    rows = io.load_run(folder)["history"].to_dict("records")
    return [{k: v for k, v in r.items() if "time" not in k} for r in rows]


def _weights(folder: Path) -> dict:
    w = torch.load(folder / "model.pt", weights_only=True)
    return w.get("model", w)


def _same_run(a: Path, b: Path) -> None:
    assert _rows(a) == _rows(b)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _timed(cmd: list[str], cwd=ROOT) -> float:
    """Run ``cmd`` to the end (the uninterrupted reference); its wall time."""
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def _kill_at_random(cmd: list[str], rng: random.Random, kills: int, duration: float,
                    cwd=ROOT) -> int:
    """Run ``cmd`` and kill -9 it ``kills`` times at random moments of a run that takes
    ``duration`` seconds uninterrupted (each time started again, resuming), then let it
    finish; returns how many kills hit a running process."""
    hit = 0
    for _ in range(kills):
        p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 0.9) * duration)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            hit += 1
        p.wait()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return hit


def test_kill_9_during_training_then_resume_equals_an_uninterrupted_run(tmp_path):
    rng = random.Random(1)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    base = [sys.executable, "-m", "rsa", "train", *TINY, "--steps", str(STEPS)]
    duration = _timed([*base, "--out-dir", str(ref)])
    hit = _kill_at_random([*base, "--out-dir", str(out)], rng, kills=3, duration=duration)
    FAULTS.add("kill -9 of a training run", injected=hit, survived=0)
    _same_run(ref, out)
    FAULTS.add("kill -9 of a training run", injected=0, survived=hit)


def test_kill_9_during_a_population_then_resume_equals_an_uninterrupted_one(tmp_path):
    rng = random.Random(2)
    base = [sys.executable, "-m", "rsa", "train", *TINY, "--steps", str(STEPS),
            "--seeds", "0", "1"]
    duration = _timed([*base, "--out-dir", str(tmp_path / "ref")])
    hit = _kill_at_random([*base, "--out-dir", str(tmp_path / "killed")], rng, kills=3,
                          duration=duration)
    FAULTS.add("kill -9 of a population", injected=hit, survived=0)
    for s in ("s0", "s1"):
        _same_run(tmp_path / "ref" / s, tmp_path / "killed" / s)
    FAULTS.add("kill -9 of a population", injected=0, survived=hit)


_PLAN = """
import sys
from rsa import experiments
experiments.PLANS["tiny"] = experiments.Plan(
    Ts=(3,), seeds=(0,), steps=200, eval_every=20, rhos=(1,), rho_T=3, digits_steps=1,
    transfer_Ts=(3,), transfer_max=12, grad_T=3)
experiments.reproduce("tiny", sys.argv[1].split(","), log=lambda s: None,
                      select=None if sys.argv[1] != "train" else ["copy/*"],
                      data_dir=sys.argv[2], runs_dir=sys.argv[3])
"""


def test_kill_9_during_reproduce_stages_then_rerun_stores_the_same(tmp_path):
    rng = random.Random(3)
    script = tmp_path / "plan.py"
    script.write_text(_PLAN)
    results, durations, hits = {}, {}, {}
    for label in ("ref", "killed"):
        data, runs = tmp_path / label / "data", tmp_path / label / "runs"
        for stage in ("train", "transfer"):
            cmd = [sys.executable, str(script), stage, str(data), str(runs)]
            if label == "ref":
                durations[stage] = _timed(cmd)
            else:
                hits[stage] = _kill_at_random(cmd, rng, kills=2, duration=durations[stage])
                FAULTS.add(f"kill -9 of reproduce --stages {stage}", hits[stage], 0)
        results[label] = data / "tiny"
    for name in ("copy/rnn_T3_s0", "copy/lstm_T3_s0", "copy/relrnn_T3_s0"):
        assert _rows(results["ref"] / name) == _rows(results["killed"] / name)
    ta, tb = (io.load_csv(results[k] / "transfer" / "transfer.csv") for k in results)
    assert ta.drop(columns=[c for c in ta if "time" in c]).equals(
        tb.drop(columns=[c for c in tb if "time" in c]))
    for stage, hit in hits.items():
        FAULTS.add(f"kill -9 of reproduce --stages {stage}", 0, hit)


# -- stored files, truncated or corrupted --------------------------------------------------

ARGS = dict(model="rnn", task="copy", T=3, hidden_size=8, batch=2, steps=40, eval_every=20,
            eval_batch=4, progress=False)


DAMAGED = {"truncate": "truncated", "corrupt": "corrupted (64 bytes flipped)"}


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # flip bytes in the middle
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64])
                         + data[mid + 64:])


def _one_line(text: str) -> bool:
    return "Traceback" not in text and len(text.strip().splitlines()) <= 2


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rsa", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["truncate", "corrupt"])
def test_a_damaged_checkpoint_is_refused_in_one_line_naming_the_file_and_the_fix(tmp_path,
                                                                                 how):
    out = tmp_path / "run"
    train(out_dir=str(out), **{**ARGS, "steps": 20})
    _damage(out / "checkpoint.pt", how)
    with pytest.raises(ResumeError, match="checkpoint.pt.*--no-resume"):
        train(out_dir=str(out), **ARGS)
    done = _cli("train", *TINY, "--steps", "40", "--out-dir", str(out))
    assert done.returncode == 2 and _one_line(done.stderr) and "--no-resume" in done.stderr
    FAULTS.add(f"{DAMAGED[how]} checkpoint.pt", injected=1, survived=1)


@pytest.mark.parametrize("how", ["truncate", "corrupt"])
def test_transfer_with_a_damaged_checkpoint_uses_the_runs_weights_or_says_why_not(
        tmp_path, how, capsys):
    out = tmp_path / "run"
    train(out_dir=str(out), **ARGS)
    expected = load_trained(out).state_dict()
    _damage(out / "checkpoint.pt", how)
    model = load_trained(out)  # falls back to model.pt, and says so
    assert "loaded the run's trained weights" in capsys.readouterr().err
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)
    _damage(out / "model.pt", how)
    done = _cli("transfer", "--run", str(out), "--T", "3", "--batch", "2")
    assert done.returncode == 2 and _one_line(done.stderr), done.stderr
    assert "no readable weights" in done.stderr and "model.pt" in done.stderr
    FAULTS.add(f"{DAMAGED[how]} checkpoint.pt and model.pt (transfer)", injected=2,
               survived=2)


@pytest.mark.parametrize("name", ["results.json", "history.csv", "manifest.json"])
def test_damaged_result_files_are_named_when_read(tmp_path, name):
    out = tmp_path / "run"
    train(out_dir=str(out), **ARGS)
    (out / name).write_text((out / name).read_text()[:37])
    with pytest.raises(ValueError) as e:  # a file cut short never reads as a run
        io.load_run(out)
    assert name in str(e.value) and len(str(e.value).splitlines()) == 1
    FAULTS.add(f"truncated {name}", injected=1, survived=1)


def test_a_damaged_inflight_state_is_refused_with_the_way_out(tmp_path):
    from rsa.experiments import campaign
    from rsa.experiments.campaign import Job

    job = Job("x", "tiny", {**{k: v for k, v in ARGS.items() if k != "progress"},
                            "checkpoint_every": 20})
    name = job.name(0)
    work = job.work(tmp_path / "runs", 0)
    train(seed=0, out_dir=str(work), **{**ARGS, "steps": 20})
    (work / "results.json").unlink()
    campaign.snapshot(tmp_path / "data", tmp_path / "runs", jobs=(job,), log=lambda s: None)
    inflight = tmp_path / "data" / "paper" / "inflight" / f"{name}.pt"
    _damage(inflight, "truncate")
    with pytest.raises(ValueError, match="cannot be read; restore it from git history"):
        campaign.run(tmp_path / "data", tmp_path / "fresh", jobs=(job,), log=lambda s: None)
    FAULTS.add("truncated in-flight state", injected=1, survived=1)


# -- a full disk ----------------------------------------------------------------------------

def test_a_full_disk_on_a_checkpoint_loses_nothing_and_resume_equals_uninterrupted(
        tmp_path, monkeypatch):
    ref, out = tmp_path / "ref", tmp_path / "full"
    train(out_dir=str(ref), **{**ARGS, "steps": 80})
    real = io.atomic_open
    calls = {"n": 0}

    @contextlib.contextmanager
    def filling(path, *a, **k):  # the second checkpoint (update 40) meets a full disk
        calls["n"] += str(path).endswith("checkpoint.pt")
        with real(path, *a, **k) as f:
            if calls["n"] == 2 and str(path).endswith("checkpoint.pt"):
                f.write(b"\0" * 10)
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            yield f

    monkeypatch.setattr(io, "atomic_open", filling)
    with pytest.raises(OSError, match="No space left"):
        train(out_dir=str(out), **{**ARGS, "steps": 80})
    monkeypatch.setattr(io, "atomic_open", real)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["state"]["step"] == 20
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"
                or p.suffix == ".tmp"]  # no temporary file left
    train(out_dir=str(out), **{**ARGS, "steps": 80})
    _same_run(ref, out)
    FAULTS.add("disk full while writing a checkpoint", injected=1, survived=1)


def test_a_full_disk_in_the_cli_is_one_line_that_says_nothing_was_lost(tmp_path):
    code = ("import errno, sys\n"
            "from rsa import io\n"
            "real = io.atomic_write_bytes\n"
            "def full(path, data):\n"
            "    raise OSError(errno.ENOSPC, 'No space left on device', str(path))\n"
            "io.atomic_write_bytes = full\n"
            "from rsa.__main__ import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", code, "train", *TINY, "--steps", "40",
                           "--out-dir", str(tmp_path / "r")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and _one_line(done.stderr), done.stderr
    assert "No space left" in done.stderr and "run the same command again" in done.stderr
    FAULTS.add("disk full (command line)", injected=1, survived=1)

