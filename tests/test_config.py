"""Tests for trainformers.config: HF-compatible TrainingArguments and the YAML run file."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings

import pytest
import transformers
import yaml

from trainformers.config import (
    DataSection,
    ModelSection,
    RunConfig,
    TrainingArguments,
    arguments_markdown_table,
    load_config,
    parse_overrides,
)
from trainformers.config.fields import is_alias
from trainformers.errors import ConfigError

HF_FIELDS = {f.name: f for f in dataclasses.fields(transformers.TrainingArguments)}
ALIASES = {f.name for f in dataclasses.fields(TrainingArguments) if is_alias(f)}


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _args(**kwargs) -> TrainingArguments:
    """Construct, failing the test on any warning (only the alias tests expect one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return TrainingArguments(**kwargs)


# --- fields, help, compatibility -------------------------------------------------------------


@pytest.mark.parametrize("cls", [TrainingArguments, ModelSection, DataSection, RunConfig])
def test_every_field_has_help(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help"


CORE = [
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "per_device_eval_batch_size", "gradient_accumulation_steps", "logging_strategy", "logging_steps",
    "save_steps", "eval_strategy", "save_strategy", "eval_steps", "lr_scheduler_type", "optim",
    "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm", "seed", "warmup_steps",
    "label_smoothing_factor", "report_to", "hub_strategy", "log_level", "ddp_timeout", "save_total_limit",
    "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "include_for_metrics",
    "average_tokens_across_devices", "length_column_name", "train_sampling_strategy", "bf16", "fp16",
    "torch_compile", "use_cpu", "local_rank", "skip_memory_metrics", "remove_unused_columns",
]  # fmt: skip


@pytest.mark.parametrize("name", CORE)
def test_core_defaults_equal_installed_transformers(name):
    ours = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    assert name in HF_FIELDS, f"transformers no longer has {name}"
    assert _default(ours[name]) == _default(HF_FIELDS[name])


def test_fields_are_transformers_fields_except_documented_extras():
    ours = {f.name for f in dataclasses.fields(TrainingArguments)} - ALIASES
    # Spellings transformers 5 dropped but users still write; kept as real fields.
    assert ours - HF_FIELDS.keys() == {
        "logging_dir",
        "overwrite_output_dir",
        "group_by_length",
        "param_groups",
        "loraplus_lr_ratio",
        "report_at_end",
        "peak_tflops",
        "chunked_cross_entropy",
        "nan_policy",
        "nan_skip_limit",
        "cpu_malloc",
    }


def test_every_scheduler_of_installed_transformers_is_accepted():
    for scheduler in transformers.SchedulerType:
        kwargs = {"lr_scheduler_type": scheduler.value}
        if scheduler.value in ("reduce_lr_on_plateau", "greedy"):
            kwargs["eval_strategy"] = "epoch"
        assert _args(**kwargs).lr_scheduler_type == scheduler.value


def test_defaults_construct_cleanly():
    args = _args()
    assert args.report_to == []
    assert args.logging_dir == "trainer_output/runs"
    assert args.disable_tqdm is False and args.do_eval is False
    assert args.eval_steps is None and args.metric_for_best_model is None
    assert args.train_batch_size == 8 and args.eval_batch_size == 8


def test_hf_enum_values_are_unwrapped():
    args = _args(eval_strategy=transformers.IntervalStrategy.STEPS, lr_scheduler_type=transformers.SchedulerType.COSINE)
    assert type(args.eval_strategy) is str and args.eval_strategy == "steps"
    assert type(args.lr_scheduler_type) is str


# --- older spellings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, value, new, expected",
    [
        ("evaluation_strategy", "epoch", "eval_strategy", "epoch"),
        ("warmup_ratio", 0.1, "warmup_steps", 0.1),
        ("no_cuda", True, "use_cpu", True),
        ("push_to_hub_model_id", "me/model", "hub_model_id", "me/model"),
    ],
)
def test_deprecated_spelling_maps_and_warns(old, value, new, expected):
    with pytest.warns(FutureWarning, match=f"'{old}' is deprecated; use '{new}'"):
        args = TrainingArguments(**{old: value})
    assert getattr(args, new) == expected
    assert getattr(args, old) is None
    assert old not in args.to_dict()


def test_fp16_opt_level_is_ignored_with_warning():
    with pytest.warns(FutureWarning, match="'fp16_opt_level' is ignored"):
        args = TrainingArguments(fp16_opt_level="O2")
    assert args == _args()


def test_activation_checkpointing_is_a_silent_synonym():
    args = _args(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False})
    assert args.gradient_checkpointing is True
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_old_and_new_spelling_disagreeing_is_an_error():
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="Can't set both evaluation_strategy"):
        TrainingArguments(evaluation_strategy="epoch", eval_strategy="steps")


