"""The run-file layout of the framework many of our users migrate from: one `training:` section.

Its keys are mapped onto ours layer by layer (defaults < base < file < command line), before the
sections are checked, and each mapping is reported in one line (`RunConfig.mapped`, printed in the
run header). The saved `config.yaml` holds our keys only. The table is in README ("Coming from
another trainer") and docs/distributed.md (the distributed keys).

| seed key | becomes |
|---|---|
| dataset_name, dataset_subset, dataset_split | data.source, data.subset, data.split |
| text_field, training_mode, max_length | data.text_field, data.training_mode, data.max_length |
| batch_size | training.per_device_train_batch_size |
| optimizer, scheduler | training.optim, training.lr_scheduler_type |
| mixed_precision | training.bf16 / training.fp16 (`no`: neither) |
| save_precision | model.save_dtype |
| base_model_lr | training.learning_rate |
| lora_lr, memory_lr | training.param_groups entries (`lora_`, `memory` parameter names) |
| log_to_wandb | training.report_to gains wandb |
| save_best_model | training.load_best_model_at_end |
| early_stopping (+ _patience, _threshold) | EarlyStoppingCallback |
| distributed_strategy, fsdp_sharding_strategy, num_gpus | training.fsdp, --num-processes |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from .fields import check_int, choice, is_number

# The distributed keys, with their types; mapped by `apply_distributed` once every layer is merged.
DISTRIBUTED_KEYS: dict[str, Any] = {
    "distributed_strategy": str | None,
    "fsdp_sharding_strategy": str | None,
    "num_gpus": int | None,
}
# Keys that configure a callback rather than TrainingArguments (transformers takes them as
# EarlyStoppingCallback's arguments); kept on RunConfig. `early_stopping` is the seed layout's switch.
CALLBACK_KEYS: dict[str, Any] = {
    "early_stopping": bool | None,
    "early_stopping_patience": int | None,
    "early_stopping_threshold": float | None,
}
STRATEGIES = ("ddp", "fsdp")
SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
PRECISIONS = ("bf16", "fp16", "fp32", "no")
SAVE_PRECISIONS = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# The seed layout's optimizer and scheduler names that differ from ours
OPTIMIZERS = {"adamw": "adamw_torch", "adam": "adamw_torch", "adamw_fused": "adamw_torch_fused"}
SCHEDULERS = {
    "cosine_with_warmup": "cosine",
    "linear_with_warmup": "linear",
    "constant_with_warmup": "constant_with_warmup",
}

Mapped = dict[str, Any]  # "section.key" -> value


def _to(target: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[Any], Mapped]:
    return lambda value: {target: convert(value)}


def _precision(value: Any) -> Mapped:
    value = choice("training.mixed_precision", str(value).lower(), PRECISIONS)
    return {"training.bf16": True} if value == "bf16" else {"training.fp16": True} if value == "fp16" else {}


def _save_precision(value: Any) -> Mapped:
    return {
        "model.save_dtype": SAVE_PRECISIONS[
            choice("training.save_precision", str(value).lower(), tuple(SAVE_PRECISIONS))
        ]
    }


def _group(pattern: str) -> Callable[[Any], Mapped]:
    return lambda lr: {"training.param_groups": [{"pattern": pattern, "lr": lr}]}


# seed key -> what it becomes, as "section.key" -> value (several keys may add to one list)
SEED_KEYS: dict[str, Callable[[Any], Mapped]] = {
    "dataset_name": _to("data.source"),
    "dataset_subset": _to("data.subset"),
    "dataset_split": _to("data.split"),
    "text_field": _to("data.text_field"),
    "training_mode": _to("data.training_mode"),
    "max_length": _to("data.max_length"),
    "batch_size": _to("training.per_device_train_batch_size"),
    "optimizer": _to("training.optim", lambda v: OPTIMIZERS.get(str(v).lower(), v)),
    "scheduler": _to("training.lr_scheduler_type", lambda v: SCHEDULERS.get(str(v).lower(), v)),
    "mixed_precision": _precision,
    "save_precision": _save_precision,
    "base_model_lr": _to("training.learning_rate"),
    "lora_lr": _group("lora_"),
    "memory_lr": _group("memory"),
    "log_to_wandb": lambda on: {"training.report_to": ["wandb"]} if on else {},
    "save_best_model": _to("training.load_best_model_at_end"),
}
LIST_TARGETS = ("training.param_groups", "training.report_to")  # seed keys add to these, never replace


def take_seed_keys(layer: Any, taken: dict[str, Any], mapped: list[str]) -> Any:
    """`layer` with the seed keys of its `training` section mapped onto our sections.

    The distributed and callback keys go to `taken` (later layers win), to be applied once every
    layer is merged; the others are written into this layer's own sections, so a later layer (the
    command line) still overrides them. One line per mapped key is appended to `mapped`.

    Raises:
        ConfigError: a seed key and the key it becomes both set in this layer, or a value outside
            the seed key's choices.
    """
    if not isinstance(layer, Mapping) or not isinstance(layer.get("training"), Mapping):
        return layer  # nothing to take, or malformed: merge_sections says what is wrong
    sections = {name: dict(values) if isinstance(values, Mapping) else values for name, values in layer.items()}
    training = sections["training"]
    for key in [*DISTRIBUTED_KEYS, *CALLBACK_KEYS]:
        if key in training:
            taken[key] = training.pop(key)
    for key, convert in SEED_KEYS.items():
        if key not in training:
            continue
        value = training.pop(key)
        taken[key] = value  # what was used, for the checks that need the whole run (lora_lr needs peft)
        result = convert(value)
        for target, new in result.items():
            section, _, name = target.partition(".")
            values = sections.setdefault(section, {})
            if not isinstance(values, dict):
                continue  # a malformed section: merge_sections says what is wrong
            if name in values and target not in LIST_TARGETS:
                raise ConfigError(f"Can't set both training.{key} and {target}; drop one")
            values[name] = [*_as_list(values.get(name)), *new] if target in LIST_TARGETS else new
        became = ", ".join(f"{t}={v!r}" for t, v in result.items()) or "nothing (the default)"
        mapped.append(f"training.{key}={value!r} -> {became}")
    return sections


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, Mapping)) else list(value)


def _fsdp_options(value: Any) -> list[str]:
    """`training.fsdp` as given (a string, a list, true) as its list of options."""
    if value is True:
        return ["full_shard", "auto_wrap"]  # TrainingArguments' fsdp=True: on, FULL_SHARD, auto-wrapped
    return str(value).split() if isinstance(value, str) else [str(v) for v in value or []]


def apply_distributed(training: dict[str, Any], taken: Mapping[str, Any], mapped: list[str]) -> int | None:
    """Map the distributed keys onto the merged `training` section; return `num_gpus` (the processes to launch).

    `distributed_strategy: fsdp` sets `fsdp` to "full_shard auto_wrap", with `fsdp_sharding_strategy`
    (lower-cased) in place of full_shard; `ddp` sets nothing (a multi-process launch is DDP already).
    Raises ConfigError for a value outside its choices or a key contradicting another.
    """
    strategy, sharding = taken.get("distributed_strategy"), taken.get("fsdp_sharding_strategy")
    if strategy is not None:
        choice("training.distributed_strategy", strategy, STRATEGIES)
    if sharding is not None:
        choice("training.fsdp_sharding_strategy", sharding, SHARDING)
        if strategy == "ddp":
            raise ConfigError(
                f"Can't set both training.distributed_strategy=ddp and training.fsdp_sharding_strategy={sharding} "
                "(a sharding strategy is for fsdp); drop one"
            )
        if strategy is None:
            raise ConfigError(
                f"training.fsdp_sharding_strategy={sharding} needs training.distributed_strategy=fsdp; add it"
            )
    engines = [name for name in ("fsdp", "deepspeed") if training.get(name)]
    if strategy == "ddp" and engines:
        raise ConfigError(f"Can't set both training.distributed_strategy=ddp and training.{engines[0]}; drop one")
    if strategy == "ddp":
        mapped.append("training.distributed_strategy='ddp' -> nothing (several processes train with DDP)")
    if strategy == "fsdp":
        value = f"{(sharding or 'FULL_SHARD').lower()} auto_wrap"
        if "fsdp" in engines and sorted(_fsdp_options(training["fsdp"])) != sorted(value.split()):
            raise ConfigError(
                f"Can't set both training.distributed_strategy=fsdp (fsdp: '{value}') and "
                f"training.fsdp={training['fsdp']!r}; drop one"
            )
        training["fsdp"] = value
        mapped.append(f"training.distributed_strategy='fsdp' -> training.fsdp={value!r}")
    num_gpus = taken.get("num_gpus")
    if num_gpus is not None:
        check_int("training.num_gpus", num_gpus, 1)
        mapped.append(f"training.num_gpus={num_gpus!r} -> {num_gpus} process{'es' if num_gpus != 1 else ''}")
    return num_gpus


def early_stopping(training: dict[str, Any], taken: Mapping[str, Any], mapped: list[str]) -> tuple[int, float] | None:
    """(patience, threshold) for EarlyStoppingCallback from the run file, checked before anything runs.

    `early_stopping: true` alone takes EarlyStoppingCallback's default patience (1); `false` turns it
    off whatever the patience says. Without `metric_for_best_model` the evaluation loss decides, as
    `load_best_model_at_end` does.
    """
    switch = taken.get("early_stopping")
    patience, threshold = taken.get("early_stopping_patience"), taken.get("early_stopping_threshold")
    if switch is False:
        if patience is not None or threshold is not None:
            mapped.append("training.early_stopping=False -> no early stopping (its patience and threshold unused)")
        return None
    if switch is True and patience is None:
        patience = 1  # EarlyStoppingCallback's default
    if patience is None:
        if threshold is not None:
            raise ConfigError(
                "training.early_stopping_threshold needs training.early_stopping_patience (evaluations without "
                "improvement before stopping); add it"
            )
        return None
    check_int("training.early_stopping_patience", patience, 1)
    if threshold is not None and (not is_number(threshold) or threshold < 0):
        raise ConfigError(f"training.early_stopping_threshold={threshold!r} must be a number >= 0")
    if training.get("eval_strategy", training.get("evaluation_strategy", "no")) == "no":
        raise ConfigError(
            "training.early_stopping_patience stops on evaluations, but training.eval_strategy is 'no'; set "
            "eval_strategy: steps (with eval_steps) or epoch"
        )
    training.setdefault("metric_for_best_model", "loss")
    if switch is True:
        mapped.append(
            f"training.early_stopping=True -> EarlyStoppingCallback(early_stopping_patience={patience}, "
            f"early_stopping_threshold={float(threshold or 0.0)})"
        )
    return patience, float(threshold or 0.0)
