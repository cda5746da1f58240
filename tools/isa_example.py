"""Training on two instruction sets: the example of the page *Reproducibility*.

Trains the same short run twice on this machine, once with torch's vector kernels as
they are and once restricted to plain code (``ATEN_CPU_CAPABILITY=default``), and
stores what the page quotes in ``data/isa_example.json``: the command, the CPU, torch's
version and the instruction set each run used, the commit, and per run the mean
training loss of the first 250 updates and the validation accuracy at update 1000.

    python tools/isa_example.py            # about a minute on one core

The two runs start from the same weights and draw the same batches; float32 rounding
differs between the instruction sets, and training amplifies it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARGS = ["--model", "rnn", "--task", "copy", "--T", "100", "--steps", "1000",
        "--eval-every", "250", "--threads", "1", "--no-progress"]
COMMAND = "python -m rsa train " + " ".join(a for a in ARGS if a != "--no-progress")
VARIANTS = {"as is": None, "ATEN_CPU_CAPABILITY=default": "default"}
OUT = ROOT / "data" / "isa_example.json"


def _env(capability: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    env["OMP_NUM_THREADS"] = "1"
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    return env


def one_run(capability: str | None, out: Path) -> dict:
    """Train the example with ``ATEN_CPU_CAPABILITY=capability`` (None: unset) into
    ``out``; what the page quotes from it."""
    from rsa import io

    env = _env(capability)
    used = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env, capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "rsa", "train", *ARGS, "--out-dir", str(out)],
                   env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    history = io.load_json(out / "results.json")["history"]
    row = {r["step"]: r for r in history}
    return {"cpu_capability": used, "train_loss_first_250": row[250]["train_loss"],
            "val_accuracy_1000": row[1000]["val_accuracy"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(OUT), help="the JSON file written (default: %(default)s)")
    a = p.parse_args(argv)
    import torch

    from rsa import io

    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: one_run(cap, Path(tmp) / f"run{i}")
                for i, (name, cap) in enumerate(VARIANTS.items())}
    record = {"command": COMMAND, "script": "python tools/isa_example.py",
              "cpu": io._cpu_model(), "torch": torch.__version__,
              "git": io.git_commit(), "runs": runs}
    io.write_json(a.out, record)
    for name, r in runs.items():
        print(f"{name} ({r['cpu_capability']}): training loss of the first 250 updates "
              f"{r['train_loss_first_250']:.4g}, validation accuracy at 1000 "
              f"{r['val_accuracy_1000']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
