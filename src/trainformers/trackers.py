"""Experiment trackers (TensorBoard, W&B, MLflow, trackio, ...) fed the way transformers' Trainer feeds them.

Accelerate's tracker classes write; this module names their runs and projects as Hugging Face's
callbacks do, hands them every hyperparameter (the arguments, the model's config, PEFT's, and the
CLI's other sections), names the metrics as HF's panels show them (`train/loss`, `eval/loss`), and
keeps one run per tracker open from the first `train()` until the process exits or the next run
starts, so rows logged after training (an `evaluate()`, the CLI's perplexity) join the same run.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from accelerate.tracking import MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker, on_main_process

from .errors import ConfigError

_PIP_NAMES = {"comet_ml": "comet-ml"}  # report_to name -> what pip installs, where they differ
_EXTRAS = ("tensorboard", "wandb", "mlflow", "trackio")  # pyproject's extras of the same name
# where HF's callbacks rename eval_loss to eval/loss and loss to train/loss (they have panels);
# MLflow (as in HF) and the others get the names of log.jsonl
PANELS = ("tensorboard", "wandb", "trackio")


def check_trackers(args: Any) -> None:
    """Refuse a `report_to` tracker that is not installed, naming the line that installs it.

    Called by `build_accelerator`, and by the command line before anything is read or written.

    Raises:
        ConfigError: the first tracker whose package is missing.
    """
    for tracker in args.report_to:
        if importlib.util.find_spec(tracker) is None:
            package = _PIP_NAMES.get(tracker, tracker)
            extra = f" (or pip install 'trainformers[{tracker}]')" if tracker in _EXTRAS else ""
            raise ConfigError(
                f"training.report_to names '{tracker}' but it is not installed; pip install {package}{extra}, or drop "
                "it from report_to"
            )


def run_name(args: Any) -> str:
    """The run's name in every tracker: `run_name`, else the name of `output_dir`."""
    return args.run_name or Path(args.output_dir).resolve().name


def build_trackers(args: Any) -> list[Any]:
    """What `Accelerator(log_with=...)` gets for `args.report_to`, named as HF names them.

    Accelerate's `init_trackers(project_name)` hands one name to every tracker, which W&B and
    trackio take as the project, MLflow as the experiment and TensorBoard as the run's folder;
    HF names them apart, so the four are built here, each with its own names (Accelerate starts
    tracker objects it is given as they are). Any other tracker is named by `init_trackers`.
    """
    if not args.report_to:
        return []
    name = run_name(args)
    build = {
        # absolute: the writer flushes from a thread, and a later chdir would send it elsewhere
        "tensorboard": lambda: TensorBoardTracker(name, os.path.abspath(args.logging_dir)),
        "wandb": lambda: WandBTracker(os.environ.get("WANDB_PROJECT") or args.project, name=name),
        "mlflow": lambda: _MLflowRun(os.environ.get("MLFLOW_EXPERIMENT_NAME"), run_name=name),
        "trackio": lambda: TrackioTracker(
            args.project, name=name, space_id=args.trackio_space_id, private=args.hub_private_repo
        ),
    }
    return [build[t]() if t in build else t for t in args.report_to]


class _MLflowRun(MLflowTracker):
    """Accelerate's MLflow tracker, started as HF's MLflowCallback starts it.

    The experiment is MLFLOW_EXPERIMENT_NAME's, else MLflow's own (its default experiment, or
    MLFLOW_EXPERIMENT_ID); Accelerate would create an experiment named "None". A run the user
    already started (`with mlflow.start_run():`) is logged into and left open, where Accelerate
    would fail to start a second one. MLflow itself reads MLFLOW_TRACKING_URI, MLFLOW_RUN_ID,
    MLFLOW_TAGS and MLFLOW_NESTED_RUN.
    """

    @on_main_process
    def start(self) -> None:
        import mlflow

        self.owns_run = mlflow.active_run() is None or bool(self.nested_run) or self.run_id is not None
        if self.owns_run:
            if self.experiment_name:
                mlflow.set_experiment(self.experiment_name)
            mlflow.start_run(run_id=self.run_id, run_name=self.run_name, nested=self.nested_run, tags=self.tags)
        self.active_run = mlflow.active_run()

    @on_main_process
    def finish(self) -> None:
        import mlflow

        if self.owns_run:
            mlflow.end_run()


