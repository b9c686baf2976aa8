"""Hyperparameter search (optuna) on a tiny causal LM: best vs worst, resume, pruning, errors, run file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import PadCollator, lm_rows, make_args, tiny_llama

from trainformers import ConfigError, Trainer, TrainerCallback
from trainformers.run import run_search_from_config
from trainformers.search import default_hp_space, search_space_from_config

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)


class Seen(TrainerCallback):
    """Records what each train() ran with: the trial fields of the state and the applied args."""

    def __init__(self) -> None:
        self.runs: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.runs.append(
            {
                "trial": state.trial_name,
                "search": state.is_hyper_param_search,
                "lr": args.learning_rate,
                "output_dir": args.output_dir,
            }
        )


def _search_trainer(tmp_path, inits=None, callbacks=None, **overrides):
    def model_init(trial):
        if inits is not None:
            inits.append(None if trial is None else trial.number)
        return tiny_llama()

    args = make_args(tmp_path, **{"max_steps": 6, "eval_strategy": "steps", "eval_steps": 2, **overrides})
    return Trainer(
        model_init=model_init,
        args=args,
        data_collator=PadCollator(),
        train_dataset=lm_rows(32),
        eval_dataset=lm_rows(8, seed=1),
        callbacks=callbacks,
    )


def _lr_space(trial):
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)}


def _log_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


def test_search_beats_its_worst_trial_and_resumes_from_its_study(tmp_path):
    inits, seen = [], Seen()
    trainer = _search_trainer(tmp_path, inits=inits, callbacks=[seen])
    original = trainer.args
    best = trainer.hyperparameter_search(hp_space=_lr_space, n_trials=3)
    out = Path(original.output_dir)
    study = best.run_summary
    values, first = [t.value for t in study.trials], [t.params for t in study.trials]
    assert len(values) == 3 and best.objective == min(values) < max(values)
    assert best.hyperparameters == study.trials[int(best.run_id)].params
    # each trial: a fresh model_init(trial), its values applied, its own directory and log
    assert inits == [None, 0, 1, 2]
    assert [r["trial"] for r in seen.runs] == ["trial-0", "trial-1", "trial-2"] and all(r["search"] for r in seen.runs)
    assert [r["lr"] for r in seen.runs] == [t.params["learning_rate"] for t in study.trials]
    assert [r["output_dir"] for r in seen.runs] == [str(out / f"trial-{i}") for i in range(3)]
    assert trainer.args is original
    logs = {i: (out / f"trial-{i}" / "log.jsonl").read_text() for i in range(3)}
    assert all(sum("eval_loss" in json.loads(line) for line in text.splitlines()) == 3 for text in logs.values())
    summary = json.loads((out / "search_summary.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"] * 3 and summary["best"][0]["run_id"] == best.run_id

    # a new process would see the same: a new Trainer over the same output_dir resumes the study
    again = _search_trainer(tmp_path, inits=(inits2 := []))
    best2 = again.hyperparameter_search(hp_space=_lr_space, n_trials=5)
    assert [t.number for t in best2.run_summary.trials] == [0, 1, 2, 3, 4]
    assert inits2 == [None, 3, 4]  # only the two missing trials ran
    assert all(t.params not in first for t in best2.run_summary.trials[3:])  # new values, not a replay
    assert {i: (out / f"trial-{i}" / "log.jsonl").read_text() for i in range(3)} == logs
    assert best2.objective <= best.objective
    assert again.hyperparameter_search(hp_space=_lr_space, n_trials=5).run_id == best2.run_id and inits2 == [None, 3, 4]
    with pytest.raises(ConfigError, match="created with direction"):
        again.hyperparameter_search(hp_space=_lr_space, n_trials=6, direction="maximize")


def test_an_interrupted_search_reruns_only_its_unfinished_trials(tmp_path):
    def model_init(trial):
        if trial is not None and trial.number == 1 and not resumed:
            raise KeyboardInterrupt  # Ctrl-C during the second trial
        return tiny_llama()

    def trainer():
        args = make_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2)
        return Trainer(
            model_init=model_init,
            args=args,
            data_collator=PadCollator(),
            train_dataset=lm_rows(8),
            eval_dataset=lm_rows(4, seed=1),
        )

    resumed = False
    with pytest.raises(KeyboardInterrupt):
        trainer().hyperparameter_search(hp_space=_lr_space, n_trials=2)
    resumed = True
    best = trainer().hyperparameter_search(hp_space=_lr_space, n_trials=2)
    assert [t.state.name for t in best.run_summary.trials] == ["COMPLETE", "FAIL", "COMPLETE"]


def test_pruning_stops_a_diverging_trial_early(tmp_path):
    rates = [1e-2, 5.0]  # trial 1 diverges: its eval loss jumps far above the initial ln(64) ~ 4.16

    def space(trial):
        rate = rates[trial.number]
        return {"learning_rate": trial.suggest_float("learning_rate", rate, rate)}

    trainer = _search_trainer(tmp_path, max_steps=8)
    best = trainer.hyperparameter_search(hp_space=space, n_trials=2, pruner=optuna.pruners.ThresholdPruner(upper=4.6))
    good, bad = best.run_summary.trials
    assert good.state == optuna.trial.TrialState.COMPLETE and best.run_id == "0"
    assert bad.state == optuna.trial.TrialState.PRUNED
    out = Path(trainer.args.output_dir)
    assert max(r["step"] for r in _log_rows(out / "trial-0")) == 8
    assert max(r["step"] for r in _log_rows(out / "trial-1")) < 8
    assert max(bad.intermediate_values) < 8 and bad.intermediate_values[max(bad.intermediate_values)] > 4.6


def test_multi_objective_returns_the_pareto_front(tmp_path):
    trainer = _search_trainer(tmp_path, max_steps=2)
    runs = trainer.hyperparameter_search(
        hp_space=_lr_space,
        n_trials=2,
        direction=["minimize", "minimize"],
        compute_objective=lambda m: (m["eval_loss"], m["eval_runtime"]),
    )
    assert isinstance(runs, list) and runs and all(len(r.objective) == 2 for r in runs)


def test_default_space_is_sampled_and_documented():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = default_hp_space(trial)
    assert set(values) == {"learning_rate", "num_train_epochs", "per_device_train_batch_size", "seed"}
    assert 1e-5 <= values["learning_rate"] <= 1e-2 and values["per_device_train_batch_size"] in (4, 8, 16, 32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"hp_space": lambda t: {"learning_rat": t.suggest_float("learning_rat", 1e-4, 1e-2)}},
            "'learning_rat' is not a TrainingArguments field (did you mean 'learning_rate'?)",
        ),
        ({"hp_space": lambda t: {"output_dir": "elsewhere"}}, "trials write to <output_dir>/trial-N"),
        ({"backend": "ray"}, "backend='ray' is not supported; use backend='optuna'"),
        ({"direction": "minimise"}, "direction='minimise' must be 'minimize' or 'maximize'"),
        ({"n_jobs": 2}, "n_jobs=2"),
        ({"pruners": None}, "unknown argument 'pruners' (did you mean 'pruner'?)"),
        ({"n_trials": 0}, "n_trials=0 must be a positive integer"),
    ],
)
def test_bad_search_arguments_fail_before_any_file_is_written(tmp_path, kwargs, message):
    trainer = _search_trainer(tmp_path)
    with pytest.raises(ConfigError) as e:
        trainer.hyperparameter_search(**{"hp_space": _lr_space, "n_trials": 2, **kwargs})
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not Path(trainer.args.output_dir).exists()


def test_search_needs_model_init(tmp_path):
    trainer = Trainer(
        tiny_llama(),
        make_args(tmp_path),
        data_collator=PadCollator(),
        train_dataset=lm_rows(8),
        eval_dataset=lm_rows(4),
    )
    with pytest.raises(
        ConfigError, match=r"needs a model_init: pass Trainer\(model_init=...\) so each trial gets a new model"
    ):
        trainer.hyperparameter_search(n_trials=1)


def test_search_without_optuna_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` raise ImportError
    trainer = _search_trainer(tmp_path)
    with pytest.raises(ConfigError, match=r"needs optuna; pip install 'trainformers\[optuna\]'"):
        trainer.hyperparameter_search(n_trials=1)


def test_run_file_space_parses_and_suggests():
    hp_space = search_space_from_config(
        {
            "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
            "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.2, "step": 0.05},
            "num_train_epochs": {"type": "int", "low": 1, "high": 4},
            "lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine"]},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = hp_space(study.ask())
    assert list(values) == ["learning_rate", "weight_decay", "num_train_epochs", "lr_scheduler_type"]
    assert 1e-5 <= values["learning_rate"] <= 1e-3 and round(values["weight_decay"] / 0.05, 9).is_integer()
    assert values["num_train_epochs"] in range(1, 5) and values["lr_scheduler_type"] in ("linear", "cosine")


@pytest.mark.parametrize(
    "section, message",
    [
        (
            {"learnig_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3}},
            "search.learnig_rate is not a TrainingArguments field (did you mean 'learning_rate'?)",
        ),
        ({"learning_rate": 3e-4}, "search.learning_rate=0.0003 must be a mapping with a type"),
        ({"learning_rate": {"type": "logunifrom", "low": 1e-5, "high": 1e-3}}, "(did you mean 'loguniform'?)"),
        ({"learning_rate": {"type": "loguniform", "low": 1e-5}}, "search.learning_rate (type loguniform) needs 'high'"),
        ({"learning_rate": {"type": "loguniform", "low": 0, "high": 1e-3}}, "must be > 0 on a log scale"),
        ({"seed": {"type": "int", "low": 5, "high": 1}}, "search.seed: low=5 must be below high=1"),
        ({"seed": {"type": "int", "low": 1, "high": 5, "choices": [1]}}, "got an unknown key 'choices'"),
        ({"optim": {"type": "categorical", "choices": []}}, "search.optim.choices=[] must be a non-empty list"),
        ({}, "the search section must map TrainingArguments fields to specs"),
    ],
)
def test_run_file_space_rejects_bad_specs(section, message):
    with pytest.raises(ConfigError) as e:
        search_space_from_config(section)
    assert message in str(e.value) and "\n" not in str(e.value)


# the example run file, shrunk so the test takes seconds (same code path, smaller numbers)
SMALL = [
    "--model.vocab_size",
    "300",
    "--data.num_samples",
    "30",
    "--data.max_length",
    "32",
    "--training.max_steps",
    "4",
    "--training.eval_steps",
    "2",
    "--training.logging_steps",
    "2",
]


def test_example_run_file_searches_and_resumes(tmp_path, monkeypatch, capsys):
    example = Path(__file__).parents[1] / "examples" / "search.yaml"
    monkeypatch.chdir(tmp_path)
    best = run_search_from_config(example, [*SMALL, "--training.output_dir", "s"], n_trials=2)
    out = capsys.readouterr().out
    assert "trial  state     objective" in out and "learning_rate" in out and "weight_decay" in out
    assert sorted(p.name for p in (tmp_path / "s").glob("trial-*")) == ["trial-0", "trial-1"]
    assert set(best.hyperparameters) == {"learning_rate", "weight_decay", "per_device_train_batch_size"}
    # the saved run file holds the search section: running it again resumes the same study
    again = run_search_from_config(tmp_path / "s" / "config.yaml", SMALL, n_trials=3)
    assert len(again.run_summary.trials) == 3


def test_run_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  learning_rat: 1.0e-3\nsearch:\n  seed: {type: int, low: 1, high: 3}\n")
    with pytest.raises(ConfigError, match=rf"unknown key 'training.learning_rat' in '{bad}'"):
        run_search_from_config(bad, n_trials=1)


def test_search_command_line(tmp_path, monkeypatch, capsys):
    from trainformers.cli import main

    example = Path(__file__).parents[1] / "examples" / "search.yaml"
    monkeypatch.chdir(tmp_path)
    assert main(["search", str(example), "--n-trials", "2", *SMALL, "--training.output_dir", "s"]) == 0
    assert "best trial" in capsys.readouterr().out and (tmp_path / "s" / "trial-1" / "log.jsonl").is_file()
    assert main(["search", str(example), "--n-trials=1", "--training.learning_rat", "1"]) == 2
    assert "did you mean 'training.learning_rate'" in capsys.readouterr().err
