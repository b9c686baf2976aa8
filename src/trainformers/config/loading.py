"""`load_config`: defaults < base < run file < command line, each key checked against its section.

A train run file's `training` section may also hold the distributed keys of the framework many of
our users migrate from (`SEED_KEYS`); they are mapped onto our fields here and never kept as keys.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean
from .fields import PATH_OR_TRUE, check_int, choice, hf_field_names, is_number, unknown_field_message
from .sections import SECTIONS, DataSection, ModelSection, RunConfig
from .training import TrainingArguments
from .yaml_io import parse_value, read_yaml

# The `training` keys of the framework many of our users migrate from, with their types; docs/distributed.md.
SEED_KEYS: dict[str, Any] = {
    "distributed_strategy": str | None,
    "fsdp_sharding_strategy": str | None,
    "num_gpus": int | None,
}
# Run-file keys of the training section that configure a callback rather than TrainingArguments
# (transformers takes them as EarlyStoppingCallback's arguments); kept on RunConfig.
CALLBACK_KEYS: dict[str, Any] = {
    "early_stopping_patience": int | None,
    "early_stopping_threshold": float | None,
}
SEED_STRATEGIES = ("ddp", "fsdp")
SEED_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")


def _flat_key(key: str) -> str:
    """`section.key` for a flat `--key` (HfArgumentParser's and TRL's spelling): a training field.

    Raises:
        ConfigError: the key is no training field (the dotted spelling when another section has it).
    """
    name = key.replace("-", "_")
    training = {f.name for f in dataclasses.fields(TrainingArguments)} | set(CALLBACK_KEYS) | set(SEED_KEYS)
    if name in training:
        return f"training.{name}"
    elsewhere = [
        section
        for section, cls in SECTIONS.items()
        if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}
    ]
    if elsewhere:
        raise ConfigError(f"--{key} is not a training field; write --{elsewhere[0]}.{name} VALUE")
    raise ConfigError(
        f"--{key} is not a training field{did_you_mean(name, sorted(training))}; write --section.key VALUE for "
        "the model and data sections"
    )


def parse_overrides(tokens: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Parse `--section.key VALUE`, `--section.key=VALUE` and bare `--section.key` (true) tokens; a flat
    `--key` (no section) names a training field, as in HfArgumentParser (`--learning_rate 3e-4`).

    Raises:
        ConfigError: a token is not of one of these forms, or a flat key is no training field.
    """
    out: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        key, eq, raw = token[2:].partition("=")
        if eq:
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            raw, i = tokens[i + 1], i + 2
        else:
            raw, i = "true", i + 1  # a bare flag switches a boolean on
        if token.startswith("--") and key and "." not in key:
            key = _flat_key(key)
        section, dot, name = key.partition(".")
        if not token.startswith("--") or not dot or not section or not name or "." in name:
            raise ConfigError(f"malformed override {token!r}; write --section.key VALUE or --section.key=VALUE")
        out.setdefault(section, {})[name] = parse_value(raw)
    return out


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Check a value against a plain int/float/bool/str annotation; other annotations pass through."""
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = set(typing.get_args(hint)) if is_union else {hint}
    if value is None and type(None) in options:
        return None
    options.discard(type(None))
    if float in options and options <= {int, float}:
        if isinstance(value, str):
            try:
                return float(value)  # quoted numbers like "3e-4"
            except ValueError:
                pass
        if not is_number(value):
            raise ConfigError(f"{key} must be a number, got {value!r}")
    elif options == {int}:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)  # `max_steps: 1e4`
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
    elif options == {bool} and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    elif options == {str} and isinstance(value, bool) and key.rpartition(".")[2] in PATH_OR_TRUE:
        return value
    elif options == {str} and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}; quote it in YAML")
    return value


def merge_sections(
    merged: dict[str, dict[str, Any]], layer: Any, origin: str, sections: Mapping[str, type] | None = None
) -> None:
    """Check one layer (base, file or overrides) and copy its values over `merged`.

    `sections` maps section names to their dataclass (`dict` for free-form); default: a train run file.
    """
    sections = SECTIONS if sections is None else sections
    if layer is None:
        return
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{origin} must be a mapping of sections ({', '.join(sections)}), got {type(layer).__name__}")
    for section, values in layer.items():
        if section not in sections:
            raise ConfigError(
                f"unknown section '{section}' in {origin}{did_you_mean(str(section), sections)}; "
                f"sections are {', '.join(sections)}"
            )
        if values is None:  # an empty `training:` section
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"section '{section}' in {origin} must be a mapping of keys, got {values!r}")
        cls = sections[section]
        if cls is dict:  # `peft`: options of a peft config class, checked against it when the model is built
            merged[section].update(copy.deepcopy(dict(values)))
            continue
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        hinted = [*known, *SEED_KEYS] if cls is TrainingArguments else known  # load_config took the seed keys out
        for name, value in values.items():
            if name not in known:
                if name in hf_field_names() and issubclass(cls, TrainingArguments):
                    raise ConfigError(unknown_field_message("training", name, hinted))
                hint = did_you_mean(str(name), hinted).replace("'", f"'{section}.", 1)
                raise ConfigError(f"unknown key '{section}.{name}' in {origin}{hint}")
            # A copy, so arguments built from the CLI's shared base mapping cannot change it.
            merged[section][name] = _coerce(f"{section}.{name}", _hints(cls)[name], copy.deepcopy(value))


def _take_seed_keys(layer: Any, seeds: dict[str, Any]) -> Any:
    """`layer` without the seed keys of its `training` section; their values go to `seeds` (later layers win)."""
    if not isinstance(layer, Mapping) or not isinstance(layer.get("training"), Mapping):
        return layer  # nothing to take, or malformed: merge_sections says what is wrong
    training = dict(layer["training"])
    for key, hint in {**SEED_KEYS, **CALLBACK_KEYS}.items():
        if key in training:
            seeds[key] = _coerce(f"training.{key}", hint, training.pop(key))
    return {**layer, "training": training}


def _early_stopping(training: dict[str, Any], keys: Mapping[str, Any]) -> tuple[int, float] | None:
    """(patience, threshold) for EarlyStoppingCallback from the run file, checked before anything runs.

    Without `metric_for_best_model` the evaluation loss decides, as `load_best_model_at_end` does.
    """
    patience, threshold = keys.get("early_stopping_patience"), keys.get("early_stopping_threshold")
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
    return patience, float(threshold or 0.0)


def _fsdp_options(value: Any) -> list[str]:
    """`training.fsdp` as given (a string, a list, true) as its list of options."""
    if value is True:
        return ["full_shard", "auto_wrap"]  # TrainingArguments' fsdp=True: on, FULL_SHARD, auto-wrapped
    return str(value).split() if isinstance(value, str) else [str(v) for v in value or []]


def _apply_seed_keys(training: dict[str, Any], seeds: Mapping[str, Any]) -> int | None:
    """Map the seed keys onto the merged `training` section; return `num_gpus` (the processes to launch).

    `distributed_strategy: fsdp` sets `fsdp` to "full_shard auto_wrap", with `fsdp_sharding_strategy`
    (lower-cased) in place of full_shard; `ddp` sets nothing (a multi-process launch is DDP already).
    Raises ConfigError for a value outside its choices or a key contradicting another.
    """
    strategy, sharding = seeds.get("distributed_strategy"), seeds.get("fsdp_sharding_strategy")
    if strategy is not None:
        choice("training.distributed_strategy", strategy, SEED_STRATEGIES)
    if sharding is not None:
        choice("training.fsdp_sharding_strategy", sharding, SEED_SHARDING)
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
    if strategy == "fsdp":
        mapped = f"{(sharding or 'FULL_SHARD').lower()} auto_wrap"
        if "fsdp" in engines and sorted(_fsdp_options(training["fsdp"])) != sorted(mapped.split()):
            raise ConfigError(
                f"Can't set both training.distributed_strategy=fsdp (fsdp: '{mapped}') and "
                f"training.fsdp={training['fsdp']!r}; drop one"
            )
        training["fsdp"] = mapped
    num_gpus = seeds.get("num_gpus")
    if num_gpus is not None:
        check_int("training.num_gpus", num_gpus, 1)
    return num_gpus


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), base: Mapping[str, Any] | None = None
) -> RunConfig:
    """Build a `RunConfig` from defaults, a base mapping, a YAML run file and command-line overrides.

    Later sources win key by key: dataclass defaults < `base` < the file at `path` < `overrides`.
    The seed keys (`SEED_KEYS`) of any source are mapped: `distributed_strategy`/`fsdp_sharding_strategy`
    onto `training.fsdp`, `num_gpus` onto `RunConfig.num_processes`.

    Args:
        path: A YAML run file with sections `model`, `data` and `training`, or None.
        overrides: argv-style tokens such as `["--training.learning_rate", "3e-4", "--training.bf16"]`.
        base: A mapping with the same sections (the CLI passes its embedded default run here).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: a missing or malformed file, an unknown section or key, a value of the wrong
            type, a malformed override, a seed key contradicting another key, or any validation error
            of the sections.
    """
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    seeds: dict[str, Any] = {}
    merge_sections(merged, _take_seed_keys(base, seeds), "the base config")
    if path is not None:
        merge_sections(merged, _take_seed_keys(read_yaml(path), seeds), f"'{path}'")
    merge_sections(merged, _take_seed_keys(parse_overrides(overrides), seeds), "the command line")
    num_processes = _apply_seed_keys(merged["training"], seeds)
    early_stopping = _early_stopping(merged["training"], seeds)
    try:
        training = TrainingArguments(**merged["training"])
    except ConfigError as err:
        if seeds.get("distributed_strategy") != "fsdp" or "fsdp" not in str(err).lower():
            raise
        given = ", ".join(f"{k}={seeds[k]}" for k in ("distributed_strategy", "fsdp_sharding_strategy") if seeds.get(k))
        raise ConfigError(f"{err} (training.fsdp='{merged['training']['fsdp']}' comes from training.{given})") from None
    return RunConfig(
        model=ModelSection(**merged["model"]),
        data=DataSection(**merged["data"]),
        training=training,
        peft=merged["peft"] or None,
        num_processes=num_processes,
        early_stopping=early_stopping,
    )
