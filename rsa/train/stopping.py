"""When a run stops before its budget: *solved*, *stalled*, out of patience, at the
first perfect evaluation, or at the first non-finite training loss (*nan*). Defined
once here; the chapter *Copy and denoise* states the rules and the experiment plan
(:mod:`rsa.experiments`, scale "converged") trains by them.
"""

from __future__ import annotations

import math

from rsa.train.config import TrainConfig

SOLVED_ACCURACY = 0.99   # validation accuracy on the answer steps ...
SOLVED_CONSECUTIVE = 2   # ... at this many consecutive evaluations
STALL_FRACTION = 0.9     # "better than memoryless": loss below 0.9 x the memoryless loss


def memoryless_loss(task: str, T: int) -> float:
    """Validation loss (mean cross-entropy over all T + 20 steps) of the best predictor
    that remembers nothing: exact on the blank steps, uniform over the 8 data symbols on
    the 10 answer steps, so 10 ln 8 / (T + 20), for copy and denoise alike."""
    from rsa.tasks import N_DATA, N_SYMBOLS, sequence_length

    return N_DATA * math.log(N_SYMBOLS) / sequence_length(task, T)


def solved_at(history: list[dict]) -> int | None:
    """The update at which a run is *solved*: the first evaluation with validation
    accuracy >= :data:`SOLVED_ACCURACY` that the next :data:`SOLVED_CONSECUTIVE` - 1
    evaluations confirm (also >= it). None if no such evaluation is in ``history``."""
    acc = [row["val_accuracy"] for row in history]
    k = SOLVED_CONSECUTIVE
    for i in range(len(acc) - k + 1):
        if all(a is not None and a >= SOLVED_ACCURACY for a in acc[i:i + k]):
            return history[i]["step"]
    return None


def stalled_at(history: list[dict], window: int, baseline: float) -> int | None:
    """The first evaluation step s >= ``window`` at which no validation loss of the
    evaluations in (s - window, s] was below ``STALL_FRACTION * baseline``: the run has
    learned nothing a memoryless predictor does not know for ``window`` updates. None
    if that never happened (or ``window`` is 0)."""
    if window <= 0:
        return None
    bar = STALL_FRACTION * baseline
    for row in history:
        s = row["step"]
        if s < window:
            continue
        recent = [r["val_loss"] for r in history if s - window < r["step"] <= s]
        if not any(v is not None and math.isfinite(v) and v < bar for v in recent):
            return s
    return None


def nan_at(history: list[dict]) -> int | None:
    """The first evaluation step whose training loss (the mean over the updates since the
    previous evaluation) is not finite: one update had a non-finite loss, so a
    non-finite gradient, and the clipped update made weights NaN for good. None if
    none."""
    for row in history:
        v = row["train_loss"]
        if v is None or not math.isfinite(v):
            return row["step"]
    return None


def patience_exhausted_at(history: list[dict], patience: int) -> int | None:
    """The first evaluation step at which the best validation accuracy so far was last
    improved ``patience`` or more updates earlier. None if never (or ``patience`` is 0)."""
    if patience <= 0:
        return None
    best, best_step = None, 0
    for row in history:
        a = row["val_accuracy"]
        if a is not None and (best is None or a > best):
            best, best_step = a, row["step"]
        elif row["step"] - best_step >= patience:
            return row["step"]
    return None


def _stop_reason(c: TrainConfig, history: list[dict]) -> str | None:
    """Why training stops after the last row of ``history`` (None: it goes on)."""
    if not history:
        return None
    last = history[-1]["step"]
    solved = solved_at(history)
    if c.stop_when_solved and solved is not None:
        return "solved"
    if c.stop_when_nan and nan_at(history) == last:
        return "nan"
    if c.stop_at_perfect and history[-1]["val_accuracy"] >= 1.0 and all(
            r["val_accuracy"] < 1.0 for r in history[:-1]):
        return "perfect"
    if c.stall_updates and stalled_at(history, c.stall_updates,
                                      memoryless_loss(c.task, c.T)) == last:
        return "stalled"
    if c.patience_updates and patience_exhausted_at(history, c.patience_updates) == last:
        return "patience"
    return None



STOP_WORDS = {"nan": "diverged (NaN loss)"}


def stop_in_words(reason, missing: str = "—") -> str:
    """A run's ``stop_reason`` as a reader reads it: ``"nan"`` (the NaN rule fired)
    as ``"diverged (NaN loss)"``, a missing one (None or NaN) as ``missing``, the others
    (``"stalled"``, ``"solved"``, ``"budget"``, ...) as they are."""
    if reason is None or (isinstance(reason, float) and math.isnan(reason)):
        return missing
    return STOP_WORDS.get(str(reason), str(reason))
