"""HF scripts' first lines run on our `TrainingArguments`: `HfArgumentParser` (command line, JSON file,
dict, older spellings) and the process questions the example scripts ask; side by side with
transformers' own class. Also the fields those scripts may set: NEFTune, SIGTERM checkpoints,
per-batch eval outputs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import warnings

import numpy as np
import pytest
import torch
import transformers
from conftest import PadCollator, lm_rows, make_args, read_losses, tiny_llama, weights
from transformers import HfArgumentParser

from trainformers import Trainer, TrainerCallback, TrainingArguments
from trainformers.neftune import input_embeddings, neftune_noise

CLASSES = {"hf": transformers.TrainingArguments, "ours": TrainingArguments}


@dataclasses.dataclass
class ModelArguments:  # the shape of examples/pytorch/*/run_*.py
    model_name_or_path: str = dataclasses.field(default="tiny", metadata={"help": "model"})
    cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "cache"})


@dataclasses.dataclass
class DataTrainingArguments:
    max_seq_length: int = dataclasses.field(default=128, metadata={"help": "length"})
    overwrite_cache: bool = dataclasses.field(default=False, metadata={"help": "overwrite"})


COMMAND_LINE = [
    "--model_name_or_path", "m", "--max_seq_length", "64", "--do_train", "--do_eval",
    "--learning_rate", "3e-4", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
    "--num_train_epochs", "2", "--logging_steps", "10", "--eval_strategy", "steps", "--eval_steps", "20",
    "--save_steps", "40", "--warmup_steps", "5", "--weight_decay", "0.01", "--lr_scheduler_type", "cosine",
    "--report_to", "none", "--seed", "7", "--no_remove_unused_columns", "--max_grad_norm", "0.5",
    "--label_names", "labels", "--optim", "adamw_torch",
]  # fmt: skip
SHARED = [
    "do_train", "do_eval", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
    "num_train_epochs", "logging_steps", "eval_strategy", "eval_steps", "save_steps", "warmup_steps",
    "weight_decay", "lr_scheduler_type", "seed", "remove_unused_columns", "max_grad_norm", "label_names", "optim",
]  # fmt: skip


def _plain(value):
    return getattr(value, "value", value)  # HF's enums compare as their strings


@pytest.mark.parametrize("kind", ["command line", "json", "dict"])
def test_hf_argument_parser_reads_our_arguments_as_it_reads_transformers(tmp_path, kind):
    parsed = {}
    for name, cls in CLASSES.items():
        parser = HfArgumentParser((ModelArguments, DataTrainingArguments, cls))
        out = str(tmp_path / name)
        if kind == "command line":
            model, data, args = parser.parse_args_into_dataclasses(["--output_dir", out, *COMMAND_LINE])
        else:
            keys = dict(zip(COMMAND_LINE[::2], COMMAND_LINE[1::2]))
            values = {"output_dir": out, "learning_rate": 3e-4, "max_seq_length": 64, "do_train": True, "seed": 7}
            values.update(eval_strategy="steps", eval_steps=20, report_to="none", label_names=["labels"])
            if kind == "json":
                path = tmp_path / f"{name}.json"
                path.write_text(json.dumps(values))
                model, data, args = parser.parse_json_file(str(path))
            else:
                model, data, args = parser.parse_dict(values)
            assert keys  # the same settings, spelled as a file or dict
        assert isinstance(args, cls) and data.max_seq_length == 64
        parsed[name] = args
    names = SHARED if kind == "command line" else ["learning_rate", "do_train", "seed", "eval_strategy", "eval_steps"]
    for field in names:
        assert _plain(getattr(parsed["ours"], field)) == _plain(getattr(parsed["hf"], field)), field


def test_older_spellings_parse_from_a_command_line(tmp_path):
    parser = HfArgumentParser((TrainingArguments,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (args,) = parser.parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--evaluation_strategy", "epoch", "--warmup_ratio", "0.1"]
        )
    assert args.eval_strategy == "epoch" and args.warmup_steps == 0.1
    assert any("evaluation_strategy" in str(w.message) for w in caught)


def test_process_questions_answer_as_transformers_does_in_one_process(tmp_path):
    ours = TrainingArguments(output_dir=str(tmp_path / "a"), report_to="none")
    theirs = transformers.TrainingArguments(output_dir=str(tmp_path / "b"), report_to="none")
    for name in ("should_log", "should_save", "process_index", "local_process_index", "world_size", "n_gpu"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.parallel_mode == theirs.parallel_mode and ours.device.type == theirs.device.type
    assert ours.get_process_log_level() == theirs.get_process_log_level()
    with ours.main_process_first(desc="tokenize"):
        pass


def test_refused_debug_and_save_on_each_node_with_fsdp(tmp_path):
    from trainformers import ConfigError

    with pytest.raises(ConfigError, match="debug="):
        TrainingArguments(output_dir=str(tmp_path), debug="underflow_overflow")
    with pytest.raises(ConfigError, match="save_on_each_node=True with fsdp"):
        TrainingArguments(output_dir=str(tmp_path), save_on_each_node=True, fsdp="full_shard")


def test_save_on_each_node_makes_each_machines_main_process_save(tmp_path, monkeypatch):
    # as transformers' `should_save`: rank 0 only, or local rank 0 on every machine
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert not TrainingArguments(output_dir=str(tmp_path)).should_save
    assert TrainingArguments(output_dir=str(tmp_path), save_on_each_node=True).should_save
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not TrainingArguments(output_dir=str(tmp_path), save_on_each_node=True).should_save


# ---- NEFTune ------------------------------------------------------------------------------------


def test_neftune_adds_bounded_noise_in_training_only_and_leaves_no_hook():
    model = tiny_llama()
    ids = torch.randint(3, 64, (2, 9))
    embed = input_embeddings(model)
    plain = embed(ids)
    alpha = 5.0
    with neftune_noise([model], alpha):
        model.train()
        noisy = embed(ids)
        model.eval()
        evaluated = embed(ids)
    bound = alpha / np.sqrt(ids.shape[1] * plain.shape[-1])
    difference = (noisy - plain).abs()
    assert 0 < difference.max().item() <= bound + 1e-6 and difference.mean().item() > bound / 4
    assert torch.equal(evaluated, plain)
    model.train()
    assert torch.equal(embed(ids), plain)  # the hook is gone


def test_neftune_changes_training_and_only_while_training(tmp_path):
    def run(name, alpha):
        trainer = Trainer(
            model=tiny_llama(),
            args=make_args(tmp_path / name, max_steps=3, neftune_noise_alpha=alpha),
            train_dataset=lm_rows(16),
            data_collator=PadCollator(),
        )
        trainer.train()
        return trainer

    plain, noisy = run("plain", None), run("noisy", 5.0)
    assert read_losses(tmp_path / "plain" / "run") != read_losses(tmp_path / "noisy" / "run")
    assert not input_embeddings(noisy.model)._forward_hooks  # removed when train() returned
    assert weights(plain.model).keys() == weights(noisy.model).keys()


# ---- SIGTERM checkpoints ------------------------------------------------------------------------


class _Preempt(TrainerCallback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_a_checkpoint_stops_and_the_run_resumes_exactly(tmp_path):
    def trainer(out, callbacks=()):
        return Trainer(
            model=tiny_llama(),
            args=make_args(tmp_path / out, max_steps=6, enable_jit_checkpoint=True),
            train_dataset=lm_rows(32),
            data_collator=PadCollator(),
            callbacks=list(callbacks),
        )

    full = trainer("full")
    full.train()
    before = signal.getsignal(signal.SIGTERM)
    cut = trainer("cut", [_Preempt(2)])
    out = cut.train()
    assert out.global_step == 2 and signal.getsignal(signal.SIGTERM) is before
    assert (tmp_path / "cut" / "run" / "checkpoint-2" / "trainer_state.json").is_file()
    resumed = trainer("cut")
    resumed.train(resume_from_checkpoint=True)
    assert read_losses(tmp_path / "cut" / "run") == read_losses(tmp_path / "full" / "run")
    for key, value in weights(full.model).items():
        assert torch.equal(value, weights(resumed.model)[key]), key


# ---- per-batch eval outputs ----------------------------------------------------------------------


def test_eval_do_concat_batches_false_hands_metrics_the_batches(tmp_path):
    seen = {}

    def metrics(prediction):
        seen["predictions"] = prediction.predictions
        return {"n": len(prediction.predictions)}

    trainer = Trainer(
        model=tiny_llama(),
        args=make_args(tmp_path, eval_do_concat_batches=False, per_device_eval_batch_size=4),
        eval_dataset=lm_rows(10),
        data_collator=PadCollator(),
        compute_metrics=metrics,
    )
    result = trainer.evaluate()
    assert isinstance(seen["predictions"], list) and [len(b) for b in seen["predictions"]] == [4, 4, 2]
    assert result["eval_n"] == 3
