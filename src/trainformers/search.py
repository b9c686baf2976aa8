"""Hyperparameter search on optuna: `Trainer.hyperparameter_search` (`trainformers search` reads a run file in run.py).

Each trial re-creates the model with `model_init(trial)`, trains with the trial's values applied
to a copy of the arguments (written to `<output_dir>/trial-<N>/`, its own `log.jsonl` included),
and reports every evaluation to optuna, whose pruner may stop a bad trial early. The study lives
in `<output_dir>/optuna_study.db` (SQLite): running the same search again resumes it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers.trainer_utils import BestRun, default_compute_objective

from .accel import build_accelerator
from .callbacks import TrackerCallback, TrainerCallback
from .errors import ConfigError, TrainformersError, did_you_mean
from .state import atomic_write_text, json_default

__all__ = [
    "import_optuna",
    "BestRun",
    "default_hp_space",
    "format_trials_table",
    "run_hyperparameter_search",
    "search_space_from_config",
]

DEFAULT_STUDY_NAME = "trainformers-search"
STUDY_FILE = "optuna_study.db"
SUMMARY_FILE = "search_summary.json"
# keyword arguments of hyperparameter_search that go to optuna.create_study / Study.optimize
_STUDY_KWARGS = ("sampler", "pruner", "study_name", "storage", "load_if_exists")
_OPTIMIZE_KWARGS = ("timeout", "n_jobs", "gc_after_trial", "catch", "callbacks")
# run-file parameter types: required keys, optional keys
SPACE_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "loguniform": (("low", "high"), ()),
    "uniform": (("low", "high"), ("step",)),
    "int": (("low", "high"), ("step", "log")),
    "categorical": (("choices",), ()),
}


def default_hp_space(trial: Any) -> dict[str, Any]:
    """The search space used when none is given (sized for small models trained from scratch).

    learning_rate log-uniform in [1e-5, 1e-2], num_train_epochs an int in [1, 5] (no effect when
    max_steps > 0), per_device_train_batch_size one of 4, 8, 16, 32, seed an int in [1, 40].

    Args:
        trial: An `optuna.Trial`.

    Returns:
        TrainingArguments field -> the trial's value.
    """
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True),
        "num_train_epochs": trial.suggest_int("num_train_epochs", 1, 5),
        "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [4, 8, 16, 32]),
        "seed": trial.suggest_int("seed", 1, 40),
    }


class _TrialCallback(TrainerCallback):
    """Marks the run as a trial and reports each evaluation's objective to optuna for pruning."""

    def __init__(self, trial: Any, name: str, params: dict[str, Any], objective: Callable, prune: bool) -> None:
        self.trial, self.name, self.params = trial, name, params
        self.objective, self.prune = objective, prune
        self.last_eval_step: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.pruned_at: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # train() starts from a fresh TrainerState: the trial fields are set on that one
        state.is_hyper_param_search, state.trial_name, state.trial_params = True, self.name, dict(self.params)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        self.last_eval_step, self.last_metrics = state.global_step, dict(metrics or {})
        if not self.prune or metrics is None:
            return  # optuna cannot prune multi-objective studies
        self.trial.report(float(self.objective(metrics)), state.global_step)
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True  # TrialPruned is raised once train() has returned


