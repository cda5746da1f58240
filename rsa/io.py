"""Files of a run: atomic writes, the manifest, and loaders that say how to regenerate.

Every result under ``data/`` or a run folder is written *atomically*: the bytes go to a
temporary file in the same folder, which is flushed, fsync'ed and then renamed over the
target with :func:`os.replace` (atomic on POSIX and Windows). A reader therefore sees
either the old file or the complete new one, never a partial file, even if the writer
is killed midway. A new file gets the permissions the user's umask gives (``rw-r--r--``
under the usual 022), a replaced file keeps its own. Long results carry a
``manifest.json`` (:func:`build_manifest`): parameters, seed, git commit, library
versions, device, wall time and the command that regenerates them; the loaders quote
that command when a file is missing.

Recorded paths are portable: a path inside the repository is recorded relative to the
repository root (:func:`portable_path`), and a recorded command starts with
``python -m rsa`` rather than the path of the script that ran, so a command copied from a
manifest and run from the repository root writes where the original run wrote, on any
machine (:func:`portable_command`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_open", "atomic_write_text", "atomic_write_bytes", "write_json", "write_csv",
    "atomic_torch_save", "build_manifest", "machine_description", "git_commit",
    "check_provenance", "ProvenanceError", "CODE_PATHS", "check_torch_file",
    "load_json", "load_csv", "load_manifest", "load_run", "portable_path",
    "portable_command", "file_mode", "data_root", "runs_root", "check_output_root",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "RSA_DATA_DIR"  # where the stored results are (default: the checkout's data/)
RUNS_ENV = "RSA_RUNS_DIR"  # where training runs work (default: the checkout's runs/)


def data_root() -> Path:
    """The folder of the stored results: ``$RSA_DATA_DIR`` when set, else ``data/`` of
    the checkout. ``python -m rsa reproduce --data-dir`` and the chapters' loaders
    (:func:`rsa.book.data_dir`) read the same setting."""
    return Path(os.environ.get(DATA_ENV) or REPO_ROOT / "data")


def runs_root() -> Path:
    """The folder where training runs work (checkpoints, TensorBoard events):
    ``$RSA_RUNS_DIR`` when set, else ``runs/`` of the checkout."""
    return Path(os.environ.get(RUNS_ENV) or REPO_ROOT / "runs")


def check_output_root(path: str | os.PathLike, flag: str, env: str) -> Path:
    """``path`` resolved, or a ValueError when it lies inside an installed package's
    folder (``site-packages``, ``dist-packages``): a pip-installed rsa has no
    checkout to write ``data/`` and ``runs/`` into, and a package upgrade would delete
    them. The message names the path, the option ``flag`` and the variable ``env``."""
    resolved = Path(path).expanduser().resolve()
    if {"site-packages", "dist-packages"} & set(resolved.parts):
        raise ValueError(
            f"refusing to write results to {str(resolved)!r}, inside an installed package "
            f"(site-packages): rsa is not run from a checkout, so choose a folder with "
            f"{flag} DIR (or set {env}=DIR)")
    return resolved


def _umask() -> int:
    """The process's umask, read without changing it where /proc allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def file_mode(path: str | os.PathLike) -> int:
    """The permission bits an atomically written ``path`` gets: those of the file it
    replaces, or for a new file ``0o666`` less the umask (what ``open(path, "w")`` would
    give), not the ``0o600`` of a temporary file."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[Any]:
    """Open ``path`` for writing so that it appears only complete, or not at all.

    Yields a file object on a temporary file next to ``path``; on normal exit the file
    is flushed, fsync'ed, given the mode of :func:`file_mode` and renamed over ``path``.
    On any exception the temporary file is removed, ``path`` keeps its previous content
    (if any), and the exception propagates.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode == "w":
            kwargs.setdefault("encoding", "utf-8")
            kwargs.setdefault("newline", "")
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become ``null`` (JSON has no NaN/inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically. NaN and inf are written as ``null``."""
    with atomic_open(path, "w") as f:
        json.dump(_jsonable(obj), f, indent=2, allow_nan=False)
        f.write("\n")
    return Path(path)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
              fieldnames: Sequence[str] | None = None) -> Path:
    """Write a list of dicts as CSV with a header, atomically.

    Columns are ``fieldnames`` or the keys of the rows in order of first appearance.
    """
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (serialised in memory first)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def check_torch_file(path: str | os.PathLike) -> None:
    """Raise ValueError if the ``torch.save`` file at ``path`` is damaged: torch's zip
    format stores a CRC-32 of every record, which ``torch.load`` does not check, so a
    flipped byte inside a tensor would load as wrong weights."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{str(path)!r} is not a readable torch file ({e})") from None
    if bad is not None:
        raise ValueError(f"{str(path)!r} is damaged: record {bad!r} fails its checksum")


# -- portable paths -----------------------------------------------------------------------

