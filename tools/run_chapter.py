#!/usr/bin/env python
"""Re-execute book chapters in place with their default parameters (``make figures``).

For each chapter: run it with papermill into memory (its kernel on local sockets, so
without the kernel's "running over TCP without encryption" warning), strip what changes
from run to run without the content changing (papermill's and nbclient's timing
metadata), and replace the chapter atomically (:func:`rsa.io.atomic_open`: it keeps its
permissions). A chapter that fails is left untouched and the script exits non-zero.
Re-running an unchanged chapter with deterministic code leaves no git diff.

The wall time of each chapter goes to ``data/chapter_times.json``, shown by
``book/reproducibility.ipynb``. Times vary from run to run, so a stored time is only
replaced when the new one differs by more than a factor TOLERANCE: the file (and the
page that shows it) stays unchanged by a routine re-run. It is written atomically too.

To re-run one chapter with *other* parameters and look at its figures without touching
the book, use ``tools/rerun_chapter.py`` (``make chapter``).

Usage (from the repository root)::

    python tools/run_chapter.py                    # every chapter
    python tools/run_chapter.py book/relevancy_screening.ipynb   # + reproducibility
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import nbformat
import papermill as pm
from jupyter_client.manager import KernelManager

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rsa import io  # noqa: E402

BOOK = ROOT / "book"
TIMES = ROOT / "data" / "chapter_times.json"
# The page that shows the table of times runs last and is not timed itself.
LAST = "reproducibility.ipynb"
TOLERANCE = 1.5

# Metadata that records how (and when) a run went rather than what it produced.
NB_KEYS = ("papermill", "widgets")
CELL_KEYS = ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled")


class IPCKernelManager(KernelManager):
    """A kernel on local (IPC) sockets instead of TCP ports: nothing of the notebook
    travels over the network, and the kernel has no encryption warning to print."""

    def __init__(self, **kwargs):
        kwargs.setdefault("transport", "ipc")
        super().__init__(**kwargs)


@contextlib.contextmanager
def _inline_figures():
    """Hide a MPLBACKEND setting (e.g. ``Agg`` on a headless machine) from the kernel, so
    that figures use the notebook's inline backend and are stored as images."""
    backend = os.environ.pop("MPLBACKEND", None)
    try:
        yield
    finally:
        if backend is not None:
            os.environ["MPLBACKEND"] = backend


def execute(path: Path, output: str | None = None, **kwargs) -> nbformat.NotebookNode:
    """Run the notebook ``path`` with papermill, in its own folder, on an IPC kernel
    with inline figures; ``output`` (a path or None) as in
    :func:`papermill.execute_notebook`."""
    with _inline_figures():
        return pm.execute_notebook(str(path), output, cwd=str(path.parent),
                                   progress_bar=False, request_save_on_cell_execute=False,
                                   kernel_manager_class=IPCKernelManager, **kwargs)


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove run-specific metadata (timings, papermill bookkeeping) in place."""
    for key in NB_KEYS:
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in CELL_KEYS:
            cell.metadata.pop(key, None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
    return nb


def chapters(args: list[str]) -> list[Path]:
    paths = [Path(a).resolve() for a in args] or sorted(BOOK.glob("*.ipynb"))
    for p in paths:
        if not p.is_file() or p.suffix != ".ipynb":
            sys.exit(f"not a notebook: {p}")
    # The times page lists every chapter, its parameters and times: re-run it after any
    # chapter of the book, last, so that it shows what was just measured.
    last = BOOK / LAST
    if last.is_file() and last not in paths and any(p.parent == BOOK for p in paths):
        paths.append(last)
    return sorted(paths, key=lambda p: p.name == LAST)


def record_time(name: str, seconds: float) -> None:
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    old = times.get(name, {}).get("seconds")
    if old and 1 / TOLERANCE <= seconds / old <= TOLERANCE:
        return
    times[name] = {"seconds": round(seconds, 1), "cpus": os.cpu_count()}
    io.atomic_write_text(TIMES, json.dumps(dict(sorted(times.items())), indent=2) + "\n")


def run(path: Path) -> float:
    """Execute ``path`` with its defaults and replace it; return the wall time (s)."""
    start = time.perf_counter()
    nb = execute(path)
    seconds = time.perf_counter() - start
    with io.atomic_open(path, "w", newline=None) as f:
        nbformat.write(clean(nb), f)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="notebooks (default: book/*.ipynb)")
    parser.add_argument("--no-times", action="store_true",
                        help=f"do not update {TIMES.relative_to(ROOT)}")
    opts = parser.parse_args(argv)
    failed = []
    for path in chapters(opts.chapters):
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"running {rel} ...", flush=True)
        try:
            seconds = run(path)
        except pm.PapermillExecutionError as e:
            print(f"FAILED {rel}: {e.ename}: {e.evalue} (cell {e.exec_count}); "
                  "chapter left unchanged", file=sys.stderr)
            failed.append(str(rel))
            continue
        print(f"  {rel}: {seconds:.1f} s")
        if not opts.no_times and path.name != LAST:
            record_time(path.name, seconds)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