def run_hyperparameter_search(
    trainer: Any,
    hp_space: Callable[[Any], dict[str, Any]] | None = None,
    compute_objective: Callable[[dict[str, float]], float] | None = None,
    n_trials: int = 20,
    direction: str | list[str] = "minimize",
    backend: Any = None,
    hp_name: Callable[[Any], str] | None = None,
    **kwargs: Any,
) -> BestRun | list[BestRun]:
    """Search hyperparameters with optuna, as `transformers.Trainer.hyperparameter_search` does.

    Each trial: `model_init(trial)`, the values of `hp_space(trial)` applied to a copy of
    `trainer.args` with `output_dir=<output_dir>/trial-<N>` (or `hp_name(trial)`), `train()`,
    then the objective of the last evaluation (one is run after training unless the final step
    was evaluated). Evaluations during training are reported to optuna, so its pruner (optuna's
    default: `MedianPruner`) can stop a bad trial early. The study is stored in
    `<output_dir>/optuna_study.db` and resumed when it exists: `n_trials` counts the finished
    (complete or pruned) trials of earlier runs too. `trainer.args` is restored afterwards, and
    `<output_dir>/search_summary.json` lists every trial. `hp_space` is first called once on a
    throwaway in-memory trial, so that a bad key fails before anything is written.

    Args:
        trainer: A `Trainer` built with `model_init` and an `eval_dataset`.
        hp_space: `trial -> {TrainingArguments field: value}`; default `default_hp_space`.
        compute_objective: `metrics -> objective` (a sequence for several directions); default:
            eval_loss when it is the only metric, else the sum of the metrics (HF's default).
        n_trials: Finished trials the study should hold in total.
        direction: "minimize", "maximize", or a list of them for a multi-objective search.
        backend: "optuna" or None (the only backend).
        hp_name: `trial -> name` of its run directory and `state.trial_name`.
        **kwargs: `sampler`, `pruner`, `study_name`, `storage`, `load_if_exists` for
            `optuna.create_study`; `timeout`, `gc_after_trial`, `catch`, `callbacks` for
            `Study.optimize` (`n_jobs` must be 1). The default sampler is a `TPESampler` seeded
            with `args.seed` plus the number of trials already stored (reproducible, no replays).

    Returns:
        A `BestRun(run_id, objective, hyperparameters, run_summary=study)`; a list of them (the
        Pareto front) when `direction` is a list.

    Raises:
        ConfigError: no model_init or eval_dataset, optuna missing, another backend, an unknown
            field in the space or keyword argument, a bad direction, or a stored study whose
            direction differs.
        TrainformersError: no trial of the study completed.
    """
    optuna = import_optuna(backend)
    if trainer.model_init is None:
        raise ConfigError(
            "hyperparameter_search needs a model_init: pass Trainer(model_init=...) so each trial gets a new model"
        )
    if trainer.eval_dataset is None:
        raise ConfigError(
            "hyperparameter_search needs an eval_dataset to compute the objective; pass Trainer(eval_dataset=...)"
        )
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"n_trials={n_trials!r} must be a positive integer")
    if trainer.accelerator.num_processes > 1:
        raise ConfigError(
            f"hyperparameter_search runs in one process, not {trainer.accelerator.num_processes}; "
            "launch it with python, not accelerate launch or torchrun"
        )
    directions = _directions(direction)
    multi = isinstance(direction, (list, tuple))
    unknown = [k for k in kwargs if k not in _STUDY_KWARGS + _OPTIMIZE_KWARGS]
    if unknown:
        hint = did_you_mean(unknown[0], _STUDY_KWARGS + _OPTIMIZE_KWARGS)
        raise ConfigError(f"hyperparameter_search got an unknown argument '{unknown[0]}'{hint}")
    if kwargs.get("n_jobs", 1) != 1:
        raise ConfigError(f"hyperparameter_search n_jobs={kwargs['n_jobs']!r}: trials share one Trainer; use n_jobs=1")
    hp_space = hp_space or default_hp_space
    compute_objective = compute_objective or default_compute_objective
    base_args, base_accelerator = trainer.args, trainer.accelerator
    out = Path(base_args.output_dir)
    _trial_args(base_args, _preview(optuna, hp_space), out / "trial-preview")  # a bad space fails before any write

    study = _open_study(optuna, base_args, directions, {k: v for k, v in kwargs.items() if k in _STUDY_KWARGS})
    optimize_kwargs = {k: v for k, v in kwargs.items() if k in _OPTIMIZE_KWARGS and k != "n_jobs"}
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = n_trials - len(study.get_trials(deepcopy=False, states=finished))

    def objective(trial: Any) -> float | Sequence[float]:
        params = hp_space(trial)
        name = hp_name(trial) if hp_name is not None else f"trial-{trial.number}"
        trainer.args = _trial_args(base_args, params, out / name)
        trial.set_user_attr("output_dir", trainer.args.output_dir)
        _use_accelerator(trainer, build_accelerator(trainer.args))  # trackers and precision per trial
        callback = _TrialCallback(trial, name, params, compute_objective, prune=not multi)
        trainer.callback_handler.callbacks.insert(0, callback)  # first: every callback sees the trial fields
        try:
            trainer.train(trial=trial)
        finally:
            trainer.remove_callback(callback)
        if callback.pruned_at is not None:
            raise optuna.TrialPruned(f"{name} pruned at step {callback.pruned_at}")
        final = callback.last_eval_step == trainer.state.global_step
        metrics = callback.last_metrics if final else trainer.evaluate()
        value = compute_objective(metrics)
        return tuple(float(v) for v in value) if multi else float(value)

    try:
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, **optimize_kwargs)
    finally:
        trainer.args = base_args
        _use_accelerator(trainer, base_accelerator if remaining <= 0 else build_accelerator(base_args))
        if trainer.is_world_process_zero() and out.is_dir():
            _write_summary(study, out / SUMMARY_FILE, multi)
    best = _best_runs(study, multi)
    if trainer.is_world_process_zero():
        top = best[0] if multi else best
        print(
            f"hyperparameter search: best trial {top.run_id}, objective {top.objective}, {top.hyperparameters} "
            f"({len(study.trials)} trials in study '{study.study_name}'; summary in {out / SUMMARY_FILE})"
        )
    return best


