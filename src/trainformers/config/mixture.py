"""`data.sources`: a mixture of data sources, each entry a few per-source keys over the data section's.

An entry is a mapping with `source` and any of `SOURCE_KEYS`; what it leaves out it takes from the
`data` section (so `data.text_field: content` serves every entry that names none). Run-wide keys
(training_mode, max_length, packing, ...) stay in the data section. `source_sections` turns the
entries into data sections of their own, which the data pipeline loads one by one and mixes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, did_you_mean
from .fields import is_number

# What an entry may set: which rows of which source, and how they read; `weight` is the entry's own.
SOURCE_KEYS = (
    "source",
    "subset",
    "split",
    "eval_split",
    "revision",
    "text_field",
    "format",
    "template",
    "response_field",
    "system_prompt",
    "num_samples",
    "num_eval_samples",
    "weight",
)
_TEXT_KEYS = ("subset", "split", "eval_split", "revision", "template", "response_field", "system_prompt")
STOPPING_STRATEGIES = ("all_exhausted", "first_exhausted")


def source_sections(data: Any) -> list[tuple[Any, float | None]]:
    """Each entry of `data.sources` as a `DataSection` of its own, with its weight (None: no weight).

    Args:
        data: A `DataSection` whose `sources` is set.

    Returns:
        `[(section, weight), ...]` in the order of the entries; every weight is set, or none is.

    Raises:
        ConfigError: an entry that is not a mapping, lacks `source`, has an unknown key or a bad value
            (named `data.sources[i].key`), or weights on some entries but not all.
    """
    entries = data.sources
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"data.sources={entries!r} must be a non-empty list of mappings, e.g. "
            "[{source: a.jsonl, weight: 0.7}, {source: b.jsonl, weight: 0.3}]"
        )
    out: list[tuple[Any, float | None]] = []
    for i, entry in enumerate(entries):
        where = f"data.sources[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a mapping such as {{source: a.jsonl, weight: 1}}, got {entry!r}")
        for key in entry:
            if key not in SOURCE_KEYS:
                raise ConfigError(
                    f"unknown key '{key}' in {where}{did_you_mean(str(key), SOURCE_KEYS)}; an entry takes "
                    f"{', '.join(SOURCE_KEYS)} (the other data keys are set once, in the data section)"
                )
        if "source" not in entry:
            raise ConfigError(f"{where} has no source; add source: (a file, a glob, a directory or a Hub name)")
        options = dict(entry)
        weight = options.pop("weight", None)
        if weight is not None and (not is_number(weight) or weight <= 0):
            raise ConfigError(f"{where}.weight={weight!r} must be a number > 0 (its relative share of the rows)")
        for key in _TEXT_KEYS:
            if options.get(key) is not None and not isinstance(options[key], str):
                raise ConfigError(f"{where}.{key} must be a string, got {options[key]!r}; quote it in YAML")
        try:
            section = dataclasses.replace(data, sources=None, **options)
        except ConfigError as error:  # the section's own check, named after the entry
            raise ConfigError(str(error).replace("data.", f"{where}.")) from None
        out.append((section, None if weight is None else float(weight)))
    weighted = [weight is not None for _, weight in out]
    if any(weighted) and not all(weighted):
        raise ConfigError(
            f"data.sources[{weighted.index(True)}] has a weight but data.sources[{weighted.index(False)}] has "
            "none; give every source a weight (its share of the training rows) or none (all its rows)"
        )
    if data.streaming and not all(weighted):
        raise ConfigError(
            "data.streaming with data.sources needs a weight on every source: streams are interleaved by "
            "weight (they can't be shuffled together)"
        )
    return out
