"""rsa.SAB, sparse attentive backtracking as released, against a slow reference written
from the equations (rsa/models/reference.py: reference_sab), in float64: outputs, states,
attention weights and gradients; the sparsifier's quirks (raw scores while the memory
holds at most k slots, the k-th slot clamped, ties); the truncation boundary; gradcheck;
bad inputs; the registry (SAB and the Transformer outside MODELS and the plans); a few
training updates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rsa
from rsa import experiments, plotting
from rsa.models import describe, heads, registry
from rsa.models.reference import reference_sab
from rsa.models.sab import EPS, SAB, sparsify
from rsa.train import resolve_config, train

PAPER_MODELS = ("rnn", "lstm", "memrnn", "relrnn", "rellstm")


def make(T_in=3, n=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = SAB(T_in, n, **kwargs).double()
    with torch.no_grad():  # scores of order 1, so that the sparsifier has work to do
        model.w.normal_(0, 1.0)
    return model


def compare(model, x, freeze_attention=False):
    """The fast model against the reference on every example: outputs, states, weights,
    scores, slot times and the gradients of a random projection of the outputs."""
    x = x.clone().requires_grad_()
    proj = torch.randn(*model(x).shape, dtype=x.dtype)
    out, trace = model(x, record=True, freeze_attention=freeze_attention)
    params = [x, *model.parameters()]
    g_fast = torch.autograd.grad((out * proj).sum(), params, allow_unused=True)
    total = 0
    for b in range(x.shape[1]):
        outs, hs, weights, scores, times = reference_sab(model, x[:, b], freeze_attention)
        torch.testing.assert_close(out[:, b], torch.stack(outs), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.stack(trace.states)[:, b], torch.stack(hs),
                                   rtol=1e-12, atol=1e-12)
        for t in range(x.shape[0]):
            m = len(weights[t])
            assert trace.index[t, b, :m].tolist() == times[:m]
            assert (trace.index[t, b, m:] == -1).all() and (trace.alpha[t, b, m:] == 0).all()
            torch.testing.assert_close(trace.alpha[t, b, :m],
                                       torch.tensor(weights[t], dtype=x.dtype))
            torch.testing.assert_close(trace.score[t, b, :m],
                                       torch.tensor(scores[t], dtype=x.dtype))
        total = total + (torch.stack(outs) * proj[:, b]).sum()
    g_ref = torch.autograd.grad(total, params, allow_unused=True)
    for a, r, p in zip(g_fast, g_ref, params, strict=True):
        a = torch.zeros_like(p) if a is None else a
        r = torch.zeros_like(p) if r is None else r
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
    return trace


@pytest.mark.parametrize("kwargs", [
    dict(top_k=5, attn_every_k=2, truncate_length=5),   # the release's copy setting
    dict(top_k=2, attn_every_k=1, truncate_length=3),   # memory beyond k from step 3
    dict(top_k=3, attn_every_k=3, truncate_length=1),   # every step truncated
    dict(top_k=1, attn_every_k=1, truncate_length=4),   # k = 1: every weight 0
    dict(top_k=2, attn_every_k=2, truncate_length=4, block_attn_grad_past=True),
])
@pytest.mark.parametrize("score_form", SAB.SCORE_FORMS)
def test_sab_matches_the_reference(kwargs, score_form):
    model = make(**kwargs, score_form=score_form)
    x = torch.randn(13, 3, 3, dtype=torch.float64)
    trace = compare(model, x)
    if kwargs["top_k"] == 1:  # quirk 2: beyond one slot the only kept one is clamped
        assert (trace.alpha[0, :, 0] != 0).all() and (trace.alpha[1:] == 0).all()


@pytest.mark.parametrize("score_form", SAB.SCORE_FORMS)
def test_sab_matches_the_reference_with_frozen_attention(score_form):
    compare(make(top_k=2, attn_every_k=1, truncate_length=3, score_form=score_form),
            torch.randn(9, 2, 3, dtype=torch.float64), freeze_attention=True)


@pytest.mark.parametrize("block", [False, True])
def test_the_separable_score_is_the_released_one(block):
    """The two computations of the scores (quirk 5): the same outputs, attention and
    parameter gradients in float64, at the release's copy setting on 60 steps; a
    separable score that dropped the slots' term would fail."""
    released = make(n=8, block_attn_grad_past=block)
    separable = make(n=8, block_attn_grad_past=block, score_form="separable")
    separable.load_state_dict(released.state_dict())
    assert released.score_form == "released"  # the default: the release's computation
    x = torch.randn(60, 4, 3, dtype=torch.float64)
    proj = torch.randn(60, 4, 16, dtype=torch.float64)
    (o1, t1), (o2, t2) = released(x, record=True), separable(x, record=True)
    torch.testing.assert_close(o2, o1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t2.alpha, t1.alpha, rtol=1e-12, atol=1e-12)
    assert torch.equal(t2.index, t1.index)
    g1 = torch.autograd.grad((o1 * proj).sum(), list(released.parameters()))
    g2 = torch.autograd.grad((o2 * proj).sum(), list(separable.parameters()))
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"score_form must be one of \('released', "
                                         r"'separable'\), got 'fast'"):
        SAB(3, 4, score_form="fast")


