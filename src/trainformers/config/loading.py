"""`load_config`: defaults < base < run file < command line, each key checked against its section.

A train run file's `training` section may also hold the keys of the framework many of our users
migrate from (the seed layout, `seed_layout.py`); they are mapped onto our keys layer by layer and
never kept as keys.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean
from .fields import check_scalar, field_hints, hf_field_names, scalar_types, unknown_field_message
from .sections import SECTIONS, DataSection, ModelSection, RunConfig
from .seed_layout import CALLBACK_KEYS, DISTRIBUTED_KEYS, SEED_KEYS, apply_distributed, early_stopping, take_seed_keys
from .training import TrainingArguments
from .yaml_io import parse_value, read_yaml


def _flat_key(key: str) -> str:
    """`section.key` for a flat `--key` (HfArgumentParser's and TRL's spelling): a training field.

    Raises:
        ConfigError: the key is no training field (the dotted spelling when another section has it).
    """
    name = key.replace("-", "_")
    training = (
        {f.name for f in dataclasses.fields(TrainingArguments)}
        | set(CALLBACK_KEYS)
        | set(DISTRIBUTED_KEYS)
        | set(SEED_KEYS)
    )
    if name in training:
        return f"training.{name}"
    elsewhere = _key_elsewhere(name, "training", SECTIONS)
    if elsewhere:
        raise ConfigError(f"--{key} is not a training field; write --{elsewhere} VALUE")
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


# Keys other trainers' files and scripts use (HF example scripts, TRL, axolotl), with ours: a hint only
OTHER_NAMES = {
    "model_name_or_path": "model.name_or_path",
    "model_name": "model.name_or_path",
    "base_model": "model.name_or_path",
    "tokenizer_name": "model.tokenizer",
    "dataset_config_name": "data.subset",
    "dataset_text_field": "data.text_field",
    "max_seq_length": "data.max_length",
    "block_size": "data.max_length",
    "sequence_len": "data.max_length",
    "train_file": "data.source",
    "validation_file": "data.source with data.eval_split, or data.validation_split_percentage",
    "datasets": "data.source",
    "dataset_name": "data.source",
}


def _key_elsewhere(name: str, section: str, sections: Mapping[str, type]) -> str | None:
    """`other.name` when another section of the run file has this key (or it is another trainer's
    name for one of ours), so a hint points there instead of at a look-alike of this section."""
    for other, cls in sections.items():
        if other != section and dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
            return f"{other}.{name}"
    return OTHER_NAMES.get(name) if sections is SECTIONS else None


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """A run-file or command-line value for a plain int/float/bool/str annotation: a quoted number
    ("3e-4") read as one, then `check_scalar`; other annotations pass through to their section's checks."""
    options = scalar_types(hint)
    if isinstance(value, str) and options is not None and options & {int, float} and str not in options:
        with contextlib.suppress(ValueError):
            value = float(value)  # quoted numbers like "3e-4"; check_scalar makes a whole one an int
    return check_scalar(key, hint, value, yaml=True)


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
        hinted = [*known, *SEED_KEYS, *DISTRIBUTED_KEYS, *CALLBACK_KEYS] if cls is TrainingArguments else known
        for name, value in values.items():
            if name not in known:
                elsewhere = _key_elsewhere(str(name), section, sections)
                if elsewhere:
                    raise ConfigError(f"unknown key '{section}.{name}' in {origin}; write it as {elsewhere}")
                if name in hf_field_names() and issubclass(cls, TrainingArguments):
                    raise ConfigError(unknown_field_message("training", name, hinted))
                hint = did_you_mean(str(name), hinted).replace("'", f"'{section}.", 1)
                raise ConfigError(f"unknown key '{section}.{name}' in {origin}{hint}")
            # A copy, so arguments built from the CLI's shared base mapping cannot change it.
            merged[section][name] = _coerce(f"{section}.{name}", field_hints(cls).get(name, Any), copy.deepcopy(value))


def _take_seed_keys(layer: Any, taken: dict[str, Any], mapped: list[str]) -> Any:
    """`layer` with its seed keys mapped (`seed_layout.take_seed_keys`); the kept ones checked against their types."""
    here: dict[str, Any] = {}
    layer = take_seed_keys(layer, here, mapped)
    hints = {**DISTRIBUTED_KEYS, **CALLBACK_KEYS}
    taken.update({key: _coerce(f"training.{key}", hints[key], v) if key in hints else v for key, v in here.items()})
    return layer


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), base: Mapping[str, Any] | None = None
) -> RunConfig:
    """Build a `RunConfig` from defaults, a base mapping, a YAML run file and command-line overrides.

    Later sources win key by key: dataclass defaults < `base` < the file at `path` < `overrides`.
    The seed layout's keys (`seed_layout.py`) in any source's `training` section are mapped onto ours
    (`distributed_strategy`/`fsdp_sharding_strategy` onto `training.fsdp`, `num_gpus` onto
    `RunConfig.num_processes`, `dataset_name` onto `data.source`, ...), each in one line of
    `RunConfig.mapped`.

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
    taken: dict[str, Any] = {}
    mapped: list[str] = []
    merge_sections(merged, _take_seed_keys(base, taken, []), "the base config")
    if path is not None:
        merge_sections(merged, _take_seed_keys(read_yaml(path), taken, mapped), f"'{path}'")
    merge_sections(merged, _take_seed_keys(parse_overrides(overrides), taken, mapped), "the command line")
    if taken.get("lora_lr") is not None and not merged["peft"]:
        raise ConfigError(
            "training.lora_lr sets the learning rate of LoRA adapters, but the run has no peft section; add "
            "peft: {r: 16} (or another LoRA config) or drop lora_lr"
        )
    num_processes = apply_distributed(merged["training"], taken, mapped)
    stopping = early_stopping(merged["training"], taken, mapped)
    try:
        training = TrainingArguments(**merged["training"])
    except ConfigError as err:
        if taken.get("distributed_strategy") != "fsdp" or "fsdp" not in str(err).lower():
            raise
        given = ", ".join(f"{k}={taken[k]}" for k in ("distributed_strategy", "fsdp_sharding_strategy") if taken.get(k))
        raise ConfigError(f"{err} (training.fsdp='{merged['training']['fsdp']}' comes from training.{given})") from None
    return RunConfig(
        model=ModelSection(**merged["model"]),
        data=DataSection(**merged["data"]),
        training=training,
        peft=merged["peft"] or None,
        num_processes=num_processes,
        early_stopping=stopping,
        mapped=mapped,
    )
