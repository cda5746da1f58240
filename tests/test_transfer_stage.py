"""The transfer stage of a converged plan on a tiny plan: incremental (each stored copy
run is evaluated once, from its stored weights; a second call evaluates only the runs
stored since), MemRNN capped, and a run trained again re-evaluated."""

from __future__ import annotations

import pytest

from rsa import experiments, io

TINY = experiments.Plan(Ts=(3,), seeds=(0,), steps=2, eval_every=1, transfer_Ts=(3,),
                        transfer_max=12, converged=True)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv(io.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(io.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.setitem(experiments.PLANS, "tiny", TINY)
    # MemRNN's cap (2000 in the real plans) inside the tiny delays, so that it shows
    monkeypatch.setattr(experiments.transfer, "MEMRNN_TRANSFER_MAX", 6)
    monkeypatch.setitem(experiments.TRANSFER_MAX, "memrnn", 6)
    evaluated = []
    real = experiments.transfer._transfer_rows

    def counting(folder, run, Ts, device="cpu"):
        evaluated.append((folder.relative_to(tmp_path / "data" / "tiny").as_posix(), Ts))
        return real(folder, run, Ts, device)

    monkeypatch.setattr(experiments.transfer, "_transfer_rows", counting)
    return tmp_path / "data" / "tiny", evaluated


def _train(name):
    experiments.reproduce("tiny", ["train"], log=lambda s: None, select=[name])


def _transfer():
    log = []
    experiments.reproduce("tiny", ["transfer"], log=log.append)
    return log


def test_converged_transfer_is_incremental(tiny):
    root, evaluated = tiny
    csv, folder = root / "transfer" / "transfer.csv", root / "transfer"
    _train("copy/rnn_T3_s0")
    _transfer()
    assert evaluated == [("copy/rnn_T3_s0", [3, 6, 12, 15, 30])]
    table = io.load_csv(csv)
    summary = io.load_run(root / "copy/rnn_T3_s0")["summary"]
    assert list(table["T"]) == [3, 6, 12, 15, 30] and set(table["model"]) == {"rnn"}
    assert set(table["solved"]) == {bool(summary["solved"])}
    assert set(table["steps_done"]) == {summary["steps_done"]} == {2}
    assert table["accuracy"].between(0, 1).all()
    manifest = io.load_manifest(folder)
    assert list(manifest["runs"]) == manifest["runs_added"] == ["copy/rnn_T3_s0"]
    assert manifest["command"].endswith("--scale tiny --stages transfer")
    assert "copy/memrnn_T3_s0" in manifest["copy_runs_not_stored"]

    # a mark in the stored rows: a row that were recomputed would lose it
    rows = table.to_dict("records")
    rows[0]["accuracy"] = 0.123
    io.write_csv(csv, rows)

    evaluated.clear()
    _train("copy/memrnn_T3_s0")
    _transfer()
    assert evaluated == [("copy/memrnn_T3_s0", [3, 6])]  # only the new run, capped
    table = io.load_csv(csv)
    assert table.loc[(table["model"] == "rnn") & (table["T"] == 3), "accuracy"].item() == 0.123
    assert sorted(zip(table["model"], table["T"], strict=True)) == sorted(
        [("rnn", T) for T in (3, 6, 12, 15, 30)] + [("memrnn", 3), ("memrnn", 6)])
    manifest = io.load_manifest(folder)
    assert sorted(manifest["runs"]) == ["copy/memrnn_T3_s0", "copy/rnn_T3_s0"]
    assert manifest["runs_added"] == ["copy/memrnn_T3_s0"]

    # nothing new: nothing evaluated, nothing rewritten
    evaluated.clear()
    before = csv.read_bytes(), (folder / "manifest.json").read_bytes()
    log = _transfer()
    assert evaluated == [] and any("nothing new" in line for line in log), log
    assert (csv.read_bytes(), (folder / "manifest.json").read_bytes()) == before

    # a run stored without its weights (yet) is left for the next call
    _train("copy/relrnn_T3_s0")
    (root / "copy/relrnn_T3_s0" / "model.pt").unlink()
    log = _transfer()
    assert evaluated == [] and any("relrnn_T3_s0: results stored but not" in line
                                   for line in log), log
    assert "relrnn" not in set(io.load_csv(csv)["model"])


def test_a_run_trained_again_is_evaluated_again(tiny):
    root, evaluated = tiny
    _train("copy/rnn_T3_s0")
    _transfer()
    results = root / "copy/rnn_T3_s0" / "results.json"
    run = io.load_json(results)
    run["summary"]["steps_done"] += 1  # as if it had been trained further
    io.write_json(results, run)
    evaluated.clear()
    _transfer()
    assert evaluated == [("copy/rnn_T3_s0", [3, 6, 12, 15, 30])]
    table = io.load_csv(root / "transfer" / "transfer.csv")
    assert len(table) == 5 and set(table["steps_done"]) == {3}


def test_rows_of_another_batch_are_evaluated_again(tiny, monkeypatch):
    """Rows stored before the batch column (20 sequences) or with another batch than their
    model's are recomputed; the batch is recorded per row."""
    root, evaluated = tiny
    csv = root / "transfer" / "transfer.csv"
    _train("copy/rnn_T3_s0")
    _transfer()
    table = io.load_csv(csv)
    assert set(table["batch"]) == {experiments.transfer_batch("rnn")} == {100}
    assert experiments.transfer_batch("sab") == 20

    # a file written before the batch and variant columns: read as 20 sequences of the
    # plan's own run, so evaluated again
    io.write_csv(csv, table.drop(columns=["batch", "variant"]).to_dict("records"))
    evaluated.clear()
    log = _transfer()
    assert evaluated == [("copy/rnn_T3_s0", [3, 6, 12, 15, 30])], log
    assert any("evaluated on [20] sequences, now 100; recomputed" in line for line in log)
    assert set(io.load_csv(csv)["batch"]) == {100}

    # a batch column with another value than the model's: evaluated again
    io.write_csv(csv, io.load_csv(csv).assign(batch=50).to_dict("records"))
    evaluated.clear()
    log = _transfer()
    assert evaluated == [("copy/rnn_T3_s0", [3, 6, 12, 15, 30])], log
    assert any("evaluated on [50] sequences, now 100" in line for line in log)

    # a model whose batch is 20 keeps rows of 20: nothing recomputed
    monkeypatch.setitem(experiments.TRANSFER_BATCH_BY_MODEL, "rnn", 20)
    table = io.load_csv(csv)
    io.write_csv(csv, table.assign(batch=20).to_dict("records"))
    evaluated.clear()
    log = _transfer()
    assert evaluated == [] and any("nothing new" in line for line in log), log


def test_alternatives_are_evaluated_under_their_own_name(tiny, monkeypatch):
    """A copy run of an alternative setting (here tanh) is evaluated too, its rows tagged
    with its variant; the plan's own run of the same model, seed and delay keeps its own
    rows (the two are told apart by the variant)."""
    root, evaluated = tiny
    csv = root / "transfer" / "transfer.csv"
    _train("copy/rnn_T3_s0")
    plan_names = [r["name"] for r in experiments.plan_runs("tiny")]
    alt = next((n for n in plan_names if n.startswith("copy/rnn_T3_") and "tanh" in n), None)
    assert alt == "copy/rnn_T3_tanh_s0", plan_names  # the alternative of the unsolved run
    _train(alt)
    _transfer()
    assert sorted(name for name, _ in evaluated) == ["copy/rnn_T3_s0", alt]
    table = io.load_csv(csv)
    assert sorted(set(table["variant"].map(repr))) == ["'tanh'", "None"]
    tanh = table[table["variant"] == "tanh"]
    assert list(tanh["T"]) == [3, 6, 12, 15, 30] and set(tanh["model"]) == {"rnn"}
    summary = io.load_run(root / alt)["summary"]
    assert set(tanh["steps_done"]) == {summary["steps_done"]}
    assert list(io.load_manifest(root / "transfer")["runs"]) == sorted(["copy/rnn_T3_s0", alt])

    # read back: nothing new, nothing evaluated (the variant is part of the key)
    evaluated.clear()
    log = _transfer()
    assert evaluated == [] and any("nothing new" in line for line in log), log


def test_memrnn_is_evaluated_at_its_cap_in_place_of_the_delays_beyond(tiny, monkeypatch):
    """MemRNN's delays past its cap (here 10; the tiny plan tests 3, 6, 12, 15 and 30) are
    replaced by the cap itself."""
    root, evaluated = tiny
    monkeypatch.setitem(experiments.TRANSFER_MAX, "memrnn", 10)
    _train("copy/memrnn_T3_s0")
    _transfer()
    assert evaluated == [("copy/memrnn_T3_s0", [3, 6, 10])]
    assert sorted(io.load_csv(root / "transfer" / "transfer.csv")["T"]) == [3, 6, 10]
