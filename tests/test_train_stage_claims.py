"""Several `reproduce --stages train` processes on one machine share a plan through lock
files: a run claimed by a live process is skipped, a lock file left by a dead one is no
claim."""

from __future__ import annotations

from rsa import experiments, io
from tests.helpers import holding

TINY = experiments.Plan(Ts=(3,), seeds=(0,), steps=2, eval_every=1, rhos=(1,), rho_T=3,
                        digits_steps=1, transfer_Ts=(3,), transfer_max=12, grad_T=3)


def _setup(tmp_path, monkeypatch):
    monkeypatch.setenv(io.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(io.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.setitem(experiments.PLANS, "tiny", TINY)


def test_a_run_claimed_by_a_live_process_is_skipped(tmp_path, monkeypatch):
    _setup(tmp_path, monkeypatch)
    name = experiments.run_name("copy", "rnn", 3, 0)
    work = tmp_path / "runs" / "tiny" / name
    with holding(work) as holder:  # another process holds the run's lock
        log = []
        experiments.reproduce("tiny", ["train"], log=log.append, select=["copy/rnn_*"])
    assert any(f"being trained by process {holder.pid}" in line for line in log), log
    assert not (tmp_path / "data" / "tiny" / name / "results.json").exists()


def test_a_lock_file_left_by_a_dead_process_is_no_claim(tmp_path, monkeypatch):
    _setup(tmp_path, monkeypatch)
    name = experiments.run_name("copy", "rnn", 3, 0)
    work = tmp_path / "runs" / "tiny" / name
    work.mkdir(parents=True)
    (work / ".lock").write_text(str(2**22 + 12345))  # its process is gone: no flock held
    log = []
    experiments.reproduce("tiny", ["train"], log=log.append, select=["copy/rnn_*"])
    assert io.load_run(tmp_path / "data" / "tiny" / name)["complete"]
    assert not any("being trained" in line for line in log)
    assert (work / ".lock").read_text() == ""  # released: no process id left in it


def test_plan_status_counts_what_is_stored_and_solved(tmp_path, monkeypatch):
    _setup(tmp_path, monkeypatch)
    experiments.reproduce("tiny", ["train"], log=lambda s: None, select=["copy/rnn_*"])
    text = experiments.plan_status("tiny")
    row = next(line for line in text.splitlines() if "| copy " in line and "| rnn " in line)
    assert "| 1 of 1 " in row
    other = next(line for line in text.splitlines() if "| denoise " in line
                 and "| lstm " in line)
    assert "| 0 of 1 " in other
    head = next(line for line in text.splitlines() if line.startswith("| task"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert row.strip("|").split("|")[cols.index("exploded")].strip() == "0"
    total = len(experiments.plan_runs("tiny"))
    assert f"1 runs stored (0.0 hours of training, the sum of their wall times), " \
        f"{total - 1} not run yet." in text
    assert text.rstrip().endswith(f"{total} runs of the plan, the authors' alternatives "
                                  f"included (the rule of --dry-run and of the train "
                                  f"stage): 1 done, 0 stored at a reduced budget (the "
                                  f"train stage trains them further), {total - 1} not "
                                  f"stored.")


CONVERGED = experiments.Plan(Ts=(3,), seeds=(0,), steps=2, eval_every=1, rhos=(1,), rho_T=3,
                             digits_steps=1, stop_when_solved=True, converged=True)


def test_unsolved_seed0_runs_get_the_authors_alternatives_last(tmp_path, monkeypatch):
    _setup(tmp_path, monkeypatch)
    monkeypatch.setitem(experiments.PLANS, "conv", CONVERGED)
    before = experiments.plan_runs("conv")
    assert not any(r.get("variant") for r in before)  # nothing stored: no alternatives
    experiments.reproduce("conv", ["train"], log=lambda s: None,
                          select=["copy/rnn_T3_s0", "copy/relrnn_T3_s0"])  # 2 updates
    after = experiments.plan_runs("conv")
    assert after[:len(before)] == before  # appended at the end: shards stay consistent
    alt = {r["name"]: r for r in after[len(before):]}
    # the modReLU RNN gets tanh; RelRNN on copy (tanh already) gets the smaller rate
    assert set(alt) == {"copy/rnn_T3_tanh_s0", "copy/relrnn_T3_lr2e-4_s0"}, alt
    assert alt["copy/rnn_T3_tanh_s0"]["nonlinearity"] == "tanh"
    assert alt["copy/relrnn_T3_lr2e-4_s0"]["lr"] == 2e-4
    experiments.reproduce("conv", ["train"], log=lambda s: None,
                          select=["copy/rnn_T3_tanh_s0"])
    run = io.load_run(tmp_path / "data" / "conv" / "copy" / "rnn_T3_tanh_s0")
    assert run["config"]["nonlinearity"] == "tanh" and run["config"]["model"] == "rnn"
    main, _ = experiments.load_stored_runs("conv")
    assert set(main) == {"copy/rnn_T3_s0", "copy/relrnn_T3_s0"}  # alternatives apart
    every, _ = experiments.load_stored_runs("conv", variants=True)
    assert set(every) == set(main) | {"copy/rnn_T3_tanh_s0"}
    assert "copy/rnn_T3_tanh_s0: not solved" in experiments.plan_status("conv")


def test_exploded_at_is_the_first_loss_not_finite_or_far_above_a_uniform_guess():
    import math

    bound = experiments.EXPLOSION_FACTOR * math.log(9)
    rows = [{"step": 10, "val_loss": 2.5}, {"step": 20, "val_loss": 0.1},
            {"step": 30, "val_loss": float("nan")}, {"step": 40, "val_loss": 0.1}]
    assert experiments.exploded_at(rows, 9) == 30
    assert experiments.exploded_at(rows[:2], 9) is None  # above ln 9 at first: untrained
    above = [{"step": 5, "val_loss": 0.3}, {"step": 6, "val_loss": bound * (1 + 1e-6)}]
    assert experiments.exploded_at(above, 9) == 6
    assert experiments.exploded_at([{"step": 1, "val_loss": bound}], 9) is None
    assert experiments.exploded_at([{"step": 1, "val_loss": float("inf")}], 9) == 1
    assert experiments.exploded_at([{"step": 1, "val_loss": None}], 9) == 1
