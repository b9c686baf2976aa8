"""Every bad input is one line naming the field, the value and the fix: a `TrainformersError` in Python,
exit status 2 and no traceback from the CLI (issue 20, item 8). Valid Hugging Face inputs still pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import PadCollator, lm_rows, make_args, tiny_llama
from test_cli import SMALL

from trainformers import Trainer, TrainingArguments
from trainformers.cli import main
from trainformers.errors import CheckpointError, ConfigError, DataError

# ---- the CLI: exit 2, one line on stderr, no traceback ---------------------------------------------


def train(capfd, *argv: str) -> tuple[int, str]:
    code = main(["train", *SMALL, "--training.max_steps", "1", "--model.sample_prompt", "''", *argv])
    return code, capfd.readouterr().err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# file name -> bytes written to it
DATA_FILES = {
    "empty.jsonl": b"",
    "broken.jsonl": b'{"text": "a"}\n{"text": broken\n',
    "garbage.jsonl": bytes(range(128, 256)) * 8,
    "garbage.txt": b"\x00\xff\xfe binary \x81\x82",
    "latin1.txt": "Caf\u00e9 na\u00efve.\n\nMore text.\n".encode("latin-1"),
    "latin1.jsonl": '{"text": "caf\u00e9"}\n'.encode("latin-1"),
    "fake.parquet": b"not a parquet file\n",
    "ragged.csv": b"text,n\nhello,1\nworld,2,3\n",
}


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("empty.jsonl", "data.source file 'empty.jsonl' is empty (0 bytes); fill it"),
        ("broken.jsonl", "data.source file 'broken.jsonl' is not valid JSON: line 2, column 10"),
        ("garbage.jsonl", "data.source file 'garbage.jsonl' is not UTF-8 text (byte 0x80 on line 1); save it as UTF-8"),
        ("garbage.txt", "data.source file 'garbage.txt' is not UTF-8 text (byte 0xff on line 1)"),
        ("latin1.txt", "data.source file 'latin1.txt' is not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8"),
        ("latin1.jsonl", "data.source file 'latin1.jsonl' is not UTF-8 text (byte 0xe9 on line 1)"),
        ("fake.parquet", "data.source file 'fake.parquet' cannot be read (Parquet magic bytes not found"),
        ("ragged.csv", "data.source file 'ragged.csv' cannot be read (Error tokenizing data"),
    ],
)
def test_unreadable_data_file(tmp_path, capfd, monkeypatch, name, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(DATA_FILES[name])
    code, err = train(capfd, "--data.source", name)
    assert code == 2
    assert fragment in one_error_line(err)


def test_directory_without_data_files(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes" / "b.md").write_text("# b\n")
    code, err = train(capfd, "--data.source", "notes")
    assert code == 2
    assert "data.source 'notes' is a directory without data files (it holds a.py, b.md)" in one_error_line(err)


def test_bad_line_is_found_among_several_files(tmp_path):
    from trainformers.data import load_source

    for name, text in (("a.jsonl", '{"text": "a"}\n'), ("b.jsonl", '{"text": "b"}\n\n{"text": "c",}\n')):
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError) as info:
        load_source(str(tmp_path / "*.jsonl"))
    assert "b.jsonl' is not valid JSON: line 3, column 14" in str(info.value) and "\n" not in str(info.value)


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import; never reach for the network


def model_paths(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    (tmp_path / "run" / "final" / "tokenizer.json").write_text("{}")
    return {
        "missing": ("./nowhere", "model.name_or_path='./nowhere' not found"),
        "a file": ("weights.bin", "model.name_or_path='weights.bin' is a file; give the directory"),
        "no config.json": ("run", "model.name_or_path='run' is a directory without a"),
        "offline Hub name": ("someone/model", "model.name_or_path='someone/model' is neither a local directory"),
    }


@pytest.mark.parametrize("case", ["missing", "a file", "no config.json", "offline Hub name"])
def test_bad_model_path(tmp_path, capfd, monkeypatch, offline, case):
    """The tokenizer loads first (run.py, `load_tokenizer`): its error names model.name_or_path too."""
    monkeypatch.chdir(tmp_path)
    path, fragment = model_paths(tmp_path)[case]
    code, err = train(capfd, "--model.name_or_path", path)
    assert code == 2
    line = one_error_line(err)
    assert fragment in line
    if case == "no config.json":
        assert "(did you mean 'run/final'?)" in line


@pytest.mark.parametrize("case", ["missing", "a file", "no config.json", "offline Hub name"])
def test_load_pretrained_and_load_tokenizer_name_the_path(tmp_path, monkeypatch, offline, case):
    from trainformers.models.loading import load_pretrained, load_tokenizer

    monkeypatch.chdir(tmp_path)
    path, fragment = model_paths(tmp_path)[case]
    for load, field in ((load_pretrained, "model.name_or_path"), (load_tokenizer, "model.tokenizer")):
        with pytest.raises(ConfigError) as info:
            load(path)
        assert fragment.replace("model.name_or_path", field) in str(info.value) and "\n" not in str(info.value)


def test_model_directory_that_fails_to_load_is_a_checkpoint_error(tmp_path):
    from trainformers.models.loading import load_pretrained

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # no weights
    with pytest.raises(CheckpointError, match=r"model.name_or_path='.*' holds a model that can't be loaded"):
        load_pretrained(str(tmp_path))


def test_bad_model_path_with_a_tokenizer_of_its_own(tmp_path, capfd, monkeypatch):
    """With model.tokenizer set, the model itself is what fails (`load_pretrained`)."""
    from trainformers.data import train_tokenizer

    monkeypatch.chdir(tmp_path)
    train_tokenizer(["some text to learn from"] * 20, 300, tmp_path / "tok")
    code, err = train(capfd, "--model.name_or_path", "./nowhere", "--model.tokenizer", "tok")
    assert code == 2
    assert "model.name_or_path='./nowhere' not found" in one_error_line(err)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--training.seed", "-1"], "seed=-1 must be an integer in 0..4294967295"),
        (["--data.seed", "-1"], "data.seed=-1 must be an integer in 0..4294967295"),
        (
            ["--training.optim_args", "bogus=1"],
            "training.optim_args key 'bogus' is not an argument of AdamW (optim 'adamw_torch_fused'); it takes lr, ",
        ),
        (
            ["--training.optim", "sgd", "--training.optim_args", "momentom=0.9"],
            "key 'momentom' is not an argument of SGD (optim 'sgd') (did you mean 'momentum'?)",
        ),
    ],
)
def test_bad_training_value(tmp_path, capfd, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    code, err = train(capfd, *argv)
    assert code == 2
    assert fragment in one_error_line(err)


def test_run_file_that_is_not_utf8(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_bytes("training:\n  run_name: caf\u00e9\n".encode("latin-1"))
    code = main(["train", "run.yaml"])
    assert code == 2
    line = one_error_line(capfd.readouterr().err)
    assert "config file 'run.yaml' is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8" in line


@pytest.mark.slow
def test_the_command_prints_no_traceback(tmp_path):
    """The installed entry point, in a process of its own: what a user sees."""
    (tmp_path / "rows.jsonl").write_text('{"text": "a"}\n{"text": \n')
    done = subprocess.run(
        [sys.executable, "-m", "trainformers.cli", "train", "--data.source", "rows.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: data.source file 'rows.jsonl' is not valid JSON: line 2, column 10: Expecting value; "
        "fix it (write one JSON object per line)"
    ]


# ---- TrainingArguments in Python: types from the annotations, then ranges ----------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_train_epochs": "3"}, "num_train_epochs must be a number, got '3'; pass the number 3, not a string"),
        ({"max_steps": "ten"}, "max_steps must be an integer, got 'ten'"),
        ({"max_steps": 2.5}, "max_steps must be an integer, got 2.5"),
        ({"max_grad_norm": "x"}, "max_grad_norm must be a number, got 'x'"),
        ({"seed": "x"}, "seed must be an integer, got 'x'"),
        ({"seed": True}, "seed must be an integer, got True"),
        ({"output_dir": 123}, "output_dir must be a string, got 123"),
        ({"bf16": "yes"}, "bf16 must be true or false, got 'yes'"),
        ({"warmup_ratio": "0.1"}, "warmup_ratio must be a number, got '0.1'; pass the number 0.1"),
        ({"adam_beta1": 2.0}, "adam_beta1=2.0 must be in [0, 1)"),
        ({"adam_beta2": -0.1}, "adam_beta2=-0.1 must be in [0, 1)"),
        ({"adam_epsilon": 0.0}, "adam_epsilon=0.0 must be a number > 0"),
        ({"save_total_limit": -3}, "save_total_limit=-3 must be >= 1"),
        ({"max_steps": -5}, "max_steps=-5 must be a number of steps, or -1"),
        ({"seed": -1}, "seed=-1 must be an integer in 0..4294967295"),
        ({"seed": 2**32}, "seed=4294967296 must be an integer in 0..4294967295"),
        ({"data_seed": -2}, "data_seed=-2 must be an integer in 0..4294967295"),
    ],
)
def test_training_arguments_type_and_range(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        TrainingArguments(**{"output_dir": "out", **kwargs})
    message = str(info.value)
    assert fragment in message and "\n" not in message
    name = next(iter(kwargs))
    assert name in message and repr(kwargs[name]).strip("'") in message


def test_training_arguments_take_what_transformers_takes(tmp_path):
    import numpy as np

    args = TrainingArguments(
        output_dir=tmp_path,  # a Path
        max_steps=1e4,  # a whole float: an int, as `max_steps: 1e4` in a run file
        seed=np.int64(3),
        num_train_epochs=np.float32(2),
        learning_rate="3e-4",  # str is in its annotation ('auto'); parsed, as before
        resume_from_checkpoint=True,
        save_total_limit=0,  # transformers: 0 keeps every checkpoint, as None does
        data_seed=2**32 - 1,
    )
    assert args.max_steps == 10_000 and type(args.max_steps) is int and type(args.seed) is int
    assert args.num_train_epochs == 2.0 and args.learning_rate == 3e-4 and args.output_dir == str(tmp_path)


# ---- Trainer(...): arguments of the wrong kind ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"model": object()}, ConfigError, "Trainer(model=<object object at "),
        ({"model": "gpt2"}, ConfigError, "Trainer(model='gpt2'): type str is not a torch.nn.Module; load it first"),
        ({"train_dataset": ["text"]}, DataError, "train_dataset[0]='text': type str is not a row of features"),
        ({"train_dataset": "rows.jsonl"}, DataError, "train_dataset='rows.jsonl' is a path, not a dataset"),
        ({"eval_dataset": {"text": ["a", "b"]}}, DataError, "eval_dataset['text'][0]='a': type str is not a row"),
        ({"optimizers": (object(), None)}, ConfigError, "Trainer(optimizers=(<object object at "),
        ({"optimizers": "adamw"}, ConfigError, "Trainer(optimizers='adamw') must be a pair (optimizer, lr_scheduler)"),
    ],
)
def test_trainer_arguments_of_the_wrong_kind(tmp_path, kwargs, error, fragment):
    base = {"model": tiny_llama(), "args": make_args(tmp_path), "train_dataset": lm_rows(8)}
    with pytest.raises(error) as info:
        Trainer(**{**base, **kwargs})
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_trainer_takes_what_transformers_takes(tmp_path):
    from datasets import DatasetDict
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import Dataset as TorchDataset

    class Rows(TorchDataset):
        def __init__(self, rows):
            self.rows = list(rows)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    rows = lm_rows(8)
    model = tiny_llama()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    args = make_args(tmp_path)
    for kwargs in (
        {"model": model, "train_dataset": Rows(rows), "optimizers": (optimizer, scheduler)},
        {"model": model, "train_dataset": rows.to_iterable_dataset(), "optimizers": (optimizer, None)},
        {"model": model, "train_dataset": rows.to_list(), "eval_dataset": DatasetDict({"a": rows, "b": rows})},
        {"model_init": tiny_llama, "train_dataset": rows, "eval_dataset": {"x": rows.to_list()}},
        {"model": get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"])), "train_dataset": rows},
        {"model": model, "train_dataset": ["raw text"], "data_collator": lambda texts: texts},  # its own collator
    ):
        Trainer(args=args, data_collator=kwargs.pop("data_collator", PadCollator()), **kwargs)