def import_optuna(backend: Any) -> Any:
    name = getattr(backend, "value", backend)  # transformers' HPSearchBackend enum works too
    if name not in (None, "optuna"):
        raise ConfigError(f"hyperparameter_search backend={name!r} is not supported; use backend='optuna' (or None)")
    try:
        import optuna
    except ImportError:
        raise ConfigError("hyperparameter_search needs optuna; pip install 'trainformers[optuna]'") from None
    return optuna


def _directions(direction: str | Sequence[str]) -> list[str]:
    directions = list(direction) if isinstance(direction, (list, tuple)) else [direction]
    for d in directions:
        if d not in ("minimize", "maximize"):
            raise ConfigError(f"hyperparameter_search direction={d!r} must be 'minimize' or 'maximize' (or a list)")
    if not directions:
        raise ConfigError("hyperparameter_search direction=[] is empty; give 'minimize', 'maximize' or a list of them")
    return directions


def _preview(optuna: Any, hp_space: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The values of one trial of a throwaway in-memory study, to check the space up front."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory" line
    try:
        return hp_space(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    finally:
        optuna.logging.set_verbosity(level)


def _trial_args(base: Any, params: Mapping[str, Any], output_dir: Path) -> Any:
    """A validated copy of `base` with the trial's values and its own output and logging dirs.

    Raises:
        ConfigError: a key that is not a TrainingArguments field, or a value it rejects.
    """
    if not isinstance(params, Mapping):
        raise ConfigError(f"hp_space must return a dict of TrainingArguments fields, got {type(params).__name__}")
    known = [f.name for f in dataclasses.fields(base) if f.init]
    values: dict[str, Any] = {}
    for key, value in params.items():
        _check_space_key(key, known, f"search space key '{key}'")
        old = getattr(base, key)
        # optuna returns ints for int ranges and floats for float ranges: match the field (HF casts too)
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float) and value.is_integer():
            value = int(value)
        values[key] = value
    derived_logging = base.logging_dir == os.path.join(base.output_dir, "runs")  # TrainingArguments' default
    return dataclasses.replace(
        base,
        **values,
        output_dir=str(output_dir),
        logging_dir=None if derived_logging else base.logging_dir,
        resume_from_checkpoint=None,  # a trial always starts fresh in its own directory
    )


def _check_space_key(key: Any, known: Sequence[str], where: str) -> None:
    """Raise for a key a search space can't set: output_dir, or not a TrainingArguments field."""
    if key == "output_dir":
        raise ConfigError(f"{where} can't be searched: trials write to <output_dir>/trial-N; remove it")
    if key not in known:
        raise ConfigError(f"{where} is not a TrainingArguments field{did_you_mean(str(key), known)}; rename or drop it")


def _use_accelerator(trainer: Any, accelerator: Any) -> None:
    trainer.accelerator = accelerator
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TrackerCallback):
            cb.accelerator = accelerator


