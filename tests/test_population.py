"""Population training (rsa.train.population): a population of P runs equals the P runs
trained one by one, update by update, in float64 (to 1e-10), for every model; clipping
per run, early stop, interruption and resume, results files; float32 within a stated
tolerance; the command line."""

from __future__ import annotations

import importlib
import json
import math
import signal

import pytest
import torch

from rsa.__main__ import main
from rsa.models import registry
from rsa.models.heads import build_task_model
from rsa.models.kernels.population import batched
from rsa.models.kernels.population_fused import population_relrnn
from rsa.train import resolve_config, train
from rsa.train.population import seed_dirs, train_population
from tests.helpers import holding, on_call

train_mod = importlib.import_module("rsa.train.loop")  # where the loop and _data look names up
pop_mod = importlib.import_module("rsa.train.population")

TINY = dict(task="copy", T=6, hidden_size=12, batch=5, eval_batch=6, eval_every=1,
            checkpoint_every=2, progress=False, lr=3e-3)
OPTIONS = {"relrnn": dict(nu=2, rho=2), "rellstm": dict(nu=2, rho=2),
           "transformer": dict(hidden_size=16)}
TIME_FIELDS = ("wall_time_s", "train_time_s")
TOL64 = 1e-10
SEEDS = [0, 1, 2]


def strip_times(history):
    return [{k: v for k, v in row.items() if k not in TIME_FIELDS} for row in history]


def close_rows(a, b, tol):
    """Histories a and b: the same rows and steps, every number within tol."""
    assert len(a) == len(b)
    for ra, rb in zip(strip_times(a), strip_times(b), strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert math.isclose(ra[k], rb[k], rel_tol=0, abs_tol=tol), (k, ra[k], rb[k])


def max_param_diff(a, b):
    return max((p - q).abs().max().item() for p, q in
               zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def states_diff(a, b, x):
    with torch.no_grad():
        return (a.core(x) - b.core(x)).abs().max().item()


@pytest.fixture
def float64(monkeypatch):
    """Models in float64, and the training data too (the runs' streams come from
    rsa.train's synthetic_batch, for single runs and populations alike)."""
    real = train_mod.synthetic_batch

    def batch64(*args, **kwargs):
        x, y = real(*args, **kwargs)
        return x.double(), y

    monkeypatch.setattr(train_mod, "synthetic_batch", batch64)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def first_grad_norms(config: dict, seeds) -> list[float]:
    """The gradient norm of each seed's first update (as the run computes it)."""
    norms = []
    for seed in seeds:
        c = resolve_config(config, seed=seed)
        torch.manual_seed(seed)
        model = build_task_model(c.model, c.task, c.hidden_size, nu=c.nu, rho=c.rho,
                                 nonlinearity=c.nonlinearity, init=c.init)
        stream, *_ = train_mod._data(c, torch.device("cpu"))
        x, y = next(stream)
        model.loss(model(x), y).backward()
        norms.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()
                     .item())
    return norms


def split_clip(config, seeds) -> float:
    """A clip threshold that clips some runs' first update and not the others'."""
    norms = sorted(first_grad_norms(config, seeds))
    assert norms[0] < norms[-1]
    return math.sqrt(norms[0] * norms[1])


def sample_x(T=6):
    g = torch.Generator().manual_seed(123)
    return torch.randn(T + 20, 3, 10, generator=g, dtype=torch.get_default_dtype())


# -- exactness in float64 ----------------------------------------------------------------

@pytest.mark.parametrize("model", registry.registered())  # the plan's MODELS, SAB, ...
def test_population_equals_single_runs_float64(model, float64):
    config = {**TINY, "model": model, "steps": 5, **OPTIONS.get(model, {})}
    config["clip"] = clip = split_clip(config, SEEDS)
    norms = first_grad_norms(config, SEEDS)
    assert any(n > clip for n in norms) and any(n <= clip for n in norms)
    pop = train_population(seeds=SEEDS, **config)
    x = sample_x().to(torch.float64)
    for seed, rp in zip(SEEDS, pop, strict=True):
        single = train(seed=seed, **config)
        assert rp.config == single.config
        # the loss of every update (eval_every=1), validation too
        close_rows(rp.history, single.history, TOL64)
        assert len(rp.history) == 5
        assert max_param_diff(rp.model, single.model) < TOL64
        assert states_diff(rp.model, single.model, x) < TOL64
        # the runs really differ (own seed, own data)
    assert max_param_diff(pop[0].model, pop[1].model) > 1e-3


def test_batched_models():
    """RNN, LSTM and the fused MemRNN, RelRNN and RelLSTM run one batched forward; the
    others per run."""
    def kind(name, **kw):
        return batched(build_task_model(name, "copy", 8, **kw))
    assert kind("rnn") and kind("lstm") and kind("relrnn") and kind("rellstm") and \
        kind("memrnn") and kind("rnn", nonlinearity="modrelu")
    assert not kind("memrnn", fused=False) and not kind("rellstm", fused=False) and \
        not kind("relrnn", fused=False) and not kind("sab") and not kind("transformer")


@pytest.mark.parametrize("model", ["rnn", "lstm", "memrnn", "relrnn", "rellstm"])
def test_population_forward_equals_each_model(model, float64):
    """The batched forward gives each run's logits; batches of different sizes (the
    last batch of a pixel epoch) fall back to each run's own forward."""
    from rsa.models.kernels.population import population_forward

    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_task_model(model, "digits", 8, **OPTIONS.get(model, {})))
    g = torch.Generator().manual_seed(1)
    for sizes in ([4, 4, 4], [4, 2, 4]):
        xs = [torch.randn(64, b, 1, generator=g) for b in sizes]
        for m, x, z in zip(models, xs, population_forward(models, xs), strict=True):
            assert z.shape == (x.shape[1], 10)
            assert (m(x) - z).abs().max() < 1e-12


