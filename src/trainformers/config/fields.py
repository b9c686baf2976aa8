"""Building blocks of the config dataclasses: allowed values, field makers and one-line checks."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import numbers
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from transformers.trainer_utils import SchedulerType

from ..errors import ConfigError, did_you_mean, one_line

# Taken from the installed transformers so a scheduler added upstream is accepted here too.
SCHEDULERS: tuple[str, ...] = tuple(s.value for s in SchedulerType)
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw", "sgd", "adafactor", "adagrad", "rmsprop",
    "adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit",
    "paged_lion_8bit",
)  # fmt: skip
INTERVAL_STRATEGIES = ("no", "steps", "epoch")
SAVE_STRATEGIES = ("no", "steps", "epoch", "best")
HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical", "passive")
SAMPLING_STRATEGIES = ("random", "sequential", "group_by_length")
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "clearml", "dvclive", "aim", "swanlab")
# what report_to='all' looks for: each tracker transformers' 'all' finds when installed (it has no aim)
AUTO_TRACKERS = tuple(t for t in TRACKERS if t != "aim")
FSDP_OPTIONS = (
    "full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2", "offload", "auto_wrap", "no_shard",
)  # fmt: skip
DDP_BACKENDS = ("nccl", "gloo", "mpi", "ccl", "hccl", "cncl", "mccl")
METRIC_INPUTS = ("inputs", "loss")
# annotated `str | None` (a type transformers' HfArgumentParser can read) yet also taking true: the newest checkpoint
PATH_OR_TRUE = frozenset({"resume_from_checkpoint"})
ACCELERATOR_CONFIG_KEYS = ("split_batches", "even_batches", "non_blocking")  # what accel.py carries out
TOKENS_SEEN_MODES = ("all", "non_padding")
MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")
TRAINING_MODES = ("pretraining", "instruction")
# DecoderLM sizes: name -> (hidden_size, num_layers, num_heads, num_kv_heads)
MODEL_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "nano": (64, 2, 4, 2),
    "tiny": (128, 4, 4, 2),
    "small": (384, 6, 6, 2),
    "base": (768, 12, 12, 4),
}
INSTRUCTION_FORMATS = ("messages", "conversations", "prompt_response", "alpaca", "template")
DATA_FORMATS = ("auto", *INSTRUCTION_FORMATS)


def arg(default: Any, help: str) -> Any:
    """A dataclass field with help text; list/dict defaults get a fresh copy per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# The older spellings, by field object: (the field, the current name or None, warn when used). Kept
# out of the field's metadata because transformers' HfArgumentParser hands every metadata key to
# argparse.add_argument, which accepts "help" and refuses anything of ours.
_ALIASES: dict[int, tuple[dataclasses.Field, str | None, bool]] = {}


def alias(new: str | None, help: str, warn: bool = True) -> Any:
    """An accepted other spelling, mapped onto `new` in `__post_init__` and then reset to None."""
    f: Any = field(default=None, repr=False, metadata={"help": help})
    _ALIASES[id(f)] = (f, new, warn)
    return f


def is_alias(f: dataclasses.Field) -> bool:
    entry = _ALIASES.get(id(f))
    return entry is not None and entry[0] is f


def alias_target(f: dataclasses.Field) -> str | None:
    """The field an older spelling maps onto (None: accepted and dropped with a warning)."""
    return _ALIASES[id(f)][1]


def alias_warns(f: dataclasses.Field) -> bool:
    return _ALIASES[id(f)][2]


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """Return `value` as a plain str (HF enums unwrap) or raise naming the allowed values."""
    value = getattr(value, "value", value)
    if value not in allowed:
        raise ConfigError(
            f"{name}={value!r} is not supported{did_you_mean(str(value), allowed)}; choose one of: {', '.join(allowed)}"
        )
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")


SEED_MAX = 2**32 - 1  # numpy's limit (transformers.set_seed seeds it); torch takes more


