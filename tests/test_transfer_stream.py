"""The transfer stage evaluates on a stream of its own: no run's training, validation or
gradient sequences are among its test sequences (they once were: seed 1's first 100
training sequences were the transfer batch)."""

from __future__ import annotations

import pytest

from rsa import experiments
from rsa.experiments import GRAD_SEED_OFFSET, TRANSFER_SEED, campaign, check_transfer_stream
from rsa.tasks import copy_batch, get_task, make_generator
from rsa.train import VALIDATION_SEED_OFFSET
from rsa.train.loop import _SyntheticStream


def test_no_plan_or_campaign_seed_draws_the_transfer_stream():
    seeds = {s for plan in experiments.PLANS.values() for s in plan.seeds}
    seeds |= {s for job in campaign.JOBS for s in job.seeds}
    check_transfer_stream(seeds)
    for clash in (TRANSFER_SEED, TRANSFER_SEED - VALIDATION_SEED_OFFSET,
                  TRANSFER_SEED - GRAD_SEED_OFFSET):
        with pytest.raises(ValueError, match="is a stream of the run with seed"):
            check_transfer_stream([clash])


def _symbols(x):
    return {tuple(row) for row in x[:10].argmax(-1).T.tolist()}  # the 10 data symbols


def test_the_transfer_sequences_are_none_of_the_runs_sequences():
    T = 100
    test, _ = copy_batch(T, 100, generator=make_generator(TRANSFER_SEED))
    seen = set()
    for seed in (0, 1, 2):
        stream = _SyntheticStream(get_task("copy"), T, 10, seed, "cpu")
        for _ in range(100):  # the first 1 000 training sequences
            seen |= _symbols(next(stream)[0])
        val, _ = copy_batch(T, 100, generator=make_generator(seed + VALIDATION_SEED_OFFSET))
        seen |= _symbols(val)
    assert len(seen) > 3000 and not (_symbols(test) & seen)
    old, _ = copy_batch(T, 100, generator=make_generator(1))  # the stream used before
    assert _symbols(old) & seen  # the check can fail: the old batch was training data
