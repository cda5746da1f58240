"""The Makefile's set-up: torch from PyPI by default, from another index on request
(PyTorch's CPU-only wheels, on a machine without a GPU)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_commands(*variables: str) -> str:
    """The commands `make setup` would run (printed, not run: -n; -B: as if from
    nothing)."""
    done = subprocess.run(["make", "-n", "-B", ".venv/.rsa-setup.stamp", *variables],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.replace("\\\n", " ").split())


def test_torch_comes_from_pypi_by_default():
    commands = setup_commands()
    assert "pip install --upgrade-strategy only-if-needed torch==2.13.0" in commands
    assert "--index-url" not in commands


def test_torch_index_selects_another_wheel_index():
    commands = setup_commands("TORCH_INDEX=https://example.org/whl/cpu")
    assert "--index-url https://example.org/whl/cpu torch==2.13.0" in commands
    # only torch comes from there: the package and its pins still come from PyPI
    assert 'pip install -c constraints.txt -e ".[book,dev,cluster,compiled]"' in commands


def test_the_readme_documents_the_options_and_the_name():
    readme = (ROOT / "README.md").read_text()
    assert "make book TORCH_INDEX=https://download.pytorch.org/whl/cpu" in readme
    assert "Python-RSA" in readme and "make chapter CHAPTER=" in readme
    assert "book/relevancy_screening.ipynb out.ipynb" not in readme  # figures unseen there