def test_warmup_steps_and_warmup_ratio_contradict():
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="Can't set both warmup_steps and warmup_ratio"):
        TrainingArguments(warmup_steps=10, warmup_ratio=0.1)
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match=r"warmup_ratio=1\.5 must be in \[0, 1\)"):
        TrainingArguments(warmup_ratio=1.5)


# --- strict construction -----------------------------------------------------------------------


def test_unknown_keyword_is_a_config_error_with_suggestion():
    with pytest.raises(ConfigError) as info:
        TrainingArguments(lerning_rate=1e-3)
    assert str(info.value) == ("TrainingArguments got an unknown field 'lerning_rate' (did you mean 'learning_rate'?)")


@pytest.mark.parametrize("name", ["torch_empty_cache_steps"])
def test_unsupported_transformers_field_says_so(name):
    with pytest.raises(ConfigError) as info:
        TrainingArguments(**{name: 1})
    assert str(info.value) == (
        f"TrainingArguments field '{name}' is a transformers option that trainformers does not support; remove it"
    )


def test_subclasses_are_strict_too():
    @dataclasses.dataclass
    class CycleArgs(TrainingArguments):
        cycle_weight: float = dataclasses.field(default=1.0, metadata={"help": "w"})

    assert CycleArgs(cycle_weight=0.5, learning_rate=1e-3).cycle_weight == 0.5
    with pytest.raises(ConfigError, match="CycleArgs got an unknown field 'cycle_wieght'.*'cycle_weight'"):
        CycleArgs(cycle_wieght=0.5)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"optim": "adamw_torh"}, "optim='adamw_torh' is not supported (did you mean 'adamw_torch'?)"),
        ({"lr_scheduler_type": "cosin"}, "lr_scheduler_type='cosin' is not supported (did you mean 'cosine'?)"),
        ({"eval_strategy": "step"}, "eval_strategy='step'"),
        ({"save_strategy": "always"}, "save_strategy='always'"),
        ({"logging_strategy": "often"}, "logging_strategy='often'"),
        ({"hub_strategy": "never"}, "hub_strategy='never'"),
        ({"log_level": "verbose"}, "log_level='verbose'"),
        ({"ddp_backend": "nccll"}, "ddp_backend='nccll'"),
        ({"train_sampling_strategy": "shuffle"}, "train_sampling_strategy='shuffle'"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size=0 must be an integer >= 1"),
        ({"per_device_eval_batch_size": -2}, "per_device_eval_batch_size=-2"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0"),
        ({"learning_rate": -1e-3}, "learning_rate=-0.001 must be a number >= 0"),
        ({"warmup_steps": -1}, "warmup_steps=-1 must be >= 0"),
        ({"warmup_steps": 2.5}, "warmup_steps=2.5 must be a whole number"),
        ({"logging_steps": 0}, "logging_steps=0"),
        ({"logging_steps": 12.5}, "logging_steps=12.5 must be a whole number"),
        ({"save_steps": -5}, "save_steps=-5"),
        ({"eval_strategy": "steps", "eval_steps": -1}, "eval_steps=-1"),
        ({"fp16": True, "bf16": True}, "Can't set both fp16 and bf16; pick one"),
        ({"fp16_full_eval": True, "bf16_full_eval": True}, "fp16_full_eval and bf16_full_eval"),
        ({"load_best_model_at_end": True}, "load_best_model_at_end=True needs evaluation, but eval_strategy='no'"),
        ({"load_best_model_at_end": True, "eval_strategy": "epoch"}, "save_strategy ('steps') to equal eval_strategy"),
        (
            {"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 30, "save_steps": 100},
            "save_steps (100) to be a multiple of eval_steps (30)",
        ),
        (
            {"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 0.1, "save_steps": 100},
            "save_steps (100) to be a multiple of eval_steps (0.1)",
        ),
        ({"save_strategy": "best"}, "save_strategy='best' needs evaluation"),
        ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "lr_scheduler_type='reduce_lr_on_plateau' needs evaluation"),
        ({"num_train_epochs": 0, "max_steps": -1}, "num_train_epochs=0 and max_steps=-1 leave nothing to train"),
        ({"label_smoothing_factor": 1.0}, "label_smoothing_factor=1.0 must be in [0, 1)"),
        ({"include_for_metrics": ["input"]}, "include_for_metrics='input' is not supported (did you mean 'inputs'?)"),
        ({"report_to": ["tensorbord"]}, "report_to='tensorbord' is not supported (did you mean 'tensorboard'?)"),
        ({"fsdp": "full_shard autowrap"}, "fsdp='autowrap' is not supported (did you mean 'auto_wrap'?)"),
        ({"include_num_input_tokens_seen": "some"}, "include_num_input_tokens_seen='some'"),
        ({"dataloader_prefetch_factor": 2}, "dataloader_prefetch_factor=2 needs dataloader_num_workers > 0"),
        ({"group_by_length": True, "train_sampling_strategy": "sequential"}, "Can't set both group_by_length"),
        ({"optim_args": "momentum"}, "optim_args: 'momentum' is not key=value"),
        ({"deepspeed": "missing_ds.json"}, "deepspeed: file 'missing_ds.json' not found"),
        ({"fsdp_config": "missing_fsdp.json"}, "fsdp_config: file 'missing_fsdp.json' not found"),
    ],
)
def test_validation_errors_name_the_field_and_value(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        _args(**kwargs)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_allowed_value_errors_list_the_choices():
    with pytest.raises(ConfigError, match="choose one of: no, steps, epoch, best"):
        _args(save_strategy="sometimes")


def test_valid_best_model_settings():
    args = _args(load_best_model_at_end=True, eval_strategy="steps", eval_steps=50, save_steps=100)
    assert args.metric_for_best_model == "loss" and args.greater_is_better is False
    args = _args(load_best_model_at_end=True, eval_strategy="steps", eval_steps=0.1, save_steps=0.2)
    assert (args.eval_steps, args.save_steps) == (0.1, 0.2)
    args = _args(save_strategy="best", eval_strategy="epoch", metric_for_best_model="accuracy")
    assert args.greater_is_better is True
    args = _args(load_best_model_at_end=True, save_strategy="best", eval_strategy="epoch")
    assert args.metric_for_best_model == "loss"


def test_eval_steps_default_to_logging_steps_and_imply_do_eval():
    args = _args(eval_strategy="steps", logging_steps=25)
    assert args.eval_steps == 25 and args.do_eval is True


# --- steps and fractions -------------------------------------------------------------------------


def test_fraction_steps_resolve_with_ceil():
    args = _args(logging_steps=0.1, save_steps=10.0, warmup_steps=0.05)
    assert args.logging_steps == 0.1
    assert args.save_steps == 10 and type(args.save_steps) is int
    assert args.resolve_steps(args.logging_steps, 91) == 10  # ceil(9.1), as transformers rounds
    assert args.resolve_steps(args.save_steps, 95) == 10
    assert args.get_warmup_steps(1000) == 50
    assert _args(warmup_steps=7).get_warmup_steps(1000) == 7
    assert _args(warmup_steps=12.0).warmup_steps == 12
    assert _args().get_warmup_steps(1000) == 0


# --- normalisation -------------------------------------------------------------------------------


def test_report_to_normalisation(monkeypatch):
    assert _args(report_to="none").report_to == []
    assert _args(report_to=None).report_to == []
    assert _args(report_to="tensorboard").report_to == ["tensorboard"]
    assert _args(report_to=["wandb", "mlflow", "wandb"]).report_to == ["wandb", "mlflow"]
    # "all" means the installed ones among tensorboard, wandb, mlflow, trackio, in that order.
    installed = {"wandb", "trackio"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: object() if name in installed else None)
    assert _args(report_to="all").report_to == ["wandb", "trackio"]


def test_sampling_strategy_and_group_by_length_agree():
    assert _args(group_by_length=True).train_sampling_strategy == "group_by_length"
    assert _args(train_sampling_strategy="group_by_length").group_by_length is True
    args = _args(train_sampling_strategy="sequential")
    assert args.group_by_length is False and args.train_sampling_strategy == "sequential"


def test_small_normalisations(tmp_path):
    assert _args(torch_compile_mode="reduce-overhead").torch_compile is True
    assert _args(torch_compile_backend="eager").torch_compile is True
    assert _args(include_num_input_tokens_seen=True).include_num_input_tokens_seen == "all"
    assert _args(include_num_input_tokens_seen="no").include_num_input_tokens_seen is False
    assert _args(include_num_input_tokens_seen="non_padding").include_num_input_tokens_seen == "non_padding"
    assert _args(fsdp="full_shard auto_wrap").fsdp == ["full_shard", "auto_wrap"]
    assert _args(fsdp=True).fsdp == ["auto_wrap"]
    assert _args(fsdp=None).fsdp == [] and _args().fsdp == []
    fsdp_file = tmp_path / "fsdp.json"
    fsdp_file.write_text('{"fsdp_min_num_params": 10, "auto_wrap_policy": "SIZE_BASED_WRAP"}')
    expected = {"min_num_params": 10, "auto_wrap_policy": "SIZE_BASED_WRAP"}
    assert _args(fsdp="full_shard", fsdp_config=str(fsdp_file)).fsdp_config == expected
    assert _args(lr_scheduler_kwargs='{"num_cycles": 2}').lr_scheduler_kwargs == {"num_cycles": 2}
    assert _args(lr_scheduler_kwargs=None).lr_scheduler_kwargs == {}
    ds_file = tmp_path / "ds.json"
    ds_file.write_text("{}")
    assert _args(deepspeed=str(ds_file)).deepspeed == str(ds_file)
    assert _args(use_cpu=True, dataloader_pin_memory=True).dataloader_pin_memory is False
    assert _args(output_dir="out", logging_dir="tb").logging_dir == "tb"
    assert _args(output_dir="out").logging_dir == "out/runs"


def test_optim_args_dict_parses_scalars():
    args = _args(optim_args="momentum=0.9, nesterov=true,eps=1e-6,steps=3,name=foo")
    assert args.optim_args_dict() == {"momentum": 0.9, "nesterov": True, "eps": 1e-6, "steps": 3, "name": "foo"}
    assert _args(optim_args={"momentum": 0.5}).optim_args_dict() == {"momentum": 0.5}
    assert _args().optim_args_dict() == {}


def test_to_dict_is_json_and_masks_the_token():
    args = _args(hub_token="hf_secret", report_to="tensorboard")
    data = args.to_dict()
    assert data["hub_token"] == "<HUB_TOKEN>"
    assert not ALIASES & data.keys()
    assert json.loads(args.to_json_string()) == data
    assert "hf_secret" not in str(args) and "hf_secret" not in repr(args)
    assert "learning_rate=5e-05" in str(args)
    data["report_to"].append("wandb")  # a copy: mutating it leaves the arguments alone
    assert args.report_to == ["tensorboard"]


def test_to_dict_round_trips_through_the_constructor():
    args = _args(eval_strategy="steps", load_best_model_at_end=True, save_steps=500, group_by_length=True)
    assert _args(**args.to_dict()) == args


# --- markdown table ------------------------------------------------------------------------------


def test_markdown_table_lists_every_field_and_the_old_spellings():
    table = arguments_markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    names = [row.split("`")[1] for row in rows]
    assert names == [f.name for f in dataclasses.fields(TrainingArguments) if f.name not in ALIASES]
    assert all(row.count(" | ") == 3 for row in rows)  # `int | None` must be escaped
    for alias in ALIASES:
        assert f"- `{alias}`" in table
    assert "`evaluation_strategy` → `eval_strategy`" in table
    assert "| `name_or_path` |" in arguments_markdown_table(ModelSection)


# --- YAML run file -------------------------------------------------------------------------------


def _write(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_precedence_defaults_base_file_overrides(tmp_path):
    base = {"model": {"hidden_size": 64, "num_layers": 2}, "training": {"learning_rate": 1e-3, "seed": 7}}
    path = _write(tmp_path, "model:\n  num_layers: 3\ntraining:\n  learning_rate: 2e-3\n  max_steps: 10\n")
    before = json.dumps(base)
    cfg = load_config(path, ["--training.learning_rate", "3e-3"], base=base)
    assert json.dumps(base) == before  # the base mapping is not changed
    assert cfg.model.hidden_size == 64  # base
    assert cfg.model.num_layers == 3  # file over base
    assert cfg.training.learning_rate == 3e-3  # command line over file
    assert cfg.training.max_steps == 10 and cfg.training.seed == 7
    assert cfg.model.num_heads == 4 and cfg.data.max_length == 128  # defaults
    assert cfg.data.seed == 7  # data.seed follows training.seed


def test_no_sources_gives_the_defaults():
    cfg = load_config()
    assert cfg == RunConfig() and cfg.training == _args()


def test_override_forms():
    tokens = [
        "--training.learning_rate", "3e-4", "--model.hidden_size=64", "--training.bf16",
        "--training.report_to", "[tensorboard, wandb]", "--data.num_samples", "null",
        "--data.source", "data/*.txt", "--model.sample_prompt=", "--training.max_steps", "-1",
        "--training.fp16",
    ]  # fmt: skip
    assert parse_overrides(tokens) == {
        "training": {"learning_rate": 3e-4, "bf16": True, "report_to": ["tensorboard", "wandb"], "max_steps": -1,
                     "fp16": True},
        "model": {"hidden_size": 64, "sample_prompt": ""},
        "data": {"num_samples": None, "source": "data/*.txt"},
    }  # fmt: skip


@pytest.mark.parametrize("tokens", [["training.lr", "1"], ["--a.b.c", "1"], ["--.lr", "1"]])
def test_malformed_override_tokens(tokens):
    with pytest.raises(ConfigError, match="malformed override"):
        parse_overrides(tokens)


def test_flat_overrides_name_training_fields_as_hf_argument_parser_does():
    tokens = ["--learning_rate", "3e-4", "--per-device-train-batch-size=4", "--bf16", "--model.hidden_size", "64"]
    assert parse_overrides(tokens) == {
        "training": {"learning_rate": 3e-4, "per_device_train_batch_size": 4, "bf16": True},
        "model": {"hidden_size": 64},
    }
    assert parse_overrides(["--early_stopping_patience", "2"]) == {"training": {"early_stopping_patience": 2}}
    with pytest.raises(ConfigError, match=r"--hidden_size is not a training field; write --model.hidden_size VALUE"):
        parse_overrides(["--hidden_size", "64"])
    with pytest.raises(ConfigError, match=r"--learning_rat is not a training field \(did you mean 'learning_rate'"):
        parse_overrides(["--learning_rat", "1"])
    with pytest.raises(ConfigError, match="--training is not a training field"):
        parse_overrides(["--training"])


def test_early_stopping_from_a_run_file(tmp_path):
    path = _write(tmp_path, "training:\n  eval_strategy: steps\n  eval_steps: 2\n  early_stopping_patience: 3\n")
    config = load_config(path)
    assert config.early_stopping == (3, 0.0) and config.training.metric_for_best_model == "loss"
    assert config.training.greater_is_better is False
    again = tmp_path / "again.yaml"
    config.save(again)  # config.yaml keeps the keys where the run file had them
    assert load_config(again).early_stopping == (3, 0.0)
    assert load_config(path, ["--early_stopping_threshold", "0.5"]).early_stopping == (3, 0.5)
    assert load_config(_write(tmp_path, "training:\n  max_steps: 2\n")).early_stopping is None


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ("eval_strategy: 'no'\n  early_stopping_patience: 2", "early_stopping_patience stops on evaluations"),
        ("eval_strategy: steps\n  early_stopping_patience: 0", "early_stopping_patience"),
        ("eval_strategy: steps\n  early_stopping_threshold: 0.1", "needs training.early_stopping_patience"),
        (
            "eval_strategy: steps\n  early_stopping_patience: 1\n  early_stopping_threshold: -1",
            "early_stopping_threshold=-1 must be a number >= 0",
        ),
    ],
)
def test_bad_early_stopping_is_one_line(tmp_path, training, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(_write(tmp_path, f"training:\n  {training}\n"))
    assert "\n" not in str(raised.value)


def test_yaml_booleans_and_floats_follow_yaml_1_2(tmp_path):
    path = _write(tmp_path, "training:\n  eval_strategy: no\n  learning_rate: 3e-4\n  bf16: true\n")
    training = load_config(path).training
    assert training.eval_strategy == "no" and training.learning_rate == 3e-4 and training.bf16 is True


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("trainig:\n  seed: 1\n", "unknown section 'trainig' in "),
        ("training:\n  lerning_rate: 1\n", "unknown key 'training.lerning_rate' in "),
        ("model:\n  hiden_size: 1\n", "(did you mean 'model.hidden_size'?)"),
        ("training:\n  torch_empty_cache_steps: 5\n", "'torch_empty_cache_steps' is a transformers option"),
        ("- a\n- b\n", "must be a mapping of sections"),
        ("training: 3\n", "section 'training'"),
        ("training:\n  learning_rate: fast\n", "learning_rate must be a number, got 'fast'"),
        ("training:\n  max_steps: 2.5\n", "training.max_steps must be an integer, got 2.5"),
        ("training:\n  bf16: yes\n", "training.bf16 must be true or false, got 'yes'"),
        ("training:\n  run_name: 123\n", "training.run_name must be a string, got 123"),
        ("model:\n  hidden_size: big\n", "model.hidden_size must be an integer, got 'big'"),
        ("model:\n  hidden_size: 1\n   num_layers: 2\n", "is not valid YAML at line 3, column 14"),
        ("training:\n  optim: adam\n", "optim='adam' is not supported"),  # TrainingArguments' own error
    ],
)
def test_run_file_errors(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_section_message_in_full(tmp_path):
    path = _write(tmp_path, "trainig:\n  seed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"unknown section 'trainig' in '{path}' (did you mean 'training'?); sections are model, data, training, peft"
    )


def test_unknown_key_on_the_command_line():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["--training.lerning_rate", "1"])
    assert str(info.value) == (
        "unknown key 'training.lerning_rate' in the command line (did you mean 'training.learning_rate'?)"
    )


