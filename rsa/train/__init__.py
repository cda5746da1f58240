"""Training: one entry point, :func:`train`, for Python and ``python -m rsa train``.

The package is split by concept: :mod:`rsa.train.config` (the configuration and its
defaults), :mod:`rsa.train.loop` (the loop, its typed run state and one update),
:mod:`rsa.train.stopping` (the stopping rules) and :mod:`rsa.train.checkpoint`
(checkpoints, resuming and interruption). Every name is importable from here.

Defaults are the authors' per task (the book's page *The paper*, section 5;
:func:`resolve_config` fills them); the chapters *Copy and denoise* and *Pixel
classification* use this loop.

A run with an output folder writes, atomically (:mod:`rsa.io`):

- ``results.json``: resolved config, history (one row every ``eval_every`` updates:
  step, mean training loss/accuracy since the last row, validation loss/accuracy, wall
  time) and summary (the step at which validation accuracy first reached 100 %, the best
  accuracy with its step, the final validation and, for classification, test loss and
  accuracy of the final weights and of the best-validation weights, which the
  checkpoint keeps); ``history.csv``: the same history as a table;
- ``manifest.json``: parameters, seed, git commit, versions, device, machine, wall
  time, command line and the command that regenerates the run;
- ``checkpoint.pt``: model, optimizer, data-generator and torch RNG states, step,
  history and the running sums of the current interval, every ``checkpoint_every``
  updates, at the end, and when the run is interrupted (Ctrl-C / SIGTERM: the loop
  finishes the current update, saves, then stops). Running the same command again
  resumes from it, and the resumed run is identical, update for update, to an
  uninterrupted one (``tests/test_train.py`` checks this exactly).

Resuming never rewrites the record into something that was not run: a checkpoint that
already holds more updates than ``steps`` is refused (:class:`ResumeError`), and running
a finished run's command again loads it and rewrites nothing (``TrainResult.note`` says
so). A checkpoint that cannot be read, or was made with another configuration, is
refused with a one-line message naming the file and the way out (``--no-resume``, or
another ``--out-dir``). The output folder is recorded relative to the repository root
when it lies inside it (:func:`rsa.io.portable_path`).
"""

# Every name the module rsa.train defined before it became a package, the private ones
# too (tests, rsa.experiments.bench and rsa.experiments.measure import some of them from here).
from rsa.train.checkpoint import (
    _WAY_OUT,  # noqa: F401
    CHECKPOINT,
    MODEL_FILE,
    STOP_SIGNALS,  # noqa: F401
    ResumeError,
    _checkpoint_errors,  # noqa: F401
    _finished_run,  # noqa: F401
    _Interrupt,  # noqa: F401
    _one_line,  # noqa: F401
    load_checkpoint,  # noqa: F401
    load_trained,
)
from rsa.train.config import (
    _IDENTITY,  # noqa: F401
    _IDENTITY_DEFAULTS,  # noqa: F401
    OPTIMIZERS,
    DeviceUnavailableError,
    TrainConfig,
    _int,  # noqa: F401
    _n_train,  # noqa: F401
    check_device_name,  # noqa: F401
    config_command,
    resolve_config,
    torch_device,  # noqa: F401
)
from rsa.train.loop import (
    VALIDATION_SEED_OFFSET,
    RunState,
    TrainResult,
    _data,  # noqa: F401
    _in_notebook,  # noqa: F401
    _progress_bar,  # noqa: F401
    _summary,  # noqa: F401
    _SyntheticStream,  # noqa: F401
    evaluate,
    make_optimizer,
    train,
    train_step,
)
from rsa.train.stopping import (
    SOLVED_ACCURACY,
    SOLVED_CONSECUTIVE,
    STALL_FRACTION,
    _stop_reason,  # noqa: F401
    memoryless_loss,
    nan_at,
    patience_exhausted_at,
    solved_at,
    stalled_at,
    stop_in_words,
)

__all__ = ["TrainConfig", "TrainResult", "DeviceUnavailableError", "ResumeError",
           "resolve_config", "train",
           "train_step", "evaluate", "make_optimizer", "load_trained", "config_command",
           "OPTIMIZERS", "SOLVED_ACCURACY", "SOLVED_CONSECUTIVE", "STALL_FRACTION",
           "solved_at", "stalled_at", "nan_at", "patience_exhausted_at", "memoryless_loss",
           "stop_in_words",
           "MODEL_FILE", "CHECKPOINT", "VALIDATION_SEED_OFFSET", "RunState"]
