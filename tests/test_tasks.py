"""Tasks (rsa.tasks): exact layouts against a per-example reference, seeding, errors,
pixel data sets, the MNIST loader and transfer evaluation."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from rsa.models.heads import build_task_model
from rsa.tasks import (
    COPY_MARKER,
    DENOISE_MARKER,
    DIGITS_SPLIT,
    MNIST_FILES,
    PixelBatches,
    copy_batch,
    denoise_batch,
    digits_permutation,
    evaluate_transfer,
    get_task,
    load_digits_data,
    load_mnist,
    load_pixel_data,
    make_generator,
    pixel_permutation,
    read_idx,
    sequence_length,
    synthetic_batch,
)


def tokens_of(x):
    """Undo the one-hot, checking it is one."""
    assert x.dtype == torch.float32
    assert torch.all((x == 0) | (x == 1)) and torch.all(x.sum(-1) == 1)
    return x.argmax(-1)


# -- copy -----------------------------------------------------------------------------------

def copy_reference(data, T):
    """paper.md §4 spelled out, one sequence at a time: input a_1..a_10, T-1 blanks,
    marker, 10 blanks; target T+10 blanks then a_1..a_10."""
    xs, ys = [], []
    for a in data.tolist():
        xs.append(a + [0] * (T - 1) + [9] + [0] * 10)
        ys.append([0] * (T + 10) + a)
    return torch.tensor(xs).T, torch.tensor(ys).T


@pytest.mark.parametrize("T", [1, 2, 7, 30])
def test_copy_layout_token_by_token(T):
    B = 5
    x, y = copy_batch(T, B, make_generator(3))
    assert x.shape == (T + 20, B, 10) and y.shape == (T + 20, B) and y.dtype == torch.long
    tok = tokens_of(x)
    data = tok[:10].T  # (B, 10)
    assert torch.all((data >= 1) & (data <= 8))
    ref_x, ref_y = copy_reference(data, T)
    assert torch.equal(tok, ref_x) and torch.equal(y, ref_y)
    assert torch.all(tok[T + 9] == COPY_MARKER) and (tok == COPY_MARKER).sum() == B
    assert y.max() <= 8 and get_task("copy").n_classes == 9


def test_copy_uses_all_symbols_uniformly():
    x, _ = copy_batch(5, 2000, make_generator(0))
    counts = torch.bincount(tokens_of(x)[:10].flatten(), minlength=10)
    assert counts[0] == 0 and counts[9] == 0
    assert torch.all((counts[1:9] > 2000) & (counts[1:9] < 3000))  # 20000 / 8 = 2500


# -- denoise ---------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 4, 25])
def test_denoise_layout_token_by_token(T):
    B = 6
    x, y = denoise_batch(T, B, make_generator(1))
    assert x.shape == (T + 20, B, 11) and y.shape == (T + 20, B) and y.dtype == torch.long
    tok = tokens_of(x)
    for b in range(B):
        seq = tok[:, b].tolist()
        pos = [i for i, s in enumerate(seq[:T + 9]) if s != 0]
        assert len(pos) == 10 and pos == sorted(set(pos))  # 10 distinct, sorted
        symbols = [seq[i] for i in pos]
        assert all(1 <= s <= 8 for s in symbols)
        assert seq[T + 9] == DENOISE_MARKER and seq[T + 10:] == [0] * 10
        assert y[:, b].tolist() == [0] * (T + 10) + symbols
    assert (tok == DENOISE_MARKER).sum() == B and y.max() <= 9
    assert get_task("denoise").n_classes == 10


def test_denoise_positions_cover_the_whole_span():
    T = 6  # positions among steps 0..14
    x, _ = denoise_batch(T, 400, make_generator(2))
    used = (tokens_of(x)[:T + 9] != 0).any(dim=1)
    assert used.all()  # every step of the span, the first and the last included, is used


def test_denoise_T1_fills_the_first_ten_steps():
    x, _ = denoise_batch(1, 4, make_generator(0))
    tok = tokens_of(x)
    assert tok[:10].ne(0).all() and torch.all(tok[10] == DENOISE_MARKER)


# -- seeding and errors ------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["copy", "denoise"])
def test_seeding_is_reproducible(task):
    a = synthetic_batch(task, 8, 4, make_generator(11))
    b = synthetic_batch(task, 8, 4, make_generator(11))
    c = synthetic_batch(task, 8, 4, make_generator(12))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])
    g = make_generator(11)
    first, second = synthetic_batch(task, 8, 4, g), synthetic_batch(task, 8, 4, g)
    assert torch.equal(first[1], a[1]) and not torch.equal(second[1], first[1])


@pytest.mark.parametrize("T", [0, -3, 1.5, True, "10"])
def test_bad_T_is_rejected_with_its_value(T):
    for fn in (copy_batch, denoise_batch):
        with pytest.raises(ValueError, match=r"T must be an int >= 1, got " + repr(T)):
            fn(T, 2)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match=r"batch must be an int >= 1, got 0"):
        copy_batch(3, 0)
    with pytest.raises(ValueError, match=r"unknown task 'kopy'; accepted: copy, denoise"):
        get_task("kopy")
    with pytest.raises(ValueError, match=r"'digits' has no synthetic batches"):
        synthetic_batch("digits", 3, 2)
    with pytest.raises(ValueError, match=r"seed must be an int >= 0, got -1"):
        make_generator(-1)
    assert sequence_length("copy", 5) == 25 and sequence_length("pmnist") == 784


# -- pixel tasks -------------------------------------------------------------------------------

def test_digits_splits_and_layout():
    d = load_digits_data()
    assert [len(d.split(s)[1]) for s in ("train", "validation", "test")] == \
        list(DIGITS_SPLIT.values()) == [1257, 270, 270]
    imgs = torch.cat([d.train[0], d.validation[0], d.test[0]])
    assert imgs.shape == (1797, 64) and imgs.min() == 0 and imgs.max() == 1
    # the splits are a partition of the 1797 images
    from sklearn.datasets import load_digits

    ref = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(imgs) == key(ref)
    x, y = next(d.batches("validation", 32))
    assert x.shape == (64, 32, 1) and x.dtype == torch.float32 and y.shape == (32,)
    assert torch.equal(x[:, 3, 0], d.validation[0][3])  # pixel t of image 3 at step t
    again = load_digits_data()
    assert torch.equal(again.test[0], d.test[0]) and torch.equal(again.test[1], d.test[1])


def test_permuted_digits_use_the_seed_100_permutation():
    d, p = load_digits_data(), load_digits_data(permuted=True)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(100))
    assert torch.equal(digits_permutation(64), perm) and torch.equal(p.permutation, perm)
    assert not torch.equal(perm, torch.arange(64))
    assert torch.equal(p.train[0], d.train[0][:, perm]) and torch.equal(p.train[1], d.train[1])
    assert load_pixel_data("pdigits").name == "pdigits"
    with pytest.raises(ValueError, match="has no data set"):
        load_pixel_data("copy")


def test_pixel_batches_epochs_and_resume():
    d = load_digits_data()
    batches = PixelBatches(*d.train, 100, make_generator(0))
    assert batches.steps_per_epoch == 13
    epoch = [next(batches) for _ in range(13)]
    assert sum(len(y) for _, y in epoch) == 1257 and len(epoch[-1][1]) == 57
    seen = torch.cat([x[:, :, 0].T for x, _ in epoch])
    assert seen.shape == (1257, 64) and torch.unique(seen, dim=0).shape[0] == \
        torch.unique(d.train[0], dim=0).shape[0]
    state = batches.state_dict()
    expected = [next(batches) for _ in range(3)]
    other = PixelBatches(*d.train, 100, make_generator(99))
    other.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, [next(other) for _ in range(3)], strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert batches.epoch == 1


def write_idx(path, array, gz=False):
    a = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, a.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in a.shape)
    data = header + a.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


def test_mnist_loader_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (12, 28, 28))
    test = rng.integers(0, 256, (4, 28, 28))
    write_idx(tmp_path / MNIST_FILES["train_images"], train)
    write_idx(tmp_path / (MNIST_FILES["train_labels"] + ".gz"), np.arange(12) % 10, gz=True)
    write_idx(tmp_path / (MNIST_FILES["test_images"] + ".gz"), test, gz=True)
    write_idx(tmp_path / MNIST_FILES["test_labels"], [3, 1, 4, 1])
    assert np.array_equal(read_idx(tmp_path / MNIST_FILES["train_images"]), train)
    m = load_mnist(tmp_path, validation=2)
    assert m.train[0].shape == (10, 784) and m.validation[0].shape == (2, 784)
    assert torch.equal(m.test[0], torch.tensor(test.reshape(4, 784) / 255.0,
                                               dtype=torch.float32))
    assert m.test[1].tolist() == [3, 1, 4, 1]
    x, y = next(m.batches("test", 4))
    assert x.shape == (784, 4, 1)
    pm = load_mnist(tmp_path, permuted=True, validation=2)
    assert torch.equal(pm.test[0], m.test[0][:, pixel_permutation(784)])


def test_mnist_missing_files_name_folder_and_files(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        load_mnist(folder)
    msg = str(e.value)
    assert str(folder) in msg
    assert all(name in msg for name in MNIST_FILES.values())
    write_idx(tmp_path / MNIST_FILES["train_images"], np.zeros((1, 2, 2)))
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="bad magic number"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match=r"header says shape \(5,\)"):
        read_idx(tmp_path / "short")


# -- transfer ----------------------------------------------------------------------------------

def test_transfer_evaluates_at_other_T_without_training():
    torch.manual_seed(0)
    model = build_task_model("relrnn", "copy", 8, nu=2, rho=2)
    before = [p.detach().clone() for p in model.parameters()]
    rows = evaluate_transfer(model, [3, 12], batch=4, seed=5)
    assert [r["T"] for r in rows] == [3, 12]
    assert all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in rows)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert model.training
    # the same numbers by hand
    x, y = copy_batch(12, 4, make_generator(5))
    with torch.no_grad():
        logits = model(x)
    assert rows[1]["loss"] == pytest.approx(float(model.loss(logits, y)))
    digits = build_task_model("rnn", "digits", 4)
    with pytest.raises(ValueError, match="needs a copy/denoise model"):
        evaluate_transfer(digits, [5])
