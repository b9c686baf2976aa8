"""The seed layout: a run file with one `training:` section in the keys of the framework our users
migrate from is mapped key by key onto ours, each mapping said in one line; hints never cross sections."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from trainformers.cli import main
from trainformers.config import load_config
from trainformers.config.seed_layout import SEED_KEYS
from trainformers.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

SEED_RUN = {
    "dataset_name": "corpus.jsonl",
    "dataset_subset": "en",
    "dataset_split": "train[:90%]",
    "text_field": ["title", "body"],
    "training_mode": "pretraining",
    "max_length": 256,
    "batch_size": 4,
    "optimizer": "adamw",
    "scheduler": "cosine",
    "mixed_precision": "bf16",
    "save_precision": "fp16",
    "base_model_lr": 1e-4,
    "lora_lr": 3e-4,
    "memory_lr": 1e-3,
    "log_to_wandb": True,
    "save_best_model": True,
    "early_stopping": True,
    "early_stopping_patience": 2,
    "early_stopping_threshold": 0.01,
    "eval_strategy": "steps",
    "output_dir": "runs/seeded",
}


def write(tmp_path, layout, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(layout), encoding="utf-8")
    return str(path)


def test_every_seed_key_becomes_ours_in_one_line_each(tmp_path):
    config = load_config(write(tmp_path, {"training": SEED_RUN, "peft": {"r": 4}}))
    data, training = config.data, config.training
    assert (data.source, data.subset, data.split) == ("corpus.jsonl", "en", "train[:90%]")
    assert (data.text_field, data.training_mode, data.max_length) == (["title", "body"], "pretraining", 256)
    assert (training.per_device_train_batch_size, training.optim, training.lr_scheduler_type) == (
        4,
        "adamw_torch",
        "cosine",
    )
    assert training.bf16 and not training.fp16 and config.model.save_dtype == "float16"
    assert training.learning_rate == 1e-4
    assert training.param_groups == [{"pattern": "lora_", "lr": 3e-4}, {"pattern": "memory", "lr": 1e-3}]
    assert training.report_to == ["wandb"] and training.load_best_model_at_end
    assert config.early_stopping == (2, 0.01) and training.metric_for_best_model == "loss"
    seed_keys = set(SEED_KEYS) | {"early_stopping"}
    assert len(config.mapped) == len(seed_keys & set(SEED_RUN))  # one line per key that maps to something
    assert all(line.startswith("training.") and " -> " in line for line in config.mapped)

    saved = config.to_yaml()  # config.yaml holds our keys only, and reads back to the same run
    assert not set(SEED_KEYS) & set(yaml.safe_load(saved)["training"])
    again = load_config(write(tmp_path, yaml.safe_load(saved), "saved.yaml"))
    assert again == config and again.mapped == []


def test_the_command_line_overrides_a_seed_key_and_one_layer_cannot_say_both(tmp_path):
    path = write(tmp_path, {"training": {"dataset_name": "a.jsonl", "batch_size": 4}})
    config = load_config(path, ["--data.source", "b.jsonl", "--per_device_train_batch_size", "2"])
    assert config.data.source == "b.jsonl" and config.training.per_device_train_batch_size == 2
    both = write(tmp_path, {"training": {"dataset_name": "a.jsonl"}, "data": {"source": "b.jsonl"}}, "both.yaml")
    with pytest.raises(ConfigError, match=r"Can't set both training.dataset_name and data.source; drop one"):
        load_config(both)


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"mixed_precision": "fp8"}, "training.mixed_precision='fp8' is not supported"),
        ({"save_precision": "int8"}, "training.save_precision='int8' is not supported"),
        ({"lora_lr": 1e-3}, "training.lora_lr sets the learning rate of LoRA adapters, but the run has no peft"),
        (
            {"base_model_lr": 1e-3, "learning_rate": 2e-3},
            "Can't set both training.base_model_lr and training.learning_rate",
        ),
        ({"early_stopping": True}, "training.eval_strategy is 'no'"),
        ({"batch_size": "four"}, "training.per_device_train_batch_size must be an integer, got 'four'"),
    ],
)
def test_bad_seed_values_are_one_line(tmp_path, training, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(write(tmp_path, {"training": training}))


def test_early_stopping_switch(tmp_path):
    on = load_config(write(tmp_path, {"training": {"early_stopping": True, "eval_strategy": "epoch"}}))
    assert on.early_stopping == (1, 0.0)  # EarlyStoppingCallback's default patience
    off = load_config(write(tmp_path, {"training": {"early_stopping": False, "early_stopping_patience": 5}}))
    assert off.early_stopping is None and "no early stopping" in off.mapped[0]


@pytest.mark.parametrize(
    ("layout", "hint"),
    [
        ({"training": {"packing": False}}, "unknown key 'training.packing' in {path}; write it as data.packing"),
        ({"training": {"model_name_or_path": "gpt2"}}, "write it as model.name_or_path"),
        ({"data": {"learning_rate": 1e-3}}, "write it as training.learning_rate"),
        ({"model": {"dataset_name": "x"}}, "write it as data.source"),
        ({"training": {"max_seq_length": 512}}, "write it as data.max_length"),
        ({"training": {"save_best_modle": True}}, "(did you mean 'training.save_best_model'?)"),
    ],
)
def test_hints_point_to_the_section_that_has_the_key(tmp_path, layout, hint):
    path = write(tmp_path, layout)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert hint.format(path=f"'{path}'") in str(err.value)


def test_the_seed_example_runs_and_says_what_each_key_became(tmp_path, capsys, monkeypatch):
    from safetensors import safe_open

    monkeypatch.chdir(ROOT)  # the example names its data file relative to the repository
    out = tmp_path / "seeded"
    small = ["--model.hidden_size", "32", "--model.num_layers", "1", "--model.vocab_size", "300"]
    steps = ["--max_steps", "4", "--eval_steps", "2", "--save_steps", "2", "--output_dir", str(out)]
    code = main(["train", "examples/seed_layout.yaml", *small, *steps, "--model.sample_max_new_tokens", "2"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "# mapped training.dataset_name='examples/data/python_help.jsonl' -> data.source=" in printed.out
    assert "# mapped training.save_precision='bf16' -> model.save_dtype='bfloat16'" in printed.out
    with safe_open(str(out / "final" / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype.itemsize for k in weights.keys()} == {2}  # save_precision: bf16
    assert json.loads((out / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    saved = load_config(str(out / "config.yaml"))
    assert saved.data.source == "examples/data/python_help.jsonl" and saved.model.save_dtype == "bfloat16"
    assert saved.early_stopping == (3, 0.0) and dataclasses.asdict(saved.training)["load_best_model_at_end"]
