"""Complete a user's DeepSpeed config from the training arguments, as transformers' Trainer does.

HF-style DeepSpeed configs write "auto" where the trainer knows the value (batch sizes, clipping,
optimizer and scheduler settings, precision, bucket sizes). `resolve_deepspeed_config` fills them
from `TrainingArguments` and refuses, in one line, a set value that contradicts an argument. Pure
dict work: nothing here imports deepspeed, so it runs (and is tested) without it.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

AUTO = "auto"
HIDDEN_SIZE_KEYS = (
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
)

# How a rule treats the key (an "auto" value is always filled):
MATCH = "match"  # a set value must equal ours; an absent key stays absent (DeepSpeed's default applies)
ALWAYS = "always"  # like MATCH, but an absent key (and its section) is written: DeepSpeed's default would contradict us
FILL = "fill"  # only "auto" is replaced; a set value is the user's choice

# (dotted key, our value or None when unknown, where it comes from, mode)
Rule = tuple[str, Any, str, str]


def zero_stage(config: Mapping[str, Any]) -> int:
    """The ZeRO stage of a DeepSpeed config: `zero_optimization.stage`, 0 when unset (DeepSpeed's default).

    Args:
        config: A DeepSpeed config dict.

    Raises:
        ConfigError: `zero_optimization` is not a dict, or the stage is not an integer 0..3.
    """
    section = config.get("zero_optimization", {})
    if not isinstance(section, Mapping):
        raise ConfigError(f'deepspeed zero_optimization={_show(section)} must be a dict such as {{"stage": 2}}')
    stage = section.get("stage", 0)
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= 3:
        raise ConfigError(
            f"deepspeed zero_optimization.stage={_show(stage)} must be 0, 1, 2 or 3 (trainformers does not fill it)"
        )
    return stage


def deepspeed_builds(config: Mapping[str, Any]) -> tuple[bool, bool]:
    """Whether DeepSpeed builds the optimizer and the scheduler itself: the config has that section.

    transformers then hands Accelerate a `DummyOptim` / `DummyScheduler` instead of creating its own
    (a DeepSpeed optimizer with our scheduler needs `DummyScheduler(lr_scheduler_callable=...)`).

    Returns:
        (optimizer, scheduler): True where the config has an "optimizer" / "scheduler" section.
    """
    return "optimizer" in config, "scheduler" in config


def resolve_deepspeed_config(
    config: Mapping[str, Any] | str | os.PathLike[str],
    args: Any,
    *,
    world_size: int,
    num_training_steps: int,
    warmup_steps: int,
    hidden_size: int | None,
) -> dict[str, Any]:
    """A complete copy of a DeepSpeed config: every "auto" filled, every set value checked against `args`.

    Follows transformers' `HfTrainerDeepSpeedConfig.trainer_config_process`/`trainer_config_finalize`,
    with two differences: the batch keys and `gradient_clipping` are written when absent (DeepSpeed
    would otherwise take 1 accumulation step and no clipping while the trainer does otherwise), and
    an "auto" this function can't fill is refused here instead of reaching DeepSpeed.

    Args:
        config: The DeepSpeed config, a dict or the path of a JSON file (`TrainingArguments.deepspeed`).
            A dict is never modified.
        args: The run's `TrainingArguments` (a number for `learning_rate`: resolve after the range test).
        world_size: Processes training together (`accelerator.num_processes`).
        num_training_steps: Optimizer steps of the whole run (`scheduler.params.total_num_steps`).
        warmup_steps: Warmup optimizer steps (`args.get_warmup_steps(num_training_steps)`).
        hidden_size: The model's hidden size, for the ZeRO bucket sizes; None when the model has none.

    Returns:
        A new dict that DeepSpeed can take as it is.

    Raises:
        ConfigError: the file is missing or not a JSON object, there is no `zero_optimization` section
            (Accelerate requires one), the stage is not 0..3, a set value contradicts the arguments
            (all of them in one line), or an "auto" has no value here (e.g. no hidden size).
    """
    resolved = load_deepspeed_config(config)
    if "zero_optimization" not in resolved:
        raise ConfigError(
            'deepspeed config has no zero_optimization section; add e.g. "zero_optimization": {"stage": 2}'
        )
    zero_stage(resolved)
    mismatches: list[str] = []
    unknown: list[str] = []
    for key, value, source, mode in _rules(args, world_size, num_training_steps, warmup_steps, hidden_size):
        _apply(resolved, key, value, source, mode, mismatches, unknown)
    if mismatches:
        raise ConfigError(
            f"deepspeed config contradicts the training arguments: {'; '.join(mismatches)}; set those DeepSpeed "
            'keys to "auto" (filled from the arguments) or change one side to match'
        )
    unknown += [f"{key} (trainformers has no value for it)" for key in _auto_keys(resolved)]
    if unknown:
        raise ConfigError(
            f'deepspeed config keeps "auto" for {"; ".join(unknown)}; set a value in the DeepSpeed config'
        )
    return resolved


def _rules(
    args: Any, world_size: int, num_training_steps: int, warmup_steps: int, hidden_size: int | None
) -> list[Rule]:
    """Each DeepSpeed key the trainer knows, with its value: the one place that derives them."""
    micro, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
    clip = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else 0.0  # DeepSpeed: 0 = no clipping
    lr = args.learning_rate if isinstance(args.learning_rate, (int, float)) else None  # 'auto' before the range test
    lr_source = "training.learning_rate" if lr is not None else "training.learning_rate='auto' (not resolved yet)"
    size = "the model's hidden size" if hidden_size is not None else "the model has no hidden_size"
    h = hidden_size
    return [
        ("train_micro_batch_size_per_gpu", micro, "training.per_device_train_batch_size", ALWAYS),
        ("gradient_accumulation_steps", accum, "training.gradient_accumulation_steps", ALWAYS),
        (
            "train_batch_size",
            micro * accum * world_size,  # DeepSpeed asserts exactly this product
            f"training.per_device_train_batch_size*gradient_accumulation_steps*world_size ({micro}*{accum}*{world_size})",
            ALWAYS,
        ),
        ("gradient_clipping", clip, "training.max_grad_norm", ALWAYS),
        ("optimizer.params.lr", lr, lr_source, MATCH),
        ("optimizer.params.betas", [args.adam_beta1, args.adam_beta2], "training.adam_beta1,adam_beta2", MATCH),
        ("optimizer.params.eps", args.adam_epsilon, "training.adam_epsilon", MATCH),
        ("optimizer.params.weight_decay", args.weight_decay, "training.weight_decay", MATCH),
        ("scheduler.params.warmup_min_lr", 0, "the trainer's warmup start", FILL),
        ("scheduler.params.warmup_max_lr", lr, lr_source, MATCH),
        # deepspeed >= 0.19.6 refuses warmup_num_steps < 1 (older versions clamped it)
        (
            "scheduler.params.warmup_num_steps",
            max(1, warmup_steps),
            "training.warmup_steps (in steps, at least 1)",
            MATCH,
        ),
        ("scheduler.params.total_num_steps", num_training_steps, "the run's optimizer steps", MATCH),
        ("fp16.enabled", bool(args.fp16), "training.fp16", MATCH),
        ("bf16.enabled", bool(args.bf16), "training.bf16", MATCH),
        (HIDDEN_SIZE_KEYS[0], None if h is None else h * h, size, FILL),
        (HIDDEN_SIZE_KEYS[1], None if h is None else int(0.9 * h * h), size, FILL),
        (HIDDEN_SIZE_KEYS[2], None if h is None else 10 * h, size, FILL),
    ]


def _apply(
    config: dict[str, Any], key: str, value: Any, source: str, mode: str, mismatches: list[str], unknown: list[str]
) -> None:
    """Fill or check one dotted key of `config` in place (a copy), recording what is wrong."""
    *parents, leaf = key.split(".")
    node: Any = config
    for part in parents:
        if mode == ALWAYS and isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            node = node.get(part) if isinstance(node, Mapping) else None
    if not isinstance(node, dict):
        return  # no such section: nothing to fill or check
    if leaf not in node:
        if mode == ALWAYS:
            node[leaf] = value
    elif node[leaf] == AUTO:
        if value is None:
            unknown.append(f"{key} ({source})")
        else:
            node[leaf] = value
    elif mode != FILL and value is not None and not _same(node[leaf], value):
        mismatches.append(f"deepspeed {key}={_show(node[leaf])} vs {source}={_show(value)}")


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
        return len(ours) == len(theirs) and all(_same(a, b) for a, b in zip(ours, theirs))
    return type(ours) is not str and type(theirs) is not str and ours == theirs


def _auto_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is still "auto"."""
    if not isinstance(node, Mapping):
        return []
    found = []
    for name, value in node.items():
        if value == AUTO:
            found.append(prefix + name)
        else:
            found += _auto_keys(value, f"{prefix}{name}.")
    return found


def load_deepspeed_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """A deep copy of a config dict, or the JSON object a file holds."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    path = Path(config)
    try:
        loaded = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"deepspeed: file '{path}' not found; pass a dict or a JSON file's path") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"deepspeed: '{path}' is not valid JSON ({err}); fix the file") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"deepspeed: '{path}' holds a JSON {type(loaded).__name__}, not an object; write {{...}}")
    return loaded


def _show(value: Any) -> str:
    """A value as the JSON config spells it (true, "auto", [0.9, 0.999])."""
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)
