"""The training loop: :func:`train` and its parts. One call builds the model, optimizer
and data (:func:`_prepare`), resumes from the output folder's checkpoint when there is
one (:mod:`rsa.train.checkpoint`), runs the updates (:func:`_run_updates`: one update
is :func:`_update`, every ``eval_every`` updates :func:`_record_evaluation` adds a
history row and applies the stopping rules of :mod:`rsa.train.stopping`), and writes
the record (:func:`_finish`). Where the run stands is one typed value, :class:`RunState`,
which is also what the checkpoint stores.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsa import io
from rsa.models import registry
from rsa.models.heads import TaskModel, build_task_model
from rsa.tasks import PixelBatches, get_task, load_pixel_data, make_generator, synthetic_batch
from rsa.train.checkpoint import (
    CHECKPOINT,
    MODEL_FILE,
    _finished_run,
    _Interrupt,
    restore,
    resumable_checkpoint,
    save_checkpoint,
    save_model,
)
from rsa.train.config import (
    _IDENTITY_DEFAULTS,
    OPTIMIZERS,
    TrainConfig,
    config_command,
    resolve_config,
    torch_device,
)
from rsa.train.lock import hold
from rsa.train.state import Interval, RunState
from rsa.train.stopping import _stop_reason, memoryless_loss, solved_at

# A validation set is drawn from its own stream, so training batches never repeat it.
VALIDATION_SEED_OFFSET = 1_000_000


@dataclass
class TrainResult:
    """What :func:`train` returns: resolved config, history rows, summary, the trained
    :class:`~rsa.models.heads.TaskModel`, the output folder (None if nothing was written), and a
    ``note`` for the user (e.g. that a finished run was loaded and nothing rewritten)."""

    config: dict
    history: list[dict]
    summary: dict
    model: TaskModel = field(repr=False)
    out_dir: Path | None = None
    note: str | None = None


@dataclass
class _Run:
    """What one call of :func:`train` trains with, fixed while it runs."""

    config: TrainConfig
    recorded: dict  # the config as recorded: paths inside the repository made relative
    device: torch.device
    model: TaskModel
    optimizer: torch.optim.Optimizer
    stream: Any  # training batches, with state_dict() for the checkpoint
    val: list
    test: list | None
    steps_per_epoch: int | None
    n_params: int
    out: Path | None
    manifest: dict | None = None
    tensorboard: bool = False  # also write the history as TensorBoard scalars
    board: Any = None  # the open rsa.train.scalars.Scalars while the loop runs

    @property
    def checkpoint(self) -> Path | None:
        return self.out / CHECKPOINT if self.out is not None else None


@dataclass
class _Clock:
    """Wall time of a run: ``before`` seconds from earlier calls, plus this call's."""

    before: float
    start: float = field(default_factory=time.perf_counter)

    def wall(self) -> float:
        return self.before + time.perf_counter() - self.start

    def this_call(self) -> float:
        return time.perf_counter() - self.start


# -- one update and evaluation -------------------------------------------------------

def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """RMSprop(alpha=0.99) or Adam with learning rate ``lr``."""
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")