def test_missing_file():
    with pytest.raises(ConfigError, match="config file 'nope.yaml' not found"):
        load_config("nope.yaml")


def test_numbers_are_accepted_leniently(tmp_path):
    path = _write(tmp_path, "training:\n  learning_rate: '3e-4'\n  num_train_epochs: 2\n  max_steps: 1e3\n")
    training = load_config(path).training
    assert training.learning_rate == 3e-4 and training.num_train_epochs == 2 and training.max_steps == 1000


def test_deprecated_keys_in_the_run_file(tmp_path):
    path = _write(tmp_path, "training:\n  evaluation_strategy: epoch\n  warmup_ratio: 0.1\n")
    with pytest.warns(FutureWarning) as record:
        training = load_config(path).training
    assert {str(w.message).split("'")[1] for w in record} == {"evaluation_strategy", "warmup_ratio"}
    assert training.eval_strategy == "epoch" and training.warmup_steps == 0.1


def test_section_validation():
    with pytest.raises(ConfigError, match=r"model.dtype='bf16' is not supported \(did you mean 'bfloat16'\?\)"):
        load_config(overrides=["--model.dtype", "bf16"])
    with pytest.raises(ConfigError, match="model.hidden_size=130 must be divisible by model.num_heads=4"):
        load_config(overrides=["--model.hidden_size", "130"])
    with pytest.raises(ConfigError, match="data.validation_split_percentage=100"):
        load_config(overrides=["--data.validation_split_percentage", "100"])
    assert load_config(overrides=["--model.num_heads", "8"]).model.num_kv_heads == 8


def test_to_yaml_round_trips(tmp_path):
    overrides = [
        "--model.hidden_size", "64", "--model.sample_prompt", "'Once upon '", "--model.dtype", "bfloat16",
        "--data.source", "corpus.txt", "--data.seed", "3", "--training.learning_rate", "3e-4",
        "--training.eval_strategy", "steps", "--training.eval_steps", "0.25", "--training.save_steps", "0.5",
        "--training.load_best_model_at_end", "--training.report_to", "tensorboard", "--training.run_name", "'1e3'",
        "--training.lr_scheduler_kwargs", "{num_cycles: 2}", "--training.optim_args", "momentum=0.9",
        "--training.warmup_steps", "0.1", "--training.output_dir", "no",
    ]  # fmt: skip
    cfg = load_config(overrides=overrides)
    assert cfg.training.run_name == "1e3" and cfg.training.output_dir == "no"
    path = tmp_path / "sub" / "config.yaml"
    cfg.save(path)
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["training"]["output_dir"] == "no"  # readable by plain YAML too