def portable_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """``path`` as it is recorded: relative to the repository ``root`` (POSIX separators)
    when it lies inside it, whether given absolute or relative to the working directory;
    otherwise unchanged, as the user gave it.

    ``portable_path("/home/me/rsa/runs/x")`` is ``"runs/x"`` for a repository at
    ``/home/me/rsa``; ``portable_path("/tmp/x")`` stays ``"/tmp/x"``.
    """
    text = os.fspath(path)
    try:
        resolved = Path(text).expanduser().resolve()
        relative = resolved.relative_to(Path(REPO_ROOT if root is None else root).resolve())
    except (OSError, ValueError, RuntimeError):
        return text
    return relative.as_posix() if relative.parts else "."


def _portable_arg(arg: str, root) -> str:
    """One command-line word: an absolute path inside ``root`` made relative to it, also
    after ``--option=``; other words unchanged."""
    option, eq, value = arg.partition("=")
    if eq and option.startswith("-") and os.path.isabs(value):
        return f"{option}={portable_path(value, root)}"
    return portable_path(arg, root) if os.path.isabs(arg) else arg


def portable_command(argv: str | Sequence[str], root: str | os.PathLike | None = None) -> str:
    """A command line (a string or a list of words) as it is recorded: the path of
    ``rsa/__main__.py`` or of an ``rsa`` console script that started it becomes
    ``python -m rsa``, and every absolute path inside the repository becomes relative to
    its root (:func:`portable_path`). The command is then run from the repository root."""
    root = Path(REPO_ROOT if root is None else root).resolve()
    words = shlex.split(argv) if isinstance(argv, str) else [str(a) for a in argv]
    if not words:
        return ""
    first = Path(words[0])
    if first.name == "__main__.py" and first.parent.name == "rsa":
        words = ["python", "-m", "rsa", *words[1:]]
    elif first.name == "rsa" and first.is_absolute():  # the console script
        words = ["python", "-m", "rsa", *words[1:]]
    elif first.is_absolute() and not first.is_relative_to(root):
        words = [first.name, *words[1:]]  # e.g. /usr/bin/python3 -> python3
    return shlex.join(_portable_arg(w, root) for w in words)


def _portable_values(obj: Any, root) -> Any:
    """Every string in ``obj`` that is an absolute path inside ``root``, made relative."""
    if isinstance(obj, str):
        return portable_path(obj, root) if os.path.isabs(obj) else obj
    if isinstance(obj, Path):
        return portable_path(obj, root)
    if isinstance(obj, Mapping):
        return {k: _portable_values(v, root) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_portable_values(v, root) for v in obj]
    return obj


# -- manifest ---------------------------------------------------------------------------

# The files whose uncommitted changes can change what a run computes: with a dirty tree a
# manifest records their diff against the commit (``git.diff``), so the code that made
# a result can always be recovered (the commit, plus this patch).
CODE_PATHS = ("rsa", "pyproject.toml", "constraints.txt")


def git_commit(root: str | os.PathLike = REPO_ROOT, diff: bool = True) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository at ``root``.

    ``dirty`` is True when the code (:data:`CODE_PATHS`) differs from the commit, so a
    reader knows the commit alone may not reproduce the result; then ``diff`` (unless
    ``diff=False``) holds ``git diff HEAD`` of the code, the patch that, applied to the
    commit, gives the code that ran. Other files (stored results, chapters) do not
    change what a run computes and do not count.
    """
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--",
                         *CODE_PATHS))
        if dirty and diff:
            return {"commit": sha, "dirty": True,
                    "diff": git("diff", "HEAD", "--", *CODE_PATHS)}
    except (OSError, subprocess.SubprocessError):
        # a copy of the tree without .git (e.g. sent to a GPU machine): the sender may
        # name its commit in RSA_GIT_COMMIT ("<sha>" or "<sha>+dirty")
        given = os.environ.get("RSA_GIT_COMMIT")
        if given:
            sha, _, flag = given.partition("+")
            return {"commit": sha, "dirty": flag == "dirty", "from": "RSA_GIT_COMMIT"}
        return {"commit": None, "dirty": None}
    return {"commit": sha, "dirty": dirty}


class ProvenanceError(ValueError):
    """A result whose manifest records an uncommitted tree without the diff that
    recovers its code; the message names the manifest and the fix."""


def check_provenance(manifest: Mapping[str, Any], where: str) -> None:
    """Refuse (:class:`ProvenanceError`) a manifest that records a dirty tree without
    ``git.diff``: the code that made it could not be recovered. Manifests written by
    :func:`build_manifest` from now on always carry the diff when the tree is dirty."""
    g = manifest.get("git") or {}
    if g.get("dirty") and "diff" not in g:
        raise ProvenanceError(
            f"{where} records an uncommitted working tree (commit {g.get('commit')}) "
            f"without its diff, so the code that made it cannot be recovered; commit the "
            f"code and train it again, or store it by hand with a note")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_description(device: str = "cpu") -> dict[str, Any]:
    """What the run ran on, without the host name: OS, CPU model, core and thread
    counts, memory, and the GPU for a CUDA device."""
    import torch

    desc: dict[str, Any] = {
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    with contextlib.suppress(OSError, ValueError, AttributeError):
        desc["memory_gb"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    if str(device).startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        desc["gpu"] = props.name
        desc["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        desc["cuda"] = torch.version.cuda
    return desc


def build_manifest(parameters: Mapping[str, Any], *, seed: int | None, device: str = "cpu",
                   wall_time_s: float | None = None, command: str | None = None,
                   argv: Sequence[str] | None = None, files: Sequence[str] = (),
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a result: enough to know where it came from and how to redo it.

    ``command`` is the shell command that regenerates the result (quoted by the loaders
    when a file is missing); ``argv`` the command line actually run (defaults to
    ``sys.argv``). Both, and every parameter that is a path, are recorded portably
    (:func:`portable_command`, :func:`portable_path`): paths inside the repository
    relative to its root, from where the command is run. No host name is recorded.
    """
    import numpy
    import torch

    rsa = sys.modules["rsa"]  # the package is imported before any of its modules

    manifest = {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": None if command is None else portable_command(command),
        "argv": portable_command(sys.argv if argv is None else argv),
        "parameters": _portable_values(dict(parameters), None),
        "seed": seed,
        "git": git_commit(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "rsa": getattr(rsa, "__version__", None),
        },
        "machine": machine_description(device),
        "wall_time_s": wall_time_s,
        "files": list(files),
    }
    if extra:
        manifest.update(extra)
    return _jsonable(manifest)


