"""Loading pretrained causal LMs: dtype, bitsandbytes quantization, and one-line errors.

`load_pretrained` is `AutoModelForCausalLM.from_pretrained` with the run file's `model` options.
4-/8-bit loading needs bitsandbytes and a CUDA GPU; both are checked before anything is loaded, so
a CPU machine gets one line saying what to drop instead of a trace from deep inside transformers.
It lives in `trainformers.models`, whose import registers `DecoderLM` with the Auto classes, so
saved DecoderLMs load too. `load_tokenizer` is `AutoTokenizer.from_pretrained` with the same
one-line errors: a path that is missing, a file, or a directory without the files, and a Hub name
that can't be reached.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, TrainformersError

__all__ = [
    "QUANTIZATION_FIELDS",
    "check_quantization_available",
    "load_pretrained",
    "load_tokenizer",
    "quantization_config",
]

# Files one of which a directory must hold for `from_pretrained` to find a model / a tokenizer in it.
MODEL_FILES = ("config.json", "adapter_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "vocab.json", "vocab.txt",
)  # fmt: skip

# The `model` section's fields that describe bitsandbytes quantization, with their defaults.
QUANTIZATION_FIELDS: dict[str, Any] = {
    "load_in_4bit": False,
    "load_in_8bit": False,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_compute_dtype": "bfloat16",
    "bnb_4bit_use_double_quant": False,
}


def quantization_config(model_section_or_kwargs: Any) -> Any:
    """The `BitsAndBytesConfig` that a `model` section (or a mapping of its fields) asks for.

    Args:
        model_section_or_kwargs: A `ModelSection`, or a mapping with any of `QUANTIZATION_FIELDS`.

    Returns:
        A `transformers.BitsAndBytesConfig`, or None when neither 4- nor 8-bit loading is asked.

    Raises:
        ConfigError: both load_in_4bit and load_in_8bit are set.
    """
    source = model_section_or_kwargs
    get = source.get if isinstance(source, Mapping) else lambda name, default: getattr(source, name, default)
    options = {name: get(name, default) for name, default in QUANTIZATION_FIELDS.items()}
    if options["load_in_4bit"] and options["load_in_8bit"]:
        raise ConfigError("Can't set both model.load_in_4bit and model.load_in_8bit; pick one")
    if not (options["load_in_4bit"] or options["load_in_8bit"]):
        return None
    from transformers import BitsAndBytesConfig

    if options["load_in_8bit"]:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute_dtype = options["bnb_4bit_compute_dtype"]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options["bnb_4bit_quant_type"],
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype) if isinstance(compute_dtype, str) else compute_dtype,
        bnb_4bit_use_double_quant=options["bnb_4bit_use_double_quant"],
    )


def check_quantization_available(field: str) -> None:
    """Raise the one-line error for quantized loading on a machine that cannot do it.

    Args:
        field: The option that asked for it, as the user wrote it (e.g. "model.load_in_4bit").

    Raises:
        ConfigError: bitsandbytes is not installed, or there is no CUDA GPU.
    """
    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes is not installed")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU found")
    if missing:
        raise ConfigError(
            f"{field} needs bitsandbytes and a CUDA GPU ({'; '.join(missing)}); "
            "drop it to train in float32/bfloat16 on CPU, or install bitsandbytes on a CUDA machine"
        )


def load_pretrained(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    bnb_4bit_quant_type: str = "nf4",
    bnb_4bit_compute_dtype: str | torch.dtype = "bfloat16",
    bnb_4bit_use_double_quant: bool = False,
    field: str = "model.name_or_path",
    **from_pretrained_kwargs: Any,
) -> Any:
    """`AutoModelForCausalLM.from_pretrained` with the `model` section's options.

    `load_in_4bit=True` / `load_in_8bit=True` become a `BitsAndBytesConfig` (transformers 5 no
    longer takes them directly); a `quantization_config=` given in `from_pretrained_kwargs` is
    passed on as is.

    Args:
        name_or_path: Hub name or local directory of the model.
        dtype: "float32", "bfloat16", "float16", "auto" or a torch dtype.
        trust_remote_code: Allow running model code downloaded from the Hub.
        load_in_4bit, load_in_8bit, bnb_4bit_quant_type, bnb_4bit_compute_dtype,
            bnb_4bit_use_double_quant: bitsandbytes quantization, as in `BitsAndBytesConfig`.
        field: The option that named the model, for the errors (e.g. "model_A.name_or_path").
        **from_pretrained_kwargs: Passed to `from_pretrained` (revision, device_map, ...).

    Returns:
        The loaded model.

    Raises:
        ConfigError: quantization asked for without bitsandbytes or a CUDA GPU (checked before
            loading), or both 4- and 8-bit; `name_or_path` is a missing path, a file, a directory
            without config.json, or a Hub name that can't be loaded (offline, misspelt, private).
        CheckpointError: a local model directory whose files can't be loaded.
    """
    from transformers import AutoModelForCausalLM

    quant = quantization_config(
        {
            "load_in_4bit": load_in_4bit,
            "load_in_8bit": load_in_8bit,
            "bnb_4bit_quant_type": bnb_4bit_quant_type,
            "bnb_4bit_compute_dtype": bnb_4bit_compute_dtype,
            "bnb_4bit_use_double_quant": bnb_4bit_use_double_quant,
        }
    )
    given = from_pretrained_kwargs.pop("quantization_config", None)
    if quant is not None and given is not None:
        raise ConfigError("Can't set both quantization_config and load_in_4bit/load_in_8bit; pick one")
    quant = quant if quant is not None else given
    method = getattr(quant, "quant_method", None)
    if quant is not None and getattr(method, "value", method) == "bitsandbytes":  # GPTQ/AWQ/...: transformers checks
        check_quantization_available(
            "model.load_in_8bit" if getattr(quant, "load_in_8bit", False) else "model.load_in_4bit"
        )
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ConfigError(f"model.dtype={dtype!r} is not a torch dtype; use float32, bfloat16, float16 or auto")
        dtype = getattr(torch, dtype)
    if quant is not None:
        from_pretrained_kwargs["quantization_config"] = quant
    return _from_pretrained(
        lambda: AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, **from_pretrained_kwargs
        ),
        name_or_path,
        field,
        "model",
        MODEL_FILES,
    )


def load_tokenizer(name: str, trust_remote_code: bool = False, *, field: str = "model.tokenizer") -> Any:
    """`AutoTokenizer.from_pretrained(name)` with one-line errors; a tokenizer without a pad token gets
    its EOS token as one (causal LMs often ship without).

    Args:
        name: Hub name or local directory of the tokenizer (or of a model that has one).
        trust_remote_code: Allow running tokenizer code downloaded from the Hub.
        field: The option that named it, for the errors ("model.tokenizer" or "model.name_or_path").

    Returns:
        The tokenizer.

    Raises:
        ConfigError: `name` is a missing path, a file, a directory without tokenizer files, or a Hub
            name that can't be loaded (offline, misspelt, private).
        CheckpointError: a local tokenizer directory whose files can't be loaded.
    """
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(
        lambda: AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code),
        name,
        field,
        "tokenizer",
        TOKENIZER_FILES,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # documented: causal LMs often ship without one
    return tokenizer


def _from_pretrained(load: Callable[[], Any], name: str, field: str, what: str, files: tuple[str, ...]) -> Any:
    """Call `load` (a `from_pretrained`) and turn what it raises for a bad `name` into a one-line error.

    A local path is checked first (missing, a file, a directory holding none of `files`); a Hub name
    that fails is told apart offline (HF_HUB_OFFLINE) and online.

    Raises:
        ConfigError: a bad path or an unloadable Hub name, naming `field` and `name`.
        CheckpointError: a local directory with the files whose loading fails.
    """
    local = _check_local(os.fspath(name), field, what, files)
    try:
        return load()
    except TrainformersError:
        raise
    except (OSError, ValueError, KeyError) as err:
        lines = str(err).strip().splitlines()
        reason = " ".join(lines[0].split())[:200] if lines else type(err).__name__
        if local:
            raise CheckpointError(
                f"{field}='{name}' holds a {what} that can't be loaded ({reason}); re-save it with save_pretrained"
            ) from None
        if _offline():
            raise ConfigError(
                f"{field}='{name}' is neither a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE "
                f"is set; download it once online (hf download {name}) or give a local directory"
            ) from None
        raise ConfigError(
            f"{field}='{name}' is neither a local directory nor a {what} the Hub gives ({reason}); check the name "
            "(e.g. 'org/model'), the network or your login (hf auth login), or give a local directory"
        ) from None


def _check_local(name: str, field: str, what: str, files: tuple[str, ...]) -> bool:
    """True for an existing directory holding one of `files`, False for a Hub-style name; else raise."""
    path = Path(name).expanduser()
    if path.is_file():
        raise ConfigError(
            f"{field}='{name}' is a file; give the directory that holds it (written by save_pretrained), or a Hub name"
        )
    if path.is_dir():
        if any((path / file).is_file() for file in files):
            return True
        inside = [f"{name.rstrip('/')}/{sub.name}" for sub in sorted(path.iterdir()) if sub.is_dir()]
        inside = [d for d in inside if any((Path(d).expanduser() / file).is_file() for file in files)]
        hint = f" (did you mean '{inside[-1]}'?)" if inside else ""
        raise ConfigError(
            f"{field}='{name}' is a directory without a {what} (none of {', '.join(files[:2])}){hint}; give a "
            "directory written by save_pretrained, such as a run's final/ or checkpoint-N"
        )
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:  # a path, not 'org/name'
        raise ConfigError(f"{field}='{name}' not found; give an existing directory written by save_pretrained")
    return False


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
