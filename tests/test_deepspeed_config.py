"""Tests for trainformers.deepspeed_config: "auto" filled from TrainingArguments, contradictions refused."""

from __future__ import annotations

import copy
import json

import pytest

from trainformers import TrainingArguments
from trainformers.deepspeed_config import deepspeed_builds, resolve_deepspeed_config, zero_stage
from trainformers.errors import ConfigError

# An HF-style ZeRO-3 config with every key the trainer fills left "auto" (transformers' docs example).
AUTO_CONFIG = {
    "fp16": {"enabled": "auto"},
    "bf16": {"enabled": "auto"},
    "optimizer": {
        "type": "AdamW",
        "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
    },
    "scheduler": {
        "type": "WarmupDecayLR",
        "params": {
            "warmup_min_lr": "auto",
            "warmup_max_lr": "auto",
            "warmup_num_steps": "auto",
            "total_num_steps": "auto",
        },
    },
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_gather_16bit_weights_on_model_save": True,
    },
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False,
}

# The same config with the values the arguments below give, written out by hand:
# micro 4 x accumulation 2 x 2 ranks = 16; hidden 32: 32*32 = 1024, int(0.9*1024) = 921, 10*32 = 320.
# Checked against transformers: HfTrainerDeepSpeedConfig(AUTO_CONFIG) with trainer_config_process(args) and
# trainer_config_finalize(args, a model whose config.hidden_size is 32, 100), the same argument values in
# transformers.TrainingArguments with world_size patched to 2 (transformers 5.24.0, deepspeed 0.19.8 in a
# scratch venv), gives exactly FILLED.
FILLED = {
    "fp16": {"enabled": False},
    "bf16": {"enabled": True},
    "optimizer": {
        "type": "AdamW",
        "params": {"lr": 3e-4, "betas": [0.85, 0.95], "eps": 1e-6, "weight_decay": 0.1},
    },
    "scheduler": {
        "type": "WarmupDecayLR",
        "params": {"warmup_min_lr": 0, "warmup_max_lr": 3e-4, "warmup_num_steps": 10, "total_num_steps": 100},
    },
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "reduce_bucket_size": 1024,
        "stage3_prefetch_bucket_size": 921,
        "stage3_param_persistence_threshold": 320,
        "stage3_gather_16bit_weights_on_model_save": True,
    },
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 0.5,
    "train_batch_size": 16,
    "train_micro_batch_size_per_gpu": 4,
    "wall_clock_breakdown": False,
}


@pytest.fixture
def args(tmp_path):
    return TrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=3e-4,
        adam_beta1=0.85,
        adam_beta2=0.95,
        adam_epsilon=1e-6,
        weight_decay=0.1,
        max_grad_norm=0.5,
        bf16=True,
        warmup_steps=0.1,
    )


def resolve(config, args, **overrides):
    kwargs = {"world_size": 2, "num_training_steps": 100, "warmup_steps": args.get_warmup_steps(100)}
    kwargs["hidden_size"] = 32
    kwargs.update(overrides)
    return resolve_deepspeed_config(config, args, **kwargs)


def test_every_auto_is_filled_with_the_argument(args):
    assert resolve(AUTO_CONFIG, args) == FILLED


def test_a_json_file_resolves_as_the_dict_does(args, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(AUTO_CONFIG))
    assert resolve(str(path), args) == FILLED
    assert resolve(path, args) == FILLED


def test_the_users_dict_is_never_modified(args):
    config = copy.deepcopy(AUTO_CONFIG)
    resolved = resolve(config, args)
    assert config == AUTO_CONFIG
    resolved["zero_optimization"]["stage"] = 0  # the result shares nothing with the input either
    assert config["zero_optimization"]["stage"] == 3


def test_a_config_that_agrees_passes_unchanged(args):
    assert resolve(FILLED, args) == FILLED
    assert resolve(resolve(AUTO_CONFIG, args), args) == FILLED  # resolving twice changes nothing


def test_batch_keys_and_clipping_are_written_when_absent(tmp_path):
    # DeepSpeed would take 1 accumulation step and no clipping; the trainer does neither.
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=8, gradient_accumulation_steps=4
    )
    resolved = resolve({"zero_optimization": {"stage": 2}}, args, world_size=3, hidden_size=None)
    assert resolved == {
        "zero_optimization": {"stage": 2},
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 4,
        "train_batch_size": 96,
        "gradient_clipping": 1.0,
    }


def test_save_on_each_node_with_deepspeed_is_refused(tmp_path):
    # DeepSpeed writes its `latest` marker on global rank 0 only: machine 1's copy could never resume
    with pytest.raises(ConfigError, match="save_on_each_node=True with deepspeed"):
        TrainingArguments(
            output_dir=str(tmp_path), save_on_each_node=True, deepspeed={"zero_optimization": {"stage": 2}}
        )