def test_memory_shorter_than_k_uses_raw_scores():
    """While the memory holds at most k slots the weights are the scores themselves
    (negative ones included); beyond, at most k - 1 are non-zero and they sum to
    S / (S + eps)."""
    model = make(top_k=4, attn_every_k=1, truncate_length=100)
    x = torch.randn(10, 2, 3, dtype=torch.float64)
    _, trace = model(x, record=True)
    m = (trace.index >= 0).sum(-1) + 1  # slots in memory, m_0 included
    small = m <= 4
    assert small[:4].all() and not small[4:].any()
    assert torch.equal(trace.alpha[small.nonzero(as_tuple=True)],
                       trace.score[small.nonzero(as_tuple=True)])
    assert (trace.alpha[:4] < 0).any()  # raw scores: not a distribution
    big = trace.alpha[4:]
    assert ((big > 0).sum(-1) <= 3).all() and (big >= 0).all()
    sums = big.sum(-1)
    assert (sums < 1).all() and (sums > 1 - 1e-5).all()


def test_sparsify_ties_and_threshold():
    e = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.5, 2.0],    # k-th (3rd) largest is a tie
                      [1.0, 4.0, 3.0, 2.0, 0.0, -1.0],   # no tie: 4 and 3 are kept
                      [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]],   # all tied: every weight 0
                     dtype=torch.float64)
    a = sparsify(e, 3)
    expect = torch.tensor([[1.0, 0, 0, 0, 0, 0],
                           [0, 2.0, 1.0, 0, 0, 0],
                           [0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    expect[0, 0] = (1 - EPS) / (1 - EPS + EPS)
    expect[1, 1:3] = torch.tensor([2 - EPS, 1 - EPS], dtype=torch.float64) / (3 - EPS)
    torch.testing.assert_close(a, expect, rtol=0, atol=1e-15)
    assert EPS == 1e-7  # the release writes 10e-8
    assert torch.equal(sparsify(e[:, :3], 3), e[:, :3])  # m <= k: untouched
    # the threshold is not detached: the k-th score receives gradient (row 2)
    e2 = e[1:2].clone().requires_grad_()
    (sparsify(e2, 3)[0, 1]).backward()
    assert e2.grad[0, 3] != 0 and e2.grad[0, 0] == 0


def test_ties_in_the_model_zero_every_weight():
    """w_m = 0 makes every score equal: beyond k slots every weight is 0, s_t = 0, and
    the model is the truncated LSTM; the reference agrees (values and gradients)."""
    model = make(top_k=2, attn_every_k=1, truncate_length=4)
    with torch.no_grad():
        model.w[model.n:] = 0
    x = torch.randn(8, 2, 3, dtype=torch.float64)
    trace = compare(model, x)
    assert (trace.alpha[2:] == 0).all()


def _input_gradients(model, x, t):
    """|d out_t / d x_j| summed over features, for every j (one example)."""
    x = x.clone().requires_grad_()
    out = model(x)
    (g,) = torch.autograd.grad(out[t].sum(), x)
    return g.abs().sum(dim=(1, 2))


def test_truncation_boundary_and_backtracking():
    """Without memory (attn_every_k > T, only m_0 = 0) the output at 1-based step t
    depends on x_j exactly for j >= the last multiple of truncate_length <= t; with
    memory the gradient crosses the boundary through the remembered states."""
    T, tl = 14, 4
    x = torch.randn(T, 1, 3, dtype=torch.float64)
    lstm_only = make(top_k=2, attn_every_k=100, truncate_length=tl)
    for t in range(1, T + 1):
        start = max(tl * (t // tl), 1)
        g = _input_gradients(lstm_only, x, t - 1)
        assert (g[start - 1:t] > 0).all(), t
        assert (g[:start - 1] == 0).all() and (g[t:] == 0).all(), t
    attending = make(top_k=3, attn_every_k=1, truncate_length=tl)
    g = _input_gradients(attending, x, T - 1)
    assert (g[:12 - 1] > 0).any()  # before the boundary at step 12
    assert (g[T:] == 0).all()


def test_gradcheck():
    """Without truncation (truncate_length > T: a finite difference sees every path,
    the truncated gradient does not; truncation is checked against the reference)."""
    torch.manual_seed(1)
    model = make(T_in=2, n=3, top_k=2, attn_every_k=1, truncate_length=100)
    x = torch.randn(7, 2, 2, dtype=torch.float64, requires_grad=True)
    params = tuple(model.parameters())

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(
                model, dict(zip((n for n, _ in model.named_parameters()), ps, strict=True))):
            return model(x)

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def test_the_cell_is_nn_lstmcell():
    """U, V and their biases are nn.LSTMCell's weight_ih, weight_hh, bias_ih, bias_hh:
    with memory off (top_k large, w = 0: raw scores 0) SAB is the release's LSTM."""
    model = make(top_k=50, attn_every_k=1, truncate_length=100)
    with torch.no_grad():
        model.w.zero_()
    cell = nn.LSTMCell(3, 4).double()
    cell.load_state_dict({"weight_ih": model.U.weight, "bias_ih": model.U.bias,
                          "weight_hh": model.V.weight, "bias_hh": model.V.bias})
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h = c = torch.zeros(2, 4, dtype=torch.float64)
    hs = []
    for x_t in x:
        h, c = cell(x_t, (h, c))
        hs.append(h)
    out = model(x)
    torch.testing.assert_close(out[..., :4], torch.stack(hs))
    assert (out[..., 4:] == 0).all()


def test_defaults_are_the_releases_copy_setting():
    model = SAB(10, 128)
    assert (model.top_k, model.attn_every_k, model.truncate_length) == (5, 2, 5)
    assert model.block_attn_grad_past is False
    assert model.n == 128 and model.hidden_size == 256
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 4 * 128 * (10 + 128) + 2 * 4 * 128 + 2 * 128
    bound = 1 / math.sqrt(128)
    for p in (model.U.weight, model.U.bias, model.V.weight, model.V.bias):
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound
    assert 0.005 < model.w.std() < 0.02


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_k=0), "top_k must be an int >= 1, got 0"),
    (dict(attn_every_k=0), "attn_every_k must be an int >= 1, got 0"),
    (dict(truncate_length=2.5), "truncate_length must be an int >= 1, got 2.5"),
    (dict(top_k=True), "top_k must be an int >= 1, got True"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError) as error:
        SAB(3, 4, **kwargs)
    assert str(error.value) == message


def test_bad_inputs():
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1, got 0"):
        SAB(3, 0)
    model = SAB(3, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, 3\), got \(5, 2, 4\)"):
        model(torch.zeros(5, 2, 4))
    with pytest.raises(ValueError, match=r"got \(5, 3\)"):
        model(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="sequence length T must be >= 1, got 0"):
        model(torch.zeros(0, 2, 3))


def test_registered_outside_the_plan():
    """SAB and the Transformer are built, configured and drawn, outside MODELS; only the
    converged plan trains them, as its baselines."""
    assert rsa.MODELS == PAPER_MODELS == registry.names()
    assert registry.registered() == (*PAPER_MODELS, "sab", "transformer")
    assert isinstance(heads.build_model("sab", 3, 4), SAB)
    assert isinstance(heads.build_model("transformer", 3, 16), rsa.Transformer)
    assert heads.build_task_model("sab", "copy", 8).readout.in_features == 16
    assert resolve_config(model="sab", task="copy").lr == 1e-3
    assert resolve_config(model="transformer", task="digits").lr == 1e-3
    with pytest.raises(ValueError, match="nu and rho apply to relrnn and rellstm only"):
        heads.build_model("sab", 3, 4, nu=2)
    assert plotting.model_label("sab") == "SAB" and plotting.model_color("SAB") is not None
    assert plotting.model_label("transformer") == "Transformer"
    assert plotting._by_model_order(["transformer", "sab", "rnn"]) == \
        ["rnn", "sab", "transformer"]
    plans = {scale: experiments.plan_runs(scale) for scale in experiments.PLANS}
    specs = [registry.unregister("sab"), registry.unregister("transformer")]
    try:
        assert {s: experiments.plan_runs(s) for s in experiments.PLANS} == plans
        assert rsa.MODELS == PAPER_MODELS
    finally:
        for spec in specs:
            registry.register(spec)
    # the fixed-budget plans leave them out; the converged plan trains them as its
    # baselines: seed 0, copy and denoise at its delays, and SAB on copy at the short
    # delays 20 and 50; nothing else
    for scale, runs in plans.items():
        base = [r["name"] for r in runs if r["model"] in ("sab", "transformer")]
        if scale == "converged":
            assert sorted(base) == sorted(
                [f"{task}/{m}_T{T}_s0" for task in ("copy", "denoise") for T in (100, 200)
                 for m in ("sab", "transformer")] + ["copy/sab_T20_s0", "copy/sab_T50_s0"])
        else:
            assert not base, scale
    assert describe.describe_default("lr") == \
        "1e-3, but 1e-4 for rnn, memrnn, relrnn on pixel tasks; 2e-4 for relrnn on copy " \
        "at T >= 1000"


def test_a_few_training_updates(tmp_path):
    result = train(model="sab", task="copy", T=3, hidden_size=6, batch=4, eval_batch=8,
                   steps=4, eval_every=2, progress=False, out_dir=str(tmp_path / "run"))
    assert isinstance(result.model.core, SAB) and result.config["lr"] == 1e-3
    assert [row["step"] for row in result.history] == [2, 4]
    assert all(math.isfinite(row["val_loss"]) for row in result.history)
    fresh = heads.build_task_model("sab", "copy", 6)
    assert any(not torch.equal(p, q) for p, q in
               zip(fresh.state_dict().values(), result.model.state_dict().values(),
                   strict=True))


def test_a_sab_run_may_resume_with_the_other_score_form(tmp_path):
    """The score form is another computation of the same function: a run may change it
    on resume, and each part records its form (the parts before it read as released)."""
    import json

    from rsa.train.checkpoint import CHECKPOINT
    tiny = dict(model="sab", task="copy", T=3, hidden_size=4, batch=2, eval_batch=4,
                eval_every=2, checkpoint_every=2, progress=False, out_dir=str(tmp_path / "r"))
    train(**tiny, steps=2)
    ckpt = torch.load(tmp_path / "r" / CHECKPOINT, weights_only=True)
    del ckpt["state"]["segments"][0]["score_form"]  # as a part from before it was recorded
    torch.save(ckpt, tmp_path / "r" / CHECKPOINT)
    r = train(**tiny, steps=4, score_form="separable")
    assert r.model.core.score_form == "separable"
    parts = json.loads((tmp_path / "r" / "results.json").read_text())["summary"]["segments"]
    assert [(p["start_step"], p["score_form"]) for p in parts] == [(0, "released"),
                                                                  (2, "separable")]