@pytest.mark.parametrize("model", ["relrnn", "memrnn"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
def test_population_fused_gradients_match_single_fused(model, nonlinearity, float64):
    """The batched fused RelRNN and MemRNN: states and every gradient equal the single
    fused function's, run by run (to 1e-12), with modReLU too, RelRNN's memory full
    (T > nu + rho)."""
    from rsa.models.kernels.fused import memrnn_fused
    from rsa.models.kernels.population_fused import population_memrnn
    from rsa.models.kernels.screened import relrnn_fused

    P, T, B, n = 3, 9, 4, 5
    g = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    ux, V, W_q, W_k, v = leaf(P, T, B, n), leaf(P, n, n), leaf(P, n, n), leaf(P, n, n), \
        leaf(P, n)
    b = leaf(P, n, scale=0.1) if nonlinearity == "modrelu" else None
    if model == "relrnn":
        H = population_relrnn(ux, V, W_q, W_k, v, b, nu=2, rho=3)
    else:
        H = population_memrnn(ux, V, W_q, W_k, v, b)
    out = torch.randn(H.shape, generator=g)
    (H * out).sum().backward()
    inputs = [t for t in (ux, V, W_q, W_k, v, b) if t is not None]
    for p in range(P):
        single = [t.detach()[p].clone().requires_grad_() for t in inputs]
        args = single + ([None] if b is None else [])
        Hp = relrnn_fused(*args, nu=2, rho=3) if model == "relrnn" else memrnn_fused(*args)
        assert (Hp - H[p]).abs().max() < 1e-12
        (Hp * out[p]).sum().backward()
        for t, s in zip(inputs, single, strict=True):
            assert (t.grad[p] - s.grad).abs().max() < 1e-12


def test_population_rellstm_gradients_match_single_fused(float64):
    """The batched fused RelLSTM, as the RelRNN above (memory full: T > nu + rho)."""
    from rsa.models.kernels.population_fused import population_rellstm
    from rsa.models.kernels.rellstm import rellstm_fused

    P, T, B, n = 3, 9, 4, 5
    g = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return (torch.randn(*shape, generator=g) * 0.5).requires_grad_()

    inputs = [leaf(P, T, B, 4 * n), leaf(P, 4 * n, n), leaf(P, n, n), leaf(P, n, n),
              leaf(P, n)]
    H = population_rellstm(*inputs, nu=2, rho=3)
    out = torch.randn(H.shape, generator=g)
    (H * out).sum().backward()
    for p in range(P):
        single = [t.detach()[p].clone().requires_grad_() for t in inputs]
        Hp = rellstm_fused(*single, nu=2, rho=3)
        assert (Hp - H[p]).abs().max() < 1e-12
        (Hp * out[p]).sum().backward()
        for t, s in zip(inputs, single, strict=True):
            assert (t.grad[p] - s.grad).abs().max() < 1e-12


# -- stopping early, interruption, resume -------------------------------------------------

def test_one_run_stops_early_the_others_go_on(tmp_path, float64):
    config = dict(TINY, model="rnn", steps=12, eval_batch=3, patience_updates=6)
    pop = train_population(seeds=SEEDS, out_dir=str(tmp_path), **config)
    done = [r.summary["steps_done"] for r in pop]
    assert min(done) < 12 and max(done) == 12, done  # the test's premise
    for seed, rp in zip(SEEDS, pop, strict=True):
        single = train(seed=seed, **config)
        assert rp.summary["stopped_early"] == single.summary["stopped_early"]
        assert rp.summary["steps_done"] == single.summary["steps_done"]
        close_rows(rp.history, single.history, TOL64)
        assert max_param_diff(rp.model, single.model) < TOL64
        # the stored weights are those at the run's own stop
        stored = torch.load(tmp_path / f"s{seed}" / "model.pt", weights_only=True)["model"]
        assert max((stored[k] - v).abs().max().item()
                   for k, v in single.model.state_dict().items()) < TOL64
        results = json.loads((tmp_path / f"s{seed}" / "results.json").read_text())
        assert results["complete"] and results["summary"]["steps_done"] == done[seed]


@pytest.fixture
def python_sigint_handler():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("model", ["rnn", "relrnn", "rellstm", "memrnn"])
def test_interrupted_population_resumes(model, tmp_path, monkeypatch, float64,
                                        python_sigint_handler):
    config = dict(TINY, model=model, steps=6, clip=0.5, **OPTIONS.get(model, {}))
    full = train_population(seeds=SEEDS, **config)
    real = pop_mod.population_step
    monkeypatch.setattr(pop_mod, "population_step",
                        on_call(real, 3, lambda: signal.raise_signal(signal.SIGINT)))
    with pytest.raises(KeyboardInterrupt):
        train_population(seeds=SEEDS, out_dir=str(tmp_path), **config)
    for seed in SEEDS:
        ckpt = torch.load(tmp_path / f"s{seed}" / "checkpoint.pt", weights_only=True)
        assert ckpt["state"]["step"] == 3
    monkeypatch.setattr(pop_mod, "population_step", real)
    resumed = train_population(seeds=SEEDS, out_dir=str(tmp_path), **config)
    for a, b in zip(resumed, full, strict=True):
        close_rows(a.history, b.history, TOL64)
        assert max_param_diff(a.model, b.model) < TOL64
        assert [s["start_step"] for s in a.summary["segments"]] == [0, 3]


def test_partly_finished_group_and_single_run_resume(tmp_path, float64):
    """A finished run is loaded and not retrained, a run interrupted alone resumes in
    the population, and a population's run resumes alone: all equal the single runs."""
    config = dict(TINY, model="relrnn", steps=6, **OPTIONS["relrnn"])
    dirs = seed_dirs(tmp_path, SEEDS)
    train(seed=0, out_dir=dirs[0], **config)                          # finished alone
    train(seed=1, out_dir=dirs[1], **{**config, "steps": 3})          # half done alone
    pop = train_population(seeds=SEEDS, out_dir=str(tmp_path), **config)
    assert pop[0].note and "nothing was trained" in pop[0].note
    assert pop[1].summary["segments"][-1]["start_step"] == 3
    for seed, rp in zip(SEEDS, pop, strict=True):
        single = train(seed=seed, **config)
        close_rows(rp.history, single.history, TOL64)
        assert max_param_diff(rp.model, single.model) < TOL64
    # run 2 of the population, extended alone, equals a longer single run
    longer = train(seed=2, out_dir=dirs[2], **{**config, "steps": 8})
    alone = train(seed=2, **{**config, "steps": 8})
    close_rows(longer.history, alone.history, TOL64)
    assert max_param_diff(longer.model, alone.model) < TOL64


def test_results_files_as_a_single_run_writes_them(tmp_path):
    config = dict(TINY, model="rnn", steps=4, eval_every=2)
    train_population(seeds=[3, 4], out_dir=str(tmp_path / "pop"), **config)
    train(seed=3, out_dir=str(tmp_path / "alone"), **config)
    a, b = tmp_path / "pop" / "s3", tmp_path / "alone"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra.keys() == rb.keys() and ra["summary"].keys() == rb["summary"].keys()
    assert {k: v for k, v in ra["config"].items() if k != "out_dir"} == \
        {k: v for k, v in rb["config"].items() if k != "out_dir"}
    seg = ra["summary"]["segments"][0]
    assert seg["population"] == 2 and seg.keys() - {"population"} == \
        rb["summary"]["segments"][0].keys()
    assert (a / "history.csv").read_text().splitlines()[0] == \
        (b / "history.csv").read_text().splitlines()[0]
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma.keys() == mb.keys()
    assert ma["command"] == mb["command"].replace(str(b), str(a))
    assert ma["complete"] is True


# -- the compiled kernel (kernel="compiled", rsa/models/kernels/compiled*.py) ------------

COMPILED_FORWARDS = {"rnn": "rnn_compiled_forward", "lstm": "lstm_compiled_forward",
                     "memrnn": "memrnn_compiled_forward", "relrnn": "relrnn_compiled_forward",
                     "rellstm": "rellstm_compiled_forward"}


@pytest.mark.parametrize("model", list(COMPILED_FORWARDS))
def test_compiled_population_equals_torch_population_float64(model, float64, monkeypatch):
    """A population on kernel="compiled" trains every run as the torch population does
    (losses of every update, parameters, states: 1e-10 in float64, clipping splitting the
    runs), and runs the compiled kernel (counted), not the torch batched forward."""
    from rsa.models import cells
    from rsa.models.kernels import compiled
    if not compiled.available():
        pytest.skip("numba is not installed (extra 'compiled')")
    name = COMPILED_FORWARDS[model]
    calls = []
    real = getattr(cells, name)
    monkeypatch.setattr(cells, name, lambda *a: calls.append(1) or real(*a))
    config = {**TINY, "model": model, "steps": 5, **OPTIONS.get(model, {})}
    config["clip"] = split_clip(config, SEEDS)
    ref = train_population(seeds=SEEDS, **config)
    assert not calls
    comp = train_population(seeds=SEEDS, kernel="compiled", **config)
    assert len(calls) >= 5 * len(SEEDS)  # every run's every update, validation too
    x = sample_x().to(torch.float64)
    for rc, rr in zip(comp, ref, strict=True):
        assert rc.model.core.kernel == "compiled" and rc.config["kernel"] == "compiled"
        close_rows(rc.history, rr.history, TOL64)
        assert len(rc.history) == 5
        assert max_param_diff(rc.model, rr.model) < TOL64
        assert states_diff(rc.model, rr.model, x) < TOL64
    assert max_param_diff(comp[0].model, comp[1].model) > 1e-3


# -- float32 ---------------------------------------------------------------------------

F32_TOL = 3e-5  # after 5 updates (lr 3e-3); measured: at most 3e-6 (RelRNN), 4e-7 (RNN)


@pytest.mark.parametrize("model", ["rnn", "lstm", "memrnn", "relrnn", "rellstm"])
def test_population_float32_within_tolerance(model):
    config = dict(TINY, model=model, steps=5, **OPTIONS.get(model, {}))
    pop = train_population(seeds=SEEDS, **config)
    for seed, rp in zip(SEEDS, pop, strict=True):
        single = train(seed=seed, **config)
        close_rows(rp.history, single.history, F32_TOL)
        assert max_param_diff(rp.model, single.model) < F32_TOL


# -- interface --------------------------------------------------------------------------

@pytest.mark.parametrize("seeds, message", [
    ([], r"seeds must name at least one seed, got \[\]"),
    ([1, 1], r"seeds must be distinct, got \[1, 1\]"),
    ([-1], r"seed must be an int >= 0, got -1"),
])
def test_bad_seeds(seeds, message):
    with pytest.raises(ValueError, match=message):
        train_population(seeds=seeds, **TINY, model="rnn", steps=1)


def test_out_dirs_must_match_seeds(tmp_path):
    with pytest.raises(ValueError, match=r"one folder per seed \(2\), got 1"):
        train_population(seeds=[0, 1], out_dirs=[str(tmp_path)], **TINY, model="rnn",
                         steps=1)


def test_cli_seeds_writes_one_folder_per_seed(tmp_path, capsys):
    rc = main(["train", "--model", "rnn", "--T", "4", "--hidden-size", "8", "--steps", "2",
               "--eval-every", "1", "--batch", "3", "--eval-batch", "4", "--no-progress",
               "--seeds", "0", "1", "--out", str(tmp_path), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["seed"] for r in out] == [0, 1]
    for seed in (0, 1):
        results = json.loads((tmp_path / f"s{seed}" / "results.json").read_text())
        assert results["complete"] and results["config"]["seed"] == seed
    with pytest.raises(SystemExit):
        main(["train", "--model", "rnn", "--seed", "1", "--seeds", "0", "1"])
    assert "not allowed with argument --seed" in capsys.readouterr().err


# -- reproduce --populations ----------------------------------------------------------------

def test_reproduce_populations_trains_the_unfinished_seeds_together(tmp_path, monkeypatch):
    from rsa import experiments, io

    plan = experiments.Plan(Ts=(3,), seeds=(0, 1, 2, 3), steps=3, eval_every=1, rhos=(1,),
                            rho_T=3, digits_steps=1, transfer_Ts=(3,), transfer_max=12,
                            grad_T=3)
    monkeypatch.setitem(experiments.PLANS, "tinypop", plan)

    def at(root):
        monkeypatch.setenv(io.DATA_ENV, str(root / "data"))
        monkeypatch.setenv(io.RUNS_ENV, str(root / "runs"))
        return root / "data" / "tinypop"

    select = ["copy/rnn_T3_*", "copy/relrnn_T3_*"]
    alone = at(tmp_path / "alone")
    experiments.reproduce("tinypop", ["train"], log=lambda s: None, select=select)
    data = at(tmp_path / "pop")
    experiments.reproduce("tinypop", ["train"], log=lambda s: None,
                          select=["copy/rnn_T3_s0"])           # seed 0 stored already
    held = tmp_path / "pop" / "runs" / "tinypop" / "copy" / "rnn_T3_s3"
    with holding(held):                                        # seed 3 held by a process
        log = []
        experiments.reproduce("tinypop", ["train"], log=log.append, select=select,
                              populations=True)
    text = "\n".join(log)
    assert "copy/rnn_T3_s0: done" in text
    assert "copy/rnn_T3_s3: being trained by process" in text
    assert "copy/rnn_T3_s1, copy/rnn_T3_s2: training 3 updates as one population of 2" \
        in text
    assert "as one population of 4" in text                    # the RelRNN seeds
    assert not (data / "copy" / "rnn_T3_s3").exists()
    for name in ("copy/rnn_T3_s1", "copy/rnn_T3_s2", "copy/relrnn_T3_s3"):
        a, b = (io.load_json(d / name / "results.json") for d in (data, alone))
        assert a["complete"] and a["summary"]["segments"][0]["population"] > 1
        close_rows(a["history"], b["history"], F32_TOL)
        assert sorted(p.name for p in (data / name).iterdir()) == \
            sorted(p.name for p in (alone / name).iterdir())
    logs = {0: [], 1: []}
    for i in (0, 1):  # shards split populations
        experiments.reproduce("tinypop", ["train"], log=logs[i].append, select=select,
                              populations=True, shard=(i, 2))
    assert "rnn_T3_s3: training 3 updates as one population of 1" in "\n".join(logs[0])
    assert all("done" in line for line in logs[1] if line.startswith("[population")), logs


TASK_KINDS = {  # every kind of task: synthetic sequences, 8x8 digits, 784-step MNIST
    "copy": dict(T=3, batch=2, steps=4, eval_every=2),
    "denoise": dict(T=3, batch=2, steps=4, eval_every=2),
    "digits": dict(batch=16, steps=4, eval_every=2, eval_batch=200),
    "mnist10k": dict(batch=8, steps=2, eval_every=1, eval_batch=500),
}


@pytest.mark.parametrize("task", list(TASK_KINDS))
def test_a_population_stores_what_single_runs_store_on_every_task_kind(task, tmp_path):
    """One loop (rsa.train.loop): a population's runs write the same files, with the same
    fields, as the same runs trained alone; values agree to float32 rounding."""
    args = dict(model="rnn", task=task, hidden_size=8, progress=False, lr=3e-3,
                **TASK_KINDS[task])
    singles = [train(seed=s, out_dir=str(tmp_path / "single" / f"s{s}"), **args)
               for s in (0, 1)]
    pop = train_population(seeds=[0, 1], out_dir=str(tmp_path / "pop"), **args)
    for s, single, member in zip((0, 1), singles, pop, strict=True):
        a, b = tmp_path / "single" / f"s{s}", tmp_path / "pop" / f"s{s}"
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
        assert ra.keys() == rb.keys() and ra["complete"] and rb["complete"]
        assert {k: v for k, v in ra["config"].items() if k != "out_dir"} == \
            {k: v for k, v in rb["config"].items() if k != "out_dir"}
        assert ra["summary"].keys() == rb["summary"].keys(), \
            set(ra["summary"]) ^ set(rb["summary"])
        for k, v in ra["summary"].items():
            if k in ("segments",) or "time" in k:
                continue
            w = rb["summary"][k]
            if isinstance(v, float) and isinstance(w, float):
                assert math.isclose(v, w, abs_tol=F32_TOL), (task, k, v, w)
            else:
                assert v == w, (task, k, v, w)
        close_rows(ra["history"], rb["history"], F32_TOL)
        ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
        assert ma.keys() == mb.keys()
        ca, cb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (a, b))
        assert ca.keys() == cb.keys() and ca["state"].keys() == cb["state"].keys()
        assert torch.equal(ca["torch_rng"], cb["torch_rng"])
        assert max_param_diff(member.model, single.model) < F32_TOL