def test_clipping_off_is_deepspeeds_zero(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", max_grad_norm=-1)
    resolved = resolve({"zero_optimization": {"stage": 1}, "gradient_clipping": "auto"}, args)
    assert resolved["gradient_clipping"] == 0.0
    assert resolve({"zero_optimization": {"stage": 1}, "gradient_clipping": 0}, args)["gradient_clipping"] == 0


def test_no_warmup_fills_one_step_as_deepspeed_requires(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    config = {
        "zero_optimization": {"stage": 2},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}},
    }
    assert resolve(config, args)["scheduler"]["params"]["warmup_num_steps"] == 1


def test_mismatches_are_one_line_naming_both_sides(args):
    config = copy.deepcopy(FILLED)
    config["train_micro_batch_size_per_gpu"] = 8
    config["optimizer"]["params"]["betas"] = [0.9, 0.999]
    config["fp16"]["enabled"] = True
    with pytest.raises(ConfigError) as err:
        resolve(config, args)
    message = str(err.value)
    assert "\n" not in message
    assert "deepspeed train_micro_batch_size_per_gpu=8 vs training.per_device_train_batch_size=4" in message
    assert "deepspeed optimizer.params.betas=[0.9, 0.999] vs training.adam_beta1,adam_beta2=[0.85, 0.95]" in message
    assert "deepspeed fp16.enabled=true vs training.fp16=false" in message
    assert 'set those DeepSpeed keys to "auto"' in message  # the fix
    assert "gradient_accumulation_steps=" not in message  # only the contradictions are listed


def test_train_batch_size_mismatch_shows_the_product(args):
    config = dict(FILLED, train_batch_size=8)
    with pytest.raises(ConfigError, match=r"deepspeed train_batch_size=8 vs .*\(4\*2\*2\)=16"):
        resolve(config, args)


def test_a_string_is_not_the_number_it_spells(args):
    config = dict(FILLED, gradient_accumulation_steps="2")
    with pytest.raises(ConfigError, match='deepspeed gradient_accumulation_steps="2" vs'):
        resolve(config, args)


def test_hidden_size_auto_without_a_hidden_size_is_refused(args):
    with pytest.raises(ConfigError) as err:
        resolve(AUTO_CONFIG, args, hidden_size=None)
    message = str(err.value)
    assert "\n" not in message
    assert "zero_optimization.reduce_bucket_size (the model has no hidden_size)" in message
    assert "zero_optimization.stage3_param_persistence_threshold" in message


def test_hidden_size_keys_the_user_set_need_no_hidden_size(args):
    config = copy.deepcopy(FILLED)
    config["zero_optimization"]["reduce_bucket_size"] = 5e8  # not checked: bucket sizes are the user's choice
    assert resolve(config, args, hidden_size=None)["zero_optimization"]["reduce_bucket_size"] == 5e8


def test_an_auto_the_trainer_cannot_fill_is_refused(args):
    config = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "auto"}}}
    with pytest.raises(ConfigError, match=r"zero_optimization\.offload_optimizer\.device \(trainformers has no value"):
        resolve(config, args)


def test_learning_rate_auto_must_be_resolved_first(args):
    args.learning_rate = "auto"
    with pytest.raises(ConfigError, match=r"optimizer\.params\.lr \(training\.learning_rate='auto'"):
        resolve(AUTO_CONFIG, args)


@pytest.mark.parametrize("stage", [4, -1, "auto", 2.0, True])
def test_a_stage_outside_0_to_3_is_refused(args, stage):
    with pytest.raises(ConfigError, match=r"zero_optimization\.stage=.* must be 0, 1, 2 or 3"):
        resolve({"zero_optimization": {"stage": stage}}, args)


def test_zero_stage():
    assert zero_stage({"zero_optimization": {"stage": 3}}) == 3
    assert zero_stage({"zero_optimization": {}}) == 0  # DeepSpeed's default
    assert zero_stage({}) == 0
    with pytest.raises(ConfigError, match="must be 0, 1, 2 or 3"):
        zero_stage({"zero_optimization": {"stage": 5}})
    with pytest.raises(ConfigError, match="must be a dict"):
        zero_stage({"zero_optimization": 2})


def test_a_config_without_zero_optimization_is_refused(args):
    # Accelerate's DeepSpeedPlugin raises for it; say so before any process starts.
    with pytest.raises(ConfigError, match="no zero_optimization section"):
        resolve({"train_batch_size": "auto"}, args)


def test_bad_files_are_one_line_errors(args, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve(str(tmp_path / "missing.json"), args)
    broken = tmp_path / "broken.json"
    broken.write_text("{'zero_optimization': 2}")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        resolve(broken, args)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="holds a JSON list"):
        resolve(listed, args)


def test_deepspeed_builds_says_which_sections_the_config_has():
    assert deepspeed_builds(AUTO_CONFIG) == (True, True)
    assert deepspeed_builds({"optimizer": {"type": "AdamW"}}) == (True, False)
    assert deepspeed_builds({"zero_optimization": {"stage": 2}}) == (False, False)


def test_training_arguments_accept_the_config(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", deepspeed=AUTO_CONFIG)
    resolved = resolve(args.deepspeed, args, world_size=1)
    assert resolved["train_batch_size"] == 8  # the default batch 8 x 1 step x 1 rank