def hyperparameters(args: Any, model: Any = None, sections: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the trackers get as the run's configuration, flattened to scalars ("model.preset").

    HF's combination: the model's config, the arguments over it (both unprefixed), PEFT's config
    under `peft_config.`, the parameter count as `model/num_parameters`; then the CLI's other
    sections (`sections`: `RunConfig.to_dict()`) under their names, its `training` being `args`.
    """
    combined: dict[str, Any] = {}
    config = getattr(model, "config", None)
    if config is not None:
        combined.update(config if isinstance(config, dict) else config.to_dict())
    combined.update(args.to_dict())
    peft = getattr(model, "peft_config", None)
    if isinstance(peft, Mapping) and peft:
        combined["peft_config"] = {name: _plain(adapter) for name, adapter in peft.items()}
    if model is not None and hasattr(model, "parameters"):
        combined["model/num_parameters"] = sum(p.numel() for p in model.parameters())
    for name, section in (sections or {}).items():
        if name == "training":  # `args`, and the CLI's own training settings (early stopping)
            combined.update({key: value for key, value in section.items() if key not in combined})
        elif section is not None:
            combined[name] = section
    return _flatten(combined)


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists and other objects as JSON text (TensorBoard takes scalars only)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        value = _plain(value)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            if isinstance(value, (set, frozenset)):
                value = sorted(value, key=str)
            flat[f"{prefix}{key}"] = json.dumps(value, default=str)
    return flat


def rewrite_logs(values: Mapping[str, Any]) -> dict[str, Any]:
    """HF's names for panels: `eval_loss` -> `eval/loss`, `test_x` -> `test/x`, the rest `train/...`."""
    out = {}
    for key, value in values.items():
        for prefix in ("eval", "test"):
            if key.startswith(prefix + "_"):
                out[f"{prefix}/{key[len(prefix) + 1 :]}"] = value
                break
        else:
            out[f"train/{key}"] = value
    return out


def send_row(trackers: Iterable[Any], values: Mapping[str, float], step: int) -> None:
    """One logged row to every tracker, named as HF's callback for it names it."""
    panels = rewrite_logs(values)
    for tracker in trackers:
        if tracker.name in ("wandb", "trackio"):  # HF adds the step, the x-axis of its W&B charts
            tracker.log({**panels, "train/global_step": step}, step=step)
        elif tracker.name in PANELS:
            tracker.log(panels, step=step)
        else:
            tracker.log(dict(values), step=step)


_open: list[Any] = []  # accelerators whose trackers this process started and has not finished


def start_trackers(accelerator: Any, args: Any, model: Any = None, sections: Mapping[str, Any] | None = None) -> None:
    """Start the run in every tracker of `accelerator`, unless it has started it already.

    The runs of an earlier Trainer (or hyperparameter trial) in this process are finished first:
    W&B would hand this run the old one, MLflow refuses a second active run.

    Args:
        accelerator: The run's Accelerator, built with `build_trackers(args)`.
        args: The run's `TrainingArguments`.
        model: Its model, whose config (and PEFT config) is logged as HF logs it.
        sections: The CLI's `RunConfig.to_dict()`: its model, data and peft sections are logged too.
    """
    if accelerator.trackers or not args.report_to:
        return
    for other in list(_open):
        finish_trackers(other)
    accelerator.init_trackers(run_name(args), config=hyperparameters(args, model, sections))
    if accelerator.trackers:
        _open.append(accelerator)
        # last registered runs first: before the exit hooks W&B registered in init, which stop
        # the service a W&B run needs to finish
        atexit.unregister(_finish_all)
        atexit.register(_finish_all)


def finish_trackers(accelerator: Any) -> None:
    """Finish the run in every tracker of `accelerator` (flushed and closed); later rows go nowhere
    and the next `train()` starts a new run."""
    trackers, accelerator.trackers = accelerator.trackers, []
    if accelerator in _open:
        _open.remove(accelerator)
    for tracker in trackers:
        tracker.finish()


def _finish_all() -> None:
    for accelerator in list(_open):
        finish_trackers(accelerator)