def train_step(model: TaskModel, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, clip: float) -> tuple[float, float]:
    """One training update: forward, loss, backward, clip the gradient norm to ``clip``
    (0: no clipping), optimizer step. Returns (loss, accuracy) of the batch."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = model.loss(logits, y)
    loss.backward()
    if clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.item(), model.accuracy(logits.detach(), y).item()


@torch.no_grad()
def evaluate(model: TaskModel, batches) -> dict[str, float]:
    """Loss and accuracy over an iterable of (x, y) batches, weighted by batch size."""
    was_training = model.training
    model.eval()
    loss = acc = 0.0
    count = 0
    try:
        for x, y in batches:
            logits = model(x)
            b = x.shape[1]
            loss += model.loss(logits, y).item() * b
            acc += model.accuracy(logits, y).item() * b
            count += b
    finally:
        model.train(was_training)
    return {"loss": loss / count, "accuracy": acc / count}



class _SyntheticStream:
    """Fresh copy/denoise batches from one seeded generator (state saved for resume)."""

    def __init__(self, task, T, batch, seed, device):
        self.task, self.T, self.batch, self.device = task, T, batch, device
        self.generator = make_generator(seed)

    def __iter__(self):
        return self

    def __next__(self):
        return synthetic_batch(self.task, self.T, self.batch, self.generator, self.device)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def _data(c: TrainConfig, device):
    """(training stream, validation batches (a list), test batches or None, steps/epoch)."""
    spec = get_task(c.task)
    if spec.kind == "sequence":
        stream = _SyntheticStream(spec, c.T, c.batch, c.seed, device)
        val = [synthetic_batch(spec, c.T, c.eval_batch,
                               make_generator(c.seed + VALIDATION_SEED_OFFSET), device)]
        return stream, val, None, None
    data = load_pixel_data(spec, c.data_dir)
    stream = PixelBatches(*data.train, c.batch, make_generator(c.seed), device)
    val = list(data.batches("validation", c.eval_batch, device))
    test = list(data.batches("test", c.eval_batch, device))
    return stream, val, test, stream.steps_per_epoch



def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where tqdm would draw a widget)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _progress_bar(enabled: bool, **kwargs):
    """A tqdm progress bar: a widget in a notebook that has ipywidgets, none in one that
    has not (instead of tqdm's "IProgress not found" warning in the chapter's output),
    text on a terminal."""
    from tqdm import tqdm

    if enabled and _in_notebook():
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            enabled = False
        else:
            from tqdm.notebook import tqdm
    return tqdm(disable=not enabled, **kwargs)




def _summary(run: _Run, state: RunState) -> dict:
    history, config = state.history, run.config
    solved = solved_at(history)
    solved_row = next((r for r in history if r["step"] == solved), None)
    s = {
        "steps_done": state.step,
        "first_perfect_step": state.first_perfect_step,
        "best_val_accuracy": state.best_val_accuracy,
        "best_step": state.best_step,
        "final_val_loss": history[-1]["val_loss"] if history else None,
        "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "wall_time_s": state.wall_time_s,
        "train_time_s": state.train_time_s,
        "stopped_early": state.stopped_early,
        "stop_reason": state.stop_reason,
        "solved": solved is not None,
        "solved_step": solved,
        "solved_wall_time_s": solved_row["wall_time_s"] if solved_row else None,
        "solved_train_time_s": solved_row["train_time_s"] if solved_row else None,
        "n_parameters": run.n_params,
        "segments": state.segments,
    }
    if get_task(config.task).kind == "sequence":
        s["memoryless_loss"] = memoryless_loss(config.task, config.T)
    if run.steps_per_epoch:
        s["epochs"] = state.step / run.steps_per_epoch
    return s


# -- the loop ----------------------------------------------------------------------------

def train(config: TrainConfig | dict | None = None, *, argv: list[str] | None = None,
          tensorboard: bool = False, **overrides) -> TrainResult:
    """Train a model on a task; see :class:`TrainConfig` for the fields and defaults.

    ``train(model="relrnn", task="copy", T=100, steps=2000, out_dir="runs/x")`` or
    ``train(TrainConfig(...))``. With ``out_dir`` and ``resume=True`` an existing
    checkpoint there is resumed (its config must match on the fields that determine the
    result; ``steps`` may be larger). ``argv`` is the command line recorded in the
    manifest (defaults to ``sys.argv``). ``tensorboard=True`` also writes the history as
    TensorBoard scalars next to ``history.csv`` (:class:`rsa.train.scalars.Scalars`; the CSV
    and JSON stay the record).
    """
    c = resolve_config(config, **overrides)
    if tensorboard:
        from rsa.train.scalars import require_tensorboard

        require_tensorboard()
        if c.out_dir is None:
            raise ValueError("tensorboard needs an output folder (out_dir)")
    with hold(c.out_dir):  # one writer per run folder (rsa.train.lock)
        return _train_held(c, argv, tensorboard)


def _train_held(c: TrainConfig, argv, tensorboard: bool) -> TrainResult:
    run, state, done = _open(c, argv)
    if done is not None:
        return done
    run.tensorboard = tensorboard
    _run_updates(run, state)
    return _finish(run, state)


def _open(c: TrainConfig, argv) -> tuple[_Run, RunState, TrainResult | None]:
    """A run's start, the same for a single run and a run of a population: its model,
    optimizer and data (:func:`_prepare`), resumed from the output folder's checkpoint
    (saying from which update), and its manifest; or, when the checkpoint's run is
    finished, the stored record as the result (nothing to train, nothing rewritten)."""
    run = _prepare(c)
    state = RunState()
    if run.checkpoint is not None and c.resume and run.checkpoint.is_file():
        ckpt = resumable_checkpoint(run.checkpoint, c, run.recorded, run.device)
        state = RunState.from_checkpoint(restore(run.checkpoint, ckpt, run.model,
                                                 run.optimizer, run.stream, run.device))
        made_on = _segment_kernels(state, ckpt["config"])
        if state.step < c.steps and not state.stopped_early:
            switch = ("" if made_on == c.kernel else
                      f" on the {c.kernel} kernel (its updates so far ran on the {made_on} "
                      f"kernel; each part records its kernel)")
            print(f"resuming {run.out} from update {state.step} of {c.steps}{switch}",
                  file=sys.stderr, flush=True)
        finished = _finished_run(run.out, state, c)
        if finished is not None:  # nothing to train: the record stays as it is
            run.model.eval()
            return run, state, TrainResult(
                finished["config"], finished["history"], finished["summary"], run.model,
                run.out, note=(f"{run.out} already holds this run, finished after "
                               f"{state.step} updates; nothing was trained or rewritten "
                               f"(--no-resume starts it over)"))
    if run.out is not None:
        run.manifest = io.build_manifest(
            run.recorded, seed=c.seed, device=str(run.device), argv=argv,
            command=config_command(TrainConfig(**run.recorded)),
            files=["results.json", "history.csv", "manifest.json", CHECKPOINT, MODEL_FILE])
    return run, state, None


def _computations(model: str, values: dict) -> dict:
    """The model options of ``model`` that are not identity fields (another computation
    of the same function, e.g. SAB's ``score_form``), each as ``values`` gives it or else
    the class's default: what each part of a run records beside its kernel."""
    return {o.name: registry.class_default(model, o.name) if values.get(o.name) is None
            else values[o.name] for o in registry.config_options()
            if not o.identity and registry.get(model).takes(o.name)}


def _segment_kernels(state: RunState, made: dict) -> str:
    """The kernel of the checkpoint's last part, after filling in the kernel (and the
    other non-identity options, :func:`_computations`) of its parts recorded before
    segments named them: until then they were identity fields, so every such part ran
    with the checkpoint's ``made`` config (``kernel`` absent meaning ``"torch"``, an
    option absent its class's default). A checkpoint from before parts were kept gets
    one part for its updates."""
    made_on = made.get("kernel", _IDENTITY_DEFAULTS["kernel"])
    if not state.segments and state.step > 0:  # a checkpoint from before parts were kept
        state.segments.append({"start_step": 0, "end_step": state.step})
    for seg in state.segments:
        for name, value in {"kernel": made_on,
                            **_computations(made["model"], made)}.items():
            seg.setdefault(name, value)
    return state.segments[-1]["kernel"] if state.segments else made_on


def _prepare(c: TrainConfig) -> _Run:
    """The model (initialised from ``c.seed``), optimizer and data of a run."""
    device = torch_device(c.device)
    torch.manual_seed(c.seed)  # model initialisation
    model = build_task_model(c.model, get_task(c.task), c.hidden_size, nu=c.nu, rho=c.rho,
                             nonlinearity=c.nonlinearity, init=c.init,
                             kernel=c.kernel, score_form=c.score_form).to(device)
    optimizer = make_optimizer(c.optimizer, model.parameters(), c.lr)
    stream, val, test, steps_per_epoch = _data(c, device)
    # what is recorded: paths inside the repository relative to its root
    recorded = copy.copy(c)
    recorded.out_dir = None if c.out_dir is None else io.portable_path(c.out_dir)
    recorded.data_dir = None if c.data_dir is None else io.portable_path(c.data_dir)
    return _Run(c, asdict(recorded), device, model, optimizer, stream, val, test,
                steps_per_epoch, sum(p.numel() for p in model.parameters()),
                Path(c.out_dir) if c.out_dir is not None else None)


def _run_updates(run: _Run, state: RunState) -> None:
    """Train until ``steps`` updates are done or a stopping rule fires: evaluate every
    ``eval_every`` updates, checkpoint every ``checkpoint_every`` and at the end, and on
    SIGINT/SIGTERM/SIGUSR1/SIGUSR2 finish the update, save, and stop."""
    c = run.config
    bar = _progress_bar(c.progress, total=c.steps, initial=state.step,
                        desc=f"{c.model} {c.task} T={c.T}", unit="upd", leave=False)
    segment = _start_segment(run, state)
    clock = _Clock(state.wall_time_s)
    run.model.train()
    if run.tensorboard:
        from rsa.train.scalars import Scalars

        run.board = Scalars(run.out, purge_step=state.step + 1)
    with _Interrupt() as interrupt, contextlib.closing(bar), \
            contextlib.nullcontext() if run.board is None else run.board:
        while state.step < c.steps and not state.stopped_early:
            _update(run, state, clock, segment)
            bar.update(1)
            if state.step % c.eval_every == 0:
                ev = _record_evaluation(run, state, clock)
                bar.set_postfix(loss=f"{ev['loss']:.4f}", acc=f"{ev['accuracy']:.3f}")
                _write_results(run, state, complete=False)
            if state.step % c.checkpoint_every == 0 or interrupt.signum is not None:
                _save(run, state)
            if interrupt.signum is not None:
                _write_results(run, state, complete=False)
                interrupt.raise_()
        _save(run, state)


def _start_segment(run: _Run, state: RunState) -> dict:
    """This call's segment (where it ran, from which step), recorded if it trains."""
    segment = {"start_step": state.step, "end_step": state.step, "wall_time_s": 0.0,
               "device": str(run.device), "kernel": run.config.kernel,
               "cpu": io._cpu_model(),
               "torch_threads": torch.get_num_threads(),
               "git": io.git_commit(),  # the code of this part (with its diff if dirty)
               **_computations(run.config.model, run.recorded)}
    if state.step < run.config.steps and not state.stopped_early:
        state.segments.append(segment)
    return segment


def _update(run: _Run, state: RunState, clock: _Clock, segment: dict) -> None:
    """One training update, added to the interval's sums and to the times."""
    x, y = next(run.stream)
    t0 = time.perf_counter()
    loss, acc = train_step(run.model, run.optimizer, x, y, run.config.clip)
    _account(state, clock, segment, loss, acc, time.perf_counter() - t0)


def _account(state: RunState, clock: _Clock, segment: dict, loss: float, acc: float,
             train_s: float) -> None:
    """Add one update (its batch loss and accuracy, ``train_s`` seconds) to the run's
    state: the interval's sums, the step, the times and the segment. A population
    (:mod:`rsa.train.population`) calls it for each of its runs after its batched update."""
    state.train_time_s += train_s
    state.interval.loss += loss
    state.interval.accuracy += acc
    state.interval.count += 1
    state.step += 1
    state.wall_time_s = clock.wall()
    segment["end_step"] = state.step
    segment["wall_time_s"] = clock.this_call()


def _record_evaluation(run: _Run, state: RunState, clock: _Clock) -> dict[str, float]:
    """Evaluate on the validation set, add a history row (the interval's mean training
    loss and accuracy, validation loss and accuracy, times), start a new interval,
    update the best and first perfect step, and apply the stopping rules. Returns the
    evaluation."""
    c, step, iv = run.config, state.step, state.interval
    ev = evaluate(run.model, run.val)
    state.wall_time_s = clock.wall()
    row: dict[str, Any] = {"step": step}
    if run.steps_per_epoch:
        row["epoch"] = step / run.steps_per_epoch
    row.update({
        "train_loss": iv.loss / iv.count, "train_accuracy": iv.accuracy / iv.count,
        "val_loss": ev["loss"], "val_accuracy": ev["accuracy"],
        "wall_time_s": state.wall_time_s, "train_time_s": state.train_time_s})
    state.history.append(row)
    if run.board is not None:
        run.board.add_row(row)
    state.interval = Interval()
    if state.best_val_accuracy is None or ev["accuracy"] > state.best_val_accuracy:
        state.best_val_accuracy, state.best_step = ev["accuracy"], step
        if run.test is not None:  # pixel tasks: keep the best-validation weights
            state.best_model = {k: v.detach().cpu().clone()
                                for k, v in run.model.state_dict().items()}
    if ev["accuracy"] >= 1.0 and state.first_perfect_step is None:
        state.first_perfect_step = step
    reason = _stop_reason(c, state.history)
    if reason is not None:
        state.stop_reason = reason
        state.stopped_early = step < c.steps
    return ev


def _save(run: _Run, state: RunState) -> None:
    if run.checkpoint is not None:
        save_checkpoint(run.checkpoint, run.recorded, run.model, run.optimizer, run.stream,
                        run.device, state.to_checkpoint())


def _write_results(run: _Run, state: RunState, complete: bool,
                   summary: dict | None = None) -> None:
    """``results.json``, ``history.csv`` and ``manifest.json``, each atomically."""
    if run.out is None:
        return
    if summary is None:
        summary = _summary(run, state)
    io.write_json(run.out / "results.json", {"config": run.recorded, "complete": complete,
                                             "history": state.history, "summary": summary})
    io.write_csv(run.out / "history.csv", state.history)
    run.manifest["wall_time_s"] = state.wall_time_s
    run.manifest["complete"] = complete
    io.write_json(run.out / "manifest.json", run.manifest)


def _best_model_test(model: TaskModel, state: RunState, test) -> dict:
    """Test loss and accuracy of the best-validation weights (``best_model_test_*``;
    None when they were not kept, e.g. a run resumed from a checkpoint made before they
    were), without changing ``model``."""
    if state.best_model is None:
        return {"best_model_test_loss": None, "best_model_test_accuracy": None}
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(state.best_model)
        ev = evaluate(model, test)
    finally:
        model.load_state_dict(final)
    return {"best_model_test_loss": ev["loss"], "best_model_test_accuracy": ev["accuracy"]}


def _finish(run: _Run, state: RunState) -> TrainResult:
    """The summary (with a final evaluation off the ``eval_every`` grid, and the test
    set for classification), the complete record and the trained weights."""
    if state.stop_reason is None and state.step >= run.config.steps:
        state.stop_reason = "budget"
    summary = _summary(run, state)
    if not state.history or state.history[-1]["step"] != state.step:
        # a final evaluation off the eval_every grid: reported in the summary only, so
        # that extending the run later gives the same history as a longer run
        ev = evaluate(run.model, run.val)
        summary["final_val_loss"], summary["final_val_accuracy"] = ev["loss"], ev["accuracy"]
    if run.test is not None:
        ev = evaluate(run.model, run.test)
        summary["test_loss"], summary["test_accuracy"] = ev["loss"], ev["accuracy"]
        summary.update(_best_model_test(run.model, state, run.test))
    _write_results(run, state, complete=True, summary=summary)
    if run.out is not None:
        save_model(run.out / MODEL_FILE, run.recorded, run.model)
    return TrainResult(run.recorded, copy.deepcopy(state.history), summary, run.model,
                       run.out)
