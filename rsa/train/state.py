"""Where a run stands after some updates: :class:`RunState`, the typed value the training
loop (:mod:`rsa.train.loop`) advances and the checkpoint (:mod:`rsa.train.checkpoint`)
stores as a dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Interval:
    """Running sums of the training loss and accuracy since the last history row."""

    loss: float = 0.0
    accuracy: float = 0.0
    count: int = 0


@dataclass
class RunState:
    """Where a run stands after ``step`` updates: the history rows so far, the wall and
    training times, the running sums of the current interval, the best validation
    accuracy with its step, the first step with 100 % accuracy, the stopping record, and
    one segment per call of :func:`train` that trained (where each part of a resumed run
    ran). The checkpoint stores it as a dict (:meth:`to_checkpoint`)."""

    step: int = 0
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    interval: Interval = field(default_factory=Interval)
    first_perfect_step: int | None = None
    best_val_accuracy: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    segments: list[dict] = field(default_factory=list)
    stop_reason: str | None = None
    best_model: dict | None = None  # pixel tasks: the best-validation weights (on CPU)

    def to_checkpoint(self) -> dict:
        """The dict the checkpoint's ``state`` holds (``stop_reason`` only once set)."""
        d = {"step": self.step, "history": self.history, "wall_time_s": self.wall_time_s,
             "train_time_s": self.train_time_s, "interval": asdict(self.interval),
             "first_perfect_step": self.first_perfect_step,
             "best_val_accuracy": self.best_val_accuracy, "best_step": self.best_step,
             "stopped_early": self.stopped_early, "segments": self.segments}
        if self.stop_reason is not None:
            d["stop_reason"] = self.stop_reason
        if self.best_model is not None:
            d["best_model"] = self.best_model
        return d

    @classmethod
    def from_checkpoint(cls, d: dict) -> RunState:
        """The state a checkpoint's ``state`` dict holds (checkpoints made before
        segments were recorded have none)."""
        return cls(step=d["step"], history=d["history"], wall_time_s=d["wall_time_s"],
                   train_time_s=d["train_time_s"], interval=Interval(**d["interval"]),
                   first_perfect_step=d["first_perfect_step"],
                   best_val_accuracy=d["best_val_accuracy"], best_step=d["best_step"],
                   stopped_early=d["stopped_early"], segments=d.get("segments", []),
                   stop_reason=d.get("stop_reason"), best_model=d.get("best_model"))
