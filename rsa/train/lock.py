"""One writer per run: the lock that ``rsa train``, populations, ``reproduce`` and the
campaign all take on a run's output folder before they touch it.

The lock is ``fcntl.flock`` on ``<folder>/.lock``: the operating system releases it when
the process ends, however it ends (``kill -9`` included), so a dead process never leaves
a stale lock, and there is no take-over and no race between two processes that find
one. The file holds the holder's process id, for the message a second process prints;
it is never removed (removing a lock file while another process waits on it would let
two processes hold two different files). A process may take the same folder's lock
again while it holds it (``reproduce`` claims a run, then :func:`rsa.train.train` claims
the same folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["RunLockedError", "claim", "hold"]

LOCK = ".lock"
_HELD: dict[str, int] = {}  # folder (resolved) -> how many claims this process holds


class RunLockedError(RuntimeError):
    """Another process holds the run's folder; the message names it and the folder."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


@contextlib.contextmanager
def claim(folder: str | os.PathLike):
    """Hold the lock of ``folder`` (created if needed) for the ``with`` block: yields
    None when this process holds it, or a description of the holder (``"process
    1234"``) when another process does, without waiting."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"the output folder {str(folder)!r} cannot be created: it, or a "
                         f"folder above it, is a file; choose another --out-dir "
                         f"(out_dir)") from None
    key = str(folder.resolve())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield None
        finally:
            _HELD[key] -= 1
        return
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield _holder(fd)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[key] = 1
        try:
            yield None
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def hold(folder: str | os.PathLike | None, what: str = "run"):
    """:func:`claim`, raising :class:`RunLockedError` when another process holds the
    folder (``folder=None``: nothing to lock)."""
    if folder is None:
        yield
        return
    with claim(folder) as holder:
        if holder is not None:
            raise RunLockedError(
                f"{folder} is being trained by {holder} (its {LOCK} is held); wait for it "
                f"to finish or stop it, or train this {what} into another --out-dir")
        yield