def _open_study(optuna: Any, args: Any, directions: list[str], kwargs: dict[str, Any]) -> Any:
    """Create the study, or load the one stored in `<output_dir>/optuna_study.db`."""
    out = Path(args.output_dir)
    storage = kwargs.pop("storage", None)
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
        storage = _default_storage(optuna, out)
    kwargs.setdefault("study_name", DEFAULT_STUDY_NAME)
    kwargs.setdefault("load_if_exists", True)
    if len(directions) == 1:
        study = optuna.create_study(storage=storage, direction=directions[0], **kwargs)
    else:
        study = optuna.create_study(storage=storage, directions=directions, **kwargs)
    if kwargs.get("sampler") is None:
        # seeded for reproducible searches; offset by the stored trials, or a resumed search would
        # draw its first values again
        study.sampler = optuna.samplers.TPESampler(seed=args.seed + len(study.trials))
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:  # optuna keeps a loaded study's directions without a word
        raise ConfigError(
            f"study '{study.study_name}' in {out} was created with direction {stored} but direction={directions}; "
            "use the same direction, another study_name or another output_dir"
        )
    return study


def _default_storage(optuna: Any, out: Path) -> Any:
    try:
        import sqlite3  # noqa: F401 - some Python builds lack it
    except ImportError:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(out / "optuna_study.log")))
    # the heartbeat lets a later run mark the trials of a killed search as failed (not still running)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(f"sqlite:///{(out / STUDY_FILE).resolve()}", heartbeat_interval=60)


def _best_runs(study: Any, multi: bool) -> BestRun | list[BestRun]:
    if multi:
        runs = [BestRun(str(t.number), list(t.values), t.params, study) for t in study.best_trials]
        if runs:
            return runs
    else:
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        if done:
            best = study.best_trial
            return BestRun(str(best.number), best.value, best.params, study)
    states = [t.state.name.lower() for t in study.trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no trials"
    raise TrainformersError(
        f"hyperparameter search: no trial of study '{study.study_name}' completed ({counts}); "
        "raise n_trials, or loosen the pruner"
    )


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.trials:
        intermediate = t.intermediate_values
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.values is None or len(t.values) == 1 else list(t.values),
                "last_reported": intermediate[max(intermediate)] if intermediate else None,
                "steps_reported": sorted(intermediate),
                "params": t.params,
                "output_dir": t.user_attrs.get("output_dir"),
                "duration_s": t.duration.total_seconds() if t.duration is not None else None,
            }
        )
    return rows


def _write_summary(study: Any, path: Path, multi: bool) -> None:
    try:
        best = _best_runs(study, multi)
    except TrainformersError:
        best = None
    runs = best if isinstance(best, list) else [best] if best is not None else []
    summary = {
        "study_name": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "best": [{"run_id": b.run_id, "objective": b.objective, "hyperparameters": b.hyperparameters} for b in runs],
        "trials": _trial_rows(study),
    }
    atomic_write_text(path, json.dumps(summary, indent=2, default=json_default) + "\n")