# -- loaders ----------------------------------------------------------------------------

def _missing(path: Path, regenerate: str | None) -> FileNotFoundError:
    if regenerate is None:
        manifest = path.parent / "manifest.json"
        with contextlib.suppress(OSError, ValueError):
            regenerate = json.loads(manifest.read_text()).get("command")
    how = (f"regenerate it with:\n    {regenerate}" if regenerate
           else "no command to regenerate it is recorded (no manifest.json next to it)")
    return FileNotFoundError(f"result file {str(path)!r} not found; {how}")


def load_json(path: str | os.PathLike, regenerate: str | None = None) -> Any:
    """Read a JSON result. If it is missing, raise FileNotFoundError naming the file and
    the command that regenerates it (``regenerate``, else the ``command`` of a
    ``manifest.json`` in the same folder)."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, regenerate)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(_damaged(path, e, regenerate)) from None


def _damaged(path: Path, error: BaseException, regenerate: str | None) -> str:
    """One line for a stored file that cannot be read: which, why, and the way out."""
    how = f"regenerate it with: {regenerate}" if regenerate else \
        "regenerate it with the command its manifest.json records"
    why = " ".join(str(error).split())[:120]
    return (f"{str(path)!r} is damaged ({type(error).__name__}: {why}); restore it from "
            f"git (git checkout -- <file>) or {how}")


# Columns of words, read as written: a run stopped by the NaN rule has the stop reason
# "nan", which pandas would otherwise read as a missing number; ``variant`` (the tag of
# an alternative setting, e.g. "tanh") is empty for most rows. An empty cell is None.
TEXT_COLUMNS = ("stop_reason", "variant")


def load_csv(path: str | os.PathLike, regenerate: str | None = None):
    """Read a CSV result as a pandas DataFrame; missing files fail as in :func:`load_json`.
    The :data:`TEXT_COLUMNS` keep their words (``"nan"`` stays ``"nan"``)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise _missing(path, regenerate)
    df = pd.read_csv(path)
    text = [c for c in TEXT_COLUMNS if c in df.columns]
    if text:
        raw = pd.read_csv(path, usecols=text, dtype=str, keep_default_na=False)
        for c in text:
            df[c] = raw[c].astype(object).where(raw[c] != "", None)
    return df


def load_manifest(folder: str | os.PathLike, regenerate: str | None = None) -> dict:
    """Read ``folder/manifest.json``; missing files fail as in :func:`load_json`."""
    return load_json(Path(folder) / "manifest.json", regenerate)


def load_run(folder: str | os.PathLike, regenerate: str | None = None) -> dict[str, Any]:
    """A training run's outputs (:func:`rsa.train.train` with ``out_dir``): a dict with
    ``config``, ``summary``, ``complete`` (False for an interrupted run), ``history`` (a
    pandas DataFrame, one row per evaluation) and ``manifest``. Missing files fail as in
    :func:`load_json`."""
    import pandas as pd

    folder = Path(folder)
    results = load_json(folder / "results.json", regenerate)
    csv_path = folder / "history.csv"
    if csv_path.is_file():  # the same rows as results.json, or a damaged file
        try:
            rows = pd.read_csv(csv_path)
            if len(rows) != len(results["history"]) or (
                    len(rows) and "step" in rows and list(rows["step"]) != [
                        r["step"] for r in results["history"]]):
                raise ValueError(f"{len(rows)} rows, results.json has "
                                 f"{len(results['history'])}")
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
            raise ValueError(_damaged(csv_path, e, regenerate)) from None
    return {"config": results["config"], "summary": results["summary"],
            "complete": results.get("complete", True),
            "history": pd.DataFrame(results["history"]),
            "manifest": load_manifest(folder, regenerate)}
