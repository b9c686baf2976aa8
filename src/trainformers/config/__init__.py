"""Typed configuration: `TrainingArguments` and the YAML run file.

`TrainingArguments` keeps the Hugging Face (transformers 5) field names, defaults and meanings for
the subset trainformers supports, and names any other transformers field it is given as
unsupported. `load_config` reads a run file with `model`, `data` and `training` sections and
applies command-line overrides on top (dataclass default < base < YAML file < command line).

    fields.py    allowed values, `arg`/`alias` field makers, one-line checks (no other config import)
    yaml_io.py   YAML reading and writing, one-value parsing
    training.py  `TrainingArguments` and its Markdown table
    sections.py  the run file's `model` and `data` sections, `RunConfig`
    loading.py   `load_config`: sections merged from defaults, a base, the file and the command line
"""

from .fields import (
    INSTRUCTION_FORMATS,
    MODEL_PRESETS,
    OPTIMIZERS,
    SCHEDULERS,
    arg,
    check_int,
    choice,
    is_number,
)
from .loading import load_config, merge_sections, parse_overrides
from .sections import SECTIONS, DataSection, ModelSection, RunConfig
from .training import TrainingArguments, arguments_markdown_table
from .yaml_io import YamlDumper, parse_value, read_yaml

__all__ = [
    "INSTRUCTION_FORMATS",
    "MODEL_PRESETS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "SECTIONS",
    "DataSection",
    "ModelSection",
    "RunConfig",
    "TrainingArguments",
    "YamlDumper",
    "arg",
    "arguments_markdown_table",
    "check_int",
    "choice",
    "is_number",
    "load_config",
    "merge_sections",
    "parse_overrides",
    "parse_value",
    "read_yaml",
]
