"""`load_config`: defaults < base < run file < command line, each key checked against its section."""

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
from .fields import PATH_OR_TRUE, hf_field_names, is_number, unknown_field_message
from .sections import SECTIONS, DataSection, ModelSection, RunConfig
from .training import TrainingArguments
from .yaml_io import parse_value, read_yaml


def parse_overrides(tokens: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Parse `--section.key VALUE`, `--section.key=VALUE` and bare `--section.key` (true) tokens.

    Raises:
        ConfigError: a token is not of one of these forms.
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
        for name, value in values.items():
            if name not in known:
                if name in hf_field_names() and issubclass(cls, TrainingArguments):
                    raise ConfigError(unknown_field_message("training", name, known))
                hint = did_you_mean(str(name), known).replace("'", f"'{section}.", 1)
                raise ConfigError(f"unknown key '{section}.{name}' in {origin}{hint}")
            # A copy, so arguments built from the CLI's shared base mapping cannot change it.
            merged[section][name] = _coerce(f"{section}.{name}", _hints(cls)[name], copy.deepcopy(value))


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), base: Mapping[str, Any] | None = None
) -> RunConfig:
    """Build a `RunConfig` from defaults, a base mapping, a YAML run file and command-line overrides.

    Later sources win key by key: dataclass defaults < `base` < the file at `path` < `overrides`.

    Args:
        path: A YAML run file with sections `model`, `data` and `training`, or None.
        overrides: argv-style tokens such as `["--training.learning_rate", "3e-4", "--training.bf16"]`.
        base: A mapping with the same sections (the CLI passes its embedded default run here).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: a missing or malformed file, an unknown section or key, a value of the wrong
            type, a malformed override, or any validation error of the sections.
    """
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    merge_sections(merged, base, "the base config")
    if path is not None:
        merge_sections(merged, read_yaml(path), f"'{path}'")
    merge_sections(merged, parse_overrides(overrides), "the command line")
    return RunConfig(
        model=ModelSection(**merged["model"]),
        data=DataSection(**merged["data"]),
        training=TrainingArguments(**merged["training"]),
        peft=merged["peft"] or None,
    )
