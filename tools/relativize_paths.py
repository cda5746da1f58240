#!/usr/bin/env python
"""Rewrite the paths recorded in stored results so that they name no machine's folders.

Results written before ``rsa`` recorded portable paths hold the absolute path of the
repository on the machine that ran them: ``--out-dir /home/me/rsa/runs/x`` in a
manifest's ``command``, ``/home/me/rsa/rsa/__main__.py reproduce ...`` as its ``argv``,
``"out_dir": "/home/me/rsa/runs/x"`` in the ``config`` of ``results.json`` and of
``model.pt``. Copied, such a command writes into that machine's folder. This tool
rewrites them as ``rsa`` now records them (:func:`rsa.io.portable_path`,
:func:`rsa.io.portable_command`): paths inside the repository relative to its root (the
command is run from there), ``python -m rsa`` for the package's entry point. Nothing
is re-run: only the recorded paths change.

It reads every ``*.json`` and ``model.pt`` under the given folders (default ``data/``),
and rewrites, atomically, only the files that change, so running it twice changes
nothing the second time. A file that another process replaces while it is being read
is read again. The repository roots to strip are this repository's root and every
``--old-root`` (the root of the machine that wrote the files, when it differs).

Usage (from the repository root)::

    python tools/relativize_paths.py                 # rewrite data/
    python tools/relativize_paths.py --check         # exit 1 if anything would change
    python tools/relativize_paths.py data/converged --old-root /home/me/rsa
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rsa import io  # noqa: E402

COMMAND_KEYS = ("command", "argv")


def _under(text: str, root: str) -> bool:
    return text == root or text.startswith(root + "/")


def relative(text: str, roots: list[str]) -> str:
    """``text`` without the first of ``roots`` it lies under (lexically: the roots may
    not exist on this machine); unchanged when it lies under none."""
    for root in roots:
        if _under(text, root):
            return text[len(root) + 1:] or "."
    return text


def _word(word: str, roots: list[str]) -> str:
    option, eq, value = word.partition("=")
    if eq and option.startswith("-"):
        return f"{option}={relative(value, roots)}"
    return relative(word, roots)


def command(text: str, roots: list[str]) -> str:
    """A recorded command line with its paths relative, and ``<root>/rsa/__main__.py``
    as ``python -m rsa``; unchanged (not even re-quoted) when it names no root."""
    if not any(root in text for root in roots):
        return text
    words = shlex.split(text)
    if words and any(words[0] == f"{root}/rsa/__main__.py" for root in roots):
        words = ["python", "-m", "rsa", *words[1:]]
    return shlex.join(_word(w, roots) for w in words)


def rewrite(obj: Any, roots: list[str], key: str | None = None) -> Any:
    """``obj`` (parsed JSON, a config dict) with every recorded path made relative."""
    if isinstance(obj, dict):
        return {k: rewrite(v, roots, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rewrite(v, roots, key) for v in obj]
    if isinstance(obj, str):
        return command(obj, roots) if key in COMMAND_KEYS else relative(obj, roots)
    return obj


def _stat(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


def _fix_json(path: Path, roots: list[str], check: bool) -> bool:
    for _ in range(5):
        before = _stat(path)
        old = json.loads(path.read_text(encoding="utf-8"))
        new = rewrite(old, roots)
        if new == old:
            return False
        if check:
            return True
        if _stat(path) == before:  # not replaced by a writer meanwhile
            io.write_json(path, new)
            return True
    raise RuntimeError(f"{path} keeps changing; run again when its writer is done")


def _fix_model(path: Path, roots: list[str], check: bool) -> bool:
    import torch

    for _ in range(5):
        before = _stat(path)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        config = saved.get("config") if isinstance(saved, dict) else None
        if not isinstance(config, dict):
            return False
        new = rewrite(config, roots)
        if new == config:
            return False
        if check:
            return True
        if _stat(path) == before:
            io.atomic_torch_save({**saved, "config": new}, path)
            return True
    raise RuntimeError(f"{path} keeps changing; run again when its writer is done")


def files(folders: list[Path]) -> list[Path]:
    """The JSON results and model weights under ``folders`` (temporary files, whose
    names start with a dot, are skipped)."""
    out = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix == ".json" or path.name == "model.pt":
                out.append(path)
    return out


def relativize(folders: list[Path], old_roots: list[str] = (), check: bool = False,
               log=print) -> list[Path]:
    """Rewrite (or with ``check``, only find) the files under ``folders`` that record
    absolute paths inside the repository; returns them."""
    here = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
    roots = list(dict.fromkeys([str(ROOT), here, *map(str, old_roots)]))
    roots = [r.rstrip("/") for r in roots if r.rstrip("/")]
    changed = []
    for path in files(folders):
        fix = _fix_model if path.name == "model.pt" else _fix_json
        if fix(path, roots, check):
            changed.append(path)
            log(f"{'would rewrite' if check else 'rewrote'} {io.portable_path(path)}")
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="*", type=Path,
                   help="folders to rewrite (default: data/ of this repository)")
    p.add_argument("--old-root", action="append", default=[], metavar="PATH",
                   help="repository root of the machine that wrote the files, when it is "
                        "not this one's (repeatable)")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if a file would be rewritten")
    a = p.parse_args(argv)
    changed = relativize(a.folders or [ROOT / "data"], a.old_root, check=a.check)
    if a.check:
        return 1 if changed else 0
    print(f"{len(changed)} file(s) rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