def format_trials_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table of the trials in a `search_summary.json` mapping, best run marked `*`.

    Args:
        summary: The mapping `run_hyperparameter_search` writes to `search_summary.json`.

    Returns:
        The table, one line per trial after a header.
    """
    trials = summary["trials"]
    names = list(dict.fromkeys(k for t in trials for k in t["params"]))
    best = {b["run_id"] for b in summary["best"]}

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list):
            return "/".join(fmt(v) for v in value)
        return "-" if value is None else str(value)

    header = ["trial", "state", "objective", "steps", *names]
    lines = [
        [
            ("*" if str(t["number"]) in best else "") + str(t["number"]),
            t["state"].lower(),
            fmt(t["value"] if t["value"] is not None else t["last_reported"]),
            fmt(t["steps_reported"][-1] if t["steps_reported"] else None),
            *(fmt(t["params"].get(n)) for n in names),
        ]
        for t in trials
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines])


# ---- the run file's `search:` section ---------------------------------------------------------


def search_space_from_config(section: Mapping[str, Any]) -> Callable[[Any], dict[str, Any]]:
    """Turn a run file's `search:` section into an `hp_space` function.

    Each key is a TrainingArguments field; its value one of
    `{type: loguniform, low, high}`, `{type: uniform, low, high, step?}`,
    `{type: int, low, high, step?, log?}` or `{type: categorical, choices: [...]}`.

    Args:
        section: The `search:` mapping.

    Returns:
        `trial -> {field: value}` suggesting each parameter under its own name.

    Raises:
        ConfigError: the section is not a mapping, a key is not a TrainingArguments field, or a
            spec has an unknown type, a missing or extra key, or a bad range.
    """
    from .config import TrainingArguments

    if not isinstance(section, Mapping) or not section:
        raise ConfigError(f"the search section must map TrainingArguments fields to specs, got {section!r}")
    known = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    specs = {}
    for key, spec in section.items():
        _check_space_key(key, known, f"search.{key}")
        specs[key] = _check_spec(f"search.{key}", spec)

    def hp_space(trial: Any) -> dict[str, Any]:
        return {key: _suggest(trial, key, spec) for key, spec in specs.items()}

    return hp_space


def _check_spec(where: str, spec: Any) -> dict[str, Any]:
    example = "{type: loguniform, low: 1e-5, high: 1e-3}"
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f"{where}={spec!r} must be a mapping with a type, e.g. {example}")
    kind = spec["type"]
    if kind not in SPACE_TYPES:
        hint = did_you_mean(str(kind), SPACE_TYPES)
        raise ConfigError(f"{where}.type={kind!r} is unknown{hint}; use one of {', '.join(SPACE_TYPES)}")
    required, optional = SPACE_TYPES[kind]
    for key in required:
        if key not in spec:
            keys = ", ".join(f"{k}: ..." for k in required)
            raise ConfigError(f"{where} (type {kind}) needs '{key}'; e.g. {{type: {kind}, {keys}}}")
    extra = [k for k in spec if k not in ("type", *required, *optional)]
    if extra:
        takes = ", ".join(required + optional)
        raise ConfigError(f"{where} (type {kind}) got an unknown key '{extra[0]}'; it takes {takes}")
    if kind == "categorical":
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"{where}.choices={spec['choices']!r} must be a non-empty list")
        return dict(spec)
    number = int if kind == "int" else (int, float)
    for key in ("low", "high", "step"):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value)):
            raise ConfigError(f"{where}.{key}={value!r} must be {'an integer' if kind == 'int' else 'a number'}")
    if not spec["low"] < spec["high"]:
        raise ConfigError(f"{where}: low={spec['low']!r} must be below high={spec['high']!r}")
    if (kind == "loguniform" or spec.get("log")) and spec["low"] <= 0:
        raise ConfigError(f"{where}: low={spec['low']!r} must be > 0 on a log scale")
    if spec.get("step") is not None and spec["step"] <= 0:
        raise ConfigError(f"{where}.step={spec['step']!r} must be positive")
    if "log" in spec and not isinstance(spec["log"], bool):
        raise ConfigError(f"{where}.log={spec['log']!r} must be true or false")
    return dict(spec)


def _suggest(trial: Any, name: str, spec: Mapping[str, Any]) -> Any:
    kind = spec["type"]
    if kind == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    if kind == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step") or 1, log=bool(spec.get("log")))
    low, high = float(spec["low"]), float(spec["high"])
    return trial.suggest_float(name, low, high, log=kind == "loguniform", step=spec.get("step"))
