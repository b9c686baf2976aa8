"""Building blocks of the config dataclasses: allowed values, field makers and one-line checks."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from transformers.trainer_utils import SchedulerType

from ..errors import ConfigError, did_you_mean

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
