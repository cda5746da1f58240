"""Argument checks shared by the theory modules: each names the parameter and what is
accepted.
"""

from __future__ import annotations

import numbers

import numpy as np


# -- argument checks -------------------------------------------------------------------
def check_int(name, value, lo, hi=None):
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        accepted = f"an int in [{lo}, {hi}]" if hi is not None else f"an int >= {lo}"
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return int(value)


def check_nonnegative(name, value, lo=0.0):
    """A number or array of numbers, all finite and >= lo, as a float array."""
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr < lo):
        raise ValueError(f"{name} must be finite and >= {lo}, got {value!r}")
    return arr


def check_per_step(name, value, L):
    """A rate (lam or mu) given once or per step: an (L,) array."""
    arr = check_nonnegative(name, value)
    if arr.ndim == 0:
        return np.full(L, float(arr))
    if arr.shape != (L,):
        raise ValueError(
            f"{name} must be a number or an array of shape ({L},), got shape {arr.shape}"
        )
    return arr


def check_square(name, M):
    M = np.asarray(M, dtype=float)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] < 1:
        raise ValueError(f"{name} must be a square (L, L) array with L >= 1, got shape {M.shape}")
    if not np.all(np.isfinite(M)) or np.any(M < 0):
        raise ValueError(f"{name} must have finite entries >= 0, got min {float(M.min())!r}")
    if np.any(np.triu(M)):
        k, j = np.argwhere(np.triu(M))[0]
        raise ValueError(
            f"{name} must be strictly lower triangular (step k only sees "
            f"j < k), got {name}[{k}, {j}] = {float(M[k, j])!r}"
        )
    return M


def as_rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
