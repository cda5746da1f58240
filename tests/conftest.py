"""Shared pytest set-up: a headless matplotlib backend and the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One torch thread: the machine is shared, and more threads than free cores only
    slow the small models of the tests down (by 10x or more, measured here)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (holds rsa/, book/, data/)."""
    return ROOT



def pytest_terminal_summary(terminalreporter):
    from tests.helpers import FAULTS

    if not FAULTS.counts:
        return
    tr = terminalreporter
    tr.section("fault injection")
    for kind, (injected, survived) in FAULTS.counts.items():
        tr.write_line(f"{kind}: {injected} injected, {survived} survived")
    total = [sum(c[i] for c in FAULTS.counts.values()) for i in (0, 1)]
    tr.write_line(f"faults injected: {total[0]}, survived: {total[1]}")
