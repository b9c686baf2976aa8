"""The run-file conventions users bring from HfArgumentParser and TRL: `--config FILE`, flat
`--key value` training overrides, and early stopping asked for in the run file."""

from __future__ import annotations

import json

import pytest
import yaml
from test_cli_distributed import RUN

from trainformers.cli import main


def _run_file(tmp_path, **training):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**RUN, "training": {**RUN["training"], **training}}))
    return path


def _steps(run) -> list[int]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def test_config_option_flat_overrides_and_early_stopping_from_the_run_file(tmp_path, capsys):
    path = _run_file(
        tmp_path,
        output_dir=str(tmp_path / "run"),
        max_steps=8,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        save_steps=100,
        early_stopping_patience=1,
        early_stopping_threshold=100.0,  # no evaluation can improve by that much: the second one stops the run
    )
    code = main(["train", "--config", str(path), "--learning_rate", "1e-3", "--seed=3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert _steps(tmp_path / "run") == [2, 4]  # stopped after the evaluation at step 4, not at 8
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["training"]
    assert saved["learning_rate"] == 1e-3 and saved["seed"] == 3
    assert saved["early_stopping_patience"] == 1 and saved["metric_for_best_model"] == "loss"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config"], "--config needs a value"),
        (["RUN", "--config", "RUN"], "the run file is given twice"),
        (["--config", "RUN", "--hidden_size", "8"], "--hidden_size is not a training field; write --model.hidden_size"),
    ],
)
def test_bad_conventions_are_one_line(tmp_path, capsys, argv, message):
    path = str(_run_file(tmp_path, output_dir=str(tmp_path / "run")))
    code = main(["train", *[path if a == "RUN" else a for a in argv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_overwrite_output_dir_clears_the_old_tracker_logs_inside_it_only(tmp_path):
    from conftest import PadCollator, lm_rows, make_args, tiny_llama

    from trainformers import Trainer
    from trainformers.checkpoint import clear_run

    old = tmp_path / "run" / "runs" / "old_run"  # make_args' output_dir is tmp_path/run
    old.mkdir(parents=True)
    (old / "events.out.tfevents.1").write_text("old")
    elsewhere = tmp_path / "logs"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep")
    clear_run(tmp_path / "run", elsewhere)  # a logging_dir outside output_dir is never removed
    assert (elsewhere / "keep").is_file() and old.is_dir()
    args = make_args(tmp_path, overwrite_output_dir=True, max_steps=1)
    Trainer(tiny_llama(), args, data_collator=PadCollator(), train_dataset=lm_rows(4)).train()
    assert not old.exists()  # TensorBoard would have shown both runs' curves interleaved


def test_the_header_lists_what_differs_and_verbose_prints_everything(tmp_path, capsys):
    path = _run_file(tmp_path, output_dir=str(tmp_path / "run"), max_steps=2, save_steps=100, eval_steps=100)
    assert main(["train", str(path), "--learning_rate", "1e-3"]) == 0
    out = capsys.readouterr().out
    header = out[: out.index("model: ")].splitlines()
    assert header[0].startswith(f"# resolved configuration of {path}: ") and "--verbose" in header[0]
    assert any(line.split() == ["training.learning_rate", "0.001"] for line in header), header
    assert len(header) < 25 and "fsdp" not in out.split("model: ")[0]  # defaults are not listed
    assert main(["train", str(path), "--training.output_dir", str(tmp_path / "v"), "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "fsdp: []" in out and "lr_scheduler_type: linear" in out  # every setting, defaults too
