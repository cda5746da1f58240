"""rsa.io: the permissions of atomically written files, and portable recorded paths."""

from __future__ import annotations

import json
import os
import stat

import pytest

from rsa import io


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_file_follows_the_umask_not_the_temporary_files_0600(tmp_path, umask, mask,
                                                                    expected):
    umask(mask)
    io.write_json(tmp_path / "a.json", {"x": 1})
    io.atomic_write_bytes(tmp_path / "b.bin", b"1")
    io.write_csv(tmp_path / "c.csv", [{"x": 1}])
    for name in ("a.json", "b.bin", "c.csv"):
        assert mode(tmp_path / name) == expected, name


def test_a_replaced_file_keeps_its_own_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "a.json"
    io.write_json(path, {"x": 1})
    os.chmod(path, 0o640)
    io.write_json(path, {"x": 2})
    assert mode(path) == 0o640 and json.loads(path.read_text()) == {"x": 2}


def test_portable_path_is_relative_to_the_root_inside_it_and_unchanged_outside(tmp_path,
                                                                             monkeypatch):
    root = tmp_path / "repo"
    (root / "runs").mkdir(parents=True)
    assert io.portable_path(root / "runs" / "x", root) == "runs/x"
    assert io.portable_path(str(root), root) == "."
    assert io.portable_path("/elsewhere/x", root) == "/elsewhere/x"
    monkeypatch.chdir(root)  # a relative path is read from the working directory
    assert io.portable_path("runs/x", root) == "runs/x"
    monkeypatch.chdir(root / "runs")
    assert io.portable_path("x", root) == "runs/x"
    monkeypatch.setattr(io, "REPO_ROOT", root)  # the default root
    assert io.portable_path(root / "data" / "y") == "data/y"


def test_portable_command_names_the_module_and_relative_paths(tmp_path):
    root = tmp_path / "repo"
    main = str(root / "rsa" / "__main__.py")
    run = str(root / "runs" / "x")
    assert io.portable_command([main, "train", "--out-dir", run, f"--data-dir={run}"],
                               root) == ("python -m rsa train --out-dir runs/x "
                                         "--data-dir=runs/x")
    assert io.portable_command(f"python -m rsa train --out-dir {run}", root) == \
        "python -m rsa train --out-dir runs/x"
    assert io.portable_command(["/usr/local/bin/rsa", "bench"], root) == "python -m rsa bench"
    assert io.portable_command(["/usr/bin/python3", "-m", "rsa"], root) == "python3 -m rsa"
    assert io.portable_command(["python", "x", "/tmp/out"], root) == "python x /tmp/out"
    assert io.portable_command("", root) == ""


def test_the_manifest_records_no_path_of_the_repositorys_machine(monkeypatch):
    root = str(io.REPO_ROOT)
    m = io.build_manifest({"out_dir": f"{root}/runs/x", "nested": [f"{root}/data/y"]},
                          seed=0, command=f"python -m rsa train --out-dir {root}/runs/x",
                          argv=[f"{root}/rsa/__main__.py", "reproduce", "--scale", "session"])
    assert m["parameters"] == {"out_dir": "runs/x", "nested": ["data/y"]}
    assert m["command"] == "python -m rsa train --out-dir runs/x"
    assert m["argv"] == "python -m rsa reproduce --scale session"
    assert root not in json.dumps(m)


def test_load_csv_keeps_the_stop_reason_nan_as_a_word(tmp_path):
    (tmp_path / "t.csv").write_text("grad_norm,stop_reason\nnan,nan\n1.5,solved\n2.0,\n")
    df = io.load_csv(tmp_path / "t.csv")
    assert df["stop_reason"].tolist() == ["nan", "solved", None]
    assert df["grad_norm"].isna().tolist() == [True, False, False]  # numbers as before
