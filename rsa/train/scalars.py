"""TensorBoard scalars of a training run (``python -m rsa train --tensorboard``,
``reproduce --tensorboard``): the rows of ``history.csv`` as TensorBoard event files in
the same folder, for watching many runs at once (``tensorboard --logdir runs/``).

The CSV and ``results.json`` stay the record; the event files are a view of them,
written as each evaluation row is. A resumed run purges the events after its checkpoint
(``purge_step``), so TensorBoard shows each update once, as the CSV does.

The ``tensorboard`` package is optional (the ``cluster`` extra: ``pip install
'.[cluster]'`` in the checkout); :func:`require_tensorboard` says so when it is missing.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["Scalars", "require_tensorboard", "INSTALL"]

INSTALL = ("pip install -e '.[cluster]' in the checkout (or: pip install tensorboard; "
           "not pip install rsa, an unrelated package)")


def require_tensorboard() -> None:
    """A ValueError naming ``--tensorboard`` and the install command when the
    ``tensorboard`` package (which ``torch.utils.tensorboard`` needs) is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as e:
        raise ValueError(f"--tensorboard needs the tensorboard package, which is not "
                         f"installed ({e}); install it with {INSTALL}") from None


class Scalars:
    """A ``SummaryWriter`` on ``folder`` writing each history row (a dict with ``step``)
    as one scalar per column under ``train/`` (loss, accuracy), ``val/`` (loss,
    accuracy) and ``time/`` (wall and training seconds), at the row's update."""

    GROUPS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy",
              "val_loss": "val/loss", "val_accuracy": "val/accuracy",
              "wall_time_s": "time/wall_s", "train_time_s": "time/train_s",
              "epoch": "time/epoch"}

    def __init__(self, folder: str | Path, purge_step: int | None = None):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def add_row(self, row: dict) -> None:
        step = int(row["step"])
        for key, tag in self.GROUPS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, float(row[key]), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
