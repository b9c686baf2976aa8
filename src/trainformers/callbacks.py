"""Training events and the callbacks that react to them.

The event names, signatures and control semantics are those of Hugging Face's `TrainerCallback`,
so an existing HF callback works after changing its import. Callbacks decide *when* to log,
evaluate, save or stop, through `TrainerControl`; the loop does the work. Also here: the default
step/epoch schedule, the progress bar, the JSONL log, tracker forwarding and early stopping.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import numbers
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import ConfigError
from .events import TrainerCallback
from .hub import HubCallback
from .report import ReportCallback
from .samples import send_samples
from .state import ExportableState, TrainerControl, TrainerState, atomic_write_text, json_default
from .trackers import send_row

logger = logging.getLogger(__name__)

__all__ = [
    "CallbackHandler",
    "DefaultFlowCallback",
    "EarlyStoppingCallback",
    "HubCallback",
    "JsonlLoggerCallback",
    "PrinterCallback",
    "ProgressCallback",
    "ReportCallback",
    "TrackerCallback",
    "TrainerCallback",
]

# `args` is a TrainingArguments (or CycleTrainingArguments); typed as Any so that this layer
# does not import the config package and any object with the same attribute names works.
Args = Any
# A logged row or a metrics dict: name -> value (numbers mostly, strings allowed).
Row = dict[str, Any]


class CallbackHandler(TrainerCallback):
    """Calls a list of callbacks, in order, for each event.

    Each `on_<event>` returns the control to use from then on: the one passed in, or the last
    one a callback returned. Like Hugging Face, some events first reset the flags they concern
    (`on_step_begin` the step flags, `on_log` `should_log`, and so on).

    Args:
        callbacks: Callback classes (instantiated with no arguments) or instances.
        model, processing_class, optimizer, lr_scheduler: Passed to every event as keywords;
            the trainer may reassign these attributes (and `train_dataloader`,
            `eval_dataloader`) at any time.
    """

    def __init__(
        self,
        callbacks: Iterable[TrainerCallback | type[TrainerCallback]],
        model: Any,
        processing_class: Any,
        optimizer: Any,
        lr_scheduler: Any,
    ) -> None:
        self.callbacks: list[TrainerCallback] = []
        for cb in callbacks:
            self.add_callback(cb)
        self.model = model
        self.processing_class = processing_class
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.train_dataloader: Any = None
        self.eval_dataloader: Any = None
        self.extra: dict[str, Any] = {}  # more keywords for every event (CycleTrainer: models, optimizers)
        if not any(isinstance(cb, DefaultFlowCallback) for cb in self.callbacks):
            logger.warning(
                "No DefaultFlowCallback among the callbacks, so nothing will be logged, evaluated "
                "or saved on schedule. Callbacks: %s",
                self.callback_list,
            )

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        """Append a callback (a class is instantiated with no arguments)."""
        cb = callback() if isinstance(callback, type) else callback
        if any(type(c) is type(cb) for c in self.callbacks):
            logger.warning(
                "Adding a second %s; the callbacks are now: %s",
                type(cb).__name__,
                ", ".join([self.callback_list, type(cb).__name__]),
            )
        self.callbacks.append(cb)

    def pop_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> TrainerCallback | None:
        """Remove and return the first callback of that class, or that very instance; None if absent."""
        for i, cb in enumerate(self.callbacks):
            if isinstance(callback, type) and isinstance(cb, callback) or cb is callback:
                return self.callbacks.pop(i)
        return None

    def find_or_add(self, kind: type[TrainerCallback]) -> Any:
        """The first callback of class `kind`; one is added when a user removed it."""
        found = next((cb for cb in self.callbacks if isinstance(cb, kind)), None)
        if found is None:
            found = kind()
            self.callbacks.append(found)
        return found

    def remove_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        """Remove the first callback of that class, or that very instance; no-op if absent."""
        self.pop_callback(callback)

    @property
    def callback_list(self) -> str:
        """Names of the callbacks, comma-separated."""
        return ", ".join(type(cb).__name__ for cb in self.callbacks)

    def call_event(
        self, event: str, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        """Call `event` on every callback; return the control in force afterwards."""
        common = {
            "model": self.model,
            "processing_class": self.processing_class,
            "tokenizer": self.processing_class,
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler,
            "train_dataloader": self.train_dataloader,
            "eval_dataloader": self.eval_dataloader,
            "log_row": functools.partial(self.log, args, state, control),
            **self.extra,
        }
        common.update(kwargs)  # an explicit keyword (e.g. eval_dataloader) wins
        for cb in self.callbacks:
            result = getattr(cb, event)(args, state, control, **common)
            if result is not None:
                control = result
        return control

    def on_init_end(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        return self.call_event("on_init_end", args, state, control, **kwargs)

    def on_train_begin(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        control._new_training()
        return self.call_event("on_train_begin", args, state, control, **kwargs)

    def on_train_end(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        return self.call_event("on_train_end", args, state, control, **kwargs)

    def on_epoch_begin(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        control._new_epoch()
        return self.call_event("on_epoch_begin", args, state, control, **kwargs)

    def on_epoch_end(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        return self.call_event("on_epoch_end", args, state, control, **kwargs)

    def on_step_begin(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        control._new_step()
        return self.call_event("on_step_begin", args, state, control, **kwargs)

    def on_pre_optimizer_step(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        return self.call_event("on_pre_optimizer_step", args, state, control, **kwargs)

    def on_optimizer_step(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        return self.call_event("on_optimizer_step", args, state, control, **kwargs)

    def on_substep_end(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        return self.call_event("on_substep_end", args, state, control, **kwargs)

    def on_step_end(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        return self.call_event("on_step_end", args, state, control, **kwargs)

    def on_evaluate(
        self, args: Args, state: TrainerState, control: TrainerControl, metrics: Row, **kwargs: Any
    ) -> TrainerControl:
        control.should_evaluate = False
        return self.call_event("on_evaluate", args, state, control, metrics=metrics, **kwargs)

    def on_predict(
        self, args: Args, state: TrainerState, control: TrainerControl, metrics: Row, **kwargs: Any
    ) -> TrainerControl:
        return self.call_event("on_predict", args, state, control, metrics=metrics, **kwargs)

    def on_save(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        control.should_save = False
        return self.call_event("on_save", args, state, control, **kwargs)

    def on_log(
        self, args: Args, state: TrainerState, control: TrainerControl, logs: Row, **kwargs: Any
    ) -> TrainerControl:
        control.should_log = False
        return self.call_event("on_log", args, state, control, logs=logs, **kwargs)

    def log(self, args: Args, state: TrainerState, control: TrainerControl, logs: Row) -> TrainerControl:
        """A trainer's `log(logs)`: the row (with the epoch) goes into `state.log_history` (with the
        step), then to every callback's `on_log` (progress, JSONL, trackers)."""
        if state.epoch is not None:
            logs = {**logs, "epoch": state.epoch}
        state.log_history.append({**logs, "step": state.global_step})
        return self.on_log(args, state, control, logs)

    def on_prediction_step(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        return self.call_event("on_prediction_step", args, state, control, **kwargs)

    def on_push_begin(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        return self.call_event("on_push_begin", args, state, control, **kwargs)


def _every(step: int, interval: int | None) -> bool:
    """True when `step` is a multiple of a positive `interval` (a 0/None interval never fires)."""
    return bool(interval) and interval > 0 and step % interval == 0


class DefaultFlowCallback(TrainerCallback):
    """The logging/evaluation/saving schedule of `TrainingArguments`, as in Hugging Face.

    Uses `state.logging_steps`, `state.eval_steps` and `state.save_steps`, which the trainer
    resolves (fractions of `max_steps` become ints) before training. With `save_strategy="best"`
    nothing is saved on schedule: the trainer saves after an evaluation that sets a new best.
    """

    def on_step_end(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        step = state.global_step
        if step == 1 and args.logging_first_step:
            control.should_log = True
        if args.logging_strategy == "steps" and _every(step, state.logging_steps):
            control.should_log = True

        eval_on_schedule = args.eval_strategy == "steps" and args.eval_delay <= step
        if eval_on_schedule and _every(step, state.eval_steps):
            control.should_evaluate = True
        if args.save_strategy == "steps" and _every(step, state.save_steps):
            control.should_save = True

        if step >= state.max_steps:
            control.should_training_stop = True
            # A step schedule that did not land on the last step still evaluates and saves it
            # (evaluate only if not already due, to avoid evaluating twice).
            if eval_on_schedule and not _every(step, state.eval_steps):
                control.should_evaluate = True
            if args.save_strategy == "steps":
                control.should_save = True
        return control

    def on_epoch_end(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        if args.logging_strategy == "epoch":
            control.should_log = True
        # eval_delay counts epochs here.
        if args.eval_strategy == "epoch" and args.eval_delay <= (state.epoch or 0):
            control.should_evaluate = True
        if args.save_strategy == "epoch":
            control.should_save = True
        return control


def _format_row(logs: Row, max_str_len: int | None = None) -> Row:
    """Copy a log row for display: floats rounded to 4 significant digits (still numbers, so a printed
    row reads `'loss': 6.142`, not `'loss': '6.142'`), without `total_flos`.

    Strings longer than `max_str_len` are replaced by a note of their length.
    """
    shown: Row = {}
    for k, v in logs.items():
        if k == "total_flos":
            continue
        if isinstance(v, float) and math.isfinite(v):
            v = float(f"{v:.4g}")
        elif isinstance(v, str) and max_str_len is not None and len(v) > max_str_len:
            v = f"[{len(v)} characters, more than max_str_len={max_str_len}]"
        shown[k] = v
    return shown


# Keys of a training row shown in the bar's postfix, with their short labels.
_POSTFIX_KEYS = {
    "loss": "loss",
    "learning_rate": "lr",
    "lr": "lr",
    "tokens_per_second": "tok/s",
    "train_tokens_per_second": "tok/s",
    "tok/s": "tok/s",
}


class ProgressCallback(TrainerCallback):
    """A tqdm bar over the optimizer steps, on the local main process; off with `disable_tqdm`.

    Training rows (those with a `loss`) update the bar's postfix (loss, lr, tok/s); other rows
    (evaluation metrics, the end-of-training summary) are printed once above the bar. Evaluation
    and prediction loops get a second bar that disappears when they end. When the bar's stream is
    not a terminal (nohup, SLURM, CI logs), where redraws would only pile up as `\r` noise, there
    is no bar and every row is printed as a line of its own.

    Args:
        max_str_len: Longer string values of a printed row are replaced by their length.
    """

    def __init__(self, max_str_len: int = 100) -> None:
        self.max_str_len = max_str_len
        self.training_bar: tqdm | None = None
        self.prediction_bar: tqdm | None = None
        self._last_step = 0

    @staticmethod
    def _shows(args: Args, state: TrainerState) -> bool:
        return state.is_local_process_zero and not args.disable_tqdm

    @staticmethod
    def _terminal() -> bool:
        """Whether tqdm's stream (stderr) is a terminal a bar can redraw in."""
        return bool(getattr(sys.stderr, "isatty", lambda: False)())

    def on_train_begin(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._close_bars()
        self._last_step = state.global_step
        if self._shows(args, state) and self._terminal():
            # A resumed run starts the bar where the checkpoint left off.
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True)

    def on_step_end(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.training_bar is not None:
            self.training_bar.update(state.global_step - self._last_step)
            self._last_step = state.global_step

    def on_prediction_step(
        self,
        args: Args,
        state: TrainerState,
        control: TrainerControl,
        eval_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        if not self._shows(args, state) or not self._terminal():
            return
        if self.prediction_bar is None:
            try:
                total = len(eval_dataloader)
            except TypeError:  # None, or an iterable dataset without a length
                return
            self.prediction_bar = tqdm(total=total, leave=False, dynamic_ncols=True)
        self.prediction_bar.update(1)

    def on_evaluate(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._close_prediction_bar()

    def on_predict(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._close_prediction_bar()

    def on_log(
        self, args: Args, state: TrainerState, control: TrainerControl, logs: Row | None = None, **kwargs: Any
    ) -> None:
        if not logs or not self._shows(args, state):
            return
        if self.training_bar is not None and "loss" in logs:
            postfix = {label: logs[k] for k, label in _POSTFIX_KEYS.items() if k in logs}
            self.training_bar.set_postfix(_format_row(postfix), refresh=False)
        else:
            tqdm.write(str(_format_row(logs, self.max_str_len)))

    def on_train_end(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._close_bars()

    def _close_prediction_bar(self) -> None:
        if self.prediction_bar is not None:
            self.prediction_bar.close()
            self.prediction_bar = None

    def _close_bars(self) -> None:
        self._close_prediction_bar()
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None


class PrinterCallback(TrainerCallback):
    """Prints each logged row on the local main process (used instead of the bar with `disable_tqdm`)."""

    def on_log(
        self, args: Args, state: TrainerState, control: TrainerControl, logs: Row | None = None, **kwargs: Any
    ) -> None:
        if logs and state.is_local_process_zero:
            print(_format_row(logs), flush=True)


class JsonlLoggerCallback(TrainerCallback):
    """Appends every logged row to `<output_dir>/log.jsonl`, on the world main process.

    Each line is one JSON object: the row's values plus `step` (`global_step`) and `epoch`
    (rounded to 4 decimals). The file is opened, appended to and flushed per row, so a killed
    run keeps every row it logged. Non-finite floats are written as the tokens `NaN`,
    `Infinity`, `-Infinity`, which Python's `json` writes and reads back (strict JSON parsers
    reject them). On a resumed run (`global_step > 0` at `on_train_begin`), rows logged after
    the checkpoint are dropped first, so the file ends up as an uninterrupted run's would.
    """

    filename = "log.jsonl"

    def _path(self, args: Args) -> Path:
        return Path(args.output_dir) / self.filename

    def on_train_begin(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        path = self._path(args)
        if state.is_world_process_zero and state.global_step > 0 and path.exists():
            kept = [line for line in _read_lines(path) if _row_step(line) <= state.global_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def on_log(
        self, args: Args, state: TrainerState, control: TrainerControl, logs: Row | None = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        epoch = None if state.epoch is None else round(state.epoch, 4)
        row = {**(logs or {}), "step": state.global_step, "epoch": epoch}
        line = json.dumps(row, default=json_default)
        path = self._path(args)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _row_step(line: str) -> float:
    """The `step` of a JSONL row; +inf for a line that can't be read (e.g. cut by a kill)."""
    try:
        step = json.loads(line).get("step")
    except (json.JSONDecodeError, AttributeError):
        return math.inf
    return step if isinstance(step, (int, float)) else math.inf


class TrackerCallback(TrainerCallback):
    """Forwards the numeric values of each logged row to the Accelerate trackers, named as HF's
    callbacks name them (`trackers.send_row`: `train/loss`, `eval/loss` where a tracker has panels).

    Works with whatever trackers `trackers.start_trackers` started (TensorBoard, W&B, ...); does
    nothing when there are none.

    The trackers stay open after `train()`: rows logged later (an `evaluate()`, the CLI's
    perplexity) belong to the same run, and a finished W&B run refuses them. They are flushed at
    the end of training and finished once (`trackers.finish_trackers`): when the process exits, when
    the next run of this process starts, or earlier through the CLI's `run.end_run`.

    Args:
        accelerator: The run's `accelerate.Accelerator`.
    """

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator

    def on_log(
        self, args: Args, state: TrainerState, control: TrainerControl, logs: Row | None = None, **kwargs: Any
    ) -> None:
        if not logs or not self.accelerator.trackers:
            return
        values = {k: v for k, v in logs.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}
        if values:
            send_row(self.accelerator.trackers, values, state.global_step)
        if logs.get("samples"):  # SampleCallback's text
            send_samples(self.accelerator.trackers, logs["samples"], state.global_step)

    def on_train_end(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        for tracker in self.accelerator.trackers:  # on disk now (TensorBoard); W&B and MLflow send as they go
            writer = getattr(tracker, "writer", None)
            if hasattr(writer, "flush"):
                writer.flush()


class EarlyStoppingCallback(TrainerCallback, ExportableState):
    """Stops training when `metric_for_best_model` has not improved for `patience` evaluations.

    An evaluation improves when its metric beats `state.best_metric` (in the direction of
    `greater_is_better`) by more than `early_stopping_threshold`. `state.best_metric` is the best
    value *before* this evaluation: the trainer updates it after the `on_evaluate` event.
    The patience counter is saved in checkpoints, so it survives a resume.

    Args:
        early_stopping_patience: Non-improving evaluations in a row that stop training (>= 1).
        early_stopping_threshold: Smallest change that counts as an improvement (>= 0).

    Raises:
        ConfigError: A bad patience/threshold, or (at train begin) no `metric_for_best_model`
            or `eval_strategy="no"`.
    """

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float = 0.0) -> None:
        if early_stopping_patience < 1:
            raise ConfigError(f"early_stopping_patience={early_stopping_patience} must be at least 1")
        if early_stopping_threshold is None:  # Hugging Face's signature allows None
            early_stopping_threshold = 0.0
        if early_stopping_threshold < 0:
            raise ConfigError(f"early_stopping_threshold={early_stopping_threshold} must be >= 0")
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold
        # Evaluations in a row without improvement.
        self.early_stopping_patience_counter = 0
        self._disabled = False

    def on_train_begin(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if args.metric_for_best_model is None:
            raise ConfigError("EarlyStoppingCallback needs metric_for_best_model set (e.g. 'loss')")
        if args.eval_strategy == "no":
            raise ConfigError("EarlyStoppingCallback needs eval_strategy='steps' or 'epoch', not 'no'")
        if not args.load_best_model_at_end:
            logger.warning(
                "EarlyStoppingCallback without load_best_model_at_end=True: "
                "the model at the end of training will be the last one, not the best."
            )

    def on_evaluate(
        self,
        args: Args,
        state: TrainerState,
        control: TrainerControl,
        metrics: Row | None = None,
        **kwargs: Any,
    ) -> None:
        if self._disabled:
            return
        name = args.metric_for_best_model
        if not name.startswith("eval_"):
            name = f"eval_{name}"
        value = (metrics or {}).get(name)
        if value is None:
            logger.warning(
                "Early stopping is disabled: metric_for_best_model '%s' is not in the evaluation metrics %s",
                name,
                sorted(metrics or {}),
            )
            self._disabled = True
            return
        if self._improved(value, state.best_metric, args.greater_is_better):
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_training_stop = True

    def _improved(self, value: float, best: float | None, greater_is_better: bool | None) -> bool:
        if best is None:
            return True
        better = value > best if greater_is_better else value < best
        return better and abs(value - best) > self.early_stopping_threshold

    def state(self) -> dict[str, dict[str, Any]]:
        """Export patience, threshold and counter (see `ExportableState`)."""
        return {
            "args": {
                "early_stopping_patience": self.early_stopping_patience,
                "early_stopping_threshold": self.early_stopping_threshold,
            },
            "attributes": {"early_stopping_patience_counter": self.early_stopping_patience_counter},
        }


def default_callbacks(args: Args, accelerator: Any) -> list[Any]:
    """The callbacks every trainer starts with: flow (log/eval/save/stop on schedule), progress bar
    (or plain printing with `disable_tqdm`), the log.jsonl writer, the Accelerate trackers, the Hub
    uploads (idle unless asked) and the run report (`report_at_end`)."""
    return [
        DefaultFlowCallback,
        PrinterCallback if args.disable_tqdm else ProgressCallback,
        JsonlLoggerCallback,
        TrackerCallback(accelerator),
        HubCallback(),
        ReportCallback(),
    ]
