"""tools/bench_authors.py (issue 30) without the authors' code: it refuses a missing or
wrong SOURCE with an error naming the argument and how to get the code, reads a checkout
or a bare git repository, takes from ``copytask.py`` only its functions and ``Model``
(not its argument parsing and training at import), and shims ``Tensor.cuda``."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "bench_authors.py"

FAKE = {
    "RNN.py": "from common import ONE\nimport exp_numpy\n"
              "class RelMemRNN:\n    one = ONE\n    expm = staticmethod(exp_numpy.expm)\n",
    "common.py": "ONE = 1\n",
    "exp_numpy.py": "raise ImportError('must not be imported: shimmed')\n",
    "copytask.py": "raise RuntimeError('the script ran at import')\n"
                   + "".join(f"def {f}():\n    return args.labels + T\n"
                             for f in ("generate_copying_sequence", "create_dataset",
                                       "onehot"))
                   + "class Model:\n    pass\n"
                   + "train_model = None\n",
}


def load_tool():
    spec = importlib.util.spec_from_file_location("bench_authors", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_checkout(folder: Path) -> Path:
    folder.mkdir()
    for name, text in FAKE.items():
        (folder / name).write_text(text)
    return folder


def test_missing_source_is_refused_naming_the_argument(tmp_path):
    tool = load_tool()
    with pytest.raises(SystemExit, match=r"SOURCE .*does not exist.*git clone "
                                         r"https://github.com/bhargav104/MemoryNets"):
        tool.main([str(tmp_path / "nowhere")])


def test_wrong_folder_is_refused_naming_the_missing_files(tmp_path):
    tool = load_tool()
    (tmp_path / "RNN.py").write_text("")
    with pytest.raises(SystemExit, match=r"SOURCE .*missing common.py, exp_numpy.py, "
                                         r"copytask.py.*git clone"):
        tool.main([str(tmp_path)])


def test_bad_cases_are_refused(tmp_path):
    tool = load_tool()
    with pytest.raises(SystemExit, match="--cases takes TxB"):
        tool.main([str(tmp_path), "--cases", "500"])


def test_loads_only_the_functions_and_model_from_a_checkout(tmp_path):
    tool = load_tool()
    folder = tool.author_folder(fake_checkout(tmp_path / "MemoryNets"), tmp_path)
    authors = tool.load_authors(folder, T=7)
    assert authors.create_dataset() == tool.LABELS + 7  # args and T as globals
    assert authors.RelMemRNN.one == 1
    assert authors.RelMemRNN.expm is torch.linalg.matrix_exp  # the shim, not their file


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_reads_a_bare_repository(tmp_path):
    tool = load_tool()
    work = fake_checkout(tmp_path / "work")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "fake"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(tmp_path / "bare")],
                   check=True)
    out = tmp_path / "out"
    out.mkdir()
    assert tool.author_folder(tmp_path / "bare", out) == out
    assert (out / "copytask.py").read_text() == FAKE["copytask.py"]


def test_cuda_shim_is_the_identity_and_is_undone():
    tool = load_tool()
    saved = torch.Tensor.cuda
    x = torch.zeros(2)
    with tool.cuda_is_identity():
        assert x.cuda() is x
    assert torch.Tensor.cuda is saved