def check_seed(name: str, value: Any) -> None:
    """A seed (None passes): an integer in 0..2**32-1, the range numpy and torch both accept."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= SEED_MAX):
        raise ConfigError(f"{name}={value!r} must be an integer in 0..{SEED_MAX} (numpy refuses other seeds); e.g. 42")


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (`typing.get_type_hints`). Where a class's annotations don't
    resolve here (a subclass naming a type of its own module's imports), its fields go unchecked."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        try:
            hints.update(typing.get_type_hints(klass))
        except Exception:  # NameError, or a TypeError from an old-style annotation
            continue
    return hints


_SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def scalar_types(hint: Any) -> set[Any] | None:
    """The types of a plain int/float/bool/str annotation or a union of them (NoneType included when
    Optional); None for any other annotation (lists, dicts, Any, classes), which these checks leave alone."""
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = set(typing.get_args(hint)) if is_union else {hint}
    return options if options <= {*_SCALARS, type(None)} else None


def check_scalar(name: str, hint: Any, value: Any, *, yaml: bool = False) -> Any:
    """Check `value` against a plain int/float/bool/str annotation (or a union of them); return it.

    An `int` field also takes a whole float (`1e4` -> 10000) and numpy integers; a `float` field any real
    number (numpy's as Python floats); a `str` field a path (`os.PathLike`), and the fields of
    `PATH_OR_TRUE` also True. Strings are never read as numbers here: the YAML loader does that.

    Raises:
        ConfigError: naming the field, the value and what it must be (`yaml`: YAML's spelling of the fix).
    """
    options = scalar_types(hint)
    if options is None or (value is None and type(None) in options):
        return value
    is_bool = isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool is no int subclass
    if bool in options and is_bool:
        return bool(value)
    if str in options and (isinstance(value, (str, os.PathLike)) or (is_bool and name.split(".")[-1] in PATH_OR_TRUE)):
        return value
    if not is_bool and isinstance(value, numbers.Real):
        if int in options and isinstance(value, numbers.Integral):
            return int(value)
        if float in options:
            return value if isinstance(value, (int, float)) else float(value)
        if int in options and float(value).is_integer():
            return int(float(value))  # `max_steps: 1e4`
    expected = [text for kind, text in _SCALARS.items() if kind in options and not (kind is int and float in options)]
    fix = ""
    if isinstance(value, str) and options & {int, float}:
        with contextlib.suppress(ValueError):
            number = float(value)
            fix = f"; pass the number {int(number) if number.is_integer() else number!r}, not a string"
    elif yaml and str in options:
        fix = "; quote it in YAML"
    raise ConfigError(f"{name} must be {' or '.join(expected)}, got {one_line(value)}{fix}")


def check_field_types(obj: Any, prefix: str = "", cls: type | None = None) -> None:
    """`check_scalar` on every init field of the dataclass `obj`, storing the values it normalises.

    `cls`: check only the fields annotated on this class and its bases (default: all of `obj`'s).

    Raises:
        ConfigError: the first field whose value has the wrong type (`prefix` + its name).
    """
    hints = field_hints(cls or type(obj))
    for f in dataclasses.fields(obj):
        if f.init and f.name in hints:
            value = getattr(obj, f.name)
            checked = check_scalar(prefix + f.name, hints[f.name], value)
            if checked is not value:
                setattr(obj, f.name, checked)


def check_steps(name: str, value: Any, what: str = "a positive number of steps") -> int | float:
    """Validate an interval: a whole number of steps >= 1 (returned as int) or a fraction in (0, 1)."""
    if not is_number(value) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be {what}, or a fraction in (0, 1) of the total steps")
    if value >= 1:
        if value != int(value):
            raise ConfigError(f"{name}={value!r} must be a whole number of steps when it is 1 or more")
        return int(value)
    return value


def json_dict(name: str, value: Any, allow_path: bool) -> Any:
    """Turn a JSON string (or, where allowed, the path of a JSON file) into a dict."""
    if not isinstance(value, str):
        return value
    try:
        if value.lstrip().startswith("{"):
            return json.loads(value)
        if allow_path:
            return json.loads(Path(value).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{name}: file '{value}' not found; pass a dict or a JSON file's path") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name}: {value!r} is not valid JSON ({e})") from None
    raise ConfigError(f"{name}={value!r} must be a dict or a JSON string")


@functools.cache
def hf_field_names() -> frozenset[str]:
    # Imported lazily: transformers.training_args is slow to import and only needed for an error.
    try:
        import transformers

        return frozenset(f.name for f in dataclasses.fields(transformers.TrainingArguments))
    except Exception:  # a broken optional import inside transformers must not hide the real error
        return frozenset()


def unknown_field_message(owner: str, name: str, known: Sequence[str]) -> str:
    if name in hf_field_names():
        return f"{owner} field '{name}' is a transformers option that trainformers does not support; remove it"
    return f"{owner} got an unknown field '{name}'{did_you_mean(name, known)}"
