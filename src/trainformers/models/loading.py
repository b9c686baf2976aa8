"""Loading pretrained causal LMs: dtype, bitsandbytes quantization, and one-line errors.

`load_pretrained` is `AutoModelForCausalLM.from_pretrained` with the run file's `model` options.
4-/8-bit loading needs bitsandbytes and a CUDA GPU; both are checked before anything is loaded, so
a CPU machine gets one line saying what to drop instead of a trace from deep inside transformers.
It lives in `trainformers.models`, whose import registers `DecoderLM` with the Auto classes, so
saved DecoderLMs load too.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["QUANTIZATION_FIELDS", "check_quantization_available", "load_pretrained", "quantization_config"]

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
        **from_pretrained_kwargs: Passed to `from_pretrained` (revision, device_map, ...).

    Returns:
        The loaded model.

    Raises:
        ConfigError: quantization asked for without bitsandbytes or a CUDA GPU (checked before
            loading), or both 4- and 8-bit.
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
    return AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, **from_pretrained_kwargs
    )
