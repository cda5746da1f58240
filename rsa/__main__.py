"""Command line: ``python -m rsa {train, transfer, bench, reproduce} ...`` (``--help``).

- ``train``: :func:`rsa.train.train`; options mirror :class:`rsa.train.TrainConfig`
  (unset options take the task's defaults, ``paper.md`` §5). Writes results,
  manifest and checkpoint to ``--out-dir`` (default ``runs/<task>_<model>_T<T>_s<seed>``);
  running the same command again resumes an interrupted run.
- ``transfer``: evaluate a trained copy/denoise run at other delays T, without training
  (:func:`rsa.tasks.evaluate_transfer`).
- ``bench``: :func:`rsa.bench.main`.
- ``reproduce``: :func:`rsa.experiments.main` (regenerates ``data/``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

__all__ = ["main"]


def _train_parser(p: argparse.ArgumentParser) -> None:
    from rsa.heads import MODELS
    from rsa.tasks import TASKS
    from rsa.train import OPTIMIZERS

    p.add_argument("--model", default="relrnn", choices=MODELS)
    p.add_argument("--task", default="copy", choices=list(TASKS))
    p.add_argument("--T", type=int, help="delay (copy/denoise; default 100)")
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float)
    p.add_argument("--clip", type=float, help="gradient-norm clip, 0 disables")
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int, help="number of updates")
    p.add_argument("--eval-every", type=int, help="updates between evaluations")
    p.add_argument("--eval-batch", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--nu", type=int)
    p.add_argument("--rho", type=int)
    p.add_argument("--nonlinearity", choices=("tanh", "modrelu"))
    p.add_argument("--init", choices=("orthogonal", "orthogonal_random", "xavier"))
    p.add_argument("--out-dir", "--out", dest="out_dir",
                   help="output folder (default runs/<task>_<model>_T<T>_s<seed>)")
    p.add_argument("--data-dir", help="MNIST folder (mnist, pmnist)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if the output folder has a checkpoint")
    p.add_argument("--stop-at-perfect", action="store_true",
                   help="stop once validation accuracy reaches 100%%")
    p.add_argument("--stop-when-solved", action="store_true",
                   help="stop once solved: validation accuracy >= 99%% at two "
                        "consecutive evaluations")
    p.add_argument("--stall-updates", type=int, default=0,
                   help="copy/denoise: stop as stalled when no validation loss of the last "
                        "N updates was below 0.9 x the memoryless loss (0: never)")
    p.add_argument("--patience-updates", type=int, default=0,
                   help="stop when the best validation accuracy has not improved for N "
                        "updates (0: never)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")


def _train(a: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from rsa.train import TrainConfig, resolve_config, train

    if a.threads is not None:
        torch.set_num_threads(a.threads)
    names = {f.name for f in fields(TrainConfig)}
    config = resolve_config({k: v for k, v in vars(a).items() if k in names})
    if config.out_dir is None:
        config.out_dir = str(Path("runs") / f"{config.task}_{config.model}_T{config.T}"
                                            f"_s{config.seed}")
    try:
        result = train(config, argv=["python", "-m", "rsa", *argv])
    except KeyboardInterrupt:
        print(f"interrupted: checkpoint saved in {config.out_dir}; run the same command "
              f"again to resume", file=sys.stderr)
        return 130
    print(json.dumps({"out_dir": str(result.out_dir), **result.summary}, indent=2))
    return 0


def _transfer(a: argparse.Namespace) -> int:
    from rsa.tasks import evaluate_transfer
    from rsa.train import load_trained

    model = load_trained(a.run, device=a.device)
    rows = evaluate_transfer(model, a.T, batch=a.batch, seed=a.seed)
    print("| T | loss | accuracy |\n|---:|---:|---:|")
    for r in rows:
        print(f"| {r['T']} | {r['loss']:.4f} | {r['accuracy']:.4f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rsa`` and the ``rsa`` script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        from rsa.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "reproduce":
        from rsa.experiments import main as reproduce_main

        return reproduce_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m rsa", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{train,transfer,bench,reproduce}")
    _train_parser(sub.add_parser("train", help="train a model on a task",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    t = sub.add_parser("transfer", help="evaluate a trained copy/denoise run at other T")
    t.add_argument("--run", required=True, help="output folder of a `train` run")
    t.add_argument("--T", type=int, nargs="+", required=True)
    t.add_argument("--batch", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    sub.add_parser("bench", help="time and memory per training update (see bench --help)")
    sub.add_parser("reproduce", help="regenerate data/ (see reproduce --help)")
    a = p.parse_args(argv)
    from rsa.train import DeviceUnavailableError

    try:
        if a.command == "train":
            return _train(a, argv)
        return _transfer(a)
    except (ValueError, FileNotFoundError, DeviceUnavailableError) as e:
        # configuration and data errors: the message is the whole story
        print(f"error: {e}", file=sys.stderr)
        print(f"command: python -m rsa {shlex.join(argv)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
