"""Run state shared by the training loops, the callbacks and the checkpoints.

`TrainerState` holds the counters and history that a checkpoint saves as `trainer_state.json`
(the Hugging Face fields, plus the data position that exact resume needs);
`TrainerControl` holds the switches callbacks flip to ask the loop to log, evaluate, save or stop.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def json_default(value: Any) -> Any:
    """Turn a scalar that `json` cannot write (numpy or 0-d torch) into a Python number.

    Use as `json.dumps(..., default=json_default)`. Anything else becomes its `str()`, so a
    stray object in a log row cannot stop a checkpoint or a log from being written.
    """
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):  # arrays/tensors with more than one element
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(value)


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON atomically (temp file + rename), tensors and NumPy values as plain numbers."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one.

    The text goes to a temporary file in the same directory, is flushed to disk, and then
    replaces `path` with `os.replace` (atomic on POSIX and Windows).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ExportableState(abc.ABC):
    """Mixin for callbacks whose state is saved in checkpoints and restored on resume.

    `state()` returns `{"args": {...}, "attributes": {...}}` of JSON-friendly values: `args`
    rebuild the object through `__init__`, `attributes` are then set on it. The trainer stores
    it under `TrainerState.stateful_callbacks[<class name>]`.
    """

    @abc.abstractmethod
    def state(self) -> dict[str, dict[str, Any]]:
        """Return `{"args": ..., "attributes": ...}` describing this object (subclasses must define it)."""

    @classmethod
    def from_state(cls, state: dict[str, dict[str, Any]]) -> ExportableState:
        """Rebuild an object from what `state()` returned."""
        instance = cls(**state["args"])
        for name, value in state["attributes"].items():
            setattr(instance, name, value)
        return instance


@dataclass
class TrainerState:
    """Counters and history of a run, saved in every checkpoint as `trainer_state.json`.

    A "step" is one optimizer update: with `gradient_accumulation_steps=n`, one step consumes
    `n` micro-batches. The fields up to `stateful_callbacks` are those of Hugging Face's
    `TrainerState`; the last two are ours: with the meter's unlogged sums (`loop_state_<rank>.json`) they make a
    resumed run identical to one never stopped.

    Attributes:
        epoch: Epochs done, the fraction being the share of the current epoch completed.
        global_step: Optimizer updates done.
        max_steps: Optimizer updates the run will do in total.
        logging_steps: Log every this many steps (resolved to an int by the trainer).
        eval_steps: Evaluate every this many steps (resolved to an int by the trainer).
        save_steps: Save a checkpoint every this many steps (resolved to an int by the trainer).
        train_batch_size: Per-device batch size of the training dataloader.
        num_train_epochs: Epochs the run will do in total.
        num_input_tokens_seen: Input tokens fed to the model so far.
        total_flos: Floating-point operations so far (a float to avoid overflow).
        log_history: Every logged row (train and eval), in order.
        best_metric: Best value of `metric_for_best_model` so far.
        best_global_step: Step at which `best_metric` was reached.
        best_model_checkpoint: Checkpoint directory holding the best model.
        is_local_process_zero: Whether this is the main process of its machine.
        is_world_process_zero: Whether this is the main process of the whole run.
        is_hyper_param_search: Whether the run is a trial of a hyperparameter search.
        trial_name: Name of the hyperparameter-search trial.
        trial_params: Hyperparameters of the trial.
        stateful_callbacks: `ExportableState.state()` of callbacks, by class name (a list of
            states when a class appears more than once). A list of callbacks may be passed
            instead; it is converted on construction.
        micro_step: Forward/backward passes so far (`global_step` times the accumulation
            steps, plus the passes of an unfinished step).
        epoch_step: Micro-batches of the current epoch already consumed; a resumed run skips
            this many batches of the epoch's (seeded) sampler order.
    """

    epoch: float | None = 0.0
    global_step: int = 0
    max_steps: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: int | None = None
    num_train_epochs: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: str | None = None
    trial_params: dict[str, str | float | int | bool] | None = None
    stateful_callbacks: dict[str, Any] = field(default_factory=dict)
    # Ours: what exact resume needs beyond the Hugging Face fields.
    micro_step: int = 0
    epoch_step: int = 0

    def __post_init__(self) -> None:
        # Same conveniences as Hugging Face: None means empty, and the trainer may hand over
        # the callback objects themselves, which are stored as their exported state.
        if self.log_history is None:
            self.log_history = []
        if self.stateful_callbacks is None:
            self.stateful_callbacks = {}
        elif not isinstance(self.stateful_callbacks, dict):
            self.stateful_callbacks = export_callbacks(self.stateful_callbacks)

    def save_to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the state to `path` as JSON (indented, keys sorted), atomically."""
        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=json_default)
        atomic_write_text(path, text + "\n")

    @classmethod
    def load_from_json(cls, path: str | os.PathLike[str]) -> TrainerState:
        """Read a state written by `save_to_json` (ours or Hugging Face's).

        Keys this version does not know are ignored, so newer files still load.

        Raises:
            ValueError: The file is missing, unreadable, or not a JSON object.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"trainer state file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"can't read trainer state {path}: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"trainer state {path} is not a JSON object")
        for name, kinds in _STATE_TYPES.items():
            value = data.get(name)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise ValueError(f"{name}={value!r} is not {_KIND_NAMES[kinds[0]]}")
        if data.get("global_step", 0) < 0:
            raise ValueError(f"global_step={data['global_step']} is below 0")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# what a resumed loop reads from trainer_state.json, by the types it can use
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "global_step": (int,),
    "epoch": (float, int),
    "epoch_step": (int,),
    "micro_step": (int,),
    "total_flos": (float, int),
    "best_metric": (float, int),
    "best_global_step": (int,),
    "best_model_checkpoint": (str,),
    "log_history": (list,),
    "stateful_callbacks": (dict,),
}
_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}


def is_stateful(callback: Any) -> bool:
    """An `ExportableState`: ours, transformers' (a callback written for HF keeps its base class), or any
    object with `state()` and a `from_state` classmethod."""
    return isinstance(callback, ExportableState) or (
        callable(getattr(callback, "state", None)) and callable(getattr(type(callback), "from_state", None))
    )


def export_callbacks(callbacks: Iterable[Any]) -> dict[str, Any]:
    """Map class name -> exported state, a list of states when the class repeats."""
    exported: dict[str, Any] = {}
    for cb in callbacks:
        if not is_stateful(cb):
            raise TypeError(f"stateful_callbacks must be ExportableState objects, got {type(cb).__name__}")
        name = type(cb).__name__
        if name not in exported:
            exported[name] = cb.state()
        elif isinstance(exported[name], list):
            exported[name].append(cb.state())
        else:
            exported[name] = [exported[name], cb.state()]
    return exported


@dataclass
class TrainerControl(ExportableState):
    """Switches callbacks set to steer the training loop.

    The loop resets them at fixed points (Hugging Face semantics): `should_training_stop` only
    when a new training starts, `should_epoch_stop` at each new epoch, and `should_save`,
    `should_evaluate`, `should_log` at each new step (and each after its action is done).
    """

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_training(self) -> None:
        """Reset at the start of a training run."""
        self.should_training_stop = False

    def _new_epoch(self) -> None:
        """Reset at the start of an epoch."""
        self.should_epoch_stop = False

    def _new_step(self) -> None:
        """Reset at the start of an optimizer step."""
        self.should_save = False
        self.should_evaluate = False
        self.should_log = False

    def state(self) -> dict[str, dict[str, Any]]:
        """Export the switches (see `ExportableState`)."""
        return {"args": dataclasses.asdict(self), "attributes": {}}
